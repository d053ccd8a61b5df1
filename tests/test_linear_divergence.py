"""kdbench.losses.linear_divergence: the fused linear + divergence op (kdbench_ext, CPU) against
its PyTorch reference (which materialises the logits), both held to float64 formulas written
from the papers.  CUDA: tests/test_losses_cuda.py."""
import itertools
import math

import pytest
import torch
import torch.nn.functional as F

import kdbench_ext
from kdbench import losses
from test_losses import needs_ext, rel_err

DIVS = losses.DIVERGENCES
TOL = {torch.float64: 1e-9, torch.float32: 1e-5, torch.bfloat16: 3e-2}


def rand(*shape, dtype=torch.float64, scale=1.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale).to(dtype)


def problem(N=23, H=16, V=301, Ht=12, dtype=torch.float64, bias=True, teacher="logits", seed=0):
    """Student (hidden, weight, bias) that require grad, and the teacher's tensors as kwargs."""
    h = rand(N, H, dtype=dtype, seed=seed).requires_grad_(True)
    w = rand(V, H, dtype=dtype, scale=0.5, seed=seed + 1).requires_grad_(True)
    b = rand(V, dtype=dtype, seed=seed + 2).requires_grad_(True) if bias else None
    if teacher == "logits":
        kw = {"teacher_logits": rand(N, V, dtype=dtype, scale=2.0, seed=seed + 3)}
    else:
        kw = {"teacher_hidden": rand(N, Ht, dtype=dtype, seed=seed + 3),
              "teacher_weight": rand(V, Ht, dtype=dtype, scale=0.5, seed=seed + 4),
              "teacher_bias": rand(V, dtype=dtype, seed=seed + 5)}
    return h, w, b, kw


def loss_and_grads(fn, h, w, b, **kw):
    params = [x for x in (h, w, b) if x is not None]
    loss = fn(h, w, b, **kw)
    grads = torch.autograd.grad(loss, params)
    return loss.detach(), grads


def formula_rows(s, t, divergence, T, beta=0.5, skew=0.1):
    """Each divergence per row from its paper's formula, in probabilities (float64)."""
    q, p = F.softmax(s.double() / T, -1), F.softmax(t.double() / T, -1)

    def kl(a, c):
        return torch.where(a > 0, a * (a.log() - c.log()), torch.zeros_like(a)).sum(-1)

    if divergence == "forward_kl":
        return kl(p, q)
    if divergence == "reverse_kl":
        return kl(q, p)
    if divergence == "jsd":  # GKD (Agarwal et al. 2024), eq. for JSD(beta)
        m = beta * p + (1 - beta) * q
        return beta * kl(p, m) + (1 - beta) * kl(q, m)
    if divergence == "skew_forward_kl":  # DistiLLM (Ko et al. 2024), SKL
        return kl(p, skew * p + (1 - skew) * q)
    if divergence == "skew_reverse_kl":  # DistiLLM, SRKL
        return kl(q, skew * q + (1 - skew) * p)
    return 0.5 * (p - q).abs().sum(-1)


@pytest.mark.parametrize("divergence", DIVS)
def test_reference_matches_the_formulas(divergence):
    h, w, b, kw = problem()
    mask = torch.rand(23, generator=torch.Generator().manual_seed(1)) < 0.7
    for T in (0.5, 1.0, 4.0):
        loss = losses.linear_divergence_reference(h, w, b, divergence=divergence, temperature=T, mask=mask, beta=0.3,
                                                  skew=0.2, **kw)
        s = F.linear(h, w, b)[mask]
        rows = formula_rows(s, kw["teacher_logits"][mask], divergence, T, beta=0.3, skew=0.2)
        assert rel_err(loss, rows.mean()) <= 1e-12, T


