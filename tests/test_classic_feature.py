"""plugins/classic's feature and relation methods (PKT, SP, VID, NST, OFD, ReviewKD, CRD): each loss against an
independent float64 computation of its paper's equation (explicit loops in numpy, nothing shared
with feature_losses.py) and against the reference implementation's function (transcribed below as
the oracle, repository, commit and path named) on random inputs to 1e-6 relative; the configs'
checks and defaults; one tiny run of the arms on synthetic data."""
import json
import math

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from conftest import REPO, SYNTHETIC, as_sets, registry_for
from kdbench.errors import ConfigError
from kdbench.plugins import import_plugin_folder

PLUGIN = REPO / "plugins" / "classic"
import_plugin_folder(PLUGIN)
from kdbench_plugins.classic import feature_losses as fl  # noqa: E402  (importable once the folder is loaded)
from kdbench_plugins.classic import feature_methods as fm  # noqa: E402


def fixed(*shape, seed=0):
    return np.random.default_rng(seed).normal(size=shape)


def t64(a):
    return torch.tensor(a, dtype=torch.float64)


def t32(a):
    return torch.tensor(a, dtype=torch.float32)


def close(got, want, rel=1e-6):
    assert got == pytest.approx(want, rel=rel)


# --- the reference implementations, transcribed as oracles ----------------------------------------
# HobbitLong/RepDistiller at b84f547: distiller_zoo/PKT.py (PKT.cosine_similarity_loss),
# distiller_zoo/SP.py (Similarity.similarity_loss), distiller_zoo/VID.py (VIDLoss.forward),
# distiller_zoo/NST.py (NSTLoss.nst_loss / poly_kernel). Same functions in megvii-research/mdistiller
# at a08d46f, mdistiller/distillers/{PKT,SP,VID,NST}.py.
def reference_pkt(output_net, target_net, eps=0.0000001):
    output_net_norm = torch.sqrt(torch.sum(output_net ** 2, dim=1, keepdim=True))
    output_net = output_net / (output_net_norm + eps)
    output_net[output_net != output_net] = 0
    target_net_norm = torch.sqrt(torch.sum(target_net ** 2, dim=1, keepdim=True))
    target_net = target_net / (target_net_norm + eps)
    target_net[target_net != target_net] = 0
    model_similarity = torch.mm(output_net, output_net.transpose(0, 1))
    target_similarity = torch.mm(target_net, target_net.transpose(0, 1))
    model_similarity = (model_similarity + 1.0) / 2.0
    target_similarity = (target_similarity + 1.0) / 2.0
    model_similarity = model_similarity / torch.sum(model_similarity, dim=1, keepdim=True)
    target_similarity = target_similarity / torch.sum(target_similarity, dim=1, keepdim=True)
    return torch.mean(target_similarity * torch.log((target_similarity + eps) / (model_similarity + eps)))


def reference_sp(f_s, f_t):
    bsz = f_s.shape[0]
    f_s = f_s.view(bsz, -1)
    f_t = f_t.view(bsz, -1)
    G_s = torch.mm(f_s, torch.t(f_s))
    G_s = torch.nn.functional.normalize(G_s)
    G_t = torch.mm(f_t, torch.t(f_t))
    G_t = torch.nn.functional.normalize(G_t)
    G_diff = G_t - G_s
    return (G_diff * G_diff).view(-1, 1).sum(0) / (bsz * bsz)


class ReferenceVID(nn.Module):
    def __init__(self, num_input_channels, num_mid_channel, num_target_channels, init_pred_var=5.0, eps=1e-5):
        super().__init__()

        def conv1x1(in_channels, out_channels, stride=1):
            return nn.Conv2d(in_channels, out_channels, kernel_size=1, padding=0, bias=False, stride=stride)

        self.regressor = nn.Sequential(
            conv1x1(num_input_channels, num_mid_channel), nn.ReLU(),
            conv1x1(num_mid_channel, num_mid_channel), nn.ReLU(),
            conv1x1(num_mid_channel, num_target_channels),
        )
        self.log_scale = torch.nn.Parameter(np.log(np.exp(init_pred_var - eps) - 1.0) * torch.ones(num_target_channels))
        self.eps = eps

    def forward(self, input, target):
        s_H, t_H = input.shape[2], target.shape[2]
        if s_H > t_H:
            input = F.adaptive_avg_pool2d(input, (t_H, t_H))
        elif s_H < t_H:
            target = F.adaptive_avg_pool2d(target, (s_H, s_H))
        pred_mean = self.regressor(input)
        pred_var = torch.log(1.0 + torch.exp(self.log_scale)) + self.eps
        pred_var = pred_var.view(1, -1, 1, 1)
        neg_log_prob = 0.5 * ((pred_mean - target) ** 2 / pred_var + torch.log(pred_var))
        return torch.mean(neg_log_prob)


