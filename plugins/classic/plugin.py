"""Four classic distillation methods on the public Method API: FitNets (hints), attention transfer,
decoupled KD and relational KD. Each loss is CE + the paper's distillation term with the paper's
weights (losses.py holds the formulas); the defaults were checked against mdistiller
(megvii-research/mdistiller, a08d46f), RepDistiller and attention-transfer (szagoruyko, 893df54).

Layer options are module paths as in ``model.named_modules()`` (``python -m kdbench list students
--layers MODEL``); the defaults name the zoo's conv trunks (small-cnn / tiny-cnn: "1" and "4" are
the ReLU outputs of the two conv blocks, "6" the flattened last feature map).
"""
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

import kdbench
from kdbench.config import check_bool, check_float
from kdbench.errors import ConfigError
from kdbench.losses import standardize_logits
from kdbench.method import Method

from . import feature_methods, logit_methods, losses
from .checks import check_int, check_paths


# --- FitNets --------------------------------------------------------------------------------------
@dataclass
class FitNetConfig:
    hint_layer: str = "4"  # teacher layer whose output is the hint (the paper: the teacher's middle layer)
    guided_layer: str = "4"  # student layer that the regressor maps onto the hint
    hint_weight: float = 100.0  # RepDistiller -b 100, mdistiller FITNET.LOSS.FEAT_WEIGHT

    def __post_init__(self):
        check_paths(self, "hint_layer")
        check_paths(self, "guided_layer")
        check_float(vars(self), "method", "hint_weight", 0)


class ConvRegressor(nn.Sequential):
    """FitNets' convolutional regressor: a conv whose kernel (1 + H_s - H_t) maps the guided
    layer's map onto the hint's size (1x1 when they match), or, where the guided map is half the
    hint's size (a student that downsamples earlier: ShuffleNetV2 under a ResNet), the benchmark
    versions' 4x4 stride-2 transposed conv; then BN and ReLU as in those versions (mdistiller /
    RepDistiller ConvReg; they also take a 3x3 stride-2 conv from twice the size, where this keeps
    the paper's kernel rule)."""

    def __init__(self, student_shape, teacher_shape):
        (cs, hs, ws), (ct, ht, wt) = student_shape, teacher_shape
        if (2 * hs, 2 * ws) == (ht, wt):
            conv = nn.ConvTranspose2d(cs, ct, 4, 2, 1)
        elif hs >= ht and ws >= wt:
            conv = nn.Conv2d(cs, ct, (1 + hs - ht, 1 + ws - wt))
        else:
            raise ConfigError(f"FitNets: the guided layer's map {hs}x{ws} is smaller than the hint's {ht}x{wt} (and not half "
                              "its size); pick an earlier student layer")
        super().__init__(conv, nn.BatchNorm2d(ct), nn.ReLU())


class FitNet(Method):
    """FitNets (Romero et al. 2015) in its one-stage benchmark form:
    loss = CE + hint_weight * MSE(regressor(student guided layer), teacher hint layer).
    The paper's stage-wise training (hints first, then KD) and its KD term are left out, as in
    RepDistiller (-a 0 -b 100) and mdistiller."""

    Config = FitNetConfig
    layer_options = {"guided_layer": "student", "hint_layer": "teacher"}

    def __init__(self, config, ctx):
        super().__init__(config, ctx)
        paths = {"student": [config.guided_layer], "teacher": [config.hint_layer]}
        shapes = {role: ctx.feature_shapes(getattr(ctx, role), p)[p[0]] for role, p in paths.items()}
        if len(shapes["student"]) != 3 or len(shapes["teacher"]) != 3:
            raise ConfigError(f"FitNets needs convolutional feature maps (C, H, W); got student {tuple(shapes['student'])} "
                              f"at {config.guided_layer!r} and teacher {tuple(shapes['teacher'])} at {config.hint_layer!r}")
        self.regressor = ctx.add_module("regressor", ConvRegressor(shapes["student"], shapes["teacher"]), trainable=True)
        self.student_tap = ctx.features(ctx.student, paths["student"])
        self.teacher_tap = ctx.features(ctx.teacher, paths["teacher"])

    def train_step(self, batch):
        images, labels = batch
        with torch.no_grad():
            self.teacher(images)
        logits = self.student(images)
        ce = F.cross_entropy(logits, labels)
        hint = losses.hint_loss(self.regressor(self.student_tap[self.config.guided_layer]),
                                self.teacher_tap[self.config.hint_layer])
        loss = ce + self.config.hint_weight * hint
        self.ctx.step(self.optimizer, loss)
        return {"loss": loss.detach(), "ce": ce.detach(), "hint": hint.detach()}


