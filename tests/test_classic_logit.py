"""plugins/classic's logit methods (DIST, CTKD, MLKD) and logit standardisation (the option of kd,
dkd and mlkd): each loss against an independent float64 computation of its paper's equations
(explicit loops, nothing shared with the code under test) and against the reference code's
function, transcribed below as the oracle with its repository, commit and path, on random inputs
to 1e-6 relative; CTKD's curriculum and gradient reversal; MLKD's strong view against PIL; the
configs' checks and defaults."""
import math

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image, ImageEnhance, ImageOps

from conftest import REPO, SYNTHETIC, as_sets, registry_for
from kdbench.errors import ConfigError
from kdbench.losses import kd_kl_loss, standardize_logits
from kdbench.plugins import import_plugin_folder

PLUGIN = REPO / "plugins" / "classic"
import_plugin_folder(PLUGIN)
from kdbench_plugins.classic import logit_losses, logit_methods, losses, randaugment  # noqa: E402


def fixed(*shape, seed=0, scale=1.0):
    return np.random.default_rng(seed).normal(size=shape) * scale


def t64(a):
    return torch.tensor(a, dtype=torch.float64)


def softmax(z):
    e = [math.exp(v - max(z)) for v in z]
    return [v / sum(e) for v in e]


def kl(p, q):
    return sum(pi * math.log(pi / qi) for pi, qi in zip(p, q) if pi > 0)


def pearson(a, b):
    ma, mb = sum(a) / len(a), sum(b) / len(b)
    cov = sum((x - ma) * (y - mb) for x, y in zip(a, b))
    return cov / math.sqrt(sum((x - ma) ** 2 for x in a) * sum((y - mb) ** 2 for y in b))


# --- reference code, transcribed as the oracle ----------------------------------------------------
# sunshangquan/logit-standardization-KD at f6e5aa5172bad618e801163c3385322eea673754,
# mdistiller/distillers/KD.py (normalize, kd_loss) and DKD.py (dkd_loss and its masks)
def ref_normalize(logit):
    mean = logit.mean(dim=-1, keepdims=True)
    stdv = logit.std(dim=-1, keepdims=True)
    return (logit - mean) / (1e-7 + stdv)


def ref_kd_loss(logits_student_in, logits_teacher_in, temperature, logit_stand):
    logits_student = ref_normalize(logits_student_in) if logit_stand else logits_student_in
    logits_teacher = ref_normalize(logits_teacher_in) if logit_stand else logits_teacher_in
    log_pred_student = F.log_softmax(logits_student / temperature, dim=1)
    pred_teacher = F.softmax(logits_teacher / temperature, dim=1)
    loss_kd = F.kl_div(log_pred_student, pred_teacher, reduction="none").sum(1).mean()
    loss_kd *= temperature**2
    return loss_kd


def ref_dkd_loss(logits_student_in, logits_teacher_in, target, alpha, beta, temperature, logit_stand):
    logits_student = ref_normalize(logits_student_in) if logit_stand else logits_student_in
    logits_teacher = ref_normalize(logits_teacher_in) if logit_stand else logits_teacher_in
    gt_mask = torch.zeros_like(logits_student).scatter_(1, target.unsqueeze(1), 1).bool()
    other_mask = torch.ones_like(logits_student).scatter_(1, target.unsqueeze(1), 0).bool()

    def cat_mask(t, mask1, mask2):
        return torch.cat([(t * mask1).sum(dim=1, keepdims=True), (t * mask2).sum(1, keepdims=True)], dim=1)

    pred_student = cat_mask(F.softmax(logits_student / temperature, dim=1), gt_mask, other_mask)
    pred_teacher = cat_mask(F.softmax(logits_teacher / temperature, dim=1), gt_mask, other_mask)
    log_pred_student = torch.log(pred_student)
    tckd_loss = F.kl_div(log_pred_student, pred_teacher, reduction="sum") * (temperature**2) / target.shape[0]  # size_average=False
    pred_teacher_part2 = F.softmax(logits_teacher / temperature - 1000.0 * gt_mask, dim=1)
    log_pred_student_part2 = F.log_softmax(logits_student / temperature - 1000.0 * gt_mask, dim=1)
    nckd_loss = F.kl_div(log_pred_student_part2, pred_teacher_part2, reduction="sum") * (temperature**2) / target.shape[0]
    return alpha * tckd_loss + beta * nckd_loss