def reference_nst(f_s, f_t):
    def poly_kernel(a, b):
        a = a.unsqueeze(1)
        b = b.unsqueeze(2)
        return (a * b).sum(-1).pow(2)

    s_H, t_H = f_s.shape[2], f_t.shape[2]
    if s_H > t_H:
        f_s = F.adaptive_avg_pool2d(f_s, (t_H, t_H))
    elif s_H < t_H:
        f_t = F.adaptive_avg_pool2d(f_t, (s_H, s_H))
    f_s = f_s.view(f_s.shape[0], f_s.shape[1], -1)
    f_s = F.normalize(f_s, dim=2)
    f_t = f_t.view(f_t.shape[0], f_t.shape[1], -1)
    f_t = F.normalize(f_t, dim=2)
    return poly_kernel(f_t, f_t).mean().detach() + poly_kernel(f_s, f_s).mean() - 2 * poly_kernel(f_s, f_t).mean()


# --- PKT ------------------------------------------------------------------------------------------
def paper_pkt(s, t):
    """Passalis and Tefas (2018) eq. 7-10 with the cosine kernel K = (cos + 1) / 2,
    p_{j|i} = K(x_i, x_j) / sum_k K(x_i, x_k), KL(p_t || p_s); the reference's conventions
    (diagonal kept, mean over the N^2 entries) and no eps."""
    n = len(s)

    def probabilities(x):
        norms = [math.sqrt(sum(v * v for v in row)) for row in x]
        k = [[(sum(a * b for a, b in zip(x[i], x[j])) / (norms[i] * norms[j]) + 1) / 2 for j in range(n)] for i in range(n)]
        return [[k[i][j] / sum(k[i]) for j in range(n)] for i in range(n)]

    ps, pt = probabilities(s), probabilities(t)
    return sum(pt[i][j] * math.log(pt[i][j] / ps[i][j]) for i in range(n) for j in range(n)) / n**2


def test_pkt_matches_the_papers_equation_and_the_reference():
    s, t = fixed(7, 5, seed=1), fixed(7, 11, seed=2)  # embedding sizes may differ
    close(fl.pkt_loss(t64(s), t64(t), eps=0.0).item(), paper_pkt(s.tolist(), t.tolist()))
    s, t = torch.randn(64, 784, dtype=torch.float64), torch.randn(64, 1568, dtype=torch.float64)
    close(fl.pkt_loss(s, t).item(), reference_pkt(s.clone(), t.clone()).item())
    s32, t32_ = torch.randn(64, 16, 7, 7), torch.randn(64, 32, 7, 7).relu()  # maps are flattened
    close(fl.pkt_loss(s32, t32_).item(), reference_pkt(s32.flatten(1), t32_.flatten(1)).item(), rel=1e-5)


def test_pkt_is_zero_for_the_same_directions_and_positive_otherwise():
    x = torch.randn(9, 6, dtype=torch.float64)
    assert fl.pkt_loss(3.0 * x, x).item() == pytest.approx(0.0, abs=1e-12)  # scale-free: cosine kernel
    assert fl.pkt_loss(x, torch.randn(9, 6, dtype=torch.float64)).item() > 0
    with pytest.raises(ValueError, match="same batch"):
        fl.pkt_loss(torch.randn(4, 3), torch.randn(5, 3))


# --- SP -------------------------------------------------------------------------------------------
def paper_sp(s, t):
    """Tung and Mori (2019) eq. 1-4: G = Q Q^T of the (b, D) activations, each row of G divided by
    its L2 norm; (1 / b^2) ||G_t - G_s||_F^2."""
    b = len(s)

    def gram(x):
        g = [[sum(p * q for p, q in zip(x[i], x[j])) for j in range(b)] for i in range(b)]
        return [[v / math.sqrt(sum(w * w for w in row)) for v in row] for row in g]

    gs, gt = gram(s), gram(t)
    return sum((gt[i][j] - gs[i][j]) ** 2 for i in range(b) for j in range(b)) / b**2


def test_sp_matches_the_papers_equation_and_the_reference():
    s, t = fixed(6, 2, 3, 3, seed=3), fixed(6, 4, 3, 3, seed=4)
    close(fl.sp_loss(t64(s), t64(t)).item(), paper_sp(s.reshape(6, -1).tolist(), t.reshape(6, -1).tolist()))
    s, t = torch.randn(64, 16, 7, 7).relu(), torch.randn(64, 32, 7, 7).relu()
    close(fl.sp_loss(s, t).item(), reference_sp(s.double(), t.double()).item())


def test_sp_is_invariant_to_the_scale_and_width_of_the_activations():
    x = torch.randn(8, 5, dtype=torch.float64)
    assert fl.sp_loss(4.0 * x, torch.cat([x, x], dim=1)).item() == pytest.approx(0.0, abs=1e-12)


# --- VID ------------------------------------------------------------------------------------------
def paper_vid_nll(mu, variance, t):
    """Ahn et al. (2019) eq. 6: -log q(t | s) = sum_{c,h,w} log sigma_c + (t - mu)^2 / (2 sigma_c^2)
    (+ const), here divided by the number of elements (the reference's mean)."""
    total, count = 0.0, 0
    for idx in np.ndindex(t.shape):
        var = variance[idx[1]]
        total += 0.5 * math.log(var) + (t[idx] - mu[idx]) ** 2 / (2 * var)
        count += 1
    return total / count


