"""The one training loop: teachers, the scratch baseline and every method run on it.

It owns device placement, seeding, bf16 autocast on CUDA, the progress bar, the NaN/inf guard,
validation and best-epoch tracking, periodic checkpoints and resuming an interrupted run, and the
method's lifecycle:

    prepare -> [per epoch: phase "train" steps -> end_epoch -> phase "val" evaluate("val") -> best
    snapshot of every module + method state if better -> checkpoint] -> [per post-hoc epoch: phase
    "posthoc" steps -> checkpoint] -> finish() -> phase "test-last" evaluate("test") -> the best
    snapshot loaded into every module (+ the method's state) -> phase "test-best"
    evaluate("test") -> teardown (always, also when the cell fails)

Its rules are functions here, and whatever else needs one (the dry-run planner, the teacher cache,
the runner, the grid's checks) calls them: ``check_steps`` and ``steps_per_epoch``,
``shuffle_generator`` and ``training_batches`` (the data stream), ``train_step`` (one step),
``validates_after`` (the evaluation schedule), ``evaluate`` and ``TEST_PHASES`` (the phases),
``prepare_and_train`` (prepare -> train, and again from the start on a bad checkpoint).
"""
import contextlib
import copy
import hashlib
import io
import json
import math
import os
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch

from kdbench import distributed, store
from kdbench.errors import CheckpointError, ConfigError, NonFiniteLoss
from kdbench.precision import autocast

CHECKPOINT = "checkpoint.pt"
CHECKSUM_HEADER = b"kdbench checkpoint sha256="  # first line of a checkpoint file; torch.save's bytes follow
CHECKPOINT_FORMAT = 2  # 2: epoch counters and the best snapshot of every module; older ones restart
DATA_SOURCE_KEYS = ("name", "root", "download", "split_seed")  # what the raw arrays depend on
HISTORY = "history.jsonl"
TEST_PHASES = ("test-last", "test-best")  # the test passes of a run: the last state, then the best snapshot


def seed_everything(seed):
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@contextlib.contextmanager
def preserved_rng():
    """Run a block (loading or training another model) without moving this run's random streams."""
    python_state, numpy_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=range(torch.cuda.device_count()) if torch.cuda.is_available() else []):
        yield
    random.setstate(python_state)
    np.random.set_state(numpy_state)


def resolve_device(name):
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda was asked for but torch sees no CUDA device; use --device cpu or auto")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return distributed.device(torch.device(name))  # under DDP: this rank's own GPU


def freeze(module):
    module.eval()
    module.requires_grad_(False)
    return module


class Teacher:
    """A trained model with what its training method produced alongside it, and its provenance."""

    def __init__(self, model, extras, info):
        self.model = freeze(model)
        self.extras = {name: freeze(m) for name, m in extras.items()}
        self.info = info  # hash, test metrics, params, path


