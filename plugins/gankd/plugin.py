"""GAN knowledge distillation (source 002): a DCGAN teacher generator distilled into a smaller
student generator.

Methods (all train a generator: ``student_kind = "generator"``, ranked by the Frechet distance):
    dcgan    adversarial DCGAN training from the data alone (needs no teacher): how the teacher
             generator is trained, as ``[teacher] method = "dcgan"``.
    gankd    the source's student: G loss = 0.5 * BCE(D(G(z)), 1) + 0.5 * MSE between the student's
             and the teacher's intermediate outputs of the same shape for the same z; D sees real
             images and student images, BCE(D(x), 1) + BCE(D(G(z)), 0). One D step then one G step
             per batch.
    gan-adv  the baseline the source lacks: the same student trained adversarially only (dcgan's
             losses); it loads the teacher only to measure how far it lands from it.

Metrics (the source has none; see metrics.py): ``fd`` (Frechet distance in the penultimate features
of a small classifier trained once on the same data and cached like a teacher, lower is better,
the selection metric), ``real_fd`` (the same distance between two real sets: the floor), ``coverage``
(entropy of the predicted-class histogram over log C), ``mse_teacher`` (pixel MSE to the teacher's
images for the same noise, in [-1, 1] units).
Samples: ``samples_last.png`` and ``samples_best.png`` (the test passes of the last-epoch and the
best-epoch generator, told apart by ``ctx.phase``) and ``teacher_samples.png`` (same noise) in each
run folder.
"""
from dataclasses import dataclass

import torch
import torch.nn.functional as F

import kdbench
from kdbench.config import check_choice, check_float, check_int
from kdbench.errors import ConfigError
from kdbench.losses import feature_mse
from kdbench.method import Method

from .metrics import PenultimateFeatures, class_coverage, frechet_distance, gaussian_stats
from .models import DCGANGenerator, Discriminator, dcgan_student, dcgan_teacher

SPLIT_NOISE_SEED = {"val": 1001, "test": 2002}  # fixed evaluation noise: every run sees the same z


@dataclass
class GANConfig:
    lr: float = 2e-4  # Adam for G and D (TF DCGAN tutorial: 1e-4; DCGAN paper: 2e-4, beta1 0.5)
    beta1: float = 0.5
    beta2: float = 0.999
    d_width: int = 64  # discriminator: Conv(w) -> Conv(2w) -> Dense 1 (TF DCGAN tutorial: 64, 5x5)
    d_kernel: int = 5
    d_dropout: float = 0.3
    eval_samples: int = 2000  # generated and real images per Frechet distance
    grid: int = 64  # images in each saved sample grid
    fd_model: str = "small-cnn"  # the feature classifier, trained once and cached like a teacher
    fd_epochs: int = 3
    fd_lr: float = 2e-3  # Adam
    fd_train_subset: int = 20000

    def __post_init__(self):
        values = vars(self)
        for key in ("lr", "fd_lr"):
            check_float(values, "method", key, 0, strict=True)
        for key in ("beta1", "beta2", "d_dropout"):
            check_float(values, "method", key, 0, high=1, high_open=True)
        for key in ("d_width", "d_kernel", "grid", "fd_epochs"):
            check_int(values, "method", key, 1)
        check_int(values, "method", "eval_samples", 2)  # a Frechet distance needs a covariance
        check_int(values, "method", "fd_train_subset", 0)


@dataclass
class GANKDConfig(GANConfig):
    adv_weight: float = 0.5  # the source: 0.5 * adversarial + 0.5 * distillation
    distill_weight: float = 0.5
    match: str = "last"  # which same-shape hidden pairs to match: last (the deepest) | all

    def __post_init__(self):
        super().__post_init__()
        for key in ("adv_weight", "distill_weight"):
            check_float(vars(self), "method", key, 0)
        check_choice(vars(self), "method", "match", ("last", "all"))


