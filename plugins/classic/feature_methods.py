"""Feature and relation distillation methods on the public Method API: PKT, SP, VID, NST, OFD,
ReviewKD and CRD. Each loss is CE + weight * the paper's term, the weight the one RepDistiller
(HobbitLong/RepDistiller, b84f547, scripts/run_cifar_distill.sh: -a 0 -b WEIGHT) and mdistiller
(megvii-research/mdistiller, a08d46f, engine/cfg.py, configs/cifar100) use on CIFAR-100;
feature_losses.py holds the formulas.

Layers as in RepDistiller's loops.py: PKT on the embedding (feat[-1]), SP on the last stage's map
(feat[-2]), VID and NST on every stage's output (feat[1:-1], AT's layers); OFD and ReviewKD on
the teacher's pre-ReLU stage outputs as mdistiller (preact_feats). On the zoo's conv trunks (Conv ->
ReLU -> BN twice): "0" and "3" are the convs' (pre-ReLU) outputs, "1" and "4" the ReLU outputs,
"6" the flattened last map.
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
from .checks import check_int, check_paths


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
    layer_options = {"student_embedding": "student", "teacher_embedding": "teacher"}

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
    layer_options = {"student_map": "student", "teacher_map": "teacher"}

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
    layer_options = {"student_layers": "student", "teacher_layers": "teacher"}

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
    layer_options = {"student_layers": "student", "teacher_layers": "teacher"}

    def __init__(self, config, ctx):
        super().__init__(config, ctx, config.student_layers, config.teacher_layers)
        map_shapes(ctx, "NST", config.student_layers, config.teacher_layers)

    def distill(self, student_features, teacher_features):
        total = sum(feature_losses.nst_loss(s, t) for s, t in zip(student_features, teacher_features))
        return {"nst": self.config.nst_weight * total}


# --- OFD ------------------------------------------------------------------------------------------
@dataclass
class OFDConfig:
    student_preact_layers: list = field(default_factory=lambda: ["0", "3"])  # each stage's output before its ReLU
    teacher_preact_layers: list = field(default_factory=lambda: ["0", "3"])
    ofd_weight: float = 1e-3  # mdistiller OFD.LOSS.FEAT_WEIGHT; the authors' loss_distill / batch_size / 1000

    def __post_init__(self):
        check_pairs(self, "student_preact_layers", "teacher_preact_layers")
        check_float(vars(self), "method", "ofd_weight", 0)


class Connector(nn.Sequential):
    """OFD's student transform: a 1x1 conv (no bias, He-normal over fan-out as the authors) and BN."""

    def __init__(self, student_channels, teacher_channels):
        conv = nn.Conv2d(student_channels, teacher_channels, 1, bias=False)
        nn.init.normal_(conv.weight, 0.0, math.sqrt(2.0 / teacher_channels))
        super().__init__(conv, nn.BatchNorm2d(teacher_channels))


