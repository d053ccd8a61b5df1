"""The method contract: what a distillation method implements, and the built-in ``scratch`` one.

A method is small (mdistiller's Distiller is the model): it declares its hyperparameters as a
dataclass with the source paper's defaults, creates its own extra modules and optimizers, and
implements one training step. Everything else (device placement, bf16 autocast on CUDA, seeding,
the epoch loop, progress, NaN guard, checkpoints, resume, validation, best-epoch tracking, the
final test and the measurements) belongs to the engine, through ``ctx`` (``kdbench.engine.Context``):

    ctx.student, ctx.teacher      the models on the device; the teacher is in eval mode with
                                  frozen parameters (gradients still flow to its input)
    ctx.teacher_extras            extra modules the teacher's own training method produced
                                  (a generator trained with it, say), frozen, keyed by name
    ctx.data                      the DataBundle: .batches(), .tensors(), .info, .denormalize()
    ctx.device, ctx.train, ctx.seed, ctx.run_dir
    ctx.add_module(name, module)  move an extra module to the device and have it checkpointed,
                                  resumed and put in train mode with the student; returns it
    ctx.optimizer(params, **over) an optimizer (and its per-epoch scheduler) from the [train]
                                  settings, with overrides such as optimizer="adam", lr=2e-4,
                                  betas=[0.5, 0.999], schedule="none"; checkpointed and resumed
    ctx.step(optimizer, loss)     zero_grad, backward, clip, step; a NaN/inf loss raises
                                  NonFiniteLoss and fails the cell (the grid goes on)
    ctx.build_model(role, name, **options)
                                  a registered model ("teachers", "students" or "generators")
                                  sized for the dataset
    ctx.load_teacher(spec)        any other cached, trained model (a [teacher]-style dict), e.g.
                                  a classifier that a generator metric needs
    ctx.accuracy(model, split)    top-1/top-5 (percent) of a classifier on "val" or "test"
"""
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class NoOptions:
    """A method without hyperparameters."""


class Method:
    Config = NoOptions  # dataclass of hyperparameters, defaults from the source paper
    needs_teacher = True  # False: the engine neither trains nor loads a teacher for it
    uses_data = True  # False: train_step(None) each step; data-free methods make their own inputs
    student_kind = "classifier"  # "generator": evaluate() is the method's, and so is the ranking
    selection = ("top1", "max")  # the validation metric (a key of evaluate()) that picks the best epoch
    lower_is_better = ()  # other keys of evaluate() where lower is better (marked so in tables)

    def __init__(self, config, ctx):
        self.config = config
        self.ctx = ctx
        self.student = ctx.student
        self.teacher = ctx.teacher
        self.optimizer = ctx.optimizer(self.student.parameters())

    def train_step(self, batch):
        """One step on ``batch`` (images, labels already on the device and augmented; None when
        ``uses_data`` is False). Update through ``ctx.step`` and return the named losses
        (tensors or floats) for the training-curve log."""
        raise NotImplementedError

    def end_epoch(self, epoch):
        """Called after each epoch's steps, before validation."""

    def finish(self):
        """Called once after the last epoch, before the final test (post-hoc training goes here)."""

    def evaluate(self, split):
        """Metrics of the student on ``split`` ("val" or "test"); must contain the selection key."""
        return self.ctx.accuracy(self.student, split)

    def example_input(self, batch_size):
        """A batch of the student's inputs, for throughput and latency timing."""
        info = self.ctx.data.info
        shape = (batch_size, info["in_channels"], info["image_size"], info["image_size"])
        return torch.randn(shape, device=self.ctx.device)

    def state_dict(self):
        """Extra state to checkpoint besides modules and optimizers (counters, buffers)."""
        return {}

    def load_state_dict(self, state):
        pass


class Scratch(Method):
    """The student on labels alone (cross-entropy): the baseline every table compares against,
    and how teachers are trained."""

    needs_teacher = False

    def train_step(self, batch):
        images, labels = batch
        loss = F.cross_entropy(self.student(images), labels)
        self.ctx.step(self.optimizer, loss)
        return {"ce": loss}