# hunto/image_classification_sota at 6f7a70a1dd57fd88413d83909d3d53243068f701,
# lib/models/losses/dist_kd.py (the loss DIST_KD's README points to)
def ref_cosine_similarity(a, b, eps=1e-8):
    return (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1) + eps)


def ref_pearson_correlation(a, b, eps=1e-8):
    return ref_cosine_similarity(a - a.mean(1).unsqueeze(1), b - b.mean(1).unsqueeze(1), eps)


def ref_inter_class_relation(y_s, y_t):
    return 1 - ref_pearson_correlation(y_s, y_t).mean()


def ref_intra_class_relation(y_s, y_t):
    return ref_inter_class_relation(y_s.transpose(0, 1), y_t.transpose(0, 1))


class RefDIST(nn.Module):
    def __init__(self, beta=1.0, gamma=1.0, tau=1.0):
        super().__init__()
        self.beta, self.gamma, self.tau = beta, gamma, tau

    def forward(self, z_s, z_t):
        y_s = (z_s / self.tau).softmax(dim=1)
        y_t = (z_t / self.tau).softmax(dim=1)
        inter_loss = self.tau**2 * ref_inter_class_relation(y_s, y_t)
        intra_loss = self.tau**2 * ref_intra_class_relation(y_s, y_t)
        return self.beta * inter_loss + self.gamma * intra_loss


# zhengli97/CTKD at 7d5252241259ae70d38a832371fed9697d15fc14, train_student.py (CosineDecay)
class RefCosineDecay:
    def __init__(self, max_value, min_value, num_loops):
        self._max_value, self._min_value, self._num_loops = max_value, min_value, num_loops

    def get_value(self, i):
        if i < 0:
            i = 0
        if i >= self._num_loops:
            i = self._num_loops
        value = (math.cos(i * math.pi / self._num_loops) + 1.0) * 0.5
        return value * (self._max_value - self._min_value) + self._min_value


# Jin-Ying/Multi-Level-Logit-Distillation at 5ee473fcf193dfb00a0598b64d0acfe6ad58a482,
# mdistiller/distillers/KD_ours.py (kd_loss, cc_loss, bc_loss, and forward_train's loss arithmetic;
# the same in logit-standardization-KD's MLKD.py with logit_stand on the kd_loss terms)
def ref_mlkd_kd_loss(logits_student, logits_teacher, temperature, logit_stand=False):
    return ref_kd_loss(logits_student, logits_teacher, temperature, logit_stand)


def ref_cc_loss(logits_student, logits_teacher, temperature):
    batch_size, class_num = logits_teacher.shape
    pred_student = F.softmax(logits_student / temperature, dim=1)
    pred_teacher = F.softmax(logits_teacher / temperature, dim=1)
    student_matrix = torch.mm(pred_student.transpose(1, 0), pred_student)
    teacher_matrix = torch.mm(pred_teacher.transpose(1, 0), pred_teacher)
    return ((teacher_matrix - student_matrix) ** 2).sum() / class_num


def ref_bc_loss(logits_student, logits_teacher, temperature):
    batch_size, class_num = logits_teacher.shape
    pred_student = F.softmax(logits_student / temperature, dim=1)
    pred_teacher = F.softmax(logits_teacher / temperature, dim=1)
    student_matrix = torch.mm(pred_student, pred_student.transpose(1, 0))
    teacher_matrix = torch.mm(pred_teacher, pred_teacher.transpose(1, 0))
    return ((teacher_matrix - student_matrix) ** 2).sum() / batch_size


