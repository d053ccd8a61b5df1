"""kdbench.losses: the fused ops (kdbench_ext, CPU) and the PyTorch reference, both held
to a float64 reference.  CUDA: tests/test_losses_cuda.py."""
import contextlib
import os
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F

import kdbench_ext
from kdbench import losses

EXT = kdbench_ext.available()
needs_ext = pytest.mark.skipif(not EXT, reason=f"kdbench_ext is not built/loaded: {kdbench_ext.load_error()!r}")
BACKENDS = ["fused", "reference"]
DTYPES = [torch.float32, torch.bfloat16, torch.float16]
TOL = {torch.float32: 1e-5, torch.bfloat16: 1e-2, torch.float16: 1e-2, torch.float64: 1e-10}
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@contextlib.contextmanager
def using(backend, device="cpu", dtype=torch.float32):
    """Run the block on the given backend, and check that it really is the one in use."""
    if backend == "fused":
        if not EXT:
            pytest.skip(f"kdbench_ext is not built/loaded: {kdbench_ext.load_error()!r}")
        assert losses.backend(device, dtype) == "fused"
        yield
    else:
        with losses.reference_only():
            assert losses.backend(device, dtype) == "reference"
            yield


def ref_kl(s, t, T, reduction="batchmean"):
    """float64 closed form: (loss, d loss / d s) for grad_output = 1."""
    C = s.shape[-1]
    s64 = s.detach().double().cpu().reshape(-1, C)
    t64 = t.detach().double().cpu().reshape(-1, C)
    ls, lt = F.log_softmax(s64 / T, -1), F.log_softmax(t64 / T, -1)
    ps, pt = ls.exp(), lt.exp()
    rows = (pt * torch.where(pt > 0, lt - ls, torch.zeros_like(lt))).sum(-1) * T * T
    grad = T * (ps - pt)
    n = rows.shape[0]
    if reduction == "none":
        loss = rows.reshape(s.shape[:-1])
    elif reduction == "sum":
        loss = rows.sum()
    else:
        loss, grad = rows.sum() / n, grad / n
    return loss, grad.reshape(s.shape)


def rel_err(a, b):
    """max |a - b| / max |b| (exactly 0 when both are all zero), on any device."""
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    diff = (a - b).abs().max().item() if a.numel() else 0.0
    scale = b.abs().max().item() if b.numel() else 0.0
    return diff / scale if scale > 0 else diff


def kl_and_grad(s, t, T, reduction="batchmean", grad_output=None):
    s = s.detach().clone().requires_grad_(True)
    loss = losses.kd_kl_loss(s, t, T, reduction)
    go = torch.ones_like(loss) if grad_output is None else grad_output
    (g,) = torch.autograd.grad(loss, s, go)
    return loss.detach(), g


def logits(*shape, dtype=torch.float32, scale=3.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale).to(dtype)


# ----------------------------------------------------------------------------- KL


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("C", [1, 3, 10, 100, 1000, 32000])
def test_kl_matches_float64(backend, dtype, C):
    with using(backend, dtype=dtype):
        for i, T in enumerate([0.5, 1.0, 4.0, 20.0]):
            s, t = logits(3, C, dtype=dtype, seed=i), logits(3, C, dtype=dtype, seed=100 + i)
            loss, g = kl_and_grad(s, t, T)
            ref_loss, ref_g = ref_kl(s, t, T)
            assert loss.dtype == dtype and g.dtype == dtype and g.shape == s.shape
            assert rel_err(loss, ref_loss) <= TOL[dtype], (C, T)
            assert rel_err(g, ref_g) <= TOL[dtype], (C, T)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", [(1, 1000), (1000,), (1, 7)])
