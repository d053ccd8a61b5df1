"""The logit methods' losses (DIST, CTKD, MLKD), as plain functions of tensors (no model, no ctx),
so the tests can hold each one to an independent computation of its paper's equations and to the
reference code's functions.

Shapes: logits (N, C), labels (N,). Logit standardisation, the option of kd, dkd and mlkd, is
kdbench.losses.standardize_logits (one implementation for all three).
"""
import math

import torch
import torch.nn.functional as F

from kdbench.losses import standardize_logits


def full_precision(z):
    """At least float32 (autocast hands bf16 logits on CUDA; the statistics below cancel in bf16)."""
    return z.to(torch.promote_types(z.dtype, torch.float32))


# --- DIST -----------------------------------------------------------------------------------------
def pearson_rows(a, b, eps=1e-8):
    """Pearson correlation of each row of a with the same row of b: the cosine of the centred
    rows, eps added to the product of their norms as in the reference (dist_kd.py)."""
    a = a - a.mean(1, keepdim=True)
    b = b - b.mean(1, keepdim=True)
    return (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1) + eps)


def dist_parts(student_logits, teacher_logits, temperature):
    """DIST (Huang et al. 2022, eq. 5-8): (inter, intra), each tau^2 * (1 - mean Pearson
    correlation) of the probabilities softmax(z / tau): inter-class relation per instance
    (correlation across the C classes, mean over the N instances), intra-class relation per class
    (correlation across the N instances, mean over the C classes)."""
    with torch.autocast(student_logits.device.type, enabled=False):
        ys = F.softmax(full_precision(student_logits) / temperature, dim=1)
        yt = F.softmax(full_precision(teacher_logits) / temperature, dim=1)
        scale = temperature**2
        inter = scale * (1 - pearson_rows(ys, yt).mean())
        intra = scale * (1 - pearson_rows(ys.T, yt.T).mean())
    return inter, intra


# --- CTKD -----------------------------------------------------------------------------------------
class GradientReversal(torch.autograd.Function):
    """Identity forward; the backward multiplies the gradient by -lambda (Ganin and Lempitsky
    2015), so the parameters before it ascend the loss that the rest of the network descends."""

    @staticmethod
    def forward(ctx, x, lambda_):
        ctx.lambda_ = lambda_
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return -ctx.lambda_ * grad, None


def reverse_gradient(x, lambda_):
    return GradientReversal.apply(x, float(lambda_))


def ctkd_lambda(epoch, epochs, low=0.0, high=1.0):
    """CTKD's curriculum (Li et al. 2023, eq. 7): lambda rises from ``low`` to ``high`` as
    low + (high - low) (1 - cos(pi min(epoch, epochs) / epochs)) / 2, ``epoch`` counted from 1 as
    the reference's trainer does (CosineDecay in train_student.py; ``high`` at once when epochs is 0)."""
    if epochs <= 0:
        return high
    progress = min(max(epoch, 0), epochs) / epochs
    return low + (high - low) * (1 - math.cos(math.pi * progress)) / 2


# --- MLKD -----------------------------------------------------------------------------------------
def multi_temperature_kl(student_logits, teacher_logits, temperatures):
    """MLKD's instance-level alignment (Jin et al. 2023): sum over the temperatures T of
    T^2 KL(softmax(t / T) || softmax(s / T)), summed over classes and averaged over the batch."""
    s, t = full_precision(student_logits), full_precision(teacher_logits)
    total = 0.0
    for T in temperatures:
        log_ps, log_pt = F.log_softmax(s / T, dim=1), F.log_softmax(t / T, dim=1)
        total = total + T * T * (log_pt.exp() * (log_pt - log_ps)).sum(1).mean()
    return total


def batch_gram_loss(student_logits, teacher_logits, temperatures):
    """MLKD's batch-level alignment: sum over T of ||P_t P_t^T - P_s P_s^T||_F^2 / N, P the (N, C)
    probabilities at temperature T (the N x N input correlation; the reference's bc_loss)."""
    return _gram_loss(full_precision(student_logits), full_precision(teacher_logits), temperatures, classes=False)


def class_gram_loss(student_logits, teacher_logits, temperatures):
    """MLKD's class-level alignment: sum over T of ||P_t^T P_t - P_s^T P_s||_F^2 / C (the C x C
    category correlation; the reference's cc_loss)."""
    return _gram_loss(full_precision(student_logits), full_precision(teacher_logits), temperatures, classes=True)


def _gram_loss(s, t, temperatures, classes):
    total = 0.0
    for T in temperatures:
        ps, pt = F.softmax(s / T, dim=1), F.softmax(t / T, dim=1)
        if classes:
            gs, gt, size = ps.T @ ps, pt.T @ pt, ps.shape[1]
        else:
            gs, gt, size = ps @ ps.T, pt @ pt.T, ps.shape[0]
        total = total + (gt - gs).pow(2).sum() / size
    return total


def below_median_fraction(values):
    """The fraction of ``values`` at or below their median (linear interpolation, numpy's default
    percentile). The reference masks its batch-mean losses with ``values <= median`` and averages,
    which scales them by this fraction."""
    values = values.detach().flatten().double()
    return (values <= torch.quantile(values, 0.5)).double().mean().item()


def mlkd_parts(weak, strong, temperatures, logit_stand=False):
    """MLKD's distillation terms as the reference computes them (Jin-Ying/Multi-Level-Logit-
    Distillation, KD_ours.forward_train; sunshangquan/logit-standardization-KD, MLKD.py):
    ``weak`` and ``strong`` are (student logits, teacher logits) of the two views.

        m   = fraction of the batch whose teacher confidence (max softmax at T = 1) on the weak
              view is at or below its median; c = the same over the classes' summed confidences
        kd  = m * KL_T(weak) + KL_T(strong)        summed over the temperatures T
        cc  = c * class-level(weak)                summed over T
        bc  = m * batch-level(weak)                summed over T

    Returns (kd, cc, bc). ``logit_stand`` z-scores the logits of the KL terms only, as the
    reference does."""
    (s_weak, t_weak), (s_strong, t_strong) = weak, strong
    with torch.autocast(s_weak.device.type, enabled=False):
        confidence = F.softmax(full_precision(t_weak).detach(), dim=1)
        m = below_median_fraction(confidence.max(1).values)
        c = below_median_fraction(confidence.sum(0))
        if logit_stand:
            kl_weak = (standardize_logits(s_weak), standardize_logits(t_weak))
            kl_strong = (standardize_logits(s_strong), standardize_logits(t_strong))
        else:
            kl_weak, kl_strong = (s_weak, t_weak), (s_strong, t_strong)
        kd = m * multi_temperature_kl(*kl_weak, temperatures) + multi_temperature_kl(*kl_strong, temperatures)
        cc = c * class_gram_loss(s_weak, t_weak, temperatures)
        bc = m * batch_gram_loss(s_weak, t_weak, temperatures)
    return kd, cc, bc
