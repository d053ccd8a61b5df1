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


@dataclass
class MeasureConfig:
    throughput_batch: int = 256
    throughput_repeats: int = 10
    latency_repeats: int = 30
    warmup: int = 3