def test_kl_single_row(backend, shape):
    with using(backend):
        s, t = logits(*shape), logits(*shape, seed=1)
        loss, g = kl_and_grad(s, t, 2.0)
        ref_loss, ref_g = ref_kl(s, t, 2.0)
        assert loss.shape == () and rel_err(loss, ref_loss) <= 1e-5 and rel_err(g, ref_g) <= 1e-5


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("reduction", ["batchmean", "sum", "none"])
def test_kl_reductions_with_grad_output(backend, reduction):
    with using(backend):
        s, t = logits(2, 5, 300), logits(2, 5, 300, seed=1)
        ref_loss, ref_g = ref_kl(s, t, 3.0, reduction)
        if reduction == "none":
            go = logits(2, 5, seed=2)
            expected_g = ref_g * go.double().unsqueeze(-1)
        else:
            go = torch.tensor(-2.5)
            expected_g = ref_g * -2.5
        loss, g = kl_and_grad(s, t, 3.0, reduction, grad_output=go)
        assert loss.shape == ref_loss.shape
        assert rel_err(loss, ref_loss) <= 1e-5 and rel_err(g, expected_g) <= 1e-5


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_kl_logits_of_magnitude_1e4(backend, dtype):
    with using(backend, dtype=dtype):
        for T in (0.5, 4.0):
            for C in (10, 1000):
                s, t = logits(4, C, dtype=dtype, scale=1e4), logits(4, C, dtype=dtype, scale=1e4, seed=1)
                # also rows whose logits are huge but close together
                s[0], t[0] = (1e4 + logits(C, seed=3)).to(dtype), (1e4 + logits(C, seed=4)).to(dtype)
                loss, g = kl_and_grad(s, t, T)
                ref_loss, ref_g = ref_kl(s, t, T)
                assert torch.isfinite(loss) and torch.isfinite(g).all()
                assert rel_err(loss, ref_loss) <= TOL[dtype] and rel_err(g, ref_g) <= TOL[dtype]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_kl_masked_classes(backend, dtype):
    with using(backend, dtype=dtype):
        C = 2100  # masks across at::vec tails and chunk edges
        s, t = logits(4, C, dtype=dtype), logits(4, C, dtype=dtype, seed=1)
        mask = torch.rand(4, C, generator=torch.Generator().manual_seed(5)) < 0.3
        mask[1, :2048] = True  # a row whose first chunk is all masked
        mask[2, 5:] = True  # a row with 5 classes left
        s = s.masked_fill(mask, float("-inf"))
        t = t.masked_fill(mask, float("-inf"))
        loss, g = kl_and_grad(s, t, 2.0, "none")
        assert torch.isfinite(loss).all() and torch.isfinite(g).all()
        assert (g[mask] == 0).all()
        for r in range(4):  # the same as the loss over the kept classes only
            keep = ~mask[r]
            ref_loss, ref_g = ref_kl(s[r, keep], t[r, keep], 2.0, "sum")
            assert rel_err(loss[r], ref_loss) <= TOL[dtype] and rel_err(g[r, keep], ref_g) <= TOL[dtype]


@pytest.mark.parametrize("backend", BACKENDS)
def test_kl_noncontiguous_inputs(backend):
    with using(backend):
        base_s, base_t = logits(500, 6), logits(6, 1100, seed=1)
        cases = [
            (base_s.t(), logits(6, 500, seed=2)),  # transposed: last dim strided
            (logits(6, 1000, seed=3), base_t[:, :1000]),  # sliced rows: row stride 1100
            (logits(6, 2000, seed=4)[:, ::2], logits(6, 1000, seed=5)),  # step slice
            (logits(2, 3, 257, seed=6), logits(2, 3, 257, seed=7)),  # [..., C]
            (logits(1, 300, seed=8).expand(4, 300), logits(4, 300, seed=9)),  # stride-0 rows
        ]
        for s, t in cases:
            loss, g = kl_and_grad(s, t, 4.0)
            ref_loss, ref_g = ref_kl(s, t, 4.0)
            assert rel_err(loss, ref_loss) <= 1e-5 and rel_err(g, ref_g) <= 1e-5, s.shape


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES + [torch.float64], ids=str)
def test_kl_identical_inputs_give_zero(backend, dtype):
    """Exactly zero from the fused op; the reference's autograd leaves rounding noise."""
    with using(backend, dtype=dtype):
        for C in (1, 3, 100, 5000):
            s = logits(5, C, dtype=dtype)
            for T in (0.5, 4.0):
                loss, g = kl_and_grad(s, s.clone(), T)
                assert loss.item() == 0.0, (C, T)
                if backend == "fused":
                    assert (g == 0).all(), (C, T)
                else:
                    assert g.abs().max().item() <= 1e-6, (C, T)