class Context:
    """What a method sees of the engine (documented in kdbench.method)."""

    def __init__(self, *, student, teacher, data, train, seed, device, run_dir, registry, teacher_loader=None,
                 ddp=False):
        self.device = device
        self.ddp = ddp  # one of several torchrun processes training this cell (kdbench.distributed)
        self.train = train
        self.seed = seed
        self.data = data
        self.run_dir = Path(run_dir)
        self.registry = registry
        self.epoch = 0  # 0-based epoch being trained (in evaluation: the one just trained)
        self.global_step = 0  # train_step calls completed in this run
        self.phase = "train"  # "train" | "val" | "test-last" | "test-best"
        self.modules = {}
        self.trainable = []  # names of the modules Method.parameters() optimises
        self.unsnapshotted = set()  # modules left out of the best snapshot (trained post hoc)
        self.optimizers = []
        self.schedulers = []
        self.taps = []
        self.stream = None  # this epoch's training batches (ctx.next_batch)
        self.sample_indices = False  # training batches carry the samples' indices (Method.wants_indices)
        self.steps_per_epoch = None  # train_step calls per epoch, set by the engine when training starts
        self.best = None  # the best-epoch snapshot (ctx.best_state)
        self._best_models = {}  # name -> (the snapshot it came from, frozen copy): ctx.best_model
        self.student = self.add_module("student", student)
        self.teacher = teacher.model if teacher else None
        self.teacher_extras = teacher.extras if teacher else {}
        self.teacher_loader = teacher_loader

    def add_module(self, name, module, trainable=True, snapshot=True):
        if name in self.modules or name == "method":  # "method" names the method's state in snapshots
            raise ValueError(f"module name {name!r} is already used in this run")
        module = module.to(self.device)
        if self.device.type == "cuda":  # NHWC convolutions are faster on tensor cores
            module = module.to(memory_format=torch.channels_last)
        self.modules[name] = module
        if trainable:
            self.trainable.append(name)
        if not snapshot:
            self.unsnapshotted.add(name)
        return module

    def features(self, model, paths):
        from kdbench.features import FeatureTap

        tap = FeatureTap(model, paths)
        self.taps.append(tap)
        return tap

    def feature_shapes(self, model, paths, inputs=None):
        from kdbench.features import output_shapes

        if inputs is None:  # two real images, in order: no random stream is touched
            split = "val" if self.data.size("val") else "train"
            inputs, _ = next(iter(self.data.batches(split, 2)))
        shapes = output_shapes(model, inputs, paths)
        wrong = {p: s for p, s in shapes.items() if not isinstance(s, torch.Size)}
        if wrong:
            raise ConfigError(f"module output(s) that are not tensors: {wrong}")
        return shapes

    def remove_features(self):
        for tap in self.taps:
            tap.remove()
        self.taps = []

    def next_batch(self):
        if self.stream is None or self.phase not in ("train", "posthoc"):
            raise RuntimeError("ctx.next_batch() draws training batches: call it from train_step or posthoc_step only")
        return next(self.stream)

    def best_state(self):
        return self.best

    def best_model(self, name="student"):
        """A frozen, eval-mode copy of module ``name`` in its best-epoch state (e.g. the teacher
        that a post-hoc step learns from); the same copy until the best snapshot changes."""
        if self.best is None or name not in self.best:
            raise RuntimeError(f"ctx.best_model({name!r}): no best-epoch snapshot of it yet (there is one after the first validation)")
        cached = self._best_models.get(name)
        if cached is None or cached[0] is not self.best:
            model = copy.deepcopy(self.modules[name])
            model.load_state_dict(self.best[name])
            cached = self._best_models[name] = (self.best, freeze(model))
        return cached[1]

    def optimizer(self, params, **overrides):
        cfg = dict(self.train) | overrides
        params = list(params)
        kind = cfg["optimizer"]
        if kind == "sgd":
            opt = torch.optim.SGD(params, lr=cfg["lr"], momentum=cfg["momentum"], weight_decay=cfg["weight_decay"], nesterov=cfg["nesterov"])
        elif kind in ("adam", "adamw"):
            cls = torch.optim.Adam if kind == "adam" else torch.optim.AdamW
            opt = cls(params, lr=cfg["lr"], betas=tuple(cfg["betas"]), weight_decay=cfg["weight_decay"])
        else:
            raise ConfigError(f"unknown optimizer {kind!r}; valid: sgd, adam, adamw")
        self.optimizers.append(opt)
        self.schedulers.append(make_scheduler(opt, cfg))
        return opt

    def step(self, optimizer, loss):
        finite = distributed.all_finite(loss) if self.ddp else torch.isfinite(loss.detach()).all()
        if not finite:
            raise NonFiniteLoss(f"loss became {loss.detach().float().item()} at a training step; lower the learning rate or check the inputs")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.train["grad_clip"] > 0:
            params = [p for group in optimizer.param_groups for p in group["params"]]
            torch.nn.utils.clip_grad_norm_(params, self.train["grad_clip"])
        optimizer.step()

    def build_model(self, role, name, **options):
        return self.registry.build_model(role, name, self.data.info, **options).to(self.device)

    def load_teacher(self, spec):
        return self.teacher_loader(spec)

    @torch.no_grad()
    def accuracy(self, model, split):
        was_training = model.training
        model.eval()
        correct1 = correct5 = total = 0
        with autocast(self.device, self.train["amp"]):
            for images, labels in self.data.batches(split, self.train["eval_batch_size"]):
                logits = model(images).float()
                top = logits.topk(min(5, logits.shape[1]), dim=1).indices
                hits = top == labels[:, None]
                correct1 += hits[:, 0].sum().item()
                correct5 += hits.any(dim=1).sum().item()
                total += labels.numel()
        model.train(was_training)
        return {"top1": 100.0 * correct1 / total, "top5": 100.0 * correct5 / total}