def ref_mlkd_terms(logits_student_weak, logits_student_strong, logits_teacher_weak, logits_teacher_strong,
                   temperature, logit_stand, fix_strong_slip):
    """forward_train's loss_kd, loss_cc, loss_bc with kd_loss_weight factored out. The reference
    takes the T = 2 and T = 6 terms of its strong-view sum from the weak view's logits; with
    ``fix_strong_slip`` they come from the strong view, as kdbench computes them (README)."""
    pred_teacher_weak = F.softmax(logits_teacher_weak.detach(), dim=1)
    confidence, pseudo_labels = pred_teacher_weak.max(dim=1)
    conf_thresh = np.percentile(confidence.cpu().numpy().flatten(), 50)
    mask = confidence.le(conf_thresh).bool()
    class_confidence = torch.sum(pred_teacher_weak, dim=0)
    class_confidence_thresh = np.percentile(class_confidence.cpu().numpy().flatten(), 50)
    class_conf_mask = class_confidence.le(class_confidence_thresh).bool()
    temps = (temperature, 3.0, 5.0, 2.0, 6.0)
    kd = lambda s, t, T: ref_mlkd_kd_loss(s, t, T, logit_stand=logit_stand)  # noqa: E731
    loss_kd_weak = sum((kd(logits_student_weak, logits_teacher_weak, T) * mask).mean() for T in temps)
    late = (logits_student_strong, logits_teacher_strong) if fix_strong_slip else (logits_student_weak, logits_teacher_weak)
    loss_kd_strong = (kd(logits_student_strong, logits_teacher_strong, temperature) + kd(logits_student_strong, logits_teacher_strong, 3.0)
                      + kd(logits_student_strong, logits_teacher_strong, 5.0) + kd(*late, 2.0) + kd(*late, 6.0))
    loss_cc_weak = sum((ref_cc_loss(logits_student_weak, logits_teacher_weak, T) * class_conf_mask).mean() for T in temps)
    loss_bc_weak = sum((ref_bc_loss(logits_student_weak, logits_teacher_weak, T) * mask).mean() for T in temps)
    return loss_kd_weak + loss_kd_strong, loss_cc_weak, loss_bc_weak


# --- logit standardisation ------------------------------------------------------------------------
def reference_zscores(z):
    """Sun et al. (2024) eq. 8 with the code's unbiased std and additive 1e-7: (z - mean) / (eps + std)."""
    out = []
    for row in z:
        k = len(row)
        mean = sum(row) / k
        std = math.sqrt(sum((v - mean) ** 2 for v in row) / (k - 1))
        out.append([(v - mean) / (1e-7 + std) for v in row])
    return out


def test_standardize_logits_is_the_z_score_of_each_row():
    z = fixed(4, 7, seed=1, scale=3.0)
    got = standardize_logits(t64(z))
    assert got.dtype == torch.float64
    assert np.allclose(got.numpy(), reference_zscores(z.tolist()), rtol=1e-12, atol=0)
    assert standardize_logits(torch.randn(3, 5).to(torch.bfloat16)).dtype == torch.float32  # never in bf16
    shifted = standardize_logits(t64(5.0 * z + 2.0))
    assert torch.allclose(shifted, got, rtol=1e-6)  # shift and (positive) scale invariant (up to the eps)


@pytest.mark.parametrize("logit_stand", [False, True])
def test_kd_and_dkd_with_logit_stand_match_the_reference(logit_stand):
    s, t = t64(fixed(16, 10, seed=2, scale=4.0)), t64(fixed(16, 10, seed=3, scale=4.0))
    labels = torch.tensor(np.random.default_rng(4).integers(0, 10, 16))
    zs, zt = (standardize_logits(s), standardize_logits(t)) if logit_stand else (s, t)
    for T in (2.0, 4.0):
        assert kd_kl_loss(zs, zt, T).item() == pytest.approx(ref_kd_loss(s, t, T, logit_stand).item(), rel=1e-6)
        tckd, nckd = losses.dkd_parts(zs, zt, labels, T)
        ours = (9.0 * tckd + 72.0 * nckd).item()  # the logit-stand paper's DKD: alpha, beta times kd_weight 9
        assert ours == pytest.approx(ref_dkd_loss(s, t, labels, 9.0, 72.0, T, logit_stand).item(), rel=1e-6)