def test_reference_matches_trl_and_distillm_code():
    """TRL's generalized_jsd_loss and DistiLLM's skewed KLs, transcribed: the same gradients (and
    for the skew KLs a value that differs by the entropy term those codes leave out)."""
    h, w, b, kw = problem(N=6, V=50)
    t = kw["teacher_logits"]
    beta, lam = 0.3, 0.1

    def trl_jsd(s):
        ls, lt = F.log_softmax(s, -1), F.log_softmax(t, -1)
        mix = torch.logsumexp(torch.stack([ls + math.log(1 - beta), lt + math.log(beta)]), 0)
        jsd = beta * F.kl_div(mix, lt, reduction="none", log_target=True) + (1 - beta) * F.kl_div(
            mix, ls, reduction="none", log_target=True)
        return jsd.sum() / s.shape[0]

    def distillm_skew_fwd(s):
        pt, ps = F.softmax(t, -1), F.softmax(s, -1)
        return -(pt * torch.log(lam * pt + (1 - lam) * ps)).sum(-1).mean()

    def distillm_skew_rev(s):
        pt, ps = F.softmax(t, -1), F.softmax(s, -1)
        mixed = (1 - lam) * pt + lam * ps
        return -(ps * torch.log(mixed) - ps * F.log_softmax(s, -1)).sum(-1).mean()

    entropy_t = -(F.softmax(t, -1) * F.log_softmax(t, -1)).sum(-1).mean()
    for name, theirs, offset in [("jsd", trl_jsd, 0.0), ("skew_forward_kl", distillm_skew_fwd, entropy_t),
                                 ("skew_reverse_kl", distillm_skew_rev, 0.0)]:
        ours_loss = losses.linear_divergence_reference(h, w, b, divergence=name, beta=beta, skew=lam, **kw)
        their_loss = theirs(F.linear(h, w, b))
        assert rel_err(ours_loss + offset, their_loss) <= 1e-12, name
        g1 = torch.autograd.grad(ours_loss, (h, w, b))
        g2 = torch.autograd.grad(their_loss, (h, w, b))
        assert all(rel_err(a, c) <= 1e-10 for a, c in zip(g1, g2)), name


@needs_ext
@pytest.mark.parametrize("divergence", DIVS)
def test_fused_matches_reference_float64(divergence):
    """The parity gate: loss and every gradient, every divergence, several temperatures,
    bias or not, teacher as logits or as hidden states + head, masked rows, ragged chunks."""
    assert losses.backend("cpu", torch.float64) == "fused"
    cases = itertools.product([0.5, 1.0, 4.0], [True, False], ["logits", "hidden"], [False, True], [None, 1, 5])
    for i, (T, bias, teacher, masked, chunk) in enumerate(cases):
        h, w, b, kw = problem(bias=bias, teacher=teacher, seed=i)
        mask = None
        if masked:
            mask = torch.rand(23, generator=torch.Generator().manual_seed(i)) < 0.6
            mask[0] = False  # the first row of the first chunk
        args = dict(divergence=divergence, temperature=T, mask=mask, beta=0.3, skew=0.2, **kw)
        loss, grads = loss_and_grads(losses.linear_divergence, h, w, b, chunk_size=chunk, **args)
        ref_loss, ref_grads = loss_and_grads(losses.linear_divergence_reference, h, w, b, **args)
        case = (T, bias, teacher, masked, chunk)
        assert loss.dtype == torch.float64
        assert rel_err(loss, ref_loss) <= TOL[torch.float64], case
        for g, rg in zip(grads, ref_grads):
            assert g.shape == rg.shape and rel_err(g, rg) <= TOL[torch.float64], case
        if masked:
            assert (grads[0][~mask] == 0).all()


@needs_ext
@pytest.mark.parametrize("divergence", DIVS)
def test_gradcheck_float64(divergence):
    h, w, b, kw = problem(N=5, H=3, V=7, Ht=2, teacher="hidden")
    mask = torch.tensor([True, False, True, True, True])

    def f(h, w, b):
        return losses.linear_divergence(h, w, b, divergence=divergence, temperature=2.0, mask=mask, chunk_size=2, **kw)

    assert torch.autograd.gradcheck(f, (h, w, b))


@needs_ext
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_fused_matches_reference_low_precision(dtype):
    for divergence in DIVS:
        h, w, b, kw = problem(N=40, H=32, V=1000, dtype=dtype, teacher="hidden")
        args = dict(divergence=divergence, temperature=2.0, **kw)
        loss, grads = loss_and_grads(losses.linear_divergence, h, w, b, chunk_size=16, **args)
        # the float64 reference on the same (rounded) inputs
        h64, w64, b64 = (x.detach().double().requires_grad_(True) for x in (h, w, b))
        kw64 = {k: v.double() for k, v in kw.items()}
        ref_loss, ref_grads = loss_and_grads(losses.linear_divergence_reference, h64, w64, b64,
                                             divergence=divergence, temperature=2.0, **kw64)
        assert loss.dtype == dtype and all(g.dtype == dtype for g in grads)
        assert rel_err(loss, ref_loss) <= TOL[dtype], divergence
        # total variation's gradient has sign(q - p): classes where bf16 logits move q across p flip
        tol = 0.1 if divergence == "total_variation" and dtype == torch.bfloat16 else TOL[dtype]
        for g, rg in zip(grads, ref_grads):
            assert rel_err(g, rg) <= tol, divergence


