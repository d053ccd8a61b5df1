"""Feature and relation distillation methods on the public Method API: PKT, SP, VID and NST. Each
loss is CE + weight * the paper's term, the weight the one RepDistiller (HobbitLong/RepDistiller,
b84f547, scripts/run_cifar_distill.sh: -a 0 -b WEIGHT) and mdistiller (megvii-research/mdistiller,
a08d46f, engine/cfg.py) use on CIFAR-100; feature_losses.py holds the formulas.

Layers as in RepDistiller's loops.py: PKT on the embedding (feat[-1]), SP on the last stage's map
(feat[-2]), VID and NST on every stage's output (feat[1:-1], AT's layers). On the zoo's conv
trunks: "1" and "4" are the two blocks' ReLU outputs, "6" the flattened last map.
"""
import math
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from kdbench.config import check_float
from kdbench.errors import ConfigError
from kdbench.method import Method

from . import feature_losses
from .checks import check_paths


def check_pairs(config, student_key, teacher_key):
    check_paths(config, student_key, single=False)
    check_paths(config, teacher_key, single=False)
    student, teacher = getattr(config, student_key), getattr(config, teacher_key)
    if len(student) != len(teacher):
        raise ConfigError(f"method.{student_key} {student} and method.{teacher_key} {teacher} must pair up (same length)")


def map_shapes(ctx, name, student_paths, teacher_paths):
    """[(student (C, H, W), teacher (C, H, W))] of the paired layers; a one-line error when one is
    not a feature map or neither map fits inside the other (the larger is pooled to the smaller)."""
    s_shapes = ctx.feature_shapes(ctx.student, student_paths)
    t_shapes = ctx.feature_shapes(ctx.teacher, teacher_paths)
    pairs = []
    for s_path, t_path in zip(student_paths, teacher_paths):
        s, t = s_shapes[s_path], t_shapes[t_path]
        if len(s) != 3 or len(t) != 3 or not ((s[1] >= t[1] and s[2] >= t[2]) or (s[1] <= t[1] and s[2] <= t[2])):
            raise ConfigError(f"{name} pairs feature maps (C, H, W), the larger pooled to the smaller: student {s_path!r} is "
                              f"{tuple(s)}, teacher {t_path!r} is {tuple(t)}")
        pairs.append((s, t))
    return pairs


class FeatureMethod(Method):
    """CE + the distillation term of the student's and teacher's tapped features (``distill``)."""

    def __init__(self, config, ctx, student_paths, teacher_paths):
        super().__init__(config, ctx)
        self.student_paths, self.teacher_paths = list(student_paths), list(teacher_paths)
        self.student_tap = ctx.features(ctx.student, self.student_paths)
        self.teacher_tap = ctx.features(ctx.teacher, self.teacher_paths)

    def distill(self, student_features, teacher_features):
        """{name: loss term} (already weighted); their sum is added to the CE."""
        raise NotImplementedError

    def train_step(self, batch):
        images, labels = batch
        with torch.no_grad():
            self.teacher(images)
        logits = self.student(images)
        ce = F.cross_entropy(logits, labels)
        terms = self.distill([self.student_tap[p] for p in self.student_paths], [self.teacher_tap[p] for p in self.teacher_paths])
        loss = ce + sum(terms.values())
        self.ctx.step(self.optimizer, loss)
        return {"loss": loss.detach(), "ce": ce.detach(), **{k: v.detach() for k, v in terms.items()}}


# --- PKT ------------------------------------------------------------------------------------------
@dataclass
class PKTConfig:
    student_embedding: str = "6"  # RepDistiller/mdistiller: the pooled feature before the classifier
    teacher_embedding: str = "6"
    pkt_weight: float = 30000.0  # RepDistiller -b 30000, mdistiller PKT.LOSS.FEAT_WEIGHT

    def __post_init__(self):
        check_paths(self, "student_embedding")
        check_paths(self, "teacher_embedding")
        check_float(vars(self), "method", "pkt_weight", 0)


class PKT(FeatureMethod):
    """Probabilistic knowledge transfer (Passalis and Tefas 2018): loss = CE + 30000 * KL between
    the teacher's and the student's cosine-kernel conditional probabilities over the batch."""

    Config = PKTConfig

    def __init__(self, config, ctx):
        super().__init__(config, ctx, [config.student_embedding], [config.teacher_embedding])

    def distill(self, student_features, teacher_features):
        return {"pkt": self.config.pkt_weight * feature_losses.pkt_loss(student_features[0], teacher_features[0])}


# --- SP -------------------------------------------------------------------------------------------
@dataclass
class SPConfig:
    student_map: str = "4"  # RepDistiller feat[-2] / mdistiller feats[-1]: the last stage's output
    teacher_map: str = "4"
    sp_weight: float = 3000.0  # RepDistiller -b 3000, mdistiller SP.LOSS.FEAT_WEIGHT (the paper's gamma)

    def __post_init__(self):
        check_paths(self, "student_map")
        check_paths(self, "teacher_map")
        check_float(vars(self), "method", "sp_weight", 0)