def test_kd_with_logit_stand_is_kl_of_the_z_scores_in_float64():
    s, t = fixed(5, 6, seed=5, scale=3.0), fixed(5, 6, seed=6, scale=8.0)
    zs, zt = reference_zscores(s.tolist()), reference_zscores(t.tolist())
    T = 2.0
    expected = T * T * sum(kl(softmax([v / T for v in b]), softmax([v / T for v in a])) for a, b in zip(zs, zt)) / 5
    got = kd_kl_loss(standardize_logits(t64(s)), standardize_logits(t64(t)), T).item()
    assert got == pytest.approx(expected, rel=1e-9)



def test_kd_with_logit_stand_differentiates_through_the_z_scores():
    """The student's gradient flows through standardize_logits into the KL (the fused op where it
    is loaded, the PyTorch reference otherwise): the same gradient either way, and the numerical one."""
    from kdbench import losses as kd_losses

    s = torch.tensor(fixed(6, 8, seed=21, scale=2.0), requires_grad=True)
    t = t64(fixed(6, 8, seed=22, scale=5.0))

    def loss(x):
        return kd_kl_loss(standardize_logits(x), standardize_logits(t), 2.0)

    loss(s).backward()
    with kd_losses.reference_only():
        reference = torch.autograd.grad(loss(s), s)[0]
        assert torch.autograd.gradcheck(loss, (s,))
    assert torch.allclose(s.grad, reference, rtol=1e-9, atol=1e-12)


# --- DIST -----------------------------------------------------------------------------------------
def reference_dist(s, t, tau):
    """Huang et al. (2022) eq. 5-8: Y = softmax(Z / tau) row-wise; inter = 1 - (1/N) sum_i
    rho(Y_s[i, :], Y_t[i, :]); intra = 1 - (1/C) sum_j rho(Y_s[:, j], Y_t[:, j]); each times tau^2."""
    ys = [softmax([v / tau for v in row]) for row in s]
    yt = [softmax([v / tau for v in row]) for row in t]
    n, c = len(ys), len(ys[0])
    inter = 1 - sum(pearson(ys[i], yt[i]) for i in range(n)) / n
    intra = 1 - sum(pearson([ys[i][j] for i in range(n)], [yt[i][j] for i in range(n)]) for j in range(c)) / c
    return tau * tau * inter, tau * tau * intra


def test_dist_matches_the_papers_equations():
    s, t = fixed(6, 5, seed=7, scale=3.0), fixed(6, 5, seed=8, scale=3.0)
    inter, intra = logit_losses.dist_parts(t64(s), t64(t), 4.0)
    ref_inter, ref_intra = reference_dist(s.tolist(), t.tolist(), 4.0)
    assert inter.item() == pytest.approx(ref_inter, rel=1e-6)  # the code's eps = 1e-8 in the denominator
    assert intra.item() == pytest.approx(ref_intra, rel=1e-6)


def test_dist_matches_the_reference_function():
    s, t = torch.randn(64, 100, generator=torch.Generator().manual_seed(9)) * 3, torch.randn(64, 100, generator=torch.Generator().manual_seed(10)) * 5
    inter, intra = logit_losses.dist_parts(s.double(), t.double(), 4.0)
    ours = 2.0 * inter + 2.0 * intra  # the defaults: beta = gamma = 2
    reference = 2.0 * RefDIST(beta=1, gamma=1, tau=4.0)(s.double(), t.double())  # dist_cifar.yaml: kd_loss_weight 2, dist_t4
    assert ours.item() == pytest.approx(reference.item(), rel=1e-6)
    assert logit_losses.dist_parts(t, t.clone(), 4.0)[0].item() == pytest.approx(0.0, abs=1e-5)  # equal logits: no loss