@needs_ext
def test_leading_dims_mask_and_mixed_teacher_dtype():
    """[batch, length, H] hidden states, a [batch, length] mask (as from labels != -100), and
    float32 teacher logits for a float64 student."""
    h = rand(3, 5, 8).requires_grad_(True)
    w = rand(40, 8, seed=1).requires_grad_(True)
    t = rand(3, 5, 40, seed=2, dtype=torch.float32)
    labels = torch.tensor([[1, 2, -100, 3, -100], [-100] * 5, [4, 5, 6, 7, 8]])
    args = dict(teacher_logits=t, mask=labels != -100, divergence="reverse_kl")
    loss, (gh, gw) = loss_and_grads(losses.linear_divergence, h, w, None, chunk_size=3, **args)
    ref_loss, (rgh, rgw) = loss_and_grads(losses.linear_divergence_reference, h, w, None, **args)
    assert rel_err(loss, ref_loss) <= 1e-9 and rel_err(gh, rgh) <= 1e-9 and rel_err(gw, rgw) <= 1e-9
    assert (gh[1] == 0).all()


@needs_ext
def test_no_row_counts():
    h, w, b, kw = problem(N=4)
    loss, grads = loss_and_grads(losses.linear_divergence, h, w, b, mask=torch.zeros(4, dtype=torch.bool), **kw)
    ref_loss, _ = loss_and_grads(losses.linear_divergence_reference, h, w, b, mask=torch.zeros(4, dtype=torch.bool),
                                 **kw)
    assert loss.item() == 0.0 and ref_loss.item() == 0.0
    assert all((g == 0).all() for g in grads)


@needs_ext
def test_identical_student_and_teacher_give_zero():
    h, w, b, _ = problem(N=6, V=50)
    for divergence in DIVS:
        loss = losses.linear_divergence(h, w, b, teacher_hidden=h.detach(), teacher_weight=w.detach(),
                                        teacher_bias=b.detach(), divergence=divergence)
        assert abs(loss.item()) <= 1e-14, divergence


@needs_ext
def test_only_what_requires_grad_and_grad_output():
    h, w, b, kw = problem()
    _, (rgh, rgw, rgb) = loss_and_grads(losses.linear_divergence_reference, h, w, b, **kw)
    w2 = w.detach()  # a frozen head: only the hidden states' gradient
    (gh,) = torch.autograd.grad(-2.5 * losses.linear_divergence(h, w2, b.detach(), **kw), (h,))
    assert rel_err(gh, -2.5 * rgh) <= 1e-9
    loss = losses.linear_divergence(h, w, b, **kw)
    loss.backward(retain_graph=True)
    (3 * loss).backward()
    assert rel_err(w.grad, 4 * rgw) <= 1e-9 and rel_err(b.grad, 4 * rgb) <= 1e-9 and rel_err(h.grad, 4 * rgh) <= 1e-9
    with torch.no_grad():
        assert losses.linear_divergence(h, w, b, **kw).grad_fn is None


@needs_ext
def test_every_cpu_isa_matches_float64():
    isas = ["default", "avx2", "avx512"]
    best = kdbench_ext.cpu_isa()
    try:
        for isa in isas[: isas.index(best) + 1]:
            kdbench_ext.set_cpu_isa(isa)
            for dtype, divergence in itertools.product([torch.float64, torch.float32], DIVS):
                h, w, b, kw = problem(N=9, V=37, dtype=dtype)
                loss, grads = loss_and_grads(losses.linear_divergence, h, w, b, divergence=divergence, chunk_size=4,
                                             **kw)
                ref_loss, ref_grads = loss_and_grads(losses.linear_divergence_reference, h, w, b,
                                                     divergence=divergence, **kw)
                assert rel_err(loss, ref_loss) <= TOL[dtype], (isa, dtype, divergence)
                assert all(rel_err(g, r) <= TOL[dtype] for g, r in zip(grads, ref_grads)), (isa, dtype, divergence)
    finally:
        kdbench_ext.set_cpu_isa("auto")


@needs_ext
def test_results_do_not_depend_on_threads():
    h, w, b, kw = problem(N=64, H=16, V=3000, dtype=torch.float32)
    before = torch.get_num_threads()
    out = []
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            out.append(loss_and_grads(losses.linear_divergence, h, w, b, divergence="jsd", chunk_size=16, **kw))
    finally:
        torch.set_num_threads(before)
    assert torch.equal(out[0][0], out[1][0])