def test_vid_nll_matches_the_papers_equation():
    mu, t = fixed(3, 4, 2, 5, seed=5), fixed(3, 4, 2, 5, seed=6)
    variance = np.exp(fixed(4, seed=7))
    close(fl.vid_nll(t64(mu), t64(variance), t64(t)).item(), paper_vid_nll(mu, variance, t))
    with pytest.raises(ValueError, match="do not match"):
        fl.vid_nll(torch.zeros(2, 4, 3, 3), torch.ones(3), torch.zeros(2, 4, 3, 3))


@pytest.mark.parametrize("student_size, teacher_size", [(7, 7), (14, 7), (7, 14)])
def test_vid_matches_the_reference(student_size, teacher_size):
    torch.manual_seed(0)
    ours = fm.VIDRegressor(8, 16, init_variance=5.0, eps=1e-5).double()
    reference = ReferenceVID(8, 16, 16).double()
    reference.regressor.load_state_dict(ours.mean.state_dict())
    assert torch.allclose(reference.log_scale.double(), ours.log_scale, rtol=1e-12)
    s = torch.randn(32, 8, student_size, student_size, dtype=torch.float64)
    t = torch.randn(32, 16, teacher_size, teacher_size, dtype=torch.float64)
    s_matched, t_matched = fl.match_spatial(s, t)
    mean, variance = ours(s_matched)
    assert torch.allclose(variance, torch.full((16,), 5.0, dtype=torch.float64))  # starts at init_variance
    close(fl.vid_nll(mean, variance, t_matched).item(), reference(s, t).item())


# --- NST ------------------------------------------------------------------------------------------
def paper_nst(s, t):
    """Huang and Wang (2017) eq. 5 (squared MMD) with k(x, y) = (x^T y)^2, the samples being the
    channels' H*W maps, each L2-normalised: 1/C_t^2 sum k(t_i, t_i') + 1/C_s^2 sum k(s_j, s_j')
    - 2/(C_s C_t) sum k(s_j, t_i); averaged over the batch. Maps of equal H x W."""
    total = 0.0
    for a, b in zip(s, t):
        fs = [row / math.sqrt(sum(v * v for v in row)) for row in a.reshape(a.shape[0], -1)]
        ft = [row / math.sqrt(sum(v * v for v in row)) for row in b.reshape(b.shape[0], -1)]

        def mean_kernel(x, y):
            return sum(float(np.dot(p, q)) ** 2 for p in x for q in y) / (len(x) * len(y))

        total += mean_kernel(ft, ft) + mean_kernel(fs, fs) - 2 * mean_kernel(fs, ft)
    return total / len(s)


def test_nst_matches_the_papers_equation_and_the_reference():
    s, t = fixed(3, 4, 3, 3, seed=8), fixed(3, 6, 3, 3, seed=9)
    close(fl.nst_loss(t64(s), t64(t)).item(), paper_nst(s, t))
    for s_size, t_size in [(7, 7), (14, 7), (7, 14)]:
        s, t = torch.randn(16, 8, s_size, s_size).relu(), torch.randn(16, 16, t_size, t_size).relu()
        close(fl.nst_loss(s.double(), t.double()).item(), reference_nst(s.double(), t.double()).item())
        close(fl.nst_loss(s, t).item(), reference_nst(s.double(), t.double()).item(), rel=1e-5)


def test_nst_gradient_flows_to_the_student_only():
    s = torch.randn(2, 3, 4, 4, dtype=torch.float64, requires_grad=True)
    t = torch.randn(2, 5, 4, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: fl.nst_loss(x, t.detach()), (s,))
    fl.nst_loss(s, t).backward()
    assert s.grad is not None and t.grad.abs().max() > 0  # the cross term reaches t; the t-t term is detached
    assert fl.nst_loss(s, s.detach().flip(1)).item() == pytest.approx(0.0, abs=1e-12)  # channel order is irrelevant
    with pytest.raises(ValueError, match="neither fits"):
        fl.nst_loss(torch.randn(2, 3, 8, 4), torch.randn(2, 3, 4, 8))


# --- OFD ------------------------------------------------------------------------------------------
# clovaai/overhaul-distillation at 76344a8, CIFAR-100/distiller.py (distillation_loss, get_margin_from_BN);
# megvii-research/mdistiller at a08d46f, mdistiller/distillers/OFD.py (feat_loss).
def reference_ofd_loss(source, target, margin):
    target = torch.max(target, margin)
    loss = torch.nn.functional.mse_loss(source, target, reduction="none")
    loss = loss * ((source > target) | (target > 0)).float()
    return loss.sum()


def reference_mdistiller_ofd_loss(source, target, margin):
    margin = margin.to(source)
    loss = (
        (source - margin) ** 2 * ((source > margin) & (target <= margin)).float()
        + (source - target) ** 2 * ((source > target) & (target > margin) & (target <= 0)).float()
        + (source - target) ** 2 * (target > 0).float()
    )
    return torch.abs(loss).mean(dim=0).sum()


