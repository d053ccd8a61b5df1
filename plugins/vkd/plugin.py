"""Virtual Knowledge Distillation via a conditional GAN (source 000; Kim, IEEE Access 2022).

A knowledge generator G(z, y) learns to emit what the teacher's softened output (T = 4) looks like
for a class; a discriminator D(k, y) tells the teacher's softened outputs from G's. The student
then learns from G's "virtual" distribution for its label, with or without the teacher.

Methods:
    vkd-teacher  trains the teacher (cross-entropy) and the cGAN; G is registered with
                 ctx.add_module, so it is cached with the teacher and handed to students as
                 ctx.teacher_extras["generator"]. cgan = "concurrent" (the paper: one D step and
                 one G step per teacher batch, on that batch's softened teacher outputs) or
                 "posthoc" (the notebook: cgan_epochs more epochs on the frozen, eval-mode teacher,
                 run by the engine as post-hoc epochs).
    vkd          VKD alone: T^2 KL(G(z, y) || softmax(s / T)) + CE(s, y); the teacher is not used.
    kd-vkd       the notebook's student: KD + VKD (KD = T^2 KL(softmax(t / T) || softmax(s / T))).
    kd-ce        KD alone: KD + CE(s, y) (the same terms without the virtual knowledge).
The built-in ``scratch`` (CE alone) is the fourth arm.

The notebook never defines its VKD loss (the call raises NameError); the definition above is the
spec's reading of its comment ("matches the generator output and the true label"), and the only
place a CE term can live in the notebook's total loss.
"""
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

import kdbench
from kdbench.config import check_betas, check_choice, check_float, check_int
from kdbench.errors import ConfigError
from kdbench.losses import feature_mse, kd_kl_loss
from kdbench.method import Method

from .models import KnowledgeDiscriminator, KnowledgeGenerator

GENERATOR = "vkd-generator"
EXTRA = "generator"  # the name G is cached under, with the teacher
CGAN_MODES = ("concurrent", "posthoc")


def knowledge_generator(num_classes=10, nz=128, hidden=256, depth=3, label_input="embedding"):
    """G(z, y) of VKD: a class-probability vector conditioned on the label."""
    return KnowledgeGenerator(num_classes, nz, hidden, depth, label_input)


@dataclass
class VKDTeacherConfig:
    temperature: float = 4.0  # softening of the teacher outputs that D sees as real (notebook: 4)
    cgan: str = "concurrent"  # concurrent (paper) | posthoc (notebook: after the teacher, frozen)
    cgan_epochs: int = 50  # posthoc only: epochs over the training split (notebook: 50)
    nz: int = 128  # noise dimension of G
    hidden: int = 256  # width of the G and D trunks
    depth: int = 3  # Linear-BN-ReLU blocks in each trunk
    label_input: str = "embedding"  # embedding (notebook) | onehot (paper figures)
    cgan_lr: float = 2e-4  # Adam, for both G and D
    cgan_betas: list = field(default_factory=lambda: [0.5, 0.999])
    mse_weight: float = 1.0  # G loss = BCE(D(G(z, y), y), 1) + mse_weight * MSE(G(z, y), teacher)

    def __post_init__(self):
        values = vars(self)
        check_float(values, "method", "temperature", 0, strict=True)
        check_choice(values, "method", "cgan", CGAN_MODES)
        check_int(values, "method", "cgan_epochs", 0)
        for key in ("nz", "hidden", "depth"):
            check_int(values, "method", key, 1)
        check_choice(values, "method", "label_input", ("embedding", "onehot"))
        check_float(values, "method", "cgan_lr", 0, strict=True)
        check_betas(values, "method", "cgan_betas")
        check_float(values, "method", "mse_weight", 0)