def make_scheduler(opt, cfg):
    kind = cfg["schedule"]
    if kind == "none":
        return None
    if kind == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg["t_max"] or cfg["epochs"], eta_min=cfg["eta_min"])
    if kind == "step":
        return torch.optim.lr_scheduler.StepLR(opt, step_size=cfg["step_size"], gamma=cfg["gamma"])
    if kind == "multistep":
        return torch.optim.lr_scheduler.MultiStepLR(opt, milestones=cfg["milestones"], gamma=cfg["gamma"])
    raise ConfigError(f"unknown schedule {kind!r}; valid: none, cosine, step, multistep")


def set_train_mode(ctx, training):
    for module in ctx.modules.values():
        module.train(training)


def is_better(value, best, direction):
    if best is None:
        return True
    return value > best if direction == "max" else value < best


def progress(total, desc):
    from tqdm.auto import tqdm

    quiet = not sys.stderr.isatty() or os.environ.get("KDBENCH_QUIET")
    return tqdm(total=total, desc=desc, leave=False, disable=bool(quiet), dynamic_ncols=True)


class DataCache:
    """The datasets one session (or dry run) has loaded: each source read once, each split and
    subset built once per device. Nothing is cached at module level."""

    def __init__(self, registry):
        self.registry, self.sources, self.bundles = registry, {}, {}

    def source(self, data_cfg):
        """The raw dataset of ``data_cfg`` (a DataConfig dict), as its plugin loads it."""
        from kdbench.config import DataConfig

        source = {k: v for k, v in data_cfg.items() if k in DATA_SOURCE_KEYS}
        key = json.dumps(source, sort_keys=True)
        if key not in self.sources:
            self.sources[key] = self.registry.get("datasets", source["name"])(DataConfig(**source))
        return self.sources[key]

    def bundle(self, data_cfg, device):
        """The dataset of ``data_cfg`` split, subset and on ``device``."""
        from kdbench.config import DataConfig
        from kdbench.data import DataBundle

        key = (json.dumps(data_cfg, sort_keys=True), str(device))
        if key not in self.bundles:
            self.bundles[key] = DataBundle.build(self.source(data_cfg), DataConfig(**data_cfg), device)
        return self.bundles[key]


def check_datasets(data_cache, cells):
    """Load every dataset a grid uses once and check its split sizes, so that a missing dataset or
    a subset larger than the data stops the grid before any training."""
    from kdbench.config import DataConfig
    from kdbench.data.bundle import check_sizes

    for cell in cells:
        for cfg in (cell.config["data"], (cell.config["teacher"] or {}).get("data")):
            if cfg:
                check_sizes(data_cache.source(cfg), DataConfig(**cfg))