def test_dist_is_invariant_to_an_affine_map_of_the_probabilities_per_row():
    """The paper's point: Pearson ignores each instance's scale and shift of the prediction (the
    inter term), so a student whose probabilities are a positive affine map of the teacher's pays
    nothing there."""
    t = torch.randn(8, 10, dtype=torch.float64)
    yt = F.softmax(t, dim=1)
    ys = 0.5 * yt + 0.05  # still a distribution: sums to 0.5 + 0.5 = 1
    inter, _ = logit_losses.dist_parts(ys.log(), t, 1.0)
    assert inter.item() == pytest.approx(0.0, abs=1e-5)  # the eps = 1e-8 in the denominator leaves ~1e-6


# --- CTKD -----------------------------------------------------------------------------------------
def test_ctkd_curriculum_is_the_references_cosine_decay():
    decay = RefCosineDecay(max_value=0, min_value=-1, num_loops=10)  # run_cifar_distill.sh
    for epoch in range(1, 16):  # the reference counts epochs from 1
        assert logit_losses.ctkd_lambda(epoch, 10) == pytest.approx(-decay.get_value(epoch), abs=1e-12)
    assert logit_losses.ctkd_lambda(0, 10) == 0.0 and logit_losses.ctkd_lambda(3, 0) == 1.0
    assert logit_losses.ctkd_lambda(5, 10, 0.2, 0.6) == pytest.approx(0.4)


def test_gradient_reversal_flips_and_scales_the_gradient():
    x = torch.tensor([0.3, -1.2], requires_grad=True)
    y = logit_losses.reverse_gradient(x, 0.25)
    assert torch.equal(y, x.detach())
    (y * torch.tensor([2.0, 3.0])).sum().backward()
    assert torch.equal(x.grad, torch.tensor([-0.5, -0.75]))


def test_ctkd_temperature_ascends_the_kd_loss():
    """tau = 1 + 20 sigmoid(theta), theta = 1 at the start (15.62); the gradient reaching theta is
    -lambda times d(KD)/d(theta), so an optimizer step raises the KD loss through tau."""
    module = logit_methods.GlobalTemperature(1.0, 20.0).double()
    s = torch.tensor(fixed(8, 10, seed=11, scale=3.0), requires_grad=True)
    t = t64(fixed(8, 10, seed=12, scale=6.0))
    lam = 0.7
    tau = module(lam)
    assert tau.item() == pytest.approx(1 + 20 / (1 + math.exp(-1)), rel=1e-12)
    kd_kl_loss(s, t, tau).backward()

    def kd_at(theta):
        T = 1 + 20 / (1 + math.exp(-theta))
        return kd_kl_loss(s.detach(), t, T).item()

    h = 1e-6
    numerical = (kd_at(1 + h) - kd_at(1 - h)) / (2 * h)
    assert module.theta.grad.item() == pytest.approx(-lam * numerical, rel=1e-5)
    assert s.grad is not None and torch.isfinite(s.grad).all()  # the student still descends


# --- MLKD -----------------------------------------------------------------------------------------
def reference_instance(s, t, temps):
    """Jin et al. (2023) instance level: sum_T T^2 (1/N) sum_i KL(p_t^T[i] || p_s^T[i])."""
    return sum(T * T * sum(kl(softmax([v / T for v in b]), softmax([v / T for v in a])) for a, b in zip(s, t)) / len(s) for T in temps)


def reference_gram(s, t, temps, classes):
    """Batch level: sum_T (1/N) ||G_t - G_s||^2, G[i, j] = <p[i], p[j]>; class level: sum_T (1/C)
    ||M_t - M_s||^2, M[a, b] = sum_i p[i, a] p[i, b]."""
    total = 0.0
    for T in temps:
        ps = [softmax([v / T for v in row]) for row in s]
        pt = [softmax([v / T for v in row]) for row in t]
        n, c = len(ps), len(ps[0])
        if classes:
            g = lambda p, a, b: sum(p[i][a] * p[i][b] for i in range(n))  # noqa: E731
            total += sum((g(pt, a, b) - g(ps, a, b)) ** 2 for a in range(c) for b in range(c)) / c
        else:
            g = lambda p, i, j: sum(p[i][k] * p[j][k] for k in range(c))  # noqa: E731
            total += sum((g(pt, i, j) - g(ps, i, j)) ** 2 for i in range(n) for j in range(n)) / n
    return total