class DCGAN(Method):
    """Adversarial-only DCGAN training; also the base of the distillation methods."""

    Config = GANConfig
    needs_teacher = False
    student_kind = "generator"
    selection = ("fd", "min")
    lower_is_better = ("mse_teacher", "real_fd")

    def __init__(self, config, ctx):
        super().__init__(config, ctx)
        if not hasattr(self.student, "nz"):
            raise ConfigError(f"{type(self).__name__} trains a generator with an `nz` attribute (e.g. dcgan-student); "
                              f"got {type(self.student).__name__}")
        if ctx.data.cfg.normalize != "symmetric":
            raise ConfigError(f"{type(self).__name__}: generators output tanh images in [-1, 1]; set data.normalize = \"symmetric\"")
        info = ctx.data.info
        self.discriminator = ctx.add_module("discriminator", Discriminator(
            info["in_channels"], info["image_size"], config.d_width, config.d_kernel, config.d_dropout), trainable=False)
        adam = dict(optimizer="adam", lr=config.lr, betas=[config.beta1, config.beta2], weight_decay=0.0, schedule="none")
        self.optimizer = ctx.optimizer(self.student.parameters(), **adam)
        self.d_optimizer = ctx.optimizer(self.discriminator.parameters(), **adam)
        self.features = PenultimateFeatures(self.load_feature_classifier())
        self.real_stats = {}  # split -> feature statistics of its first eval_samples real images
        self.floor = None  # real_fd(), once computed

    # -- training ---------------------------------------------------------------------------

    def noise(self, n, generator=None):
        return torch.randn(n, self.student.nz, device=self.ctx.device, generator=generator)

    def discriminator_step(self, real, fake):
        ones = torch.ones(len(real), device=real.device)
        d_loss = (F.binary_cross_entropy_with_logits(self.discriminator(real), ones)
                  + F.binary_cross_entropy_with_logits(self.discriminator(fake.detach()), torch.zeros_like(ones)))
        self.ctx.step(self.d_optimizer, d_loss)
        return d_loss

    def adversarial_loss(self, fake):
        return F.binary_cross_entropy_with_logits(self.discriminator(fake), torch.ones(len(fake), device=fake.device))

    def train_step(self, batch):
        real, _ = batch
        fake = self.student(self.noise(len(real)))
        d_loss = self.discriminator_step(real, fake)
        g_loss = self.adversarial_loss(fake)
        self.ctx.step(self.optimizer, g_loss)
        return {"d": d_loss, "g_adv": g_loss}

    # -- measuring --------------------------------------------------------------------------

    def load_feature_classifier(self):
        c = self.config
        spec = {
            "model": c.fd_model,
            "train": {"epochs": c.fd_epochs, "optimizer": "adam", "lr": c.fd_lr, "batch_size": 128, "schedule": "none"},
            "data": {"normalize": "symmetric", "augment": [], "train_subset": c.fd_train_subset},
        }
        return self.ctx.load_teacher(spec).model  # leaves this run's random streams as they were

    def real_count(self, split):
        return min(self.config.eval_samples, self.ctx.data.size(split))

    def real_features(self, split):
        if split not in self.real_stats:
            images, _ = self.ctx.data.tensors(split)
            self.real_stats[split] = gaussian_stats(self.features(images[:self.real_count(split)])[1])
        return self.real_stats[split]

    def real_fd(self):
        """The floor of ``fd``: the distance between two disjoint real sets of the same size, the
        test images ``fd`` is measured against and as many validation images."""
        if self.floor is None:
            val, _ = self.ctx.data.tensors("val")
            val_stats = gaussian_stats(self.features(val[:self.real_count("test")])[1])
            self.floor = frechet_distance(val_stats, self.real_features("test"))
        return self.floor

    def fixed_noise(self, split, n):
        g = torch.Generator(device="cpu").manual_seed(SPLIT_NOISE_SEED[split])
        return torch.randn(n, self.student.nz, generator=g).to(self.ctx.device)

    @torch.no_grad()
    def generate(self, generator, z, batch_size=500):
        was_training = generator.training
        generator.eval()
        images = torch.cat([generator(z[i: i + batch_size]).float() for i in range(0, len(z), batch_size)])
        generator.train(was_training)
        return images

    @torch.no_grad()
    def evaluate(self, split):
        real = self.real_features(split)
        z = self.fixed_noise(split, self.config.eval_samples)
        images = self.generate(self.student, z)
        logits, feats = self.features(images)
        metrics = {
            "fd": frechet_distance(gaussian_stats(feats), real),
            "coverage": class_coverage(logits),
        }
        if split == "test":
            metrics["real_fd"] = self.real_fd()
            teacher_images = self.generate(self.teacher, z) if self.teacher is not None else None
            if teacher_images is not None:
                metrics["mse_teacher"] = feature_mse(images, teacher_images).item()
            self.save_grids(images, teacher_images)
        return metrics

    def save_grids(self, images, teacher_images):
        from torchvision.utils import save_image

        name = {"test-last": "samples_last.png", "test-best": "samples_best.png"}.get(self.ctx.phase, f"samples_{self.ctx.phase}.png")
        n = min(self.config.grid, len(images))
        nrow = int(n ** 0.5)
        self.ctx.run_dir.mkdir(parents=True, exist_ok=True)
        save_image(self.ctx.data.denormalize(images[:n]), self.ctx.run_dir / name, nrow=nrow, padding=1)
        if teacher_images is not None:
            save_image(self.ctx.data.denormalize(teacher_images[:n]), self.ctx.run_dir / "teacher_samples.png", nrow=nrow, padding=1)

    def example_input(self, batch_size):
        return self.noise(batch_size)