def prepare(*, registry, role, model_spec, method_name, method_options, data_cfg, data_cache, train_cfg, seed, device, run_dir, teacher=None,
            teacher_loader=None, ddp=False):
    """Seed, build the model (``role``: teachers or students) and its method on the device, on the
    data of ``data_cfg`` from ``data_cache`` (a DataCache).
    Returns (method, ctx), ready for ``train`` or for loading saved module states. ``ddp``: this
    process is one of several training the cell together (kdbench.distributed)."""
    seed_everything(seed)
    data = data_cache.bundle(data_cfg, device)
    options = {k: v for k, v in model_spec.items() if k != "model"}
    model = registry.build_model(role, model_spec["model"], data.info, **options)
    if ddp and device.type == "cuda":  # batch statistics over the whole global batch
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    ctx = Context(student=model, teacher=teacher, data=data, train=train_cfg, seed=seed, device=device,
                  run_dir=run_dir, registry=registry, teacher_loader=teacher_loader, ddp=ddp)
    method_cls = registry.get("methods", method_name)
    return build_method(method_cls, method_cls.Config(**method_options), ctx), ctx


def build_method(method_cls, config, ctx):
    """The method on ``ctx``, with its default optimizer (the student and every trainable module)
    unless its __init__ set ``self.optimizer`` itself. Tests that build a method by hand use this."""
    ctx.sample_indices = method_cls.wants_indices
    method = method_cls.__new__(method_cls)  # made before __init__, so a failed one is torn down too
    try:
        method.__init__(config, ctx)
        if getattr(method, "optimizer", None) is None:
            method.optimizer = ctx.optimizer(method.parameters())
        if ctx.ddp:
            enter_ddp(method, ctx)
    except BaseException as exc:
        ctx.remove_features()  # hooks on a shared teacher must not outlive a failed build
        try:
            method.teardown()
        except Exception as also:  # the build's error is the one to report
            exc.add_note(f"teardown() after the failed build raised too: {type(also).__name__}: {also}")
        raise
    return method


def enter_ddp(method, ctx):
    """Check that the method fits DDP (one optimizer, over the student alone) and route its
    student forwards through DistributedDataParallel; states and hooks stay on the bare module."""
    extra = [name for name in ctx.trainable if name != "student"]
    if len(ctx.optimizers) != 1 or extra:
        what = f"{len(ctx.optimizers)} optimizers" if len(ctx.optimizers) != 1 else f"trainable module(s) {', '.join(extra)}"
        raise ConfigError(f"method {type(method).__name__} cannot run under DDP (torchrun/--ddp): it trains {what}, and "
                          "kdbench's DDP covers one optimizer over the student; run it in one process")
    distributed.check_batch(ctx.train["batch_size"])
    ctx.student = method.student = distributed.wrap(ctx.student, ctx.device)


def teardown(method, ctx):
    """End of a cell, ok or failed: remove every feature hook, then the method's own teardown."""
    ctx.remove_features()
    ctx.stream = None
    method.teardown()


@contextlib.contextmanager
def cpu_threads(n, device):
    """Run a block on ``n`` intra-op CPU threads (0: unchanged), then restore torch's setting."""
    before = torch.get_num_threads()
    if n <= 0 or device.type != "cpu":
        yield
        return
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def check_steps(method_cls, name, train_cfg):
    """A data-free method (``uses_data`` False) has no data to count its steps by: it needs
    train.steps_per_epoch. Checked when a grid is expanded and again when training starts."""
    if not method_cls.uses_data and not train_cfg["steps_per_epoch"]:
        raise ConfigError(f"method {name!r} is data-free: set train.steps_per_epoch to an integer >= 1 (it is 0: one pass over no data)")


def steps_per_epoch(method, train_cfg, train_size):
    """train_step calls per epoch: train.steps_per_epoch, else one pass over the training split."""
    check_steps(type(method), type(method).__name__, train_cfg)
    return train_cfg["steps_per_epoch"] or batches_per_pass(train_size, train_cfg["batch_size"])


def batches_per_pass(train_size, batch_size):
    """Batches in one pass over ``train_size`` samples (the last one partial): a post-hoc epoch."""
    return math.ceil(train_size / batch_size)


