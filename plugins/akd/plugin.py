"""AKD: data-free adversarial knowledge distillation (source 001, the DFAD algorithm).

One ``train_step`` is one outer iteration of the source's ``train_epoch`` loop:

- ``student_steps`` (15) student updates, each on a fresh batch ``x = G(z)`` (no gradient to G):
  loss_S = L1(student(x), teacher(x)), the mean absolute logit difference; SGD from ``[train]``;
- ``generator_steps`` (1) generator updates on a fresh batch that *maximise* the same discrepancy:
  loss_G = -L1(student(G(z)), teacher(G(z))), Adam(lr_g); the gradient reaches G through both
  frozen networks.

No real training image reaches the student or the generator. Baselines, same loop and budget:
``akd-random`` (the student on Gaussian-noise images, DFAD's RANDOM row) and ``akd-kd-real``
(the same L1 logit matching on real training images: the upper bound, DFAD's KD-ORI row).

``peer`` (the source's "one generator shared by the students"): a second student spec, e.g.
``{model = "resnet18", width = 0.5}``, trained in the same cell against the same generator and
Adam, after the main student in every epoch, as the source's ``train_epoch(student_50);
train_epoch(student_20)`` does. Its test accuracy is reported as ``peer_top1``/``peer_top5``;
"best" is the peer at the epoch the engine chose on the main student's validation accuracy (the
engine snapshots every module there).
"""
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

import kdbench
from kdbench.config import check_float, check_int
from kdbench.errors import ConfigError
from kdbench.method import Method

from .models import generator_a, resnet34_imagenet


def check_steps(config):
    check_int(vars(config), "method", "student_steps", 1)


@dataclass
class AKDConfig:
    student_steps: int = 15  # student updates per outer iteration (AKD; DFAD uses 5)
    generator_steps: int = 1  # generator updates per outer iteration
    nz: int = 100  # latent size (AKD; DFAD's CIFAR script uses 256)
    generator: str = "akd-generator-a"  # a registered generator taking nz and ngf
    ngf: int = 64
    lr_g: float = 1e-3  # Adam, default betas, no weight decay (the source's optim.Adam(G, lr_G))
    peer: dict = field(default_factory=dict)  # {} = a generator per student (DFAD); see the module doc

    def __post_init__(self):
        check_steps(self)
        for key in ("generator_steps", "nz", "ngf"):
            check_int(vars(self), "method", key, 1)
        check_float(vars(self), "method", "lr_g", 0, strict=True)
        if self.peer and (not isinstance(self.peer, dict) or "model" not in self.peer):
            raise ConfigError(f"method.peer must be a student spec like {{model = \"resnet18\", width = 0.5}}, got {self.peer!r}")


@dataclass
class RandomConfig:
    student_steps: int = 15

    def __post_init__(self):
        check_steps(self)


@dataclass
class KDRealConfig:
    student_steps: int = 15

    def __post_init__(self):
        check_steps(self)