class OFD(FeatureMethod):
    """Overhaul of feature distillation (Heo et al. 2019): loss = CE + 1e-3 * sum over the stages i
    of partial-L2(connector(student pre-ReLU), teacher pre-ReLU clipped at the margin) / 2^(n-1-i),
    the later stages weighted more, as the authors and mdistiller.

    The margin is E[x | x < 0] per channel of the teacher's pre-ReLU response x taken as Gaussian;
    the authors read its mean and std off the BN just before the ReLU (beta, gamma). The zoo's
    trunks put the BN after the ReLU, so the mean and std are measured instead: one pass of the
    teacher (eval mode) over the training split in order, unaugmented, before training."""

    Config = OFDConfig
    layer_options = {"student_preact_layers": "student", "teacher_preact_layers": "teacher"}

    def __init__(self, config, ctx):
        super().__init__(config, ctx, config.student_preact_layers, config.teacher_preact_layers)
        pairs = map_shapes(ctx, "OFD", config.student_preact_layers, config.teacher_preact_layers)
        for (s, t), s_path, t_path in zip(pairs, config.student_preact_layers, config.teacher_preact_layers):
            if s[1] > t[1] or s[2] > t[2]:
                raise ConfigError(f"OFD pools the teacher's map to the student's size: teacher {t_path!r} is {tuple(t)}, "
                                  f"smaller than student {s_path!r} {tuple(s)}")
        self.connectors = ctx.add_module("connectors", nn.ModuleList(Connector(s[0], t[0]) for s, t in pairs), trainable=True)
        self.margins = [feature_losses.ofd_margin(mean, std).float() for mean, std in self.teacher_statistics()]

    @torch.no_grad()
    def teacher_statistics(self):
        """[(mean, std) per channel] of the teacher's pre-ReLU maps over the training split."""
        sums = [0.0] * len(self.teacher_paths)
        squares = [0.0] * len(self.teacher_paths)
        count = 0
        for images, _ in self.ctx.data.batches("train", 256):
            self.teacher(images)
            maps = [self.teacher_tap[p].double() for p in self.teacher_paths]
            sums = [total + x.sum((0, 2, 3)) for total, x in zip(sums, maps)]
            squares = [total + x.pow(2).sum((0, 2, 3)) for total, x in zip(squares, maps)]
            count += images.shape[0]
        stats = []
        for total, square, x in zip(sums, squares, maps):
            n = count * x.shape[2] * x.shape[3]
            mean = total / n
            stats.append((mean, (square / n - mean.pow(2)).clamp(min=0).sqrt()))
        return stats

    def distill(self, student_features, teacher_features):
        n, total = len(student_features), 0.0
        for i, (connector, margin, s, t) in enumerate(zip(self.connectors, self.margins, student_features, teacher_features)):
            s = connector(s)
            t = F.adaptive_avg_pool2d(t, s.shape[2:]) if t.shape[2:] != s.shape[2:] else t
            total = total + feature_losses.ofd_loss(s.float(), t.float(), margin) / 2 ** (n - 1 - i)
        return {"ofd": self.config.ofd_weight * total}


# --- ReviewKD -------------------------------------------------------------------------------------
@dataclass
class ReviewKDConfig:
    student_layers: list = field(default_factory=lambda: ["1", "4"])  # every stage's output (after the ReLU)
    teacher_preact_layers: list = field(default_factory=lambda: ["0", "3"])  # the teacher's, before the ReLU
    reviewkd_weight: float = 5.0  # mdistiller configs/cifar100/reviewkd.yaml; the authors' --kd-loss-weight for most pairs
    warmup: int = 20  # epochs of linear warm-up of the ReviewKD term (0: none)

    def __post_init__(self):
        check_pairs(self, "student_layers", "teacher_preact_layers")
        check_float(vars(self), "method", "reviewkd_weight", 0)
        check_int(self, "warmup", 0)


class ABF(nn.Module):
    """ReviewKD's attention-based fusion (Chen et al. 2021, fig. 3): the student feature to
    ``mid_channels`` (1x1 conv + BN), fused with the coarser level's residual (nearest-upsampled)
    by two sigmoid attention maps, resized to the teacher's size, then to the teacher's channels
    (3x3 conv + BN). Returns (output, residual for the next, finer level)."""

    def __init__(self, in_channels, mid_channels, out_channels, fuse):
        super().__init__()
        self.conv1 = nn.Sequential(nn.Conv2d(in_channels, mid_channels, 1, bias=False), nn.BatchNorm2d(mid_channels))
        self.conv2 = nn.Sequential(nn.Conv2d(mid_channels, out_channels, 3, padding=1, bias=False), nn.BatchNorm2d(out_channels))
        self.attention = nn.Sequential(nn.Conv2d(2 * mid_channels, 2, 1), nn.Sigmoid()) if fuse else None
        nn.init.kaiming_uniform_(self.conv1[0].weight, a=1)
        nn.init.kaiming_uniform_(self.conv2[0].weight, a=1)

    def forward(self, x, residual, out_size):
        x = self.conv1(x)
        if self.attention is not None:
            residual = F.interpolate(residual, x.shape[2:], mode="nearest")
            z = self.attention(torch.cat([x, residual], dim=1))
            x = x * z[:, :1] + residual * z[:, 1:]
        if tuple(x.shape[2:]) != tuple(out_size):
            x = F.interpolate(x, out_size, mode="nearest")
        return self.conv2(x), x