def validates_after(epoch, train_cfg):
    """Whether the 0-based ``epoch`` ends with a validation pass (every eval_every, and the last)."""
    return (epoch + 1) % train_cfg["eval_every"] == 0 or epoch + 1 == train_cfg["epochs"]


def shuffle_generator(seed):
    """The generator of a run's training order and augmentation: seeded by the run's seed alone,
    so every arm of a seed trains on the same batches."""
    return torch.Generator(device="cpu").manual_seed(seed)


def evaluate(method, ctx, phase):
    """One evaluation pass as the engine runs it: every module in eval mode, ``ctx.phase`` set
    ("val", or one of TEST_PHASES on the test split)."""
    ctx.phase = phase
    set_train_mode(ctx, False)
    return method.evaluate("val" if phase == "val" else "test")


def train_step(method, ctx, posthoc=False):
    """One step as the engine runs it: the stream's next batch (None for a data-free method's
    train_step) under autocast; returns the step's named losses."""
    with autocast(ctx.device, ctx.train["amp"]):
        if posthoc:
            return method.posthoc_step(next(ctx.stream))
        losses = method.train_step(next(ctx.stream) if method.uses_data else None)
    ctx.global_step += 1
    return losses


def prepare_and_train(prepare, desc, on_epoch=None, afresh="starting it"):
    """``prepare()`` -> (method, ctx) -> ``train``; when the run's resume checkpoint cannot be used
    (CheckpointError; train removed it), prepare again and train from the start, saying so with
    ``afresh`` ("{afresh} afresh"). Returns (method, ctx, result)."""
    method, ctx = prepare()
    try:
        return method, ctx, train(method, ctx, desc, on_epoch)
    except CheckpointError as exc:
        print(f"kdbench: {exc}; {afresh} afresh", file=sys.stderr)
    method, ctx = prepare()
    return method, ctx, train(method, ctx, desc, on_epoch)


def train(method, ctx, desc="train", on_epoch=None):
    """Train ``method`` and return a result dict: last and best test metrics, the best epoch
    (chosen on validation, never on test), training time. Resumes from ``ctx.run_dir`` if a
    checkpoint is there. ``on_epoch(row)``, if given, gets each history row as it is written
    (the runner's loggers)."""
    try:
        with cpu_threads(ctx.train["threads"], ctx.device):
            result = train_loop(method, ctx, desc, on_epoch)
    finally:
        teardown(method, ctx)
    return result | {"threads": torch.get_num_threads() if ctx.train["threads"] <= 0 else ctx.train["threads"]}