@needs_ext
def test_kl_gradcheck_float64():
    s = logits(3, 7, dtype=torch.float64).requires_grad_(True)
    t = logits(3, 7, dtype=torch.float64, seed=1)
    assert losses.backend("cpu", torch.float64) == "fused"
    for red in ("batchmean", "sum", "none"):
        assert torch.autograd.gradcheck(lambda x: losses.kd_kl_loss(x, t, 2.5, red), (s,))
    x = logits(4, 9, dtype=torch.float64).requires_grad_(True)
    y = logits(4, 9, dtype=torch.float64, seed=1).requires_grad_(True)
    assert torch.autograd.gradcheck(losses.feature_mse, (x, y))


@needs_ext
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_fused_agrees_with_reference(dtype):
    for shape in [(7, 50), (2, 3, 300), (16, 4097)]:
        s, t = logits(*shape, dtype=dtype), logits(*shape, dtype=dtype, seed=1)
        loss, g = kl_and_grad(s, t, 4.0)
        with losses.reference_only():
            ref_loss, ref_g = kl_and_grad(s, t, 4.0)
        assert rel_err(loss, ref_loss) <= TOL[dtype] and rel_err(g, ref_g) <= TOL[dtype]
        x, y = logits(*shape, dtype=dtype, seed=2), logits(*shape, dtype=dtype, seed=3)
        with losses.reference_only():
            ref_mse = losses.feature_mse(x, y)
        assert rel_err(losses.feature_mse(x, y), ref_mse) <= TOL[dtype]


@needs_ext
def test_retain_graph_and_accumulation():
    """The backward may hand on the saved gradient buffer: never when the graph is kept."""
    s, t = logits(8, 100).requires_grad_(True), logits(8, 100, seed=1)
    _, ref_g = ref_kl(s, t, 2.0)
    loss = losses.kd_kl_loss(s, t, 2.0)
    loss.backward(retain_graph=True)
    loss.backward(retain_graph=True)
    (3 * loss).backward()
    assert rel_err(s.grad, 5 * ref_g) <= 1e-5
    with pytest.raises(RuntimeError, match="second time"):
        loss.backward()
    # a gradient that flows on through other ops (no leaf stealing) with grad_output != 1
    w = torch.full((8, 100), 0.5, requires_grad=True)
    (0.25 * losses.kd_kl_loss(s.detach() * w, t, 2.0)).backward()
    _, ref_gw = ref_kl(s.detach() * 0.5, t, 2.0)
    assert rel_err(w.grad, 0.25 * ref_gw * s.detach()) <= 1e-5


@needs_ext
def test_double_backward_is_refused():
    s, t = logits(2, 10).requires_grad_(True), logits(2, 10, seed=1)
    (g,) = torch.autograd.grad(losses.feature_mse(s, t), s)  # fine without create_graph
    with pytest.raises(RuntimeError, match="double backward"):
        torch.autograd.grad(losses.kd_kl_loss(s, t, 2.0), s, create_graph=True)


@pytest.mark.parametrize("backend", BACKENDS)
def test_teacher_that_requires_grad(backend):
    with using(backend):
        s = logits(3, 40).requires_grad_(True)
        t = logits(3, 40, seed=1).requires_grad_(True)
        losses.kd_kl_loss(s, t, 3.0).backward()  # takes the reference, which differentiates both
        s64, t64 = s.detach().double().requires_grad_(True), t.detach().double().requires_grad_(True)
        ls, lt = F.log_softmax(s64 / 3.0, -1), F.log_softmax(t64 / 3.0, -1)
        ((lt.exp() * (lt - ls)).sum() * 9.0 / 3).backward()
        assert rel_err(s.grad, s64.grad) <= 1e-5 and rel_err(t.grad, t64.grad) <= 1e-5


