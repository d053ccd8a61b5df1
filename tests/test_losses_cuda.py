"""The CUDA kernels of kdbench_ext against a float64 reference.  They run only where a GPU
is present and the extension was built with CUDA; elsewhere CI compiles them
(.ci/cuda-compile-check.sh) and these tests skip, saying why."""
import pytest
import torch

import kdbench_ext
from kdbench import losses
from test_losses import TOL, kl_and_grad, ref_kl, rel_err  # the same float64 reference and tolerances

if not torch.cuda.is_available():
    pytest.skip("no CUDA GPU on this machine", allow_module_level=True)
if not kdbench_ext.available():
    pytest.skip(f"kdbench_ext is not built/loaded: {kdbench_ext.load_error()!r}", allow_module_level=True)
if not kdbench_ext.has_cuda():
    pytest.skip("kdbench_ext was built without its CUDA kernels (KDBENCH_CUDA=0, or no CUDA toolkit "
                "at build time)", allow_module_level=True)

DEV = "cuda"
DTYPES = [torch.float32, torch.bfloat16, torch.float16, torch.float64]


def logits(*shape, dtype=torch.float32, scale=3.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale).to(DEV, dtype)


def test_backend_is_fused_on_cuda():
    for dtype in DTYPES:
        assert losses.backend(DEV, dtype) == "fused"


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("C", [1, 3, 10, 100, 1000, 1024, 1025, 4096, 32000, 32003])
def test_kl_matches_float64(dtype, C):
    # 1024 / 1025: the warp and block kernels; odd C: the scalar (unaligned) path
    for i, T in enumerate([0.5, 1.0, 4.0, 20.0]):
        s, t = logits(5, C, dtype=dtype, seed=i), logits(5, C, dtype=dtype, seed=50 + i)
        loss, g = kl_and_grad(s, t, T)
        ref_loss, ref_g = ref_kl(s, t, T)
        assert loss.device.type == "cuda" and loss.dtype == dtype and g.dtype == dtype
        assert rel_err(loss, ref_loss) <= TOL[dtype], (C, T)
        assert rel_err(g, ref_g) <= TOL[dtype], (C, T)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_kl_special_inputs(dtype):
    for C in (7, 300, 5000):
        # identical rows: exactly zero
        s = logits(4, C, dtype=dtype)
        loss, g = kl_and_grad(s, s.clone(), 2.0)
        assert loss.item() == 0.0 and (g == 0).all(), C
        # classes masked in both rows
        t = logits(4, C, dtype=dtype, seed=1)
        mask = torch.rand(4, C, generator=torch.Generator().manual_seed(2)).to(DEV) < 0.3
        mask[1, 3:] = True
        sm, tm = s.masked_fill(mask, float("-inf")), t.masked_fill(mask, float("-inf"))
        loss, g = kl_and_grad(sm, tm, 2.0, "none")
        assert torch.isfinite(loss).all() and torch.isfinite(g).all() and (g[mask] == 0).all()
        for r in range(4):
            keep = ~mask[r]
            ref_loss, ref_g = ref_kl(sm[r, keep], tm[r, keep], 2.0, "sum")
            assert rel_err(loss[r], ref_loss) <= TOL[dtype] and rel_err(g[r, keep], ref_g) <= TOL[dtype]
        # logits of magnitude 1e4
        if dtype != torch.float16:
            s4, t4 = logits(4, C, dtype=dtype, scale=1e4), logits(4, C, dtype=dtype, scale=1e4, seed=3)
            loss, g = kl_and_grad(s4, t4, 0.5)
            ref_loss, ref_g = ref_kl(s4, t4, 0.5)
            assert torch.isfinite(loss) and rel_err(loss, ref_loss) <= TOL[dtype] and rel_err(g, ref_g) <= TOL[dtype]


def test_kl_strides_reductions_and_grad_output():
    cases = [
        (logits(600, 6).t(), logits(6, 600, seed=1)),
        (logits(6, 1100, seed=2)[:, :1000], logits(6, 1000, seed=3)),
        (logits(6, 1001, seed=4)[:, 1:], logits(6, 1000, seed=5)),  # rows 4 bytes off 16
        (logits(2, 3, 2000, seed=6), logits(2, 3, 2000, seed=7)),
    ]
    for s, t in cases:
        for reduction in ("batchmean", "sum", "none"):
            ref_loss, ref_g = ref_kl(s, t, 3.0, reduction)
            if reduction == "none":
                go = logits(*s.shape[:-1], seed=8)
                expected = ref_g * go.double().cpu().unsqueeze(-1)
            else:
                go, expected = torch.tensor(-2.5, device=DEV), ref_g * -2.5
            loss, g = kl_and_grad(s, t, 3.0, reduction, grad_output=go)
            assert rel_err(loss, ref_loss) <= 1e-5 and rel_err(g, expected) <= 1e-5, (s.shape, reduction)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_mse_matches_float64(dtype):
    for shape in [(1,), (33, 65), (16, 128, 7, 7), (1000, 1003)]:
        x = logits(*shape, dtype=dtype).requires_grad_(True)
        y = logits(*shape, dtype=dtype, seed=1).requires_grad_(True)
        loss = losses.feature_mse(x, y)
        gx, gy = torch.autograd.grad(loss, (x, y), torch.tensor(1.5, device=DEV, dtype=dtype))
        d = x.detach().double().cpu() - y.detach().double().cpu()
        ref_g = 1.5 * 2 * d / d.numel()
        assert rel_err(loss, (d**2).mean()) <= TOL[dtype]
        assert rel_err(gx, ref_g) <= TOL[dtype] and rel_err(gy, -ref_g) <= TOL[dtype]