# --- Attention transfer ---------------------------------------------------------------------------
@dataclass
class ATConfig:
    student_layers: list = field(default_factory=lambda: ["1", "4"])  # paired in order with teacher_layers
    teacher_layers: list = field(default_factory=lambda: ["1", "4"])
    at_beta: float = 1000.0  # the paper's beta (1e3; loss weight beta / 2 on the per-element mean)

    def __post_init__(self):
        check_paths(self, "student_layers", single=False)
        check_paths(self, "teacher_layers", single=False)
        if len(self.student_layers) != len(self.teacher_layers):
            raise ConfigError(f"method.student_layers {self.student_layers} and method.teacher_layers "
                              f"{self.teacher_layers} must pair up (same length)")
        check_float(vars(self), "method", "at_beta", 0)


class AttentionTransfer(Method):
    """Activation-based attention transfer (Zagoruyko and Komodakis 2017):
    loss = CE + beta / 2 * sum_j mean((at(s_j) - at(t_j))^2), at(x) = normalize(mean_c x^2); a
    larger map is average-pooled to the smaller's size first (RepDistiller, mdistiller)."""

    Config = ATConfig
    layer_options = {"student_layers": "student", "teacher_layers": "teacher"}

    def __init__(self, config, ctx):
        super().__init__(config, ctx)
        feature_methods.map_shapes(ctx, "attention transfer", config.student_layers, config.teacher_layers)
        self.student_tap = ctx.features(ctx.student, config.student_layers)
        self.teacher_tap = ctx.features(ctx.teacher, config.teacher_layers)

    def train_step(self, batch):
        images, labels = batch
        with torch.no_grad():
            self.teacher(images)
        logits = self.student(images)
        ce = F.cross_entropy(logits, labels)
        at = losses.attention_loss([self.student_tap[p] for p in self.config.student_layers],
                                   [self.teacher_tap[p] for p in self.config.teacher_layers], self.config.at_beta)
        loss = ce + at
        self.ctx.step(self.optimizer, loss)
        return {"loss": loss.detach(), "ce": ce.detach(), "at": at.detach()}


# --- Decoupled KD ---------------------------------------------------------------------------------
@dataclass
class DKDConfig:
    temperature: float = 4.0
    tckd_weight: float = 1.0  # the paper's alpha
    nckd_weight: float = 8.0  # the paper's beta (CIFAR-100 setting)
    warmup: int = 20  # epochs of linear warm-up of the DKD term (0: none)
    logit_stand: bool = False  # z-scores of both logits before TCKD/NCKD (logit standardisation, logit_methods.py)

    def __post_init__(self):
        check_float(vars(self), "method", "temperature", 0, strict=True)
        check_float(vars(self), "method", "tckd_weight", 0)
        check_float(vars(self), "method", "nckd_weight", 0)
        check_int(self, "warmup", 0)
        check_bool(vars(self), "method", "logit_stand")


