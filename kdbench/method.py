"""The method contract: what a distillation method implements, and the built-in ``scratch`` and
``kd`` methods.

A method is small (mdistiller's Distiller is the model): it declares its hyperparameters as a
dataclass with the source paper's defaults, creates its own extra modules and optimizers, and
implements one training step. Everything else (device placement, bf16 autocast on CUDA, seeding,
the epoch loop, progress, NaN guard, checkpoints, resume, validation, best-epoch snapshots, the
final tests, teardown and the measurements) belongs to the engine, through ``ctx``
(``kdbench.engine.Context``).

The lifecycle, owned by the engine: ``__init__`` (call ``super().__init__(config, ctx)`` first,
then add modules; the engine then builds ``self.optimizer = ctx.optimizer(self.parameters())``
unless ``__init__`` set ``self.optimizer`` itself) -> per epoch: phase "train" (``train_step``
calls) -> ``end_epoch(epoch)`` -> phase "val" (``evaluate("val")``) -> a snapshot of every module
and of ``state_dict()`` when the epoch is the best so far -> checkpoint; then ``posthoc_epochs``
post-hoc epochs (phase "posthoc": ``posthoc_step`` over one pass of the training data each, with
progress, history and checkpoints like any epoch) -> ``finish()`` -> phase "test-last"
(``evaluate("test")`` of the last state) -> the best snapshot loaded into every module and
``load_state_dict`` -> phase "test-best" (``evaluate("test")``) -> ``teardown()``,
which always runs, also when the cell fails (in ``__init__`` too). A teacher's cache entry saves
every module as the "test-best" pass saw them.

    ctx.student, ctx.teacher      the models on the device; the teacher is in eval mode with
                                  frozen parameters (gradients still flow to its input)
    ctx.teacher_extras            extra modules the teacher's own training method produced
                                  (a generator trained with it, say), frozen, keyed by name
    ctx.data                      the DataBundle (its docstring lists what a method may use:
                                  .info, .size(), .batches(), .tensors(), .normalize(),
                                  .denormalize()); training batches come from the engine
    ctx.device, ctx.train, ctx.seed, ctx.run_dir
    ctx.epoch                     0-based epoch being trained (in evaluation: the one just
                                  trained); checkpointed, so a resumed run sees the right one
    ctx.global_step               train_step calls completed in this run (all epochs); checkpointed
    ctx.phase                     "train", "val", "posthoc", "test-last" or "test-best": what the
                                  engine is doing now (evaluate still gets "val" or "test")
    ctx.steps_per_epoch           train_step calls per epoch (train.steps_per_epoch, or one pass
                                  over the training split), set when training starts
    ctx.add_module(name, module, trainable=True, snapshot=True)
                                  move an extra module to the device and have it checkpointed,
                                  resumed, put in train/eval mode with the student and snapshotted
                                  at the best epoch; returns it. trainable: optimised by the
                                  default optimizer (pass False for modules with an optimizer of
                                  their own, a GAN's G or D). snapshot=False: a module that
                                  finish() trains post hoc keeps its final state in the best test
                                  and the teacher cache. Records count every module but the
                                  student as the method's parameters (record["method_params"]).
    ctx.features(model, paths)    a FeatureTap: forward hooks on ``model``'s submodules named by
                                  dotted path (``python -m kdbench list students --layers MODEL``
                                  lists them); after a forward of ``model``, tap[path] is that
                                  submodule's output. Removed by the engine at teardown.
    ctx.feature_shapes(model, paths)
                                  {path: torch.Size without the batch dim}, from one eval-mode
                                  forward of two validation images (no random stream touched),
                                  to size a regressor in __init__
    ctx.next_batch()              one more augmented training batch (images, labels) from the
                                  run's data stream, for steps that use several batches (in
                                  train_step or posthoc_step; (images, labels, indices) when the
                                  method wants_indices)
    ctx.best_state()              the best-epoch snapshot {module name: state_dict, "method":
                                  state_dict()} (None before the first validation); read-only
    ctx.best_model(name="student")
                                  a frozen, eval-mode copy of module ``name`` in its best-epoch
                                  state (e.g. the trained teacher a post-hoc step learns from)
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

from kdbench.config import check_bool, check_float
from kdbench.losses import kd_kl_loss, standardize_logits


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
    # Config fields that name module paths ({field: "student" or "teacher"}; a path or a list of
    # them): every path is checked against that model before any training, and a wrong one is a
    # one-line error naming the option, the model and the valid paths.
    layer_options = {}
    # True: training batches are (images, labels, indices), indices (int64, on the device) the
    # samples' positions in the training split, 0 .. ctx.data.info["train_size"] - 1, the same
    # sample at every epoch (a memory bank's or a per-sample cache's key). The batches themselves
    # are the ones every other arm of the seed trains on.
    wants_indices = False
    posthoc_epochs = 0  # epochs of posthoc_step after the last training epoch (may be set in __init__)

    def __init__(self, config, ctx):
        self.config = config
        self.ctx = ctx
        self.student = ctx.student
        self.teacher = ctx.teacher
        self.optimizer = None  # built by the engine after __init__ unless the method sets it

    def parameters(self):
        """What the default optimizer optimises: the student's parameters and those of every
        module added with ``trainable=True``, each once."""
        seen, params = set(), []
        for name in self.ctx.trainable:
            for p in self.ctx.modules[name].parameters():
                if id(p) not in seen:
                    seen.add(id(p))
                    params.append(p)
        return params

    def train_step(self, batch):
        """One step on ``batch`` (images, labels already on the device and augmented, and the
        samples' indices when ``wants_indices``; None when ``uses_data`` is False). Update through
        ``ctx.step`` and return the named losses
        (tensors or floats) for the training-curve log."""
        raise NotImplementedError

    def end_epoch(self, epoch):
        """Called after each epoch's steps, before validation; ``epoch`` is the 0-based index of
        the epoch that just ended (== ctx.epoch). May return named values (tensors or floats,
        e.g. the mean losses of steps it takes itself), logged in the epoch's history row as
        ``train_<name>`` beside train_step's."""

    def posthoc_step(self, batch):
        """One step of post-hoc training (``posthoc_epochs`` > 0) on a training batch, after the
        last epoch: the engine runs these epochs (one pass over the training data each, in an
        order drawn from the run's seed) with progress, checkpoints and resume, and logs the
        returned losses as ``posthoc_<name>``. No validation follows; ``ctx.best_model()`` is the
        best-epoch student. Modules trained here are usually added with ``snapshot=False``."""
        raise NotImplementedError(f"{type(self).__name__} sets posthoc_epochs but has no posthoc_step")

    def finish(self):
        """Called once after the last epoch (and the post-hoc epochs), before the final tests;
        ``ctx.best_state()`` holds the best epoch's snapshot."""

    def teardown(self):
        """Called once when the cell ends, ok or failed, after the engine removed its feature
        hooks: release whatever the method holds outside its modules. Also called when
        ``__init__`` raised, so it must cope with attributes that ``__init__`` did not set."""

    def evaluate(self, split):
        """Metrics of the student on ``split`` ("val" or "test"); must contain the selection key."""
        return self.ctx.accuracy(self.student, split)

    def example_input(self, batch_size):
        """A batch of the student's inputs, for throughput and latency timing."""
        info = self.ctx.data.info
        shape = (batch_size, info["in_channels"], info["image_size"], info["image_size"])
        return torch.randn(shape, device=self.ctx.device)

    def state_dict(self):
        """Extra state to checkpoint and snapshot at the best epoch besides modules and
        optimizers (counters, buffers)."""
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


@dataclass
class KDConfig:
    temperature: float = 4.0  # mdistiller's CIFAR-100 KD setting: T = 4, CE weight 0.1, KD weight 0.9
    alpha: float = 0.1  # weight of the label loss; the KL term gets (1 - alpha)
    logit_stand: bool = False  # logit standardisation (Sun et al. 2024): z-scores of both logits before the KL

    def __post_init__(self):
        check_float(vars(self), "method", "temperature", 0, strict=True)
        check_float(vars(self), "method", "alpha", 0, high=1)
        check_bool(vars(self), "method", "logit_stand")


class KD(Method):
    """Knowledge distillation with soft targets (Hinton, Vinyals and Dean, 2015):
    loss = alpha * CE(s, y) + (1 - alpha) * T^2 * KL(softmax(t / T) || softmax(s / T)),
    with ``logit_stand`` on: s and t replaced by their z-scores in the KL (kdbench.losses.standardize_logits)."""

    Config = KDConfig

    def train_step(self, batch):
        images, labels = batch
        with torch.no_grad():
            teacher_logits = self.teacher(images)
        logits = self.student(images)
        s, t = (standardize_logits(logits), standardize_logits(teacher_logits)) if getattr(self.config, "logit_stand", False) else (logits, teacher_logits)
        kd = kd_kl_loss(s, t, self.config.temperature)
        ce = F.cross_entropy(logits, labels)
        loss = (1.0 - self.config.alpha) * kd + self.config.alpha * ce
        self.ctx.step(self.optimizer, loss)
        return {"loss": loss.detach(), "kd": kd.detach(), "ce": ce.detach()}