def reference_margin_from_bn(bn):
    from scipy.stats import norm

    margin = []
    std = bn.weight.data
    mean = bn.bias.data
    for (s, m) in zip(std, mean):
        s = abs(s.item())
        m = m.item()
        if norm.cdf(-m / s) > 0.001:
            margin.append(- s * math.exp(- (m / s) ** 2 / 2) / math.sqrt(2 * math.pi) / norm.cdf(-m / s) + m)
        else:
            margin.append(-3 * s)
    return torch.FloatTensor(margin).to(std.device)


def test_ofd_margin_is_the_gaussians_mean_below_zero():
    """Heo et al. (2019) eq. 3: m = E[x | x < 0], x ~ N(mu, sigma^2), by numerical integration."""
    from scipy import integrate, stats

    mean, std = np.array([0.0, 1.0, -2.0, 0.5]), np.array([1.0, 2.0, 0.5, 3.0])
    got = fl.ofd_margin(t64(mean), t64(std)).numpy()
    for g, m, s in zip(got, mean, std):
        below, _ = integrate.quad(lambda x: x * stats.norm.pdf(x, m, s), -np.inf, 0)
        close(g, below / stats.norm.cdf(0, m, s))
    assert fl.ofd_margin(torch.tensor([10.0]), torch.tensor([1.0])).item() == -3.0  # P(x < 0) <= 0.001: -3 std


def test_ofd_margin_matches_the_authors_get_margin_from_bn():
    bn = nn.BatchNorm2d(64)
    with torch.no_grad():
        bn.weight.copy_(torch.randn(64) * 2)  # gamma may be negative: its absolute value is the std
        bn.bias.copy_(torch.randn(64) * 3)
        bn.bias[:4] = torch.tensor([8.0, 20.0, -5.0, 0.0]) * bn.weight[:4].abs()  # both branches
    ours = fl.ofd_margin(bn.bias.data, bn.weight.data)
    assert torch.allclose(ours.float(), reference_margin_from_bn(bn), rtol=1e-6, atol=0)


def paper_partial_l2(s, t, margin):
    """Heo et al. (2019) eq. 2 and 4: T' = max(T, m) per channel; d_p = sum_i 0 if S_i <= T'_i <= 0,
    else (T'_i - S_i)^2; here divided by the batch size (the authors' loss / batch_size)."""
    total = 0.0
    for idx in np.ndindex(s.shape):
        target = max(t[idx], margin[idx[1]])
        if not (s[idx] <= target <= 0):
            total += (target - s[idx]) ** 2
    return total / s.shape[0]


def test_ofd_loss_matches_the_papers_equation_and_both_references():
    s, t = fixed(3, 4, 3, 3, seed=10), fixed(3, 4, 3, 3, seed=11)
    margin = -np.abs(fixed(4, seed=12))
    close(fl.ofd_loss(t64(s), t64(t), t64(margin)).item(), paper_partial_l2(s, t, margin))
    s, t = torch.randn(64, 32, 7, 7, dtype=torch.float64), torch.randn(64, 32, 7, 7, dtype=torch.float64)
    margin = -torch.rand(32, dtype=torch.float64)
    want = reference_ofd_loss(s, t, margin.view(1, -1, 1, 1)).item() / 64
    close(fl.ofd_loss(s, t, margin).item(), want)
    close(reference_mdistiller_ofd_loss(s, t, margin.view(1, -1, 1, 1)).item(), want)  # the two references agree
    with pytest.raises(ValueError, match="do not match"):
        fl.ofd_loss(torch.zeros(2, 4, 3, 3), torch.zeros(2, 4, 3, 3), torch.zeros(3))


def test_ofd_connector_and_margins_on_a_teacher():
    """The method's margins come from the teacher's pre-ReLU maps over the training split."""
    connector = fm.Connector(8, 16)
    assert connector(torch.randn(2, 8, 5, 5)).shape == (2, 16, 5, 5)
    assert connector[0].weight.std().item() == pytest.approx(math.sqrt(2 / 16), rel=0.3)  # He normal over fan-out

    class Data:
        def batches(self, split, batch_size):
            assert split == "train"
            for start in range(0, 600, batch_size):
                yield images[start:start + batch_size], None

    torch.manual_seed(0)
    teacher = nn.Conv2d(1, 3, 3)
    images = torch.randn(600, 1, 6, 6)
    method = fm.OFD.__new__(fm.OFD)
    method.ctx, method.teacher, method.teacher_paths = type("Ctx", (), {"data": Data()})(), lambda x: tap.update(x=teacher(x)), ["x"]
    tap = method.teacher_tap = {}
    (mean, std), = method.teacher_statistics()
    with torch.no_grad():
        maps = teacher(images).double()
    assert torch.allclose(mean, maps.mean((0, 2, 3)), rtol=1e-9)
    assert torch.allclose(std, maps.permute(1, 0, 2, 3).flatten(1).std(1, unbiased=False), rtol=1e-9)