class ReviewFusion(nn.Module):
    """The review path: ABFs from the coarsest student feature (the pooled one) to the finest, each
    level fused with the levels above it; outputs in the students' order, sized as the teacher's."""

    def __init__(self, student_channels, teacher_shapes):
        super().__init__()
        mid = min(512, student_channels[-1])
        self.out_sizes = [tuple(t[1:]) for t in teacher_shapes]
        last = len(student_channels) - 1
        self.abfs = nn.ModuleList(ABF(c, mid, t[0], i < last) for i, (c, t) in enumerate(zip(student_channels, teacher_shapes)))

    def forward(self, features):
        outputs, residual = [], None
        for i in reversed(range(len(features))):
            out, residual = self.abfs[i](features[i], residual, self.out_sizes[i])
            outputs.insert(0, out)
        return outputs


def pooled(x):
    return x.mean(dim=(2, 3), keepdim=True)


class ReviewKD(FeatureMethod):
    """Knowledge review (Chen et al. 2021): loss = CE + 5 * min((epoch + 1) / warmup, 1) * HCL(review
    fusion of the student's stage outputs and pooled feature, the teacher's pre-ReLU stage outputs
    and pooled feature). The pooled features are global averages of the last stage after its ReLU
    (the student's last layer; the ReLU of the teacher's last pre-ReLU map), as the references'
    pooled_feat. Warm-up counted in epochs from 1, as mdistiller (the authors' code from 0)."""

    Config = ReviewKDConfig
    layer_options = {"student_layers": "student", "teacher_preact_layers": "teacher"}

    def __init__(self, config, ctx):
        super().__init__(config, ctx, config.student_layers, config.teacher_preact_layers)
        s_shapes = ctx.feature_shapes(ctx.student, config.student_layers)
        t_shapes = ctx.feature_shapes(ctx.teacher, config.teacher_preact_layers)
        s_shapes = [s_shapes[p] for p in config.student_layers]
        t_shapes = [t_shapes[p] for p in config.teacher_preact_layers]
        if not all(len(s) == 3 for s in s_shapes + t_shapes):
            raise ConfigError(f"ReviewKD needs feature maps (C, H, W): student {[tuple(s) for s in s_shapes]}, "
                              f"teacher {[tuple(t) for t in t_shapes]}")
        student_channels = [s[0] for s in s_shapes] + [s_shapes[-1][0]]
        teacher_shapes = t_shapes + [torch.Size([t_shapes[-1][0], 1, 1])]
        self.fusion = ctx.add_module("fusion", ReviewFusion(student_channels, teacher_shapes), trainable=True)

    def warmup_factor(self):
        return 1.0 if self.config.warmup == 0 else min((self.ctx.epoch + 1) / self.config.warmup, 1.0)

    def distill(self, student_features, teacher_features):
        student_features = student_features + [pooled(student_features[-1])]
        teacher_features = teacher_features + [pooled(F.relu(teacher_features[-1]))]
        outputs = self.fusion(student_features)
        hcl = feature_losses.hcl_loss([o.float() for o in outputs], [t.float() for t in teacher_features])
        return {"reviewkd": self.config.reviewkd_weight * self.warmup_factor() * hcl}


# --- CRD ------------------------------------------------------------------------------------------
@dataclass
class CRDConfig:
    student_embedding: str = "6"  # RepDistiller feat[-1]: the pooled feature before the classifier
    teacher_embedding: str = "6"
    crd_weight: float = 0.8  # RepDistiller -b 0.8, mdistiller CRD.LOSS.FEAT_WEIGHT
    crd_dim: int = 128  # the embedding's size (--feat_dim 128)
    nce_k: int = 16384  # negatives per sample (--nce_k)
    nce_temperature: float = 0.07  # (--nce_t)
    nce_momentum: float = 0.5  # of the memory bank's update (--nce_m)

    def __post_init__(self):
        check_paths(self, "student_embedding")
        check_paths(self, "teacher_embedding")
        check_float(vars(self), "method", "crd_weight", 0)
        check_int(self, "crd_dim", 1)
        check_int(self, "nce_k", 1)
        check_float(vars(self), "method", "nce_temperature", 0, strict=True)
        check_float(vars(self), "method", "nce_momentum", 0, high=1, high_open=True)


