"""The default plugin: built-in datasets, shared architectures, the ``scratch`` baseline and ``kd``,
registered through the same hooks as any third-party plugin."""
from kdbench import hookimpl


@hookimpl
def kdbench_register_datasets(register):
    from kdbench.data import DATASETS

    for name, loader in DATASETS.items():
        register(name, loader)


@hookimpl
def kdbench_register_teachers(register):
    from kdbench.zoo import MODELS

    for name, factory in MODELS.items():
        register(name, factory)


@hookimpl
def kdbench_register_students(register):
    from kdbench.zoo import MODELS

    for name, factory in MODELS.items():
        register(name, factory)


@hookimpl
def kdbench_register_methods(register):
    from kdbench.method import KD, Scratch

    register("scratch", Scratch, description="the student on labels alone (cross-entropy)")
    register("kd", KD, description="Hinton KD: alpha CE + (1 - alpha) T^2 KL(teacher || student); T = 4, alpha = 0.1")


@hookimpl
def kdbench_register_loggers(register):
    from kdbench.loggers import TensorBoardLogger

    register("tensorboard", TensorBoardLogger, description="scalars per epoch and the final metrics, in run_dir/tensorboard (needs tensorboard)")