class GANAdversarialOnly(DCGAN):
    """The student generator trained adversarially only: the baseline for GAN-KD. It needs the
    teacher for the mse_teacher measurement only."""

    needs_teacher = True

    def __init__(self, config, ctx):
        super().__init__(config, ctx)
        check_noise(self.student, self.teacher)


class GANKD(DCGAN):
    """The source's GAN-KD student: 0.5 * adversarial + 0.5 * intermediate-output MSE to the teacher."""

    Config = GANKDConfig
    needs_teacher = True

    def __init__(self, config, ctx):
        super().__init__(config, ctx)
        check_noise(self.student, self.teacher)
        self.pairs = matched_pairs(self.student, self.teacher, self.ctx.device, config.match)

    def train_step(self, batch):
        real, _ = batch
        z = self.noise(len(real))
        fake, student_feats = self.student(z, return_features=True)
        d_loss = self.discriminator_step(real, fake)
        with torch.no_grad():
            _, teacher_feats = self.teacher(z, return_features=True)
        adv = self.adversarial_loss(fake)
        distill = sum(feature_mse(student_feats[i], teacher_feats[j]) for i, j in self.pairs) / len(self.pairs)
        self.ctx.step(self.optimizer, self.config.adv_weight * adv + self.config.distill_weight * distill)
        return {"d": d_loss, "g_adv": adv, "g_distill": distill}


def check_noise(student, teacher):
    if getattr(teacher, "nz", None) != student.nz:
        raise ConfigError(f"the student generator takes noise of dim {student.nz} but the teacher {getattr(teacher, 'nz', None)}; "
                          "set the same nz on both (same noise -> comparable images)")


@torch.no_grad()
def matched_pairs(student, teacher, device, match):
    """(student index, teacher index) of hidden outputs with the same shape, deepest first."""
    z = torch.zeros(2, student.nz, device=device)
    modes = student.training
    student.eval()
    s_shapes = [f.shape[1:] for f in student(z, return_features=True)[1]]
    t_shapes = [f.shape[1:] for f in teacher(z, return_features=True)[1]]
    student.train(modes)
    pairs = []
    for i in reversed(range(len(s_shapes))):
        j = next((j for j in reversed(range(len(t_shapes))) if t_shapes[j] == s_shapes[i]), None)
        if j is not None and all(j != b for _, b in pairs):
            pairs.append((i, j))
    if not pairs:
        raise ConfigError(f"gankd: no hidden output of the student {[tuple(s) for s in s_shapes]} matches the "
                          f"teacher's {[tuple(s) for s in t_shapes]} in shape; change the widths")
    return pairs[:1] if match == "last" else pairs


@kdbench.hookimpl
def kdbench_register_generators(register):
    register("dcgan-teacher", dcgan_teacher, description="source 002 teacher G: Dense 7x7x256, ConvT 128 (s1), 64 (s2), 1 (s2)")
    register("dcgan-student", dcgan_student, description="source 002 student G: Dense 7x7x128, ConvT 64 (s2), 1 (s2)")


@kdbench.hookimpl
def kdbench_register_methods(register):
    register("dcgan", DCGAN, description="adversarial DCGAN training (trains the GAN-KD teacher)")
    register("gankd", GANKD, description="GAN KD: 0.5 adversarial + 0.5 MSE of same-shape hidden outputs to the teacher G")
    register("gan-adv", GANAdversarialOnly, description="GAN-KD baseline: the student G trained adversarially only")


__all__ = ["DCGAN", "DCGANGenerator", "GANKD", "GANAdversarialOnly"]