class DKD(Method):
    """Decoupled knowledge distillation (Zhao et al. 2022):
    loss = CE + min((epoch + 1) / warmup, 1) * (alpha * TCKD + beta * NCKD),
    the warm-up counted in epochs from 1 as mdistiller's trainer does (ctx.epoch is 0-based);
    with ``logit_stand`` on, TCKD and NCKD of the logits' z-scores."""

    Config = DKDConfig

    def warmup_factor(self):
        return 1.0 if self.config.warmup == 0 else min((self.ctx.epoch + 1) / self.config.warmup, 1.0)

    def train_step(self, batch):
        images, labels = batch
        with torch.no_grad():
            teacher_logits = self.teacher(images)
        logits = self.student(images)
        ce = F.cross_entropy(logits, labels)
        s, t = (standardize_logits(logits), standardize_logits(teacher_logits)) if self.config.logit_stand else (logits, teacher_logits)
        tckd, nckd = losses.dkd_parts(s, t, labels, self.config.temperature)
        dkd = self.warmup_factor() * (self.config.tckd_weight * tckd + self.config.nckd_weight * nckd)
        loss = ce + dkd
        self.ctx.step(self.optimizer, loss)
        return {"loss": loss.detach(), "ce": ce.detach(), "tckd": tckd.detach(), "nckd": nckd.detach()}


# --- Relational KD --------------------------------------------------------------------------------
@dataclass
class RKDConfig:
    student_embedding: str = "6"  # the paper: the final (pooled) feature layer
    teacher_embedding: str = "6"
    distance_weight: float = 25.0
    angle_weight: float = 50.0

    def __post_init__(self):
        check_paths(self, "student_embedding")
        check_paths(self, "teacher_embedding")
        check_float(vars(self), "method", "distance_weight", 0)
        check_float(vars(self), "method", "angle_weight", 0)


class RKD(Method):
    """Relational knowledge distillation (Park et al. 2019), distance and angle potentials on the
    embeddings of the batch: loss = CE + 25 * RKD-D + 50 * RKD-A (their dimensions may differ)."""

    Config = RKDConfig
    layer_options = {"student_embedding": "student", "teacher_embedding": "teacher"}

    def __init__(self, config, ctx):
        super().__init__(config, ctx)
        self.student_tap = ctx.features(ctx.student, [config.student_embedding])
        self.teacher_tap = ctx.features(ctx.teacher, [config.teacher_embedding])

    def train_step(self, batch):
        images, labels = batch
        with torch.no_grad():
            self.teacher(images)
        logits = self.student(images)
        ce = F.cross_entropy(logits, labels)
        s = self.student_tap[self.config.student_embedding]
        t = self.teacher_tap[self.config.teacher_embedding]
        distance, angle = losses.rkd_distance(s, t), losses.rkd_angle(s, t)
        loss = ce + self.config.distance_weight * distance + self.config.angle_weight * angle
        self.ctx.step(self.optimizer, loss)
        return {"loss": loss.detach(), "ce": ce.detach(), "distance": distance.detach(), "angle": angle.detach()}


@kdbench.hookimpl
def kdbench_register_methods(register):
    register("fitnet", FitNet, description="FitNets: CE + 100 MSE(regressor(student layer), teacher hint)")
    register("at", AttentionTransfer, description="attention transfer: CE + beta/2 sum ||at(s) - at(t)||^2, beta = 1000")
    register("dkd", DKD, description="decoupled KD: CE + TCKD + 8 NCKD at T = 4, linear warm-up")
    register("rkd", RKD, description="relational KD: CE + 25 distance + 50 angle on embeddings")
    register("dist", logit_methods.DIST, description="DIST: CE + 2 (1 - inter-class Pearson) + 2 (1 - intra-class Pearson), tau = 4")
    register("ctkd", logit_methods.CTKD, description="curriculum temperature KD: KD with a learned temperature, reversed gradient, cosine curriculum")
    register("mlkd", logit_methods.MLKD, description="multi-level logit KD: instance, batch and class alignment at 5 temperatures, weak + strong views")
    feature_methods.register(register)