class Embed(nn.Module):
    """CRD's head: flatten, a linear map to ``dim``, L2 normalisation (the reference's Embed)."""

    def __init__(self, in_features, dim):
        super().__init__()
        self.linear = nn.Linear(in_features, dim)

    def forward(self, x):
        x = self.linear(x.flatten(1))
        return x / x.norm(dim=1, keepdim=True)


class ContrastMemory(nn.Module):
    """CRD's memory banks: one L2-normalised embedding per training sample for the student and for
    the teacher (buffers, uniform in +-1/sqrt(dim/3) at first as the reference), and the critics'
    normalising constants Z (student, teacher), fixed from the first batch (-1 before it)."""

    def __init__(self, n_data, dim):
        super().__init__()
        bound = 1.0 / math.sqrt(dim / 3)
        self.register_buffer("student", torch.rand(n_data, dim) * 2 * bound - bound)
        self.register_buffer("teacher", torch.rand(n_data, dim) * 2 * bound - bound)
        self.register_buffer("normalizers", torch.full((2,), -1.0))

    @torch.no_grad()
    def update(self, indices, student, teacher, momentum):
        """Each sample's entry <- normalize(momentum * entry + (1 - momentum) * its new embedding)."""
        for bank, new in ((self.student, student), (self.teacher, teacher)):
            moved = bank[indices] * momentum + new.to(bank.dtype) * (1 - momentum)
            bank[indices] = moved / moved.norm(dim=1, keepdim=True)