# --- ReviewKD -------------------------------------------------------------------------------------
# dvlab-research/ReviewKD at cede6ea, CIFAR-100/model/reviewkd.py (ABF, ReviewKD.forward, hcl).
class ReferenceABF(nn.Module):
    def __init__(self, in_channel, mid_channel, out_channel, fuse):
        super().__init__()
        self.conv1 = nn.Sequential(nn.Conv2d(in_channel, mid_channel, kernel_size=1, bias=False), nn.BatchNorm2d(mid_channel))
        self.conv2 = nn.Sequential(nn.Conv2d(mid_channel, out_channel, kernel_size=3, stride=1, padding=1, bias=False),
                                   nn.BatchNorm2d(out_channel))
        self.att_conv = nn.Sequential(nn.Conv2d(mid_channel * 2, 2, kernel_size=1), nn.Sigmoid()) if fuse else None

    def forward(self, x, y=None, shape=None, out_shape=None):
        n, _, h, w = x.shape
        x = self.conv1(x)
        if self.att_conv is not None:
            y = F.interpolate(y, (shape, shape), mode="nearest")
            z = torch.cat([x, y], dim=1)
            z = self.att_conv(z)
            x = (x * z[:, 0].view(n, 1, h, w) + y * z[:, 1].view(n, 1, h, w))
        if x.shape[-1] != out_shape:
            x = F.interpolate(x, (out_shape, out_shape), mode="nearest")
        y = self.conv2(x)
        return y, x


def reference_review(abfs, shapes, out_shapes, student_features):
    """ReviewKD.forward after the student: abfs already reversed (coarsest first)."""
    x = student_features[::-1]
    results = []
    out_features, res_features = abfs[0](x[0], out_shape=out_shapes[0])
    results.append(out_features)
    for features, abf, shape, out_shape in zip(x[1:], abfs[1:], shapes[1:], out_shapes[1:]):
        out_features, res_features = abf(features, res_features, shape, out_shape)
        results.insert(0, out_features)
    return results


def reference_hcl(fstudent, fteacher):
    loss_all = 0.0
    for fs, ft in zip(fstudent, fteacher):
        n, c, h, w = fs.shape
        loss = F.mse_loss(fs, ft, reduction='mean')
        cnt = 1.0
        tot = 1.0
        for l in [4, 2, 1]:
            if l >= h:
                continue
            tmpfs = F.adaptive_avg_pool2d(fs, (l, l))
            tmpft = F.adaptive_avg_pool2d(ft, (l, l))
            cnt /= 2.0
            loss += F.mse_loss(tmpfs, tmpft, reduction='mean') * cnt
            tot += cnt
        loss = loss / tot
        loss_all = loss_all + loss
    return loss_all