class VKDTeacher(Method):
    """Trains the teacher with cross-entropy and G, D with the cGAN losses of the notebook."""

    Config = VKDTeacherConfig
    needs_teacher = False

    def __init__(self, config, ctx):
        super().__init__(config, ctx)
        # G and D have their own optimizers; concurrent: the engine's best-epoch snapshot pairs them
        # with the teacher of that epoch; posthoc: trained after it, so they stay out of it
        concurrent = config.cgan == "concurrent"
        self.posthoc_epochs = 0 if concurrent else config.cgan_epochs
        self.generator = ctx.add_module(EXTRA, ctx.build_model(
            "generators", GENERATOR, nz=config.nz, hidden=config.hidden, depth=config.depth,
            label_input=config.label_input), trainable=False, snapshot=concurrent)
        self.discriminator = ctx.add_module("discriminator", KnowledgeDiscriminator(
            ctx.data.info["num_classes"], config.hidden, config.depth, config.label_input),
            trainable=False, snapshot=concurrent)
        adam = dict(optimizer="adam", lr=config.cgan_lr, betas=list(config.cgan_betas), weight_decay=0.0,
                    schedule="none")
        self.g_optimizer = ctx.optimizer(self.generator.parameters(), **adam)
        self.d_optimizer = ctx.optimizer(self.discriminator.parameters(), **adam)

    def soften(self, logits):
        return F.softmax(logits.detach().float() / self.config.temperature, dim=1)

    def cgan_step(self, real, labels):
        """One D step, then one G step with fresh noise and the same labels (the notebook's order)."""
        g, d = self.generator, self.discriminator
        ones = torch.ones(len(labels), device=labels.device)
        zeros = torch.zeros_like(ones)
        fake = g.sample(labels)
        d_loss = (F.binary_cross_entropy_with_logits(d(real, labels), ones)
                  + F.binary_cross_entropy_with_logits(d(fake.detach(), labels), zeros))
        self.ctx.step(self.d_optimizer, d_loss)
        fake = g.sample(labels)
        g_adv = F.binary_cross_entropy_with_logits(d(fake, labels), ones)
        g_mse = feature_mse(fake.float(), real)
        self.ctx.step(self.g_optimizer, g_adv + self.config.mse_weight * g_mse)
        return {"d": d_loss, "g_adv": g_adv, "g_mse": g_mse}

    def train_step(self, batch):
        images, labels = batch
        logits = self.student(images)
        loss = F.cross_entropy(logits, labels)
        self.ctx.step(self.optimizer, loss)
        out = {"ce": loss}
        if self.config.cgan == "concurrent":
            # the teacher's softened outputs of this very forward pass (train mode), detached
            out |= self.cgan_step(self.soften(logits), labels)
        return out

    def posthoc_step(self, batch):
        """Posthoc mode, one cGAN step per training batch for cgan_epochs epochs: the teacher the
        cache keeps is its best-epoch state (chosen on validation; frozen, eval mode, no gradients:
        the notebook ran it in train mode and back-propagated into it). Concurrent mode has none:
        the engine's best-epoch snapshot holds G and D as they were at the end of that epoch."""
        images, labels = batch
        with torch.no_grad():
            real = self.soften(self.ctx.best_model("student")(images))
        return self.cgan_step(real, labels)

    def evaluate(self, split):
        metrics = self.ctx.accuracy(self.student, split)
        return metrics | knowledge_stats(self.student, self.generator, self.ctx.data, split, self.config.temperature)


@torch.no_grad()
def knowledge_stats(teacher, generator, data, split, temperature, batch_size=1000):
    """How G's virtual knowledge compares with the teacher's softened outputs on ``split``:
    how often its argmax is the label, its mean top probability, and the teacher's."""
    modes = teacher.training, generator.training
    teacher.eval()
    generator.eval()
    hits = g_top = t_top = n = 0.0
    for images, labels in data.batches(split, batch_size):
        virtual = generator.sample(labels).float()
        soft = F.softmax(teacher(images).float() / temperature, dim=1)
        hits += (virtual.argmax(1) == labels).sum().item()
        g_top += virtual.max(1).values.sum().item()
        t_top += soft.max(1).values.sum().item()
        n += len(labels)
    teacher.train(modes[0])
    generator.train(modes[1])
    return {"g_label_agreement": 100 * hits / n, "g_top_prob": g_top / n, "teacher_top_prob": t_top / n}