def train_loop(method, ctx, desc, on_epoch=None):
    cfg = ctx.train
    metric, direction = method.selection
    steps = ctx.steps_per_epoch = steps_per_epoch(method, cfg, ctx.data.info["train_size"])
    posthoc_steps = batches_per_pass(ctx.data.info["train_size"], cfg["batch_size"])
    epochs = cfg["epochs"]
    total = epochs + method.posthoc_epochs  # post-hoc epochs are counted on from the last one
    shuffle = shuffle_generator(ctx.seed)
    writes = not ctx.ddp or distributed.is_main()  # under DDP rank 0 alone writes the run folder
    state = {"epoch": 0, "global_step": 0, "best": None, "best_epoch": None, "best_state": None, "history": [], "elapsed": 0.0}
    checkpoint_path = ctx.run_dir / CHECKPOINT
    if checkpoint_path.exists():
        state = load_checkpoint(checkpoint_path, ctx, method, shuffle, remove_bad=writes)
        if writes:
            print(f"kdbench: resuming {ctx.run_dir} after epoch {state['epoch']}", file=sys.stderr)
    if ctx.ddp:
        distributed.barrier()  # every rank has read the checkpoint before rank 0 may replace it
    ctx.global_step, ctx.best = state["global_step"], state["best_state"]
    if writes:  # the curve log restarts from what the checkpoint holds (no epochs logged twice)
        ctx.run_dir.mkdir(parents=True, exist_ok=True)
        (ctx.run_dir / HISTORY).write_text("".join(json.dumps(row) + "\n" for row in state["history"]))

    bar = progress(epochs * steps + method.posthoc_epochs * posthoc_steps, desc)
    bar.update(min(state["epoch"], epochs) * steps + max(state["epoch"] - epochs, 0) * posthoc_steps)
    start = time.perf_counter() - state["elapsed"]
    for epoch in range(state["epoch"], total):
        posthoc = epoch >= epochs
        ctx.epoch, ctx.phase = epoch, "posthoc" if posthoc else "train"
        if epoch == epochs:  # post-hoc training draws its passes over the data from the run's seed again
            shuffle.manual_seed(ctx.seed)
        set_train_mode(ctx, True)
        ctx.stream = training_batches(ctx, cfg, shuffle)  # lazy: draws nothing until asked
        sums, extra = {}, {}
        for _ in range(posthoc_steps if posthoc else steps):
            losses = train_step(method, ctx, posthoc)
            for name, value in losses.items():  # summed on the device: no sync per step
                sums[name] = sums.get(name, 0.0) + (value.detach().float() if torch.is_tensor(value) else value)
            bar.update(1)
        if not posthoc:
            for scheduler in ctx.schedulers:
                if scheduler is not None:
                    scheduler.step()
            extra = method.end_epoch(epoch) or {}  # losses of steps end_epoch takes itself (AKD's peer)
        ctx.stream = None
        if ctx.ddp:  # the loss of the global batch: the mean of the ranks' slices
            sums, extra = ({k: distributed.mean(v, ctx.device) for k, v in d.items()} for d in (sums, extra))
        prefix = "posthoc" if posthoc else "train"
        row = ({"epoch": epoch + 1} | {f"{prefix}_{k}": float(v) / (posthoc_steps if posthoc else steps) for k, v in sums.items()}
               | {f"train_{k}": float(v) for k, v in extra.items()})
        if not posthoc and validates_after(epoch, cfg):
            val = evaluate(method, ctx, "val")
            row |= {f"val_{k}": v for k, v in val.items()}
            if is_better(val[metric], state["best"], direction):
                ctx.best = snapshot(ctx, method)
                state |= {"best": val[metric], "best_epoch": epoch + 1, "best_state": ctx.best}
        state["history"].append(row)
        state["epoch"], state["global_step"] = epoch + 1, ctx.global_step
        state["elapsed"] = time.perf_counter() - start
        if writes:
            with open(ctx.run_dir / HISTORY, "a") as log:
                log.write(json.dumps(row) + "\n")
        if on_epoch is not None and writes:
            on_epoch(row)
        if (epoch + 1) % cfg["checkpoint_every"] == 0 and epoch + 1 < total and writes:
            save_checkpoint(checkpoint_path, ctx, method, shuffle, state)
    bar.close()
    ctx.phase = "train"
    method.finish()
    train_time = time.perf_counter() - start

    last = evaluate(method, ctx, TEST_PHASES[0])
    load_snapshot(ctx, method, ctx.best)
    best = evaluate(method, ctx, TEST_PHASES[1])
    if writes:
        checkpoint_path.unlink(missing_ok=True)  # the run is finished; its record is what counts
    return {
        "metrics": {f"{k}_last": v for k, v in last.items()} | {f"{k}_best": v for k, v in best.items()},
        "selection": {"metric": metric, "direction": direction, "best_epoch": state["best_epoch"], "val_best": state["best"]},
        "directions": {k: direction if k == metric else "min" if k in method.lower_is_better else "max" for k in last},
        "train_time_s": train_time,
        "epochs": cfg["epochs"],
        "steps_per_epoch": steps,
        # what the best test scored: the best snapshot, and modules trained post hoc as they ended
        "best_state": {name: cpu_state(m) for name, m in ctx.modules.items()},
    }