@needs_ext
def test_fused_op_refuses_a_teacher_that_requires_grad():
    s, t = logits(3, 40).requires_grad_(True), logits(3, 40, seed=1).requires_grad_(True)
    with pytest.raises(RuntimeError, match="teacher logits require grad"):
        torch.ops.kdbench.kd_kl_loss(s, t, 3.0, 1)
    with torch.no_grad():  # no gradient wanted: fine
        torch.ops.kdbench.kd_kl_loss(s, t, 3.0, 1)


@pytest.mark.parametrize("backend", BACKENDS)
def test_nan_propagates(backend):
    with using(backend):
        s, t = logits(3, 50), logits(3, 50, seed=1)
        s[1, 7] = float("nan")
        loss, g = kl_and_grad(s, t, 2.0, "none")
        assert torch.isnan(loss[1]) and torch.isfinite(loss[[0, 2]]).all()
        x = logits(1000)
        x[999] = float("nan")
        assert torch.isnan(losses.feature_mse(x, logits(1000, seed=1)))


@needs_ext
def test_every_cpu_isa_matches_float64():
    isas = ["default", "avx2", "avx512"]
    best = kdbench_ext.cpu_isa()
    available = isas[: isas.index(best) + 1] if best in isas else ["default"]
    try:
        for isa in available:
            kdbench_ext.set_cpu_isa(isa)
            assert kdbench_ext.cpu_isa() == isa
            for dtype in DTYPES + [torch.float64]:
                for C in (5, 100, 4099):
                    s, t = logits(3, C, dtype=dtype), logits(3, C, dtype=dtype, seed=1)
                    loss, g = kl_and_grad(s, t, 4.0)
                    ref_loss, ref_g = ref_kl(s, t, 4.0)
                    assert rel_err(loss, ref_loss) <= TOL[dtype] and rel_err(g, ref_g) <= TOL[dtype], (isa, dtype, C)
                    loss0, g0 = kl_and_grad(s, s.clone(), 4.0)
                    assert loss0.item() == 0 and (g0 == 0).all(), (isa, dtype, C)
                    x, y = logits(C + 31, dtype=dtype, seed=2), logits(C + 31, dtype=dtype, seed=3)
                    ref = ((x.double() - y.double()) ** 2).mean()
                    assert rel_err(losses.feature_mse(x, y), ref) <= TOL[dtype], (isa, dtype, C)
        with pytest.raises(RuntimeError, match="unknown CPU ISA"):
            kdbench_ext.set_cpu_isa("sse9")
    finally:
        kdbench_ext.set_cpu_isa("auto")


@needs_ext
def test_results_do_not_depend_on_threads():
    s, t = logits(256, 1000), logits(256, 1000, seed=1)  # 8 tasks of 32 rows
    x, y = logits(300_000), logits(300_000, seed=1)  # 19 blocks
    before = torch.get_num_threads()
    out = []
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            out.append((*kl_and_grad(s, t, 4.0), losses.feature_mse(x, y)))
    finally:
        torch.set_num_threads(before)
    for a, b in zip(*out):
        assert torch.equal(a, b)


@needs_ext
def test_under_torch_compile():
    """Both ops trace (fake kernels, autograd) into one graph, forward and backward; and
    Inductor runs them as extern kernels.  (aot_eager for the training step: Inductor's
    C++ codegen for the surrounding arithmetic would only add minutes of compiling.)"""

    def step(s, t, f, h):
        return losses.kd_kl_loss(s, t, 4.0) + 0.5 * losses.feature_mse(f, h)

    s, t = logits(6, 300).requires_grad_(True), logits(6, 300, seed=1)
    f, h = logits(6, 8, 3).requires_grad_(True), logits(6, 8, 3, seed=2)
    eager = step(s, t, f, h)
    ge = torch.autograd.grad(eager, (s, f))
    torch._dynamo.reset()
    out = torch.compile(step, backend="aot_eager", fullgraph=True)(s, t, f, h)
    gc = torch.autograd.grad(out, (s, f))
    assert rel_err(out, eager) <= 1e-6
    assert all(rel_err(a, b) <= 1e-6 for a, b in zip(gc, ge))

    def both(s, t, f, h):
        return losses.kd_kl_loss(s, t, 2.0, "none"), losses.feature_mse(f, h)

    with torch.no_grad():
        kd, mse = torch.compile(both, fullgraph=True)(s, t, f, h)
        kd_e, mse_e = both(s, t, f, h)
    assert torch.equal(kd, kd_e) and torch.equal(mse, mse_e)
    torch._dynamo.reset()


