"""Fused loss ops (kdbench_ext) against the eager PyTorch reference and torch.compile of it,
forward + backward, one thread.  Run:  pytest benchmarks --benchmark-only
(benchmarks/ratios.py turns --benchmark-json output into the ratio table of RESULTS.md).

Each group holds one shape and dtype: `fused`, `eager`, `compiled` and a `floor`, the
plain memory traffic of the same tensors (torch.sub(s, t, out=g) for KL, whose fused
step reads s and t and writes the gradient; torch.sub(x, y) for MSE)."""
import pytest
import torch

import kdbench_ext
from kdbench import losses

pytestmark = pytest.mark.skipif(
    not kdbench_ext.available(),
    reason=f"kdbench_ext is not built, nothing to compare: {kdbench_ext.load_error()!r} "
    "(pip install --no-build-isolation -e .)",
)

KL_SHAPES = [(128, 10), (256, 100), (1024, 1000), (4096, 32000)]
MSE_SHAPES = [(256, 128, 7, 7), (4096, 4096)]
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
TEMPERATURE = 4.0
BIG = 50_000_000  # elements: above this, a fixed small number of rounds


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    for name in ("recompile_limit", "cache_size_limit"):  # one compiled graph per shape/dtype
        if hasattr(torch._dynamo.config, name):
            setattr(torch._dynamo.config, name, 64)
    yield
    torch.set_num_threads(before)


_compiled = {}


def compiled(fn):
    if fn not in _compiled:
        _compiled[fn] = torch.compile(fn, dynamic=False)
    return _compiled[fn]


def run(benchmark, step, numel, group, **info):
    benchmark.group = group
    benchmark.extra_info.update(info, threads=torch.get_num_threads(), torch=torch.__version__,
                                cpu_isa=kdbench_ext.cpu_isa())
    step()  # warm up (and compile)
    if numel >= BIG:
        benchmark.pedantic(step, rounds=3, iterations=1, warmup_rounds=1)
    else:
        benchmark(step)


def _inputs(shape, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g).mul_(3).to(dtype)


@pytest.mark.parametrize("impl", ["fused", "eager", "compiled", "floor"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", KL_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_kd_kl(benchmark, shape, dtype, impl):
    dt = DTYPES[dtype]
    s = _inputs(shape, dt).requires_grad_(True)
    t = _inputs(shape, dt, seed=1)
    if impl == "floor":
        g = torch.empty_like(s)
        sd = s.detach()

        def step():
            return torch.sub(sd, t, out=g)
    else:
        fn = {
            "fused": losses.kd_kl_loss,
            "eager": losses.kd_kl_loss_reference,
            "compiled": compiled(losses.kd_kl_loss_reference),
        }[impl]
        if impl == "fused":
            assert losses.backend("cpu", dt) == "fused"

        def step():
            return torch.autograd.grad(fn(s, t, TEMPERATURE), s)

    run(benchmark, step, s.numel(), f"kd_kl {'x'.join(map(str, shape))} {dtype}", impl=impl)


@pytest.mark.parametrize("impl", ["fused", "eager", "compiled", "floor", "fused-forward"])
@pytest.mark.parametrize("shape", MSE_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_feature_mse(benchmark, shape, impl):
    x = _inputs(shape, torch.float32).requires_grad_(True)
    y = _inputs(shape, torch.float32, seed=1)
    if impl == "floor":
        xd = x.detach()

        def step():
            return torch.sub(xd, y)
    elif impl == "fused-forward":
        xd = x.detach()

        def step():
            return losses.feature_mse(xd, y)
    else:
        fn = {
            "fused": losses.feature_mse,
            "eager": losses.feature_mse_reference,
            "compiled": compiled(losses.feature_mse_reference),
        }[impl]

        def step():
            return torch.autograd.grad(fn(x, y), x)

    run(benchmark, step, x.numel(), f"feature_mse {'x'.join(map(str, shape))} fp32", impl=impl)


LINEAR_DIV_SHAPES = [(256, 128, 4096, "fp32"), (256, 128, 4096, "bf16"), (1024, 256, 32000, "fp32")]


@pytest.mark.parametrize("impl", ["fused", "eager", "compiled"])
@pytest.mark.parametrize("case", LINEAR_DIV_SHAPES, ids=lambda c: "x".join(map(str, c[:3])) + f"-{c[3]}")
def test_linear_divergence(benchmark, case, impl):
    """Output layer + forward KL (teacher: hidden states and its own head), forward + backward
    for the student's hidden states and head.  benchmarks/linear_divergence.py measures the
    larger shapes and the peak memory."""
    rows, hidden, vocab, dtype = case
    dt = DTYPES[dtype]
    h = _inputs((rows, hidden), dt).requires_grad_(True)
    w = _inputs((vocab, hidden), dt).mul_(hidden ** -0.5).detach().requires_grad_(True)
    th, tw = _inputs((rows, hidden), dt, seed=1), _inputs((vocab, hidden), dt, seed=2).mul_(hidden ** -0.5)
    fn = {
        "fused": losses.linear_divergence,
        "eager": losses.linear_divergence_reference,
        "compiled": compiled(losses.linear_divergence_reference),
    }[impl]
    if impl == "fused":
        assert losses.backend("cpu", dt) == "fused"

    def step():
        return torch.autograd.grad(fn(h, w, teacher_hidden=th, teacher_weight=tw, temperature=2.0), (h, w))

    benchmark.group = f"linear_divergence {rows}x{hidden}x{vocab} {dtype}"
    benchmark.extra_info.update(impl=impl, threads=torch.get_num_threads(), torch=torch.__version__,
                                cpu_isa=kdbench_ext.cpu_isa())
    step()  # warm up (and compile)
    benchmark.pedantic(step, rounds=3, iterations=1, warmup_rounds=0)