@dataclass
class VKDConfig:
    temperature: float = 4.0  # notebook: 4

    def __post_init__(self):
        check_float(vars(self), "method", "temperature", 0, strict=True)


class StudentBase(Method):
    use_kd = False
    use_vkd = False

    def __init__(self, config, ctx):
        super().__init__(config, ctx)
        self.generator = None
        if self.use_vkd:
            extras = getattr(ctx, "teacher_extras", None) or {}
            if EXTRA not in extras:
                raise ConfigError(
                    f"{type(self).__name__}: the teacher has no virtual knowledge generator; train it with "
                    f"[teacher] method = \"vkd-teacher\" (its extras: {', '.join(extras) or 'none'})")
            self.generator = extras[EXTRA]
            self.generator.eval()

    def train_step(self, batch):
        images, labels = batch
        logits = self.student(images)
        t = self.config.temperature
        losses = {"ce": F.cross_entropy(logits, labels)}
        if self.use_kd:
            with torch.no_grad():
                teacher_logits = self.teacher(images)
            losses["kd"] = kd_kl_loss(logits, teacher_logits, t)
        if self.use_vkd:
            with torch.no_grad():
                # G's probabilities p = softmax(l) enter kd_kl_loss as teacher logits T * l,
                # since softmax(T * l / T) = p exactly (no log of a probability needed)
                virtual_logits = t * self.generator.sample_logits(labels)
            losses["vkd_kl"] = kd_kl_loss(logits, virtual_logits, t)
        loss = sum(losses.values())
        self.ctx.step(self.optimizer, loss)
        return losses


class VKD(StudentBase):
    """VKD alone: the student learns from G's virtual distribution and the label (the teacher
    network is never run at student time)."""

    Config = VKDConfig
    use_vkd = True


class KDVKD(StudentBase):
    """The notebook's student: KD + VKD."""

    Config = VKDConfig
    use_kd = True
    use_vkd = True


class KDCE(StudentBase):
    """KD alone (Hinton's terms, unweighted as in the notebook): T^2 KL to the teacher + CE."""

    Config = VKDConfig
    use_kd = True


def torchvision_resnet(arch, num_classes, in_channels):
    """The notebook's models: torchvision ResNets (ImageNet stem: 7x7/2 conv + max-pool, even on
    32x32 inputs), ``weights=None``, the fc replaced by one sized for the dataset."""
    import torch.nn as nn
    import torchvision

    model = getattr(torchvision.models, arch)(weights=None, num_classes=num_classes)
    if in_channels != 3:
        model.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
    return model


def resnet50_torchvision(num_classes=100, in_channels=3):
    """The notebook's teacher: torchvision resnet50 (23,712,932 parameters with 100 classes)."""
    return torchvision_resnet("resnet50", num_classes, in_channels)


def resnet18_torchvision(num_classes=100, in_channels=3):
    """The notebook's student: torchvision resnet18 (11,227,812 parameters with 100 classes)."""
    return torchvision_resnet("resnet18", num_classes, in_channels)


@kdbench.hookimpl
def kdbench_register_teachers(register):
    register("resnet50-torchvision", resnet50_torchvision, description="VKD notebook teacher: torchvision ResNet-50 (ImageNet stem)")


@kdbench.hookimpl
def kdbench_register_students(register):
    register("resnet18-torchvision", resnet18_torchvision, description="VKD notebook student: torchvision ResNet-18 (ImageNet stem)")


@kdbench.hookimpl
def kdbench_register_generators(register):
    register(GENERATOR, knowledge_generator, description="VKD knowledge generator G(z, y) -> class probabilities")


@kdbench.hookimpl
def kdbench_register_methods(register):
    register("vkd-teacher", VKDTeacher, description="teacher CE + VKD's cGAN (concurrent or post hoc)")
    register("vkd", VKD, description="VKD alone: T^2 KL to G(z, y) + CE (no teacher at student time)")
    register("kd-vkd", KDVKD, description="KD + VKD, the notebook's student")
    register("kd-ce", KDCE, description="KD + CE, without virtual knowledge (VKD's control arm)")