@needs_ext
def test_opcheck():
    """Schema, fake kernels, autograd registration and AOT dispatch of the C++ ops."""
    s, t = logits(4, 33).requires_grad_(True), logits(4, 33, seed=1)
    x, y = logits(5, 7).requires_grad_(True), logits(5, 7, seed=1).requires_grad_(True)
    torch.library.opcheck(torch.ops.kdbench.kd_kl_loss.default, (s, t, 2.0, 1))
    torch.library.opcheck(torch.ops.kdbench.kd_kl_loss.default, (s, t, 2.0, 0))
    torch.library.opcheck(torch.ops.kdbench.kd_kl_fwd.default, (s.detach(), t, 2.0, 0, True))
    torch.library.opcheck(torch.ops.kdbench.feature_mse.default, (x, y))
    torch.library.opcheck(torch.ops.kdbench.mse_fwd.default, (x.detach(), y.detach(), True))


def test_argument_errors():
    s, t = logits(2, 5), logits(2, 5, seed=1)
    with pytest.raises(ValueError, match="reduction"):
        losses.kd_kl_loss(s, t, 2.0, "mean")
    with pytest.raises(ValueError, match="temperature"):
        losses.kd_kl_loss(s, t, 0.0)
    with pytest.raises(ValueError, match="shape"):
        losses.kd_kl_loss(s, t[:, :4], 2.0)
    with pytest.raises(ValueError, match="class dimension"):
        losses.kd_kl_loss(torch.tensor(1.0), torch.tensor(1.0), 2.0)
    if EXT:
        with pytest.raises(RuntimeError, match="reduction code"):
            torch.ops.kdbench.kd_kl_loss(s, t, 2.0, 7)
        with pytest.raises(RuntimeError, match="temperature"):
            torch.ops.kdbench.kd_kl_fwd(s, t, -1.0, 1, False)


def test_empty_batch_mixed_dtypes_and_tensor_temperature():
    s, t = torch.zeros(0, 10), torch.zeros(0, 10)
    assert losses.kd_kl_loss(s, t, 2.0, "sum").item() == 0.0
    assert losses.kd_kl_loss(s, t, 2.0, "none").shape == (0,)
    # a bf16 student against an fp32 teacher: computed in fp32, gradient back in bf16
    sb = logits(3, 100, dtype=torch.bfloat16).requires_grad_(True)
    tf = logits(3, 100, seed=1)
    loss = losses.kd_kl_loss(sb, tf, 2.0)
    loss.backward()
    ref_loss, ref_g = ref_kl(sb.float(), tf, 2.0)
    assert loss.dtype == torch.float32 and sb.grad.dtype == torch.bfloat16
    assert rel_err(loss, ref_loss) <= 1e-5 and rel_err(sb.grad, ref_g) <= 1e-2
    # a learnable temperature: the reference differentiates it too
    T = torch.tensor(3.0, requires_grad=True)
    losses.kd_kl_loss(logits(3, 20), logits(3, 20, seed=1), T).backward()
    assert T.grad is not None and torch.isfinite(T.grad)


def test_backend_reporting():
    assert losses.backend("cpu", torch.int64) == "reference"
    assert losses.backend("cpu", torch.float32) == ("fused" if EXT else "reference")
    status = losses.extension_status()
    assert status["loaded"] == EXT
    if EXT:
        assert status["cpu_isa"] in ("default", "avx2", "avx512")
        assert losses.backend("cuda", torch.float32) == ("fused" if kdbench_ext.has_cuda() else "reference")
    else:
        assert status["error"]
    with losses.reference_only():
        assert losses.backend("cpu", torch.float32) == "reference"