class SP(FeatureMethod):
    """Similarity-preserving KD (Tung and Mori 2019): loss = CE + 3000 / N^2 * ||G_t - G_s||_F^2,
    G the row-normalised batch similarity of the last stage's activations."""

    Config = SPConfig

    def __init__(self, config, ctx):
        super().__init__(config, ctx, [config.student_map], [config.teacher_map])

    def distill(self, student_features, teacher_features):
        return {"sp": self.config.sp_weight * feature_losses.sp_loss(student_features[0], teacher_features[0])}


# --- VID ------------------------------------------------------------------------------------------
@dataclass
class VIDConfig:
    student_layers: list = field(default_factory=lambda: ["1", "4"])  # RepDistiller feat[1:-1]: every stage
    teacher_layers: list = field(default_factory=lambda: ["1", "4"])
    vid_weight: float = 1.0  # RepDistiller -b 1, mdistiller VID.LOSS.FEAT_WEIGHT
    init_variance: float = 5.0  # the variances' initial value (RepDistiller/mdistiller init_pred_var)
    variance_eps: float = 1e-5  # the variances' floor (RepDistiller/mdistiller eps)

    def __post_init__(self):
        check_pairs(self, "student_layers", "teacher_layers")
        check_float(vars(self), "method", "vid_weight", 0)
        check_float(vars(self), "method", "variance_eps", 0, strict=True)
        check_float(vars(self), "method", "init_variance", self.variance_eps, strict=True)


def conv1x1(c_in, c_out):
    return nn.Conv2d(c_in, c_out, 1, bias=False)


class VIDRegressor(nn.Module):
    """VID's Gaussian q(t | s) for one layer pair: the mean from three 1x1 convs with ReLUs between
    (student channels -> teacher channels, as the reference's VIDLoss(s, t, t)), one variance per
    teacher channel, softplus(log_scale) + eps, starting at ``init_variance``."""

    def __init__(self, student_channels, teacher_channels, init_variance, eps):
        super().__init__()
        t = teacher_channels
        self.mean = nn.Sequential(conv1x1(student_channels, t), nn.ReLU(), conv1x1(t, t), nn.ReLU(), conv1x1(t, t))
        self.log_scale = nn.Parameter(torch.full((t,), math.log(math.expm1(init_variance - eps))))
        self.eps = eps

    def forward(self, student_map):
        return self.mean(student_map), F.softplus(self.log_scale) + self.eps


class VID(FeatureMethod):
    """Variational information distillation (Ahn et al. 2019): loss = CE + sum over the layer pairs
    of the teacher map's Gaussian negative log-likelihood under the regressor's prediction from the
    student's map (the larger map average-pooled to the smaller's size first)."""

    Config = VIDConfig

    def __init__(self, config, ctx):
        super().__init__(config, ctx, config.student_layers, config.teacher_layers)
        pairs = map_shapes(ctx, "VID", config.student_layers, config.teacher_layers)
        regressors = nn.ModuleList(VIDRegressor(s[0], t[0], config.init_variance, config.variance_eps) for s, t in pairs)
        self.regressors = ctx.add_module("regressors", regressors, trainable=True)

    def distill(self, student_features, teacher_features):
        total = 0.0
        for regressor, s, t in zip(self.regressors, student_features, teacher_features):
            s, t = feature_losses.match_spatial(s, t)
            mean, variance = regressor(s)
            total = total + feature_losses.vid_nll(mean.float(), variance, t.float())
        return {"vid": self.config.vid_weight * total}


# --- NST ------------------------------------------------------------------------------------------
@dataclass
class NSTConfig:
    student_layers: list = field(default_factory=lambda: ["1", "4"])  # RepDistiller feat[1:-1]: every stage
    teacher_layers: list = field(default_factory=lambda: ["1", "4"])
    nst_weight: float = 50.0  # RepDistiller -b 50, mdistiller NST.LOSS.FEAT_WEIGHT

    def __post_init__(self):
        check_pairs(self, "student_layers", "teacher_layers")
        check_float(vars(self), "method", "nst_weight", 0)


class NST(FeatureMethod):
    """Neuron selectivity transfer (Huang and Wang 2017): loss = CE + 50 * sum over the layer pairs
    of the squared MMD (polynomial kernel, d = 2, c = 0) between the channels' normalised maps."""

    Config = NSTConfig

    def __init__(self, config, ctx):
        super().__init__(config, ctx, config.student_layers, config.teacher_layers)
        map_shapes(ctx, "NST", config.student_layers, config.teacher_layers)

    def distill(self, student_features, teacher_features):
        total = sum(feature_losses.nst_loss(s, t) for s, t in zip(student_features, teacher_features))
        return {"nst": self.config.nst_weight * total}


def register(register):
    register("pkt", PKT, description="probabilistic KT: CE + 30000 KL of cosine-kernel probabilities over the batch")
    register("sp", SP, description="similarity-preserving KD: CE + 3000 ||G_t - G_s||^2 / N^2 on the last map")
    register("vid", VID, description="variational information distillation: CE + Gaussian NLL of teacher maps per stage")
    register("nst", NST, description="neuron selectivity transfer: CE + 50 MMD^2 (poly kernel) of channel maps per stage")