class CRD(FeatureMethod):
    """Contrastive representation distillation (Tian et al. 2020), exact mode: loss = CE + 0.8 *
    (NCE(student embedding against the teacher's memory bank) + NCE(teacher embedding against the
    student's)), the positive of each sample its own entry, K negatives drawn uniformly from the
    samples of the other classes (with replacement only when a class has fewer than K), as
    RepDistiller's CIFAR100InstanceSample. Training batches carry the samples' indices
    (wants_indices); the negatives' draws come from a generator seeded by the run seed and
    checkpointed. The heads are trained with the student; the memory banks are buffers."""

    Config = CRDConfig
    layer_options = {"student_embedding": "student", "teacher_embedding": "teacher"}
    wants_indices = True

    def __init__(self, config, ctx):
        super().__init__(config, ctx, [config.student_embedding], [config.teacher_embedding])
        s_dim = ctx.feature_shapes(ctx.student, self.student_paths)[config.student_embedding].numel()
        t_dim = ctx.feature_shapes(ctx.teacher, self.teacher_paths)[config.teacher_embedding].numel()
        self.embed_student = ctx.add_module("embed_student", Embed(s_dim, config.crd_dim), trainable=True)
        self.embed_teacher = ctx.add_module("embed_teacher", Embed(t_dim, config.crd_dim), trainable=True)
        labels = torch.cat([y for _, y in ctx.data.batches("train", 4096)])  # in index order
        self.n_data = len(labels)
        self.memory = ctx.add_module("memory", ContrastMemory(self.n_data, config.crd_dim), trainable=False)
        # the other classes' samples of each class, in index order, padded at the end: (classes, longest)
        others = [torch.nonzero(labels != c).flatten() for c in range(ctx.data.info["num_classes"])]
        if min(len(o) for o in others) == 0:
            raise ConfigError("CRD draws its negatives from the other classes: the training split has a single class")
        self.negative_counts = torch.tensor([len(o) for o in others], device=ctx.device)
        self.negatives = torch.zeros(len(others), max(len(o) for o in others), dtype=torch.long, device=ctx.device)
        for c, o in enumerate(others):
            self.negatives[c, :len(o)] = o
        self.generator = torch.Generator(device=ctx.device).manual_seed(ctx.seed)

    def draw_negatives(self, labels):
        """(B, K) training-split indices of other classes' samples, uniform; without replacement
        for a class with at least K of them (the K smallest of uniform keys), else with."""
        k, table, counts = self.config.nce_k, self.negatives[labels], self.negative_counts[labels]
        position = torch.arange(table.shape[1], device=table.device)
        if bool((counts >= k).all()):
            keys = torch.rand(table.shape, generator=self.generator, device=table.device)
            chosen = keys.masked_fill(position >= counts[:, None], 2.0).topk(k, dim=1, largest=False).indices
        else:
            uniform = torch.rand((len(labels), k), generator=self.generator, device=table.device)
            chosen = (uniform * counts[:, None]).long().clamp(max=table.shape[1] - 1)
            if bool((counts >= k).any()):  # classes with enough negatives draw without replacement
                keys = torch.rand(table.shape, generator=self.generator, device=table.device)
                exact = keys.masked_fill(position >= counts[:, None], 2.0).topk(k, dim=1, largest=False).indices
                chosen = torch.where((counts >= k)[:, None], exact, chosen)
        return table.gather(1, chosen)

    def contrast_loss(self, student_features, teacher_features, labels, indices):
        config, memory = self.config, self.memory
        candidates = torch.cat([indices[:, None], self.draw_negatives(labels)], dim=1)
        with torch.autocast(self.ctx.device.type, enabled=False):
            v_student = self.embed_student(student_features.float())
            v_teacher = self.embed_teacher(teacher_features.float())
            # the student's embedding against the teacher's bank, and the other way round
            scores_student = feature_losses.contrast_scores(memory.teacher, v_student, candidates, config.nce_temperature)
            scores_teacher = feature_losses.contrast_scores(memory.student, v_teacher, candidates, config.nce_temperature)
            if memory.normalizers[0] < 0:  # Z = N E[exp(<m, v> / T)], estimated on the first batch (the reference)
                memory.normalizers.copy_(torch.stack([scores_student.detach().mean(), scores_teacher.detach().mean()]) * self.n_data)
            loss = (feature_losses.nce_loss(scores_student / memory.normalizers[0], self.n_data)
                    + feature_losses.nce_loss(scores_teacher / memory.normalizers[1], self.n_data))
        return loss, v_student.detach(), v_teacher.detach()

    def train_step(self, batch):
        images, labels, indices = batch
        with torch.no_grad():
            self.teacher(images)
        logits = self.student(images)
        ce = F.cross_entropy(logits, labels)
        contrast, v_student, v_teacher = self.contrast_loss(self.student_tap[self.student_paths[0]],
                                                            self.teacher_tap[self.teacher_paths[0]], labels, indices)
        crd = self.config.crd_weight * contrast
        loss = ce + crd
        self.ctx.step(self.optimizer, loss)
        # after the backward, which reads the banks (the reference updates them before it, from copies: the same values)
        self.memory.update(indices, v_student, v_teacher, self.config.nce_momentum)
        return {"loss": loss.detach(), "ce": ce.detach(), "crd": crd.detach()}

    def state_dict(self):
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state):
        self.generator.set_state(state["generator"].cpu())


def register(register):
    register("pkt", PKT, description="probabilistic KT: CE + 30000 KL of cosine-kernel probabilities over the batch")
    register("sp", SP, description="similarity-preserving KD: CE + 3000 ||G_t - G_s||^2 / N^2 on the last map")
    register("vid", VID, description="variational information distillation: CE + Gaussian NLL of teacher maps per stage")
    register("nst", NST, description="neuron selectivity transfer: CE + 50 MMD^2 (poly kernel) of channel maps per stage")
    register("ofd", OFD, description="overhaul of feature distillation: CE + 1e-3 partial L2 to margin-clipped pre-ReLU teacher maps")
    register("reviewkd", ReviewKD, description="knowledge review: CE + 5 HCL(attention-fused student levels, teacher pre-ReLU maps)")
    register("crd", CRD, description="contrastive representation distillation: CE + 0.8 NCE against memory banks, 16384 negatives")
