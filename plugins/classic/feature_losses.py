"""The feature and relation distillation losses (PKT, SP, VID, NST, OFD, ReviewKD, CRD), as plain functions of tensors
(no model, no ctx), so the tests can hold each one to an independent computation of its paper's
equation and to the reference implementation's function.

Shapes: feature maps (N, C, H, W); embeddings (N, ...) flattened to (N, D).
"""
import math

import torch
import torch.nn.functional as F

from .losses import full_precision


def pkt_loss(student, teacher, eps=1e-7):
    """Probabilistic knowledge transfer (Passalis and Tefas 2018, eq. 7-10) with the cosine kernel
    K(a, b) = (cos(a, b) + 1) / 2: each row of K over the batch normalised into the conditional
    probabilities p_{j|i}, then KL(teacher || student) of those rows. As the reference code
    (passalis/probabilistic_kt, copied by RepDistiller and mdistiller) computes it: the diagonal
    (j == i) is kept, the KL is the mean over all N^2 entries, and eps = 1e-7 is added to each norm
    and inside the log ratio."""
    with torch.autocast(student.device.type, enabled=False):
        s, t = full_precision(student), full_precision(teacher)
        if s.shape[0] != t.shape[0]:
            raise ValueError(f"PKT needs the same batch for student and teacher: {s.shape[0]} vs {t.shape[0]}")

        def conditional(x):
            x = x / (x.norm(dim=1, keepdim=True) + eps)
            kernel = (x @ x.T + 1.0) / 2.0
            return kernel / kernel.sum(dim=1, keepdim=True)

        p_s, p_t = conditional(s), conditional(t)
        return (p_t * torch.log((p_t + eps) / (p_s + eps))).mean()


def sp_loss(student, teacher):
    """Similarity-preserving KD (Tung and Mori 2019, eq. 1-4): G = A A^T for the batch's
    activations A (N, D), each row L2-normalised; 1 / N^2 ||G_t - G_s||_F^2. The two D may differ."""
    with torch.autocast(student.device.type, enabled=False):
        s, t = full_precision(student), full_precision(teacher)
        if s.shape[0] != t.shape[0]:
            raise ValueError(f"SP needs the same batch for student and teacher: {s.shape[0]} vs {t.shape[0]}")
        g_s = F.normalize(s @ s.T, dim=1)
        g_t = F.normalize(t @ t.T, dim=1)
        return (g_t - g_s).pow(2).sum() / s.shape[0] ** 2


def match_spatial(student, teacher):
    """Average-pool the larger of two maps to the smaller's H x W (as RepDistiller and mdistiller
    do for NST and VID when the stages' sizes differ)."""
    (hs, ws), (ht, wt) = student.shape[2:], teacher.shape[2:]
    if (hs, ws) == (ht, wt):
        return student, teacher
    if hs >= ht and ws >= wt:
        return F.adaptive_avg_pool2d(student, (ht, wt)), teacher
    if hs <= ht and ws <= wt:
        return student, F.adaptive_avg_pool2d(teacher, (hs, ws))
    raise ValueError(f"maps of {hs}x{ws} and {ht}x{wt}: neither fits inside the other")


def vid_nll(mean, variance, target):
    """VID (Ahn et al. 2019, eq. 6): the negative log-likelihood of the teacher's map under the
    Gaussian N(mean, variance) with one variance per channel, constant dropped and averaged over
    every element: mean(1/2 ((t - mu)^2 / var + log var)). ``variance`` is (C,)."""
    if mean.shape != target.shape or variance.shape != mean.shape[1:2]:
        raise ValueError(f"VID: mean {tuple(mean.shape)}, variance {tuple(variance.shape)} and target {tuple(target.shape)} do not match")
    variance = variance.view(1, -1, 1, 1)
    return (0.5 * ((mean - target).pow(2) / variance + variance.log())).mean()


def nst_loss(student, teacher):
    """Neuron selectivity transfer (Huang and Wang 2017, eq. 5 with the polynomial kernel
    k(x, y) = (x^T y)^2): the squared MMD between the channels of the two maps, each channel's
    H*W responses L2-normalised, the channels as samples:
    mean_ij k(t_i, t_j) + mean_ij k(s_i, s_j) - 2 mean_ij k(s_i, t_j), averaged over the batch.
    The larger map is average-pooled to the smaller's size first (RepDistiller, mdistiller)."""
    with torch.autocast(student.device.type, enabled=False):
        s, t = match_spatial(*(x.to(torch.promote_types(x.dtype, torch.float32)) for x in (student, teacher)))
        s = F.normalize(s.flatten(2), dim=2)
        t = F.normalize(t.flatten(2), dim=2)

        def kernel_mean(a, b):
            return (a @ b.transpose(1, 2)).pow(2).mean()

        return kernel_mean(t, t).detach() + kernel_mean(s, s) - 2 * kernel_mean(s, t)


