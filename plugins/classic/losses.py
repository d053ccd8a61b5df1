"""The four classic distillation losses, as plain functions of tensors (no model, no ctx), so the
tests can hold each one to an independent computation of its paper's equations.

Shapes: logits (N, C); feature maps (N, C, H, W); embeddings (N, ...) flattened to (N, D).
"""
import torch
import torch.nn.functional as F


def hint_loss(regressed, hint):
    """FitNets (Romero et al. 2015, eq. 3): 1/2 ||u_h - r(v_g)||^2, as the benchmark versions
    (RepDistiller, mdistiller) compute it: the mean squared error over every element."""
    if regressed.shape != hint.shape:
        raise ValueError(f"regressor output {tuple(regressed.shape)} does not match the hint {tuple(hint.shape)}")
    return F.mse_loss(regressed, hint)


def attention_map(features):
    """Zagoruyko and Komodakis (2017): the spatial attention F_sum^2 (mean over channels of the
    squared activations), flattened and L2-normalised per example: (N, H*W)."""
    return F.normalize(features.pow(2).mean(dim=1).flatten(1), dim=1)


def attention_loss(student_features, teacher_features, beta):
    """beta / 2 * sum over layer pairs of ||at(s) - at(t)||_2^2, each averaged over the batch and
    the H*W positions as the reference code (attention-transfer/utils.py, at_loss) does. Maps of
    different sizes: the larger is average-pooled to the smaller first (RepDistiller, mdistiller)."""
    from .feature_losses import match_spatial  # here: feature_losses imports this module

    if len(student_features) != len(teacher_features) or not student_features:
        raise ValueError("attention transfer needs the same number (>= 1) of student and teacher layers")
    total = 0.0
    for s, t in zip(student_features, teacher_features):
        if s.shape[0] != t.shape[0]:
            raise ValueError(f"attention maps need the same batch: {tuple(s.shape)} vs {tuple(t.shape)}")
        s, t = match_spatial(s, t)
        total = total + (attention_map(s) - attention_map(t)).pow(2).mean()
    return beta / 2 * total


def dkd_parts(student_logits, teacher_logits, labels, temperature):
    """Decoupled KD (Zhao et al. 2022, eq. 7): (TCKD, NCKD), each T^2 * KL(teacher || student)
    summed over classes and averaged over the batch, as in mdistiller's dkd_loss.

    TCKD is the KL between the binary distributions (p_target, 1 - p_target); NCKD the KL between
    the distributions over the non-target classes renormalised among themselves. Both are computed
    from log-sum-exps of the logits (no log of a probability that can underflow)."""
    n, c = student_logits.shape
    target = F.one_hot(labels, c).bool()
    s = student_logits.float() / temperature
    t = teacher_logits.float() / temperature

    def binary_and_rest(z):
        log_all = torch.logsumexp(z, dim=1)
        rest = z[~target].view(n, c - 1)  # the non-target logits, class order kept
        log_target = z[target] - log_all  # log p_target
        log_other = torch.logsumexp(rest, dim=1) - log_all  # log (1 - p_target)
        return torch.stack([log_target, log_other], dim=1), F.log_softmax(rest, dim=1)

    s_binary, s_rest = binary_and_rest(s)
    t_binary, t_rest = binary_and_rest(t)
    tckd = (t_binary.exp() * (t_binary - s_binary)).sum(1).mean()
    nckd = (t_rest.exp() * (t_rest - s_rest)).sum(1).mean()
    scale = temperature**2
    return scale * tckd, scale * nckd


def pairwise_distances(embeddings, eps=1e-12):
    """Euclidean distances between the rows of (N, D), zero on the diagonal (RKD's pdist)."""
    square = embeddings.pow(2).sum(1)
    d2 = (square[:, None] + square[None, :] - 2 * embeddings @ embeddings.T).clamp(min=eps)
    eye = torch.eye(len(embeddings), dtype=torch.bool, device=embeddings.device)
    return d2.sqrt().masked_fill(eye, 0.0)


def full_precision(x):
    """(N, D) in at least float32 with autocast off: distances and Gram differences cancel badly in bf16."""
    return x.flatten(1).to(torch.promote_types(x.dtype, torch.float32))


def rkd_distance(student, teacher, eps=1e-12):
    """RKD-D (Park et al. 2019, eq. 4-5): Huber loss between the pairwise distances of the two
    embeddings, each divided by its mean over the N(N-1) distinct pairs; mean over all N^2 entries."""
    with torch.autocast(student.device.type, enabled=False):
        ds = pairwise_distances(full_precision(student), eps)
        dt = pairwise_distances(full_precision(teacher), eps)
    off = ~torch.eye(len(ds), dtype=torch.bool, device=ds.device)
    return F.smooth_l1_loss(ds / ds[off].mean(), dt / dt[off].mean())


def triplet_cosines(embeddings, eps=1e-12):
    """(N, N, N): entry [a, b, c] is cos of the angle at vertex a between b and c,
    <e_b - e_a, e_c - e_a> / (|e_b - e_a| |e_c - e_a|), and 0 when b == a or c == a (the reference's
    normalised zero vector). Computed from the Gram matrix G: <e_b - e_a, e_c - e_a> = G_bc - G_ab -
    G_ac + G_aa, so it costs N^3 instead of the reference's N^2 D memory and N^3 D time."""
    gram = embeddings @ embeddings.T
    diag = gram.diagonal()
    eye = torch.eye(len(embeddings), dtype=torch.bool, device=embeddings.device)
    # 1 / |e_b - e_a| at [a, b], 0 on the diagonal: zeroes the b == a and c == a entries below
    inverse = (diag[:, None] + diag[None, :] - 2 * gram).clamp(min=eps).rsqrt().masked_fill(eye, 0.0)
    centred = gram - diag[:, None]  # [a, c] = G_ac - G_aa
    dots = gram[None, :, :] - gram[:, :, None] - centred[:, None, :]
    return dots * inverse[:, :, None] * inverse[:, None, :]


def rkd_angle(student, teacher, eps=1e-12):
    """RKD-A (Park et al. 2019, eq. 6-7): Huber loss between the cosines of every triplet's angle;
    mean over all N^3 entries (the reference's view(-1))."""
    with torch.autocast(student.device.type, enabled=False):
        return F.smooth_l1_loss(triplet_cosines(full_precision(student), eps), triplet_cosines(full_precision(teacher), eps))