def pool_mean(x, level):
    """Adaptive average pooling of an (H, W) numpy map to level x level, by its definition."""
    h, w = x.shape
    out = np.zeros((level, level))
    for i in range(level):
        for j in range(level):
            rows = range(i * h // level, -(-(i + 1) * h // level))
            cols = range(j * w // level, -(-(j + 1) * w // level))
            out[i, j] = np.mean([x[r, c] for r in rows for c in cols])
    return out


def paper_hcl(student, teacher):
    """Chen et al. (2021) sec. 3.3: per pair, the MSE at full size and of the 4x4, 2x2, 1x1 average
    pools smaller than the map, weights 1, 1/2, 1/4, 1/8 (the code's), divided by their sum."""
    total = 0.0
    for s, t in zip(student, teacher):
        n, c, h, _ = s.shape
        terms = [(1.0, np.mean((s - t) ** 2))]
        for level in (4, 2, 1):
            if level < h:
                diffs = [(pool_mean(s[i, k], level) - pool_mean(t[i, k], level)) ** 2 for i in range(n) for k in range(c)]
                terms.append((terms[-1][0] / 2, np.mean(diffs)))
        total += sum(w * v for w, v in terms) / sum(w for w, _ in terms)
    return total


def test_hcl_matches_the_papers_equation_and_the_reference():
    student = [fixed(2, 3, 7, 7, seed=13), fixed(2, 4, 3, 3, seed=14), fixed(2, 4, 1, 1, seed=15)]
    teacher = [fixed(2, 3, 7, 7, seed=16), fixed(2, 4, 3, 3, seed=17), fixed(2, 4, 1, 1, seed=18)]
    close(fl.hcl_loss([t64(a) for a in student], [t64(a) for a in teacher]).item(), paper_hcl(student, teacher))
    s = [torch.randn(32, 16, 14, 14, dtype=torch.float64), torch.randn(32, 32, 7, 7, dtype=torch.float64)]
    t = [torch.randn(32, 16, 14, 14, dtype=torch.float64), torch.randn(32, 32, 7, 7, dtype=torch.float64)]
    close(fl.hcl_loss(s, t).item(), reference_hcl(s, t).item())
    with pytest.raises(ValueError, match="do not match"):
        fl.hcl_loss([torch.zeros(2, 3, 4, 4)], [torch.zeros(2, 3, 2, 2)])


def test_review_fusion_matches_the_reference():
    """The quick pair's shapes: student stages 8x14x14, 16x7x7 and the pooled 16x1x1; teacher
    16x14x14, 32x7x7, 32x1x1. The reference's ABFs get our weights; same outputs and loss."""
    torch.manual_seed(0)
    fusion = fm.ReviewFusion([8, 16, 16], [torch.Size([16, 14, 14]), torch.Size([32, 7, 7]), torch.Size([32, 1, 1])]).double()
    reference = [ReferenceABF(c, 16, t, i < 2) for i, (c, t) in enumerate(zip([8, 16, 16], [16, 32, 32]))]
    for ours, theirs in zip(fusion.abfs, reference):
        theirs.double()
        theirs.conv1.load_state_dict(ours.conv1.state_dict())
        theirs.conv2.load_state_dict(ours.conv2.state_dict())
        if theirs.att_conv is not None:
            theirs.att_conv.load_state_dict(ours.attention.state_dict())
    s1, s2 = torch.randn(16, 8, 14, 14, dtype=torch.float64), torch.randn(16, 16, 7, 7, dtype=torch.float64).relu()
    features = [s1, s2, fm.pooled(s2)]
    ours = fusion(features)
    theirs = reference_review(reference[::-1], [1, 7, 14], [1, 7, 14], features)
    assert [o.shape for o in ours] == [(16, 16, 14, 14), (16, 32, 7, 7), (16, 32, 1, 1)]
    for o, r in zip(ours, theirs):
        assert torch.allclose(o, r, rtol=1e-6, atol=1e-12)
    teacher = [torch.randn(16, 16, 14, 14, dtype=torch.float64), torch.randn(16, 32, 7, 7, dtype=torch.float64)]
    teacher.append(fm.pooled(teacher[-1].relu()))
    close(fl.hcl_loss(ours, teacher).item(), reference_hcl(theirs, teacher).item())


def test_reviewkd_warmup_follows_ctx_epoch():
    method = fm.ReviewKD.__new__(fm.ReviewKD)
    method.ctx = type("Ctx", (), {"epoch": 0})()
    factors = []
    for warmup in (4, 0):
        method.config = fm.ReviewKDConfig(warmup=warmup)
        for epoch in range(6):
            method.ctx.epoch = epoch
            factors.append(method.warmup_factor())
    assert factors == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0] + [1.0] * 6  # mdistiller: min(epoch / warmup, 1), epochs from 1


# --- CRD ------------------------------------------------------------------------------------------
# HobbitLong/RepDistiller at b84f547: crd/memory.py (ContrastMemory.forward, given the contrast
# indices: its exact mode), crd/criterion.py (ContrastLoss.forward, Embed + Normalize).
def reference_contrast_memory(memory_v1, memory_v2, params, v1, v2, y, idx):
    K = int(params[0].item())
    T = params[1].item()
    Z_v1 = params[2].item()
    Z_v2 = params[3].item()
    momentum = params[4].item()
    batchSize = v1.size(0)
    outputSize = memory_v1.size(0)
    inputSize = memory_v1.size(1)
    weight_v1 = torch.index_select(memory_v1, 0, idx.view(-1)).detach()
    weight_v1 = weight_v1.view(batchSize, K + 1, inputSize)
    out_v2 = torch.bmm(weight_v1, v2.view(batchSize, inputSize, 1))
    out_v2 = torch.exp(torch.div(out_v2, T))
    weight_v2 = torch.index_select(memory_v2, 0, idx.view(-1)).detach()
    weight_v2 = weight_v2.view(batchSize, K + 1, inputSize)
    out_v1 = torch.bmm(weight_v2, v1.view(batchSize, inputSize, 1))
    out_v1 = torch.exp(torch.div(out_v1, T))
    if Z_v1 < 0:
        params[2] = out_v1.mean() * outputSize
        Z_v1 = params[2].clone().detach().item()
    if Z_v2 < 0:
        params[3] = out_v2.mean() * outputSize
        Z_v2 = params[3].clone().detach().item()
    out_v1 = torch.div(out_v1, Z_v1).contiguous()
    out_v2 = torch.div(out_v2, Z_v2).contiguous()
    with torch.no_grad():
        l_pos = torch.index_select(memory_v1, 0, y.view(-1))
        l_pos.mul_(momentum)
        l_pos.add_(torch.mul(v1, 1 - momentum))
        l_norm = l_pos.pow(2).sum(1, keepdim=True).pow(0.5)
        updated_v1 = l_pos.div(l_norm)
        memory_v1.index_copy_(0, y, updated_v1)
        ab_pos = torch.index_select(memory_v2, 0, y.view(-1))
        ab_pos.mul_(momentum)
        ab_pos.add_(torch.mul(v2, 1 - momentum))
        ab_norm = ab_pos.pow(2).sum(1, keepdim=True).pow(0.5)
        updated_v2 = ab_pos.div(ab_norm)
        memory_v2.index_copy_(0, y, updated_v2)
    return out_v1, out_v2


def reference_contrast_loss(x, n_data, eps=1e-7):
    bsz = x.shape[0]
    m = x.size(1) - 1
    Pn = 1 / float(n_data)
    P_pos = x.select(1, 0)
    log_D1 = torch.div(P_pos, P_pos.add(m * Pn + eps)).log_()
    P_neg = x.narrow(1, 1, m)
    log_D0 = torch.div(P_neg.clone().fill_(m * Pn), P_neg.add(m * Pn + eps)).log_()
    return - (log_D1.sum(0) + log_D0.view(-1, 1).sum(0)) / bsz


def paper_nce(p, n_data):
    """Tian et al. (2020) eq. 18 with h(T, S) = P / (P + K / N): per sample, -log h of the positive
    and -log(1 - h) of each of the K negatives, averaged over the batch."""
    k = len(p[0]) - 1
    total = 0.0
    for row in p:
        h = [v / (v + k / n_data) for v in row]
        total += -math.log(h[0]) - sum(math.log(1 - v) for v in h[1:])
    return total / len(p)


def test_nce_loss_matches_the_papers_equation():
    p = np.exp(fixed(4, 6, seed=19)) / 50
    close(fl.nce_loss(t64(p), 50, eps=0.0).item(), paper_nce(p.tolist(), 50))


def test_crd_matches_the_reference_memory_and_loss():
    """Scores, normalising constants, the NCE loss of both sides and the banks' update, from the
    same banks, embeddings and contrast indices as RepDistiller's ContrastMemory (exact mode)."""
    torch.manual_seed(0)
    n, dim, b, k = 500, 128, 32, 64
    memory = fm.ContrastMemory(n, dim).double()
    embed_s, embed_t = fm.Embed(784, dim).double(), fm.Embed(1568, dim).double()
    v1 = embed_s(torch.randn(b, 16, 7, 7, dtype=torch.float64))
    v2 = embed_t(torch.randn(b, 32, 7, 7, dtype=torch.float64))
    assert torch.allclose(v1.norm(dim=1), torch.ones(b, dtype=torch.float64))
    y = torch.randperm(n)[:b]
    idx = torch.cat([y[:, None], torch.randint(0, n, (b, k))], dim=1)
    ref_v1, ref_v2 = memory.student.clone(), memory.teacher.clone()
    params = torch.tensor([k, 0.07, -1, -1, 0.5], dtype=torch.float64)
    out_s, out_t = reference_contrast_memory(ref_v1, ref_v2, params, v1, v2, y, idx)
    scores_s = fl.contrast_scores(memory.teacher, v1, idx, 0.07)
    scores_t = fl.contrast_scores(memory.student, v2, idx, 0.07)
    z_s, z_t = scores_s.mean() * n, scores_t.mean() * n
    close(z_s.item(), params[2].item())
    close(z_t.item(), params[3].item())
    assert torch.allclose(scores_s / z_s, out_s.squeeze(2), rtol=1e-6, atol=0)
    close(fl.nce_loss(scores_s / z_s, n).item() + fl.nce_loss(scores_t / z_t, n).item(),
          (reference_contrast_loss(out_s, n) + reference_contrast_loss(out_t, n)).item())
    memory.update(y, v1.detach(), v2.detach(), 0.5)
    assert torch.allclose(memory.student, ref_v1, rtol=1e-12) and torch.allclose(memory.teacher, ref_v2, rtol=1e-12)


def crd_with_labels(labels, nce_k, seed=0):
    method = fm.CRD.__new__(fm.CRD)
    method.config = fm.CRDConfig(nce_k=nce_k)
    others = [torch.nonzero(labels != c).flatten() for c in range(int(labels.max()) + 1)]
    method.negative_counts = torch.tensor([len(o) for o in others])
    method.negatives = torch.zeros(len(others), max(len(o) for o in others), dtype=torch.long)
    for c, o in enumerate(others):
        method.negatives[c, :len(o)] = o
    method.generator = torch.Generator().manual_seed(seed)
    return method


def test_crd_negatives_are_other_classes_without_replacement_when_they_suffice():
    labels = torch.tensor([0] * 30 + [1] * 20 + [2] * 10)
    batch = torch.tensor([0, 35, 55, 1])
    exact = crd_with_labels(labels, nce_k=25).draw_negatives(labels[batch])  # every class has >= 30 others
    assert exact.shape == (4, 25)
    for row, c in zip(exact, labels[batch]):
        assert (labels[row] != c).all() and len(set(row.tolist())) == 25
    mixed = crd_with_labels(labels, nce_k=40).draw_negatives(labels[batch])  # class 0 has 30 others: with replacement
    assert (labels[mixed] != labels[batch][:, None]).all()
    assert len(set(mixed[0].tolist())) <= 30 and len(set(mixed[2].tolist())) == 40  # class 2 has 50 others
    again = crd_with_labels(labels, nce_k=40).draw_negatives(labels[batch])
    assert torch.equal(mixed, again)  # the draws follow the (checkpointed) generator


# --- configs --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def registry():
    return registry_for(PLUGIN)


@pytest.mark.parametrize("method, options, message", [
    ("pkt", {"pkt_weight": -1.0}, "pkt_weight"),
    ("pkt", {"student_embedding": ""}, "student_embedding"),
    ("sp", {"sp_weight": float("inf")}, "sp_weight"),
    ("sp", {"teacher_map": ["4"]}, "teacher_map"),
    ("vid", {"vid_weight": -1.0}, "vid_weight"),
    ("vid", {"variance_eps": 0.0}, "variance_eps"),
    ("vid", {"init_variance": 1e-6}, "init_variance"),
    ("vid", {"student_layers": ["1"], "teacher_layers": ["1", "4"]}, "pair up"),
    ("nst", {"nst_weight": float("nan")}, "nst_weight"),
    ("nst", {"teacher_layers": []}, "teacher_layers"),
    ("ofd", {"ofd_weight": -1e-3}, "ofd_weight"),
    ("ofd", {"student_preact_layers": ["0"]}, "pair up"),
    ("reviewkd", {"reviewkd_weight": -5.0}, "reviewkd_weight"),
    ("reviewkd", {"warmup": 1.5}, "warmup"),
    ("reviewkd", {"teacher_preact_layers": "3"}, "teacher_preact_layers"),
    ("crd", {"crd_weight": -0.8}, "crd_weight"),
    ("crd", {"nce_k": 0}, "nce_k"),
    ("crd", {"crd_dim": 12.5}, "crd_dim"),
    ("crd", {"nce_momentum": 1.0}, "nce_momentum"),
    ("crd", {"nce_temperature": 0.0}, "nce_temperature"),
])
def test_configs_reject_bad_values(registry, method, options, message):
    with pytest.raises(ConfigError, match=message):
        registry.get("methods", method).Config(**options)


def test_defaults_are_the_reference_cifar100_settings(registry):
    cfg = {name: registry.get("methods", name).Config() for name in ("pkt", "sp", "vid", "nst", "ofd", "reviewkd", "crd")}
    assert cfg["pkt"].pkt_weight == 30000.0 and cfg["sp"].sp_weight == 3000.0 and cfg["nst"].nst_weight == 50.0
    assert (cfg["vid"].vid_weight, cfg["vid"].init_variance, cfg["vid"].variance_eps) == (1.0, 5.0, 1e-5)
    assert cfg["vid"].student_layers == cfg["nst"].student_layers == ["1", "4"]  # every stage, as AT's
    assert cfg["ofd"].ofd_weight == 1e-3 and cfg["ofd"].teacher_preact_layers == ["0", "3"]
    assert (cfg["reviewkd"].reviewkd_weight, cfg["reviewkd"].warmup) == (5.0, 20)
    crd = cfg["crd"]
    assert (crd.crd_weight, crd.crd_dim, crd.nce_k, crd.nce_temperature, crd.nce_momentum) == (0.8, 128, 16384, 0.07, 0.5)


# --- one tiny run of the arms ---------------------------------------------------------------------
@pytest.mark.slow
def test_the_feature_arms_run_on_synthetic_data(tmp_path, no_onednn):
    """The seven arms on synthetic 16x16 data (the zoo's conv trunks give 8x8 and 4x4 maps there),
    two short epochs each: records ok, the regressors, connectors and fusion counted as the method's."""
    from kdbench.cli import main

    out = tmp_path / "runs"
    sets = as_sets(SYNTHETIC)
    code = main(["run", str(PLUGIN), "--grid", "method=pkt,sp,vid,nst,ofd,reviewkd,crd", "--seeds", "0", *sets, "--out", str(out),
                 "--cache", str(tmp_path / "cache")])
    assert code == 0
    records = {r["method"]: r for r in (json.loads(p.read_text()) for p in out.rglob("record.json"))}
    assert sorted(records) == ["crd", "nst", "ofd", "pkt", "reviewkd", "sp", "vid"]
    assert all(r["status"] == "ok" for r in records.values())
    assert all(records[m]["method_params"] == {} for m in ("pkt", "sp", "nst"))
    # per stage: 1x1 convs s->t, t->t, t->t (no bias) and t variances; stages 8->16 and 16->32 channels
    expected = sum(s * t + 2 * t * t + t for s, t in [(8, 16), (16, 32)])
    assert records["vid"]["method_params"] == {"regressors": expected}
    assert records["ofd"]["method_params"] == {"connectors": (8 * 16 + 2 * 16) + (16 * 32 + 2 * 32)}  # 1x1 conv + BN
    # ABFs (mid 16 channels): 8->16 and 16->32 fused (conv1 + BN, 3x3 conv2 + BN, 1x1 attention), pooled 16->32 not
    abf = [8 * 16 + 32 + 16 * 16 * 9 + 32 + 32 * 2 + 2, 16 * 16 + 32 + 16 * 32 * 9 + 64 + 32 * 2 + 2, 16 * 16 + 32 + 16 * 32 * 9 + 64]
    assert records["reviewkd"]["method_params"] == {"fusion": sum(abf)}
    # heads Linear(256 -> 128) and Linear(512 -> 128) on the flattened 16x4x4 and 32x4x4 maps; the banks are buffers
    assert records["crd"]["method_params"] == {"embed_student": 256 * 128 + 128, "embed_teacher": 512 * 128 + 128, "memory": 0}