def ofd_margin(mean, std):
    """OFD's margin per channel (Heo et al. 2019, eq. 3): E[x | x < 0] for x ~ N(mean, std^2), the
    teacher's pre-ReLU response, = mean - std phi(mean / std) / Phi(-mean / std); -3 std where
    Phi(-mean / std) <= 0.001 (the authors' get_margin_from_BN). Computed in float64."""
    m, s = mean.double(), std.double().abs()
    below = torch.special.ndtr(-m / s)  # P(x < 0)
    density = torch.exp(-(m / s) ** 2 / 2) / math.sqrt(2 * math.pi)
    margin = m - s * density / below.clamp(min=1e-300)
    return torch.where(below > 0.001, margin, -3 * s)


def ofd_loss(student, teacher, margin):
    """OFD's partial L2 distance (Heo et al. 2019, eq. 4) between the connector's output ``student``
    and the teacher's pre-ReLU map: the teacher clipped from below at the margin (C,), no loss where
    the student is already below a non-positive target; summed over C, H, W and averaged over the
    batch (the authors' sum / batch size)."""
    if student.shape != teacher.shape or margin.shape != student.shape[1:2]:
        raise ValueError(f"OFD: student {tuple(student.shape)}, teacher {tuple(teacher.shape)} and margin "
                         f"{tuple(margin.shape)} do not match")
    target = torch.max(teacher, margin.to(teacher.dtype).view(1, -1, 1, 1))
    mask = (student > target) | (target > 0)
    return ((student - target).pow(2) * mask).sum() / student.shape[0]


def hcl_loss(student_features, teacher_features, levels=(4, 2, 1)):
    """ReviewKD's hierarchical context loss (Chen et al. 2021, sec. 3.3): per pair, the MSE of the
    maps plus the MSEs of their average-pooled l x l versions for each l in 4, 2, 1 smaller than the
    map's height, weighted 1, 1/2, 1/4, ... and normalised by the weights' sum; summed over pairs."""
    if len(student_features) != len(teacher_features) or not student_features:
        raise ValueError("ReviewKD needs the same number (>= 1) of student and teacher features")
    total = 0.0
    for s, t in zip(student_features, teacher_features):
        if s.shape != t.shape:
            raise ValueError(f"ReviewKD: student {tuple(s.shape)} and teacher {tuple(t.shape)} do not match")
        loss, weight, weights = F.mse_loss(s, t), 1.0, 1.0
        for level in levels:
            if level >= s.shape[2]:
                continue
            weight /= 2.0
            loss = loss + weight * F.mse_loss(F.adaptive_avg_pool2d(s, level), F.adaptive_avg_pool2d(t, level))
            weights += weight
        total = total + loss / weights
    return total


def contrast_scores(memory, embeddings, candidates, temperature):
    """CRD's critic before normalisation (Tian et al. 2020, eq. 19): exp(<m_j, v_i> / T) for each
    row i of ``embeddings`` (B, D) and its candidates j (B, K + 1) in the memory bank (N, D). All N
    dot products come from one matmul, then the candidates' are gathered (the reference gathers
    the B (K + 1) memory rows first: the same values, without the B (K + 1) D copy)."""
    return torch.exp((embeddings @ memory.T).gather(1, candidates) / temperature)


def nce_loss(probabilities, n_data, eps=1e-7):
    """CRD's NCE objective (Tian et al. 2020, eq. 18) for (B, K + 1) critic values P, the positive
    first: h = P / (P + K / N), loss = -(sum_i log h_i0 + sum_i sum_k log(1 - h_ik)) / B, with the
    reference's eps = 1e-7 in each denominator."""
    k = probabilities.shape[1] - 1
    noise = k / n_data
    positive, negative = probabilities[:, 0], probabilities[:, 1:]
    log_positive = torch.log(positive / (positive + noise + eps))
    log_negative = torch.log(noise / (negative + noise + eps))
    return -(log_positive.sum() + log_negative.sum()) / probabilities.shape[0]
