"""Three logit distillation methods on the public Method API: DIST, CTKD and MLKD (the formulas are
in logit_losses.py). Logit standardisation is the ``logit_stand`` option of kd (built in), dkd and
mlkd, one function for all: kdbench.losses.standardize_logits.

The defaults are the papers' CIFAR-100 settings, checked against the reference code:
DIST hunto/image_classification_sota (6f7a70a, configs/strategies/distill/dist_cifar.yaml,
lib/models/losses/dist_kd.py), CTKD zhengli97/CTKD (7d52522, scripts/run_cifar_distill.sh,
train_student.py, models/temp_global.py), MLKD Jin-Ying/Multi-Level-Logit-Distillation (5ee473f,
mdistiller/distillers/KD_ours.py, mdistiller/engine/cfg.py) and logit standardisation
sunshangquan/logit-standardization-KD (f6e5aa5, mdistiller/distillers/{KD,DKD,MLKD}.py).
"""
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from kdbench.config import check_bool, check_float, check_int
from kdbench.errors import ConfigError
from kdbench.losses import kd_kl_loss
from kdbench.method import Method

from . import logit_losses as losses
from .randaugment import rand_augment


# --- DIST -----------------------------------------------------------------------------------------
@dataclass
class DISTConfig:
    temperature: float = 4.0  # the paper's CIFAR-100 tau (dist_cifar.yaml: kd dist_t4)
    inter_weight: float = 2.0  # beta (kd_loss_weight 2 x DIST beta 1)
    intra_weight: float = 2.0  # gamma (kd_loss_weight 2 x DIST gamma 1)

    def __post_init__(self):
        check_float(vars(self), "method", "temperature", 0, strict=True)
        check_float(vars(self), "method", "inter_weight", 0)
        check_float(vars(self), "method", "intra_weight", 0)


class DIST(Method):
    """DIST (Huang et al. 2022): loss = CE + beta * tau^2 (1 - inter-class Pearson)
    + gamma * tau^2 (1 - intra-class Pearson), on the probabilities at temperature tau."""

    Config = DISTConfig

    def train_step(self, batch):
        images, labels = batch
        with torch.no_grad():
            teacher_logits = self.teacher(images)
        logits = self.student(images)
        ce = F.cross_entropy(logits, labels)
        inter, intra = losses.dist_parts(logits, teacher_logits, self.config.temperature)
        loss = ce + self.config.inter_weight * inter + self.config.intra_weight * intra
        self.ctx.step(self.optimizer, loss)
        return {"loss": loss.detach(), "ce": ce.detach(), "inter": inter.detach(), "intra": intra.detach()}


# --- CTKD -----------------------------------------------------------------------------------------
@dataclass
class CTKDConfig:
    alpha: float = 0.1  # weight of the label loss, the KL gets 1 - alpha (the reference's -r 0.1 -a 0.9)
    temperature_min: float = 1.0  # tau = temperature_min + temperature_range * sigmoid(theta) (--t_start 1)
    temperature_range: float = 20.0  # (--t_end 20)
    lambda_min: float = 0.0  # the gradient-reversal weight rises from lambda_min ...
    lambda_max: float = 1.0  # ... to lambda_max (--decay_min -1 --decay_max 0, sign folded into the reversal)
    lambda_epochs: int = 10  # ... over this many epochs, on a cosine (--decay_loops 10)

    def __post_init__(self):
        check_float(vars(self), "method", "alpha", 0, high=1)
        check_float(vars(self), "method", "temperature_min", 0, strict=True)
        check_float(vars(self), "method", "temperature_range", 0)
        check_float(vars(self), "method", "lambda_min", 0)
        check_float(vars(self), "method", "lambda_max", 0)
        if self.lambda_max < self.lambda_min:
            raise ConfigError(f"method.lambda_max = {self.lambda_max!r} is below method.lambda_min = {self.lambda_min!r}")
        check_int(vars(self), "method", "lambda_epochs", 0)


class GlobalTemperature(nn.Module):
    """CTKD's global temperature module (the reference's Global_T): one learnable theta, initial 1;
    tau = t_min + t_range * sigmoid(GRL(theta)), its gradient reversed and scaled by lambda."""

    def __init__(self, t_min, t_range):
        super().__init__()
        self.theta = nn.Parameter(torch.ones(1))
        self.t_min, self.t_range = t_min, t_range

    def forward(self, lambda_):
        return self.t_min + self.t_range * torch.sigmoid(losses.reverse_gradient(self.theta, lambda_))