def test_mlkd_levels_match_the_papers_equations():
    s, t = fixed(6, 5, seed=13, scale=3.0), fixed(6, 5, seed=14, scale=3.0)
    temps = [4.0, 3.0, 5.0, 2.0, 6.0]
    assert logit_losses.multi_temperature_kl(t64(s), t64(t), temps).item() == pytest.approx(reference_instance(s.tolist(), t.tolist(), temps), rel=1e-9)
    assert logit_losses.batch_gram_loss(t64(s), t64(t), temps).item() == pytest.approx(reference_gram(s.tolist(), t.tolist(), temps, False), rel=1e-9)
    assert logit_losses.class_gram_loss(t64(s), t64(t), temps).item() == pytest.approx(reference_gram(s.tolist(), t.tolist(), temps, True), rel=1e-9)


def test_below_median_fraction_is_the_references_mask_mean():
    for n, seed in ((64, 15), (63, 16), (100, 17)):
        values = torch.rand(n, generator=torch.Generator().manual_seed(seed))
        mask = values.le(np.percentile(values.numpy(), 50))
        assert logit_losses.below_median_fraction(values) == pytest.approx(mask.float().mean().item())
    ties = torch.tensor([1.0, 1.0, 1.0, 2.0])  # everything at or below the median counts
    assert logit_losses.below_median_fraction(ties) == 0.75


@pytest.mark.parametrize("logit_stand", [False, True])
def test_mlkd_parts_match_the_reference_arithmetic(logit_stand):
    g = torch.Generator().manual_seed(18)
    sw, ss, tw, ts = (torch.randn(64, 100, generator=g, dtype=torch.float64) * k for k in (2, 2, 5, 5))
    temperature = 2.0 if logit_stand else 4.0  # the logit-stand paper's base temperature, MLKD's own
    ours = logit_losses.mlkd_parts((sw, tw), (ss, ts), [temperature, 3.0, 5.0, 2.0, 6.0], logit_stand)
    reference = ref_mlkd_terms(sw, ss, tw, ts, temperature, logit_stand, fix_strong_slip=True)
    for got, want in zip(ours, reference):
        assert got.item() == pytest.approx(want.item(), rel=1e-6)
    # each building block, against the reference's own function
    for T in (2.0, 4.0):
        assert logit_losses.multi_temperature_kl(sw, tw, [T]).item() == pytest.approx(ref_mlkd_kd_loss(sw, tw, T).item(), rel=1e-6)
        assert logit_losses.class_gram_loss(sw, tw, [T]).item() == pytest.approx(ref_cc_loss(sw, tw, T).item(), rel=1e-6)
        assert logit_losses.batch_gram_loss(sw, tw, [T]).item() == pytest.approx(ref_bc_loss(sw, tw, T).item(), rel=1e-6)
    # the reference's slip (its strong-view sum takes T = 2, 6 from the weak view) is a different number
    slip = ref_mlkd_terms(sw, ss, tw, ts, temperature, logit_stand, fix_strong_slip=False)[0]
    assert abs(slip.item() - ours[0].item()) > 1e-3 * abs(ours[0].item())


def test_mlkd_parts_are_zero_for_a_perfect_student():
    z = torch.randn(16, 10, dtype=torch.float64)
    assert all(part.item() == pytest.approx(0.0, abs=1e-12) for part in logit_losses.mlkd_parts((z, z), (z, z), [2.0, 4.0]))