def _run_python(code, **env):
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True, text=True, cwd=REPO, env={**os.environ, **env}, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_kdbench_ext_0_forces_the_reference():
    out = _run_python(
        """
        import torch
        from kdbench import losses
        s, t = torch.randn(4, 10), torch.randn(4, 10)
        print(losses.backend(), losses.extension_status()["error"], float(losses.kd_kl_loss(s, t, 2.0)) >= 0)
        """,
        KDBENCH_EXT="0",
    )
    assert out.split()[0] == "reference" and "KDBENCH_EXT=0" in out and out.split()[-1] == "True"


@needs_ext
def test_first_call_inside_torch_compile():
    """kdbench.losses loads the extension lazily; that must also work while Dynamo traces."""
    out = _run_python(
        """
        import torch
        from kdbench import losses

        @torch.compile(backend="aot_eager", fullgraph=True)
        def f(s, t):
            return losses.kd_kl_loss(s, t, 2.0)

        s, t = torch.randn(4, 10, requires_grad=True), torch.randn(4, 10)
        f(s, t).backward()
        print(losses.backend(), bool(torch.isfinite(s.grad).all()))
        """
    )
    assert out.split() == ["fused", "True"]


def test_works_without_the_compiled_library():
    out = _run_python(
        """
        import sys
        sys.modules["kdbench_ext._C"] = None  # as if it had never been built
        sys.stderr = sys.stdout  # the fallback's notice goes to stderr
        import torch
        import kdbench_ext
        from kdbench import losses
        assert not kdbench_ext.available() and kdbench_ext.load_error() is not None
        s, t = torch.randn(4, 10, requires_grad=True), torch.randn(4, 10)
        losses.kd_kl_loss(s, t, 2.0).backward()
        print(losses.backend(), s.grad.abs().sum().item() > 0, float(losses.feature_mse(s, t)) > 0)
        """
    )
    notices = [line for line in out.splitlines() if "NOTICE" in line]
    assert len(notices) == 1 and "PyTorch reference" in notices[0]  # one line, once
    assert out.splitlines()[-1].split() == ["reference", "True", "True"]


# ----------------------------------------------------------------------------- MSE


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", [(1,), (33, 65), (16, 128, 7, 7)])
def test_mse_matches_float64(backend, dtype, shape):
    with using(backend, dtype=dtype):
        x = logits(*shape, dtype=dtype).requires_grad_(True)
        y = logits(*shape, dtype=dtype, seed=1).requires_grad_(True)
        loss = losses.feature_mse(x, y)
        gx, gy = torch.autograd.grad(loss, (x, y), torch.tensor(1.5, dtype=dtype))
        d = x.detach().double() - y.detach().double()
        ref_loss, ref_g = (d**2).mean(), 1.5 * 2 * d / d.numel()
        assert loss.dtype == dtype and gx.dtype == dtype
        assert rel_err(loss, ref_loss) <= TOL[dtype]
        assert rel_err(gx, ref_g) <= TOL[dtype] and rel_err(gy, -ref_g) <= TOL[dtype]


@pytest.mark.parametrize("backend", BACKENDS)
def test_mse_gradients_for_whichever_input_needs_them(backend):
    with using(backend):
        x0, y0 = logits(40, 30), logits(40, 30, seed=1)
        ref_g = 2 * (x0.double() - y0.double()) / x0.numel()
        for need_x, need_y in [(True, False), (False, True), (True, True)]:
            x = x0.clone().requires_grad_(need_x)
            y = y0.clone().requires_grad_(need_y)
            losses.feature_mse(x, y).backward()
            assert (x.grad is None) != need_x and (y.grad is None) != need_y
            if need_x:
                assert rel_err(x.grad, ref_g) <= 1e-5
            if need_y:
                assert rel_err(y.grad, -ref_g) <= 1e-5
        # identical inputs, non-contiguous inputs
        x = logits(64, 30).t().requires_grad_(True)
        y = logits(30, 64, seed=1)
        loss = losses.feature_mse(x, y)
        (g,) = torch.autograd.grad(loss, x)
        d = x.detach().double() - y.double()
        assert rel_err(loss, (d**2).mean()) <= 1e-5 and rel_err(g, 2 * d / d.numel()) <= 1e-5
        assert losses.feature_mse(x.detach(), x.detach().clone()).item() == 0.0