class CTKD(Method):
    """Curriculum temperature KD (Li et al. 2023) on vanilla KD:
    loss = alpha CE + (1 - alpha) tau^2 KL(softmax(t / tau) || softmax(s / tau)), tau learned by the
    same optimizer through a gradient reversal whose weight lambda follows the cosine curriculum of
    ctx.epoch (counted from 1, as the reference)."""

    Config = CTKDConfig

    def __init__(self, config, ctx):
        super().__init__(config, ctx)
        self.temperature = ctx.add_module("temperature", GlobalTemperature(config.temperature_min, config.temperature_range),
                                          trainable=True)

    def curriculum_lambda(self):
        c = self.config
        return losses.ctkd_lambda(self.ctx.epoch + 1, c.lambda_epochs, c.lambda_min, c.lambda_max)

    def train_step(self, batch):
        images, labels = batch
        with torch.no_grad():
            teacher_logits = self.teacher(images)
        logits = self.student(images)
        tau = self.temperature(self.curriculum_lambda())
        kd = kd_kl_loss(logits, teacher_logits, tau)  # a tensor temperature: gradients reach tau
        ce = F.cross_entropy(logits, labels)
        loss = (1.0 - self.config.alpha) * kd + self.config.alpha * ce
        self.ctx.step(self.optimizer, loss)
        return {"loss": loss.detach(), "kd": kd.detach(), "ce": ce.detach(), "tau": tau.detach().squeeze()}


# --- MLKD -----------------------------------------------------------------------------------------
@dataclass
class MLKDConfig:
    temperature: float = 4.0  # the reference's KD.TEMPERATURE, the first of its five
    extra_temperatures: list = field(default_factory=lambda: [3.0, 5.0, 2.0, 6.0])  # the four it adds
    alpha: float = 0.1  # CE weight on each view; every distillation term gets 1 - alpha (KD.LOSS 0.1 / 0.9)
    strong_ops: int = 2  # RandAugment(2, 10): operations per image in the strong view (0: the weak view twice)
    logit_stand: bool = False  # z-scores of the logits in the KL terms (logit standardisation)

    def __post_init__(self):
        check_float(vars(self), "method", "temperature", 0, strict=True)
        temps = self.extra_temperatures
        if not isinstance(temps, list) or not all(isinstance(t, (int, float)) and not isinstance(t, bool) and t > 0 for t in temps):
            raise ConfigError(f"method.extra_temperatures = {temps!r} is not valid; expected a list of numbers > 0 (e.g. 3+5+2+6)")
        check_float(vars(self), "method", "alpha", 0, high=1)
        check_int(vars(self), "method", "strong_ops", 0)
        check_bool(vars(self), "method", "logit_stand")


@torch.no_grad()
def mean_colour(data):
    """The training split's mean colour in 0-255 per channel (in order, no random stream touched)."""
    total, count = 0.0, 0
    for images, _ in data.batches("train", 1024):
        total = total + data.denormalize(images).sum((0, 2, 3)).double()
        count += images.shape[0] * images.shape[2] * images.shape[3]
    return [round(255 * v) for v in (total / count).tolist()]


class MLKD(Method):
    """Multi-level logit distillation (Jin et al. 2023) as its reference code trains:
    loss = alpha (CE(weak) + CE(strong)) + (1 - alpha) (kd + cc + bc) (logit_losses.mlkd_parts),
    the weak view the engine's batch, the strong view RandAugment of it (randaugment.py), the
    teacher run on both."""

    Config = MLKDConfig

    def __init__(self, config, ctx):
        super().__init__(config, ctx)
        self.temperatures = [config.temperature, *config.extra_temperatures]
        self.generator = torch.Generator().manual_seed(ctx.seed)  # the strong view's draws, checkpointed
        self.fill = mean_colour(ctx.data)  # Cutout's colour

    def strong_view(self, images):
        if self.config.strong_ops == 0:
            return images
        pixels = (self.ctx.data.denormalize(images) * 255).round().to(torch.uint8)
        return self.ctx.data.normalize(rand_augment(pixels, self.generator, self.fill, self.config.strong_ops))

    def train_step(self, batch):
        weak, labels = batch
        strong = self.strong_view(weak)
        with torch.no_grad():
            teacher_weak, teacher_strong = self.teacher(weak), self.teacher(strong)
        student_weak, student_strong = self.student(weak), self.student(strong)
        ce = F.cross_entropy(student_weak, labels) + F.cross_entropy(student_strong, labels)
        kd, cc, bc = losses.mlkd_parts((student_weak, teacher_weak), (student_strong, teacher_strong),
                                       self.temperatures, self.config.logit_stand)
        loss = self.config.alpha * ce + (1.0 - self.config.alpha) * (kd + cc + bc)
        self.ctx.step(self.optimizer, loss)
        return {"loss": loss.detach(), "ce": ce.detach(), "kd": kd.detach(), "cc": cc.detach(), "bc": bc.detach()}

    def state_dict(self):
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state):
        self.generator.set_state(state["generator"].cpu())