# --- MLKD's strong view ---------------------------------------------------------------------------
PIL_OPERATIONS = {  # the reference's augment_list() functions (KD_ours' cifar100.py at 5ee473f)
    "autocontrast": lambda img, v: ImageOps.autocontrast(img),
    "brightness": lambda img, v: ImageEnhance.Brightness(img).enhance(v),
    "color": lambda img, v: ImageEnhance.Color(img).enhance(v),
    "contrast": lambda img, v: ImageEnhance.Contrast(img).enhance(v),
    "equalize": lambda img, v: ImageOps.equalize(img),
    "identity": lambda img, v: img,
    "posterize": lambda img, v: ImageOps.posterize(img, max(1, int(v))),
    "rotate": lambda img, v: img.rotate(v),
    "sharpness": lambda img, v: ImageEnhance.Sharpness(img).enhance(v),
    "shear_x": lambda img, v: img.transform(img.size, Image.AFFINE, (1, v, 0, 0, 1, 0)),
    "shear_y": lambda img, v: img.transform(img.size, Image.AFFINE, (1, 0, 0, v, 1, 0)),
    "solarize": lambda img, v: ImageOps.solarize(img, v),
    "translate_x": lambda img, v: img.transform(img.size, Image.AFFINE, (1, 0, v * img.size[0], 0, 1, 0)),
    "translate_y": lambda img, v: img.transform(img.size, Image.AFFINE, (1, 0, 0, 0, 1, v * img.size[1])),
}


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("name", [op[0] for op in randaugment.OPERATIONS])
def test_strong_view_operations_match_pil(name, channels):
    """Each batched operation against the PIL function the reference applies, image by image, at
    magnitudes across its range. Exact, but for rotate: PIL rotates in 16.16 fixed point, which
    picks the other neighbour for a few pixels on a boundary."""
    assert set(PIL_OPERATIONS) == set(randaugment.FUNCTIONS)
    rng = np.random.default_rng(19)
    images = rng.integers(0, 256, size=(6, 32, 32, channels), dtype=np.uint8)
    images[0] = images[0] // 2 + 40  # a narrow range (autocontrast stretches it)
    _, low, high = next(op for op in randaugment.OPERATIONS if op[0] == name)
    values = torch.tensor(low + (high - low) * rng.random(6), dtype=torch.float32)
    ours = randaugment.FUNCTIONS[name](torch.tensor(images).permute(0, 3, 1, 2).float(), values)
    differing = 0
    for image, value, got in zip(images, values.tolist(), ours.permute(0, 2, 3, 1).numpy()):
        pil = Image.fromarray(image[:, :, 0] if channels == 1 else image)
        want = np.asarray(PIL_OPERATIONS[name](pil, value)).reshape(got.shape)
        differing += int((want != got).sum())
    assert differing <= (images.size // 100 if name == "rotate" else 0)


def test_strong_view_is_reproducible_and_shaped_like_its_input():
    images = torch.randint(0, 256, (32, 3, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(20))
    first = randaugment.rand_augment(images, torch.Generator().manual_seed(1), [125, 123, 114])
    again = randaugment.rand_augment(images, torch.Generator().manual_seed(1), [125, 123, 114])
    other = randaugment.rand_augment(images, torch.Generator().manual_seed(2), [125, 123, 114])
    assert first.shape == images.shape and first.dtype == torch.uint8
    assert torch.equal(first, again) and not torch.equal(first, other)


def test_cutout_is_the_references_square():
    x = torch.zeros(3, 1, 10, 10)
    side = torch.tensor([0.3, 0.0, 0.5])
    corner = torch.tensor([[0.5, 0.5], [0.5, 0.5], [0.0, 0.95]])
    out = randaugment.cutout(x, side, corner, torch.tensor([7.0]))
    # v = 3 pixels at centre (5, 5): x0 = y0 = int(5 - 1.5) = 3, x1 = y1 = 6, PIL's rectangle inclusive
    assert torch.equal(out[0, 0].nonzero().min(0).values, torch.tensor([3, 3]))
    assert torch.equal(out[0, 0].nonzero().max(0).values, torch.tensor([6, 6]))
    assert out[1].sum() == 0  # v = 0: no cutout
    # v = 5 at (0, 9.5): clipped to x0 = 0, x1 = 5 and y0 = int(9.5 - 2.5) = 7 to the bottom edge
    assert out[2, 0, 7:, :6].eq(7).all() and out[2, 0, :7].sum() == 0 and out[2, 0, :, 6:].sum() == 0


# --- configs --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def registry():
    return registry_for(PLUGIN)


@pytest.mark.parametrize("method, options, message", [
    ("kd", {"logit_stand": 1}, "logit_stand"),
    ("dkd", {"logit_stand": "yes"}, "logit_stand"),
    ("mlkd", {"logit_stand": None}, "logit_stand"),
    ("dist", {"temperature": 0.0}, "temperature"),
    ("dist", {"inter_weight": -2.0}, "inter_weight"),
    ("dist", {"intra_weight": float("inf")}, "intra_weight"),
    ("ctkd", {"alpha": 1.5}, "alpha"),
    ("ctkd", {"temperature_min": 0.0}, "temperature_min"),
    ("ctkd", {"lambda_min": 0.5, "lambda_max": 0.2}, "lambda_max"),
    ("ctkd", {"lambda_epochs": -1}, "lambda_epochs"),
    ("mlkd", {"extra_temperatures": [3.0, 0.0]}, "extra_temperatures"),
    ("mlkd", {"extra_temperatures": 3.0}, "extra_temperatures"),
    ("mlkd", {"strong_ops": 1.5}, "strong_ops"),
])
def test_configs_reject_bad_values(registry, method, options, message):
    with pytest.raises(ConfigError, match=message):
        registry.get("methods", method).Config(**options)


def test_defaults_are_the_papers(registry):
    cfg = {name: registry.get("methods", name).Config() for name in ("kd", "dkd", "dist", "ctkd", "mlkd")}
    assert not cfg["kd"].logit_stand and not cfg["dkd"].logit_stand and not cfg["mlkd"].logit_stand
    assert (cfg["dist"].temperature, cfg["dist"].inter_weight, cfg["dist"].intra_weight) == (4.0, 2.0, 2.0)
    c = cfg["ctkd"]
    assert (c.alpha, c.temperature_min, c.temperature_range, c.lambda_min, c.lambda_max, c.lambda_epochs) == (0.1, 1.0, 20.0, 0.0, 1.0, 10)
    m = cfg["mlkd"]
    assert (m.temperature, m.extra_temperatures, m.alpha, m.strong_ops) == (4.0, [3.0, 5.0, 2.0, 6.0], 0.1, 2)


def test_logit_stand_axis_doubles_only_the_arms_with_the_option(registry):
    from kdbench import experiment

    cells, _, _ = experiment.expand(PLUGIN, registry, grid=["logit_stand=false,true"], seeds=[0])
    counts = {}
    for cell in cells:
        counts[cell.method] = counts.get(cell.method, 0) + 1
    assert {m for m, k in counts.items() if k == 2} == {"kd", "dkd", "mlkd"}
    assert all(k == 1 for m, k in counts.items() if m not in ("kd", "dkd", "mlkd"))


# --- a tiny run with the options on ---------------------------------------------------------------
@pytest.mark.slow
def test_logit_stand_and_the_logit_arms_run_on_synthetic_data(tmp_path, no_onednn):
    """kd, dkd and mlkd with logit standardisation on, and ctkd, one short epoch each on synthetic
    data: records ok, the learned temperature counted as ctkd's one parameter and logged."""
    import json

    from kdbench.cli import main

    out = tmp_path / "runs"
    sets = as_sets(SYNTHETIC + ["method.warmup=2", "method.lambda_epochs=2"])
    code = main(["run", str(PLUGIN), "--grid", "method=kd,dkd,mlkd,ctkd", "--grid", "logit_stand=true", "--seeds", "0",
                 *sets, "--out", str(out), "--cache", str(tmp_path / "cache")])
    assert code == 0
    records = [json.loads(p.read_text()) for p in out.rglob("record.json")]
    assert sorted(r["method"] for r in records) == ["ctkd", "dkd", "kd", "mlkd"]
    assert all(r["status"] == "ok" for r in records)
    assert all(r["config"]["method"]["logit_stand"] for r in records if r["method"] != "ctkd")
    ctkd = next(r for r in records if r["method"] == "ctkd")
    assert ctkd["method_params"] == {"temperature": 1}
    history = [json.loads(line) for line in next(out.rglob("ctkd*/**/history.jsonl")).read_text().splitlines()]
    assert all(1.0 < row["train_tau"] < 21.0 for row in history)
