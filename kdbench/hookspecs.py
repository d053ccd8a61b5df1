"""The kdbench plugin API: one hook per kind of component.

A plugin is a module (or object) with functions marked ``@hookimpl`` whose names are the hooks
below. Each hook receives a ``register`` callback; call it once per component:

    from kdbench import hookimpl

    @hookimpl
    def kdbench_register_methods(register):
        register("my-kd", MyKD, description="KD with my twist")

``register(name, obj, **metadata)`` rejects a name that another plugin already registered (the
error names both plugins); ``register(name, obj, replaces=True)`` replaces a built-in of that
name on purpose (one notice line). A ``@hookimpl`` whose name is none of the hooks below is an
error, not ignored. Metadata is free-form and shown by ``python -m kdbench list``;
``description`` is the conventional key.

This module must stay free of torch imports: ``python -m kdbench --help`` loads it.
"""
import pluggy

hookspec = pluggy.HookspecMarker("kdbench")
hookimpl = pluggy.HookimplMarker("kdbench")


@hookspec
def kdbench_register_datasets(register):
    """Register datasets: ``register(name, loader)``.

    ``loader(config: kdbench.data.DataConfig) -> kdbench.data.RawData`` returns the full train and
    test splits as uint8 image arrays with labels (the core carves the validation split, subsets,
    moves the tensors to the device and batches and augments them there). When the data is not
    on disk and cannot be downloaded it raises ``kdbench.errors.DatasetMissing`` with a message
    that says how to get it.
    """


@hookspec
def kdbench_register_teachers(register):
    """Register teacher architectures: ``register(name, factory)``.

    ``factory(**options) -> torch.nn.Module``. The core passes ``num_classes``, ``in_channels``
    and ``image_size`` (taken from the dataset) to the factories that declare them; the other
    keyword arguments are the model's own options (``width``, ...), set from the experiment file
    or with ``--set teacher.<option>=<value>`` and typed by the factory's defaults.
    """


@hookspec
def kdbench_register_students(register):
    """Register student architectures: ``register(name, factory)``, with the same factory
    signature as teachers. A model that serves both roles is registered by both hooks."""


@hookspec
def kdbench_register_generators(register):
    """Register generators (image or knowledge generators): ``register(name, factory)``, with the
    same factory convention as teachers. Methods build them by name with
    ``ctx.build_model("generators", name, **options)`` (see kdbench.method). A teacher or student name
    that is not a classifier is looked up among the generators, so a GAN can be distilled too."""


@hookspec
def kdbench_register_methods(register):
    """Register distillation methods: ``register(name, method_class)``.

    ``method_class`` subclasses ``kdbench.method.Method``: a ``Config`` dataclass with the source
    paper's defaults, and ``train_step``; see that class for the whole contract.
    """


@hookspec
def kdbench_register_loggers(register):
    """Register experiment trackers: ``register(name, factory)``; ``run --log NAME`` turns one on.

    ``factory(run_dir) -> logger`` is called once per (cell, seed) run, in the process that trains
    it; ``run_dir`` is the run's folder (its record, config and history live there, and a logger
    may write its own files beside them). The logger's methods are all optional:

    - ``start(config)``: before training, the run's ``config.json`` content (experiment, cell,
      method, seed, the full config, provenance).
    - ``log_epoch(row)``: after each epoch, the ``history.jsonl`` row just written: ``epoch``
      (1-based), ``train_<loss>`` means and ``val_<metric>`` when validation ran.
    - ``finish(record)``: the run's final record (``status`` "ok" with metrics, or "failed" with
      its error); close files here. An error here is reported and does not touch the record.

    A factory may define ``check()``, called once before any training, that raises
    ``kdbench.errors.ConfigError`` when the logger cannot work (a missing package, a missing key).
    The built-in ``tensorboard`` logger is one; W&B, trackio or MLflow are plugins like any other.
    """
