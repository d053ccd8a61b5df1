"""The typed sections of a cell's configuration. Plain dataclasses, no torch (the CLI parses
and validates a grid before anything heavy is imported)."""
from dataclasses import dataclass, field


@dataclass
class DataConfig:
    name: str = "fashion-mnist"
    root: str = "~/.cache/kdbench/data"  # torchvision root for datasets that download
    download: bool = False  # allow torchvision downloads (needs internet)
    val_size: int = 5000  # carved from the training split; checkpoints are selected on it
    train_subset: int = 0  # 0: the whole remaining training split
    test_subset: int = 0  # 0: the full test set (the default, and what papers should report)
    split_seed: int = 0  # fixes the validation carve and the subsets, whatever the run seed
    normalize: str = "standard"  # standard: (x - mean) / std; symmetric: [-1, 1] (GANs); unit: [0, 1]
    augment: list = field(default_factory=list)  # any of: crop, hflip, vflip
    crop_padding: int = 4


@dataclass
class TrainConfig:
    epochs: int = 10
    steps_per_epoch: int = 0  # 0: one pass over the training split; data-free methods must set it
    batch_size: int = 128
    optimizer: str = "sgd"  # sgd | adam | adamw
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    betas: list = field(default_factory=lambda: [0.9, 0.999])
    nesterov: bool = False
    schedule: str = "none"  # none | cosine | step | multistep, stepped once per epoch
    t_max: int = 0  # cosine period in epochs (0: epochs); a T_max below epochs makes it periodic
    eta_min: float = 0.0
    step_size: int = 30
    gamma: float = 0.1
    milestones: list = field(default_factory=list)
    eval_every: int = 1  # epochs between validation passes
    checkpoint_every: int = 1  # epochs between resumable checkpoints
    amp: bool = True  # bf16 autocast on CUDA (ignored on CPU)
    grad_clip: float = 0.0  # 0: no clipping
    eval_batch_size: int = 512
    threads: int = 0  # CPU threads while training (0: torch's default); tiny models run faster on 1


@dataclass
class TeacherConfig:
    model: str = ""  # any other key in [teacher] is an option of the model's factory (width, ...)
    method: str = "scratch"  # the method that trains it (a method with needs_teacher = False)
    method_options: dict = field(default_factory=dict)
    train: dict = field(default_factory=dict)  # TrainConfig overrides for the teacher
    data: dict = field(default_factory=dict)  # DataConfig overrides (train_subset, ...)
    seed: int = 0
    path: str = ""  # bring your own checkpoint instead of the cache (--teacher PATH)
    url: str = ""  # or download one (http(s):// or file://), verified against sha256 (--teacher URL#sha256=HEX)
    sha256: str = ""


@dataclass
class MeasureConfig:
    throughput_batch: int = 256
    throughput_repeats: int = 10
    latency_repeats: int = 30
    warmup: int = 3


# ---------------------------------------------------------------------------------------------
# Range checks: every cell's sections pass these at expansion, before anything trains.

OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("none", "cosine", "step", "multistep")
MAX_SEED = 2**64 - 1  # what torch.manual_seed accepts


def fail(key, value, valid):
    from kdbench.errors import ConfigError

    raise ConfigError(f"invalid {key} = {value!r}; valid: {valid}")


def is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value):
    import math

    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def check_int(section, where, key, low, high=None):
    value = section[key]
    if not is_int(value) or value < low or (high is not None and value > high):
        fail(f"{where}.{key}", value, f"an integer from {low} to {high}" if high is not None else f"an integer >= {low}")


def check_float(section, where, key, low, strict=False, high=None, high_open=False):
    """section[key] is a finite number >= low (> low if strict), and <= high (< high if high_open)."""
    value = section[key]
    if not is_number(value) or value < low or (strict and value == low) or (
            high is not None and (value > high or (high_open and value == high))):
        valid = f"a number {'>' if strict else '>='} {low}"
        if high is not None:
            valid += f" and {'<' if high_open else '<='} {high}"
        fail(f"{where}.{key}", value, valid)


def check_bool(section, where, key):
    if not isinstance(section[key], bool):
        fail(f"{where}.{key}", section[key], "true or false")


def check_betas(section, where, key):
    betas = section[key]
    if not (isinstance(betas, list) and len(betas) == 2 and all(is_number(b) and 0 <= b < 1 for b in betas)):
        fail(f"{where}.{key}", betas, "two numbers in [0, 1), e.g. 0.9+0.999")


def check_choice(section, where, key, choices):
    if section[key] not in choices:
        fail(f"{where}.{key}", section[key], ", ".join(choices))


def check_seed(value, key):
    if not is_int(value) or not 0 <= value <= MAX_SEED:
        fail(key, value, "an integer from 0 to 2**64-1")


def check_train(train, where="train"):
    """Ranges and choices of a [train] section (a dict of every TrainConfig field)."""
    for key in ("epochs", "batch_size", "eval_every", "checkpoint_every", "step_size", "eval_batch_size"):
        check_int(train, where, key, 1)
    for key in ("steps_per_epoch", "t_max", "threads"):
        check_int(train, where, key, 0)
    check_choice(train, where, "optimizer", OPTIMIZERS)
    check_choice(train, where, "schedule", SCHEDULES)
    check_float(train, where, "lr", 0, strict=True)
    check_float(train, where, "gamma", 0, strict=True)
    for key in ("momentum", "weight_decay", "eta_min", "grad_clip"):
        check_float(train, where, key, 0)
    check_betas(train, where, "betas")
    milestones = train["milestones"]
    if not (isinstance(milestones, list) and all(is_int(m) and m >= 1 for m in milestones)):
        fail(f"{where}.milestones", milestones, "epochs as integers >= 1, e.g. 30+60")
    if train["nesterov"] and train["optimizer"] == "sgd" and train["momentum"] == 0:
        fail(f"{where}.nesterov", True, "false when momentum is 0 (Nesterov needs momentum)")


def check_data(data, where="data"):
    """Ranges and choices of a [data] section (a dict of every DataConfig field)."""
    from kdbench.data.bundle import AUGMENTATIONS, NORMALIZATIONS

    check_int(data, where, "val_size", 1)
    for key in ("train_subset", "test_subset", "crop_padding"):
        check_int(data, where, key, 0)
    check_seed(data["split_seed"], f"{where}.split_seed")
    check_choice(data, where, "normalize", NORMALIZATIONS)
    augment = data["augment"]
    if not (isinstance(augment, list) and all(op in AUGMENTATIONS for op in augment)):
        fail(f"{where}.augment", augment, f"a list of {', '.join(AUGMENTATIONS)} (e.g. crop+hflip), or none")


def check_measure(measure, where="measure"):
    for key in ("throughput_batch", "throughput_repeats", "latency_repeats"):
        check_int(measure, where, key, 1)
    check_int(measure, where, "warmup", 0)


def check_seeds(seeds, where):
    """A non-empty list of distinct seeds, each one torch accepts."""
    if not isinstance(seeds, list) or not seeds:
        fail(where, seeds, "a non-empty list of integers, e.g. 0,1,2")
    for seed in seeds:
        check_seed(seed, where)
    if len(set(seeds)) != len(seeds):
        duplicate = next(s for s in seeds if seeds.count(s) > 1)
        fail(where, seeds, f"distinct seeds ({duplicate} is listed twice: it would train the same run twice)")