def test_gradcheck_and_compile():
    s = logits(3, 7, dtype=torch.float64).requires_grad_(True)
    t = logits(3, 7, dtype=torch.float64, seed=1)
    assert torch.autograd.gradcheck(lambda x: losses.kd_kl_loss(x, t, 2.5), (s,))
    x = logits(4, 9, dtype=torch.float64).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda a: losses.feature_mse(a, t.new_ones(4, 9)), (x,))

    def step(s, t, f, h):
        return losses.kd_kl_loss(s, t, 4.0) + 0.5 * losses.feature_mse(f, h)

    s, t = logits(6, 3000).requires_grad_(True), logits(6, 3000, seed=1)
    f, h = logits(6, 8, 3).requires_grad_(True), logits(6, 8, 3, seed=2)
    eager = step(s, t, f, h)
    ge = torch.autograd.grad(eager, (s, f))
    torch._dynamo.reset()
    out = torch.compile(step, fullgraph=True)(s, t, f, h)
    gc = torch.autograd.grad(out, (s, f))
    assert rel_err(out, eager) <= 1e-6 and all(rel_err(a, b) <= 1e-6 for a, b in zip(gc, ge))
    torch._dynamo.reset()


def test_fused_agrees_with_reference_and_cpu():
    s, t = logits(64, 1000, dtype=torch.bfloat16), logits(64, 1000, dtype=torch.bfloat16, seed=1)
    loss, g = kl_and_grad(s, t, 4.0)
    with losses.reference_only():
        ref_loss, ref_g = kl_and_grad(s, t, 4.0)
    cpu_loss, cpu_g = kl_and_grad(s.cpu(), t.cpu(), 4.0)
    assert rel_err(loss, ref_loss) <= 1e-2 and rel_err(g, ref_g) <= 1e-2
    assert rel_err(loss, cpu_loss) <= 1e-2 and rel_err(g, cpu_g) <= 1e-2


@pytest.mark.parametrize("divergence", losses.DIVERGENCES)
def test_linear_divergence_matches_reference_float64(divergence):
    """The fused linear + divergence op on CUDA: the same parity gate as on the CPU."""
    from test_linear_divergence import loss_and_grads, problem

    for bias, teacher, masked, chunk in [(True, "logits", False, None), (False, "hidden", True, 5), (True, "hidden", True, 1)]:
        h, w, b, kw = problem(bias=bias, teacher=teacher)
        h, w = (x.detach().to(DEV).requires_grad_(True) for x in (h, w))
        b = b.detach().to(DEV).requires_grad_(True) if b is not None else None
        kw = {k: v.to(DEV) for k, v in kw.items()}
        mask = (torch.arange(23) % 3 != 0).to(DEV) if masked else None
        args = dict(divergence=divergence, temperature=2.0, mask=mask, beta=0.3, skew=0.2, **kw)
        loss, grads = loss_and_grads(losses.linear_divergence, h, w, b, chunk_size=chunk, **args)
        ref_loss, ref_grads = loss_and_grads(losses.linear_divergence_reference, h, w, b, **args)
        assert rel_err(loss, ref_loss) <= 1e-9, (bias, teacher, masked, chunk)
        assert all(rel_err(g, r) <= 1e-9 for g, r in zip(grads, ref_grads)), (bias, teacher, masked, chunk)


def test_linear_divergence_under_bf16_autocast():
    from test_linear_divergence import loss_and_grads, problem

    h, w, b, kw = problem(N=64, H=64, V=5000, dtype=torch.float32, teacher="hidden")
    h, w, b = (x.detach().to(DEV).requires_grad_(True) for x in (h, w, b))
    kw = {k: v.to(DEV) for k, v in kw.items()}
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss, grads = loss_and_grads(losses.linear_divergence, h, w, b, divergence="jsd", **kw)
        ref_loss, ref_grads = loss_and_grads(losses.linear_divergence_reference, h, w, b, divergence="jsd", **kw)
    assert loss.dtype == torch.bfloat16 and all(g.dtype == torch.float32 for g in grads)
    assert rel_err(loss, ref_loss) <= 2e-2 and all(rel_err(g, r) <= 3e-2 for g, r in zip(grads, ref_grads))