class AKD(Method):
    """Data-free adversarial distillation: generator and student play a min-max on the L1 logit gap."""

    Config = AKDConfig
    uses_data = False

    def __init__(self, config, ctx):
        super().__init__(config, ctx)
        self.batch_size = ctx.train["batch_size"]
        generator = ctx.build_model("generators", config.generator, nz=config.nz, ngf=config.ngf)
        # channels_last: about 2x faster convolutions for this generator on CPU (measured here)
        self.generator = ctx.add_module("generator", generator.to(memory_format=torch.channels_last), trainable=False)
        self.opt_g = ctx.optimizer(self.generator.parameters(), optimizer="adam", lr=config.lr_g,
                                   betas=[0.9, 0.999], weight_decay=0.0)
        self.peer = self.peer_opt = None
        if config.peer:
            options = {k: v for k, v in config.peer.items() if k != "model"}
            self.peer = ctx.add_module("peer", ctx.build_model("students", config.peer["model"], **options), trainable=False)
            self.peer_opt = ctx.optimizer(self.peer.parameters())

    def noise(self):
        return torch.randn(self.batch_size, self.config.nz, device=self.ctx.device)

    def iteration(self, student, optimizer):
        for _ in range(self.config.student_steps):
            with torch.no_grad():
                images = self.generator(self.noise())  # G in train mode (batch statistics), as the source
                target = self.teacher(images)
            loss_s = F.l1_loss(student(images), target)
            self.ctx.step(optimizer, loss_s)
        loss_g = None
        student.requires_grad_(False)  # G's gradient flows through the student; its own is not needed
        try:
            for _ in range(self.config.generator_steps):
                images = self.generator(self.noise())
                loss_g = -F.l1_loss(student(images), self.teacher(images))
                self.ctx.step(self.opt_g, loss_g)
        finally:
            student.requires_grad_(True)
        losses = {"student_l1": loss_s.detach()}
        if loss_g is not None:
            losses["generator_l1"] = -loss_g.detach()
        return losses

    def train_step(self, batch):
        return self.iteration(self.student, self.optimizer)

    def end_epoch(self, epoch):
        """With a peer: a whole epoch of its iterations (the source's order: the first student's
        epoch, then the second's); their mean losses go to the epoch's history row as ``peer_*``."""
        if self.peer is None:
            return None
        sums = {}
        for _ in range(self.ctx.steps_per_epoch):
            for name, value in self.iteration(self.peer, self.peer_opt).items():
                sums[name] = sums.get(name, 0.0) + value
        return {f"peer_{name}": total / self.ctx.steps_per_epoch for name, total in sums.items()}

    def evaluate(self, split):
        """The student's metrics, and with a peer its ``peer_top1``/``peer_top5``."""
        metrics = self.ctx.accuracy(self.student, split)
        if self.peer is None:
            return metrics
        return metrics | {f"peer_{k}": v for k, v in self.ctx.accuracy(self.peer, split).items()}


class AKDRandom(Method):
    """DFAD's RANDOM baseline: the same student steps on Gaussian-noise images (the generator's
    output is standardised per batch, so N(0, 1) noise has its first two moments), no generator."""

    Config = RandomConfig
    uses_data = False

    def train_step(self, batch):
        info = self.ctx.data.info
        shape = (self.ctx.train["batch_size"], info["in_channels"], info["image_size"], info["image_size"])
        for _ in range(self.config.student_steps):
            images = torch.randn(shape, device=self.ctx.device)
            with torch.no_grad():
                target = self.teacher(images)
            loss = F.l1_loss(self.student(images), target)
            self.ctx.step(self.optimizer, loss)
        return {"student_l1": loss.detach()}


class AKDKDReal(Method):
    """The upper bound (DFAD's KD-ORI): the same student steps and L1 logit loss on real training
    images (augmented as ``[data] augment`` says): one step of this method is ``student_steps``
    batches of the run's data stream (the engine's and ``ctx.next_batch()``), like one AKD iteration."""

    Config = KDRealConfig

    def train_step(self, batch):
        for step in range(self.config.student_steps):
            images, _ = batch if step == 0 else self.ctx.next_batch()
            with torch.no_grad():
                target = self.teacher(images)
            loss = F.l1_loss(self.student(images), target)
            self.ctx.step(self.optimizer, loss)
        return {"student_l1": loss.detach()}


@kdbench.hookimpl
def kdbench_register_methods(register):
    register("akd", AKD, description="data-free adversarial KD (AKD/DFAD): generator vs student on the L1 logit gap")
    register("akd-random", AKDRandom, description="AKD baseline: the student on Gaussian-noise inputs (DFAD RANDOM)")
    register("akd-kd-real", AKDKDReal, description="AKD upper bound: L1 logit KD on real training images (DFAD KD-ORI)")


@kdbench.hookimpl
def kdbench_register_generators(register):
    register("akd-generator-a", generator_a, description="DFAD/AKD GeneratorA: z -> image, per-batch standardised")


@kdbench.hookimpl
def kdbench_register_teachers(register):
    register("resnet34-imagenet", resnet34_imagenet,
             description="torchvision ResNet-34 (ImageNet stem) fed upsampled images (AKD's teacher)")