def training_batches(ctx, cfg, shuffle):
    while True:  # cycles when steps_per_epoch asks for more than one pass
        for batch in ctx.data.batches("train", cfg["batch_size"], shuffle=True, augment=True, generator=shuffle,
                                      indices=ctx.sample_indices):
            yield distributed.shard(batch) if ctx.ddp else batch


def cpu_copy(value):
    """A CPU copy of a state: tensors detached and copied, dicts, lists and tuples walked."""
    if torch.is_tensor(value):
        return value.detach().to("cpu", copy=True)
    if isinstance(value, dict):
        return {k: cpu_copy(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(cpu_copy(v) for v in value)
    return value


def cpu_state(module):
    return cpu_copy(module.state_dict())


def snapshot(ctx, method):
    """The best-epoch snapshot: every module's state (but those trained post hoc) and the method's."""
    modules = {name: cpu_state(m) for name, m in ctx.modules.items() if name not in ctx.unsnapshotted}
    return modules | {"method": cpu_copy(method.state_dict())}


def load_snapshot(ctx, method, snap):
    if snap is None:
        return
    for name, module in ctx.modules.items():
        if name in snap:
            module.load_state_dict(snap[name])
    method.load_state_dict(snap["method"])


def save_checkpoint(path, ctx, method, shuffle, state):
    payload = {
        "format": CHECKPOINT_FORMAT,
        "modules": {name: m.state_dict() for name, m in ctx.modules.items()},
        "optimizers": [opt.state_dict() for opt in ctx.optimizers],
        "schedulers": [s.state_dict() if s else None for s in ctx.schedulers],
        "method": method.state_dict(),
        "rng": {"torch": torch.get_rng_state(), "shuffle": shuffle.get_state(), "cuda": torch.cuda.get_rng_state_all() if ctx.device.type == "cuda" else []},
        "state": state,
    }
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    data = buffer.getvalue()
    store.write_bytes(path, CHECKSUM_HEADER + hashlib.sha256(data).hexdigest().encode() + b"\n" + data)


def read_checkpoint(path, device):
    """The payload of a checkpoint written by save_checkpoint, after its checksum is verified."""
    header, _, data = path.read_bytes().partition(b"\n")
    if not header.startswith(CHECKSUM_HEADER):
        raise CheckpointError("it has no checksum header (damaged, or written by an older kdbench)")
    if hashlib.sha256(data).hexdigest().encode() != header[len(CHECKSUM_HEADER):]:
        raise CheckpointError("it fails its sha256 checksum")
    return torch.load(io.BytesIO(data), map_location=device, weights_only=True)


def load_checkpoint(path, ctx, method, shuffle, remove_bad=True):
    try:
        payload = read_checkpoint(path, ctx.device)
        if payload.get("format") != CHECKPOINT_FORMAT:
            raise CheckpointError(f"format {payload.get('format', 1)}, this kdbench writes {CHECKPOINT_FORMAT}")
        for name, module in ctx.modules.items():
            module.load_state_dict(payload["modules"][name])
        for opt, saved in zip(ctx.optimizers, payload["optimizers"], strict=True):
            opt.load_state_dict(saved)
        for sched, saved in zip(ctx.schedulers, payload["schedulers"], strict=True):
            if sched is not None:
                sched.load_state_dict(saved)
        method.load_state_dict(payload["method"])
        torch.set_rng_state(payload["rng"]["torch"].cpu())
        shuffle.set_state(payload["rng"]["shuffle"].cpu())
        if payload["rng"]["cuda"]:
            torch.cuda.set_rng_state_all([s.cpu() for s in payload["rng"]["cuda"]])
    except Exception as exc:
        if remove_bad:
            path.unlink(missing_ok=True)
        reason = str(exc) if isinstance(exc, CheckpointError) else f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        raise CheckpointError(f"checkpoint {path} is unreadable ({reason}); it was removed") from None
    return cpu_copy(payload["state"])