@needs_ext
def test_autocast_runs_the_matmuls_in_bfloat16():
    """Under autocast the op casts hidden states and heads as F.linear would; the gradients
    reach the float32 parameters in float32."""
    h, w, b, kw = problem(N=16, H=32, V=500, dtype=torch.float32, teacher="hidden")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, grads = loss_and_grads(losses.linear_divergence, h, w, b, divergence="forward_kl", **kw)
        ref_loss, ref_grads = loss_and_grads(losses.linear_divergence_reference, h, w, b, divergence="forward_kl",
                                             **kw)
    assert loss.dtype == torch.bfloat16 and all(g.dtype == torch.float32 for g in grads)
    assert rel_err(loss, ref_loss) <= 2e-2 and all(rel_err(g, r) <= 3e-2 for g, r in zip(grads, ref_grads))


def test_teacher_that_requires_grad_takes_the_reference():
    h, w, b, kw = problem(N=4, V=20, teacher="hidden")
    kw["teacher_weight"].requires_grad_(True)
    losses.linear_divergence(h, w, b, **kw).backward()
    assert kw["teacher_weight"].grad is not None
    if kdbench_ext.available():
        with pytest.raises(RuntimeError, match="teacher tensor requires grad"):
            torch.ops.kdbench.linear_divergence(h, w, b, kw["teacher_hidden"], kw["teacher_weight"], None, None, None,
                                                0, 0.0, 1.0, 0)


@needs_ext
def test_opcheck():
    """Schema, fake kernel, autograd registration and AOT dispatch of the C++ ops."""
    h, w, b, kw = problem(N=6, H=4, V=9, teacher="hidden")
    t = rand(6, 9, seed=9)
    mask = torch.tensor([True, True, False, True, False, True])
    op, fwd = torch.ops.kdbench.linear_divergence.default, torch.ops.kdbench.linear_divergence_fwd.default
    torch.library.opcheck(op, (h, w, b, None, None, None, t, mask, 2, 0.5, 2.0, 4))
    torch.library.opcheck(op, (h, w, None, kw["teacher_hidden"], kw["teacher_weight"], kw["teacher_bias"], None, None,
                               4, 0.1, 1.0, 0))
    torch.library.opcheck(fwd, (h.detach(), w.detach(), b.detach(), None, None, None, t, None, 0, 0.0, 1.0, 2,
                                [True, False, True]))


@needs_ext
def test_under_torch_compile():
    h, w, b, kw = problem(N=8, H=4, V=30)

    def step(h, w, b):
        return losses.linear_divergence(h, w, b, divergence="jsd", temperature=2.0, **kw)

    eager = loss_and_grads(lambda h, w, b: step(h, w, b), h, w, b)
    torch._dynamo.reset()
    compiled = loss_and_grads(torch.compile(step, backend="aot_eager", fullgraph=True), h, w, b)
    torch._dynamo.reset()
    assert rel_err(compiled[0], eager[0]) <= 1e-12
    assert all(rel_err(a, c) <= 1e-12 for a, c in zip(compiled[1], eager[1]))


def test_argument_errors():
    h, w, b, kw = problem(N=4, H=3, V=5)
    cases = [
        (dict(divergence="kl"), "divergence must be one of"),
        (dict(divergence="jsd", beta=1.0), "0 < beta < 1"),
        (dict(divergence="skew_forward_kl", skew=1.0), "0 <= skew < 1"),
        (dict(temperature=0.0), "temperature"),
        (dict(chunk_size=0), "chunk_size"),
        (dict(mask=torch.ones(3, dtype=torch.bool)), "mask must be"),
    ]
    for fn in (losses.linear_divergence, losses.linear_divergence_reference):
        for extra, match in cases:
            with pytest.raises(ValueError, match=match):
                fn(h, w, b, **{**kw, **extra})
        with pytest.raises(ValueError, match="either as teacher_logits"):
            fn(h, w, b)
        with pytest.raises(ValueError, match="teacher_logits must be"):
            fn(h, w, b, teacher_logits=rand(4, 6))
        with pytest.raises(ValueError, match="do not fit"):
            fn(h, w[:, :2], b, **kw)
    if kdbench_ext.available():
        with pytest.raises(RuntimeError, match="divergence code"):
            torch.ops.kdbench.linear_divergence(h, w, b, None, None, None, kw["teacher_logits"], None, 9, 0.0, 1.0, 0)
