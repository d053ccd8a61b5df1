"""plugins/classic: each loss against an independent float64 computation of its paper's equations
(explicit loops in numpy, nothing shared with losses.py), shapes and edge cases, the configs' range
checks, DKD's warm-up read from ctx.epoch, and one tiny run of every arm on synthetic data."""
import json
import math

import numpy as np
import pytest
import torch

from conftest import REPO, SYNTHETIC, as_sets, registry_for
from kdbench.errors import ConfigError
from kdbench.plugins import import_plugin_folder

PLUGIN = REPO / "plugins" / "classic"
plugin = import_plugin_folder(PLUGIN)
from kdbench_plugins.classic import losses  # noqa: E402  (importable once the folder is loaded)


def fixed(*shape, seed=0):
    return np.random.default_rng(seed).normal(size=shape)


def t32(a):
    return torch.tensor(a, dtype=torch.float32)


# --- FitNets --------------------------------------------------------------------------------------
def test_hint_loss_is_the_mean_squared_error_over_every_element():
    u, r = fixed(3, 4, 5, 5, seed=1), fixed(3, 4, 5, 5, seed=2)
    total = 0.0
    for idx in np.ndindex(u.shape):
        total += (r[idx] - u[idx]) ** 2
    assert losses.hint_loss(t32(r), t32(u)).item() == pytest.approx(total / u.size, rel=1e-5)
    with pytest.raises(ValueError, match="does not match"):
        losses.hint_loss(torch.zeros(2, 4, 5, 5), torch.zeros(2, 8, 5, 5))


def test_fitnet_regressor_maps_the_guided_layer_onto_the_hint():
    ConvRegressor = plugin.ConvRegressor
    same = ConvRegressor(torch.Size([16, 7, 7]), torch.Size([32, 7, 7]))
    assert same[0].kernel_size == (1, 1) and same(torch.randn(2, 16, 7, 7)).shape == (2, 32, 7, 7)
    larger = ConvRegressor(torch.Size([8, 14, 14]), torch.Size([32, 7, 7]))  # Romero's kernel N_g - N_h + 1
    assert larger[0].kernel_size == (8, 8) and larger(torch.randn(2, 8, 14, 14)).shape == (2, 32, 7, 7)
    half = ConvRegressor(torch.Size([8, 7, 7]), torch.Size([32, 14, 14]))  # the benchmark versions' transposed conv
    assert isinstance(half[0], torch.nn.ConvTranspose2d) and half(torch.randn(2, 8, 7, 7)).shape == (2, 32, 14, 14)
    with pytest.raises(ConfigError, match="smaller than the hint"):
        ConvRegressor(torch.Size([16, 5, 5]), torch.Size([32, 14, 14]))


# --- Attention transfer ---------------------------------------------------------------------------
def reference_attention(student_maps, teacher_maps, beta):
    """beta/2 * sum_j (1 / (N H W)) sum_n sum_k (Q_s[n,k]/||Q_s[n]|| - Q_t[n,k]/||Q_t[n]||)^2,
    Q[n, k] = (1/C) sum_c x[n, c, k]^2 (Zagoruyko and Komodakis, eq. 2 with the code's mean)."""
    total = 0.0
    for s, t in zip(student_maps, teacher_maps):
        n, hw = s.shape[0], s.shape[2] * s.shape[3]
        layer = 0.0
        for i in range(n):
            qs = [sum(s[i, c].reshape(-1)[k] ** 2 for c in range(s.shape[1])) / s.shape[1] for k in range(hw)]
            qt = [sum(t[i, c].reshape(-1)[k] ** 2 for c in range(t.shape[1])) / t.shape[1] for k in range(hw)]
            ns, nt = math.sqrt(sum(q * q for q in qs)), math.sqrt(sum(q * q for q in qt))
            layer += sum((qs[k] / ns - qt[k] / nt) ** 2 for k in range(hw))
        total += layer / (n * hw)
    return beta / 2 * total


def test_attention_loss_matches_the_papers_equation():
    student = [fixed(3, 4, 6, 6, seed=3), fixed(3, 5, 3, 3, seed=4)]
    teacher = [fixed(3, 8, 6, 6, seed=5), fixed(3, 2, 3, 3, seed=6)]  # channels may differ
    got = losses.attention_loss([t32(a) for a in student], [t32(a) for a in teacher], 1000.0).item()
    assert got == pytest.approx(reference_attention(student, teacher, 1000.0), rel=1e-4)


def test_attention_map_shape_and_invariances():
    x = torch.randn(4, 6, 5, 7)
    at = losses.attention_map(x)
    assert at.shape == (4, 35)
    assert torch.allclose(at.norm(dim=1), torch.ones(4))
    assert torch.allclose(losses.attention_map(3.0 * x), at, atol=1e-6)  # scale-free: normalised
    assert losses.attention_loss([x], [x.flip(1)], 1000.0).item() == pytest.approx(0.0, abs=1e-9)  # channel order is irrelevant
    small, large = torch.randn(2, 3, 7, 7), torch.randn(2, 5, 14, 14)  # the larger map pooled to the smaller's size
    pooled = torch.nn.functional.adaptive_avg_pool2d(large, (7, 7))
    assert torch.equal(losses.attention_loss([small], [large], 1000.0), losses.attention_loss([small], [pooled], 1000.0))
    assert torch.equal(losses.attention_loss([large], [small], 1000.0), losses.attention_loss([pooled], [small], 1000.0))
    with pytest.raises(ValueError, match="neither fits"):
        losses.attention_loss([torch.randn(2, 3, 7, 14)], [torch.randn(2, 3, 14, 7)], 1000.0)
    with pytest.raises(ValueError, match="same number"):
        losses.attention_loss([x, x], [x], 1000.0)


# --- DKD ------------------------------------------------------------------------------------------
def softmax(z):
    e = [math.exp(v - max(z)) for v in z]
    return [v / sum(e) for v in e]


def kl(p, q):
    return sum(pi * math.log(pi / qi) for pi, qi in zip(p, q) if pi > 0)


def reference_dkd(s, t, labels, T):
    """Zhao et al. (2022) eq. 1-7, per example: b = (p_target, 1 - p_target), p_hat = the non-target
    probabilities renormalised; TCKD = KL(b_t || b_s), NCKD = KL(p_hat_t || p_hat_s); T^2, batch mean."""
    tckd = nckd = 0.0
    for zs, zt, y in zip(s, t, labels):
        ps, pt = softmax([v / T for v in zs]), softmax([v / T for v in zt])
        bs, bt = [ps[y], 1 - ps[y]], [pt[y], 1 - pt[y]]
        hs = [p / (1 - ps[y]) for i, p in enumerate(ps) if i != y]
        ht = [p / (1 - pt[y]) for i, p in enumerate(pt) if i != y]
        tckd += kl(bt, bs)
        nckd += kl(ht, hs)
    return T * T * tckd / len(s), T * T * nckd / len(s)


def test_dkd_parts_match_the_papers_equations():
    s, t = fixed(6, 5, seed=7) * 3, fixed(6, 5, seed=8) * 3
    labels = [0, 4, 2, 2, 1, 3]
    tckd, nckd = losses.dkd_parts(t32(s), t32(t), torch.tensor(labels), 4.0)
    ref_tckd, ref_nckd = reference_dkd(s.tolist(), t.tolist(), labels, 4.0)
    assert tckd.item() == pytest.approx(ref_tckd, rel=1e-4)
    assert nckd.item() == pytest.approx(ref_nckd, rel=1e-4)


def test_dkd_decomposes_classical_kd():
    """The paper's eq. 5: KD = TCKD + (1 - p_target^T) NCKD, example by example (all at T = 1)."""
    s, t = fixed(1, 7, seed=9), fixed(1, 7, seed=10)
    tckd, nckd = losses.dkd_parts(t32(s), t32(t), torch.tensor([3]), 1.0)
    pt, ps = softmax(t[0].tolist()), softmax(s[0].tolist())
    assert (tckd + (1 - pt[3]) * nckd).item() == pytest.approx(kl(pt, ps), rel=1e-4)


def test_dkd_is_zero_for_equal_logits_and_finite_for_extreme_ones():
    z = torch.randn(5, 10)
    labels = torch.tensor([0, 1, 2, 3, 9])
    assert all(part.item() == pytest.approx(0.0, abs=1e-6) for part in losses.dkd_parts(z, z.clone(), labels, 4.0))
    s = torch.full((2, 10), -500.0, requires_grad=True)
    t = torch.zeros(2, 10)
    t[:, 0] = 800.0  # the teacher is certain; p_target of the student underflows in float32
    tckd, nckd = losses.dkd_parts(s * torch.arange(10.0), t, torch.tensor([0, 5]), 4.0)
    (tckd + nckd).backward()
    assert torch.isfinite(tckd) and torch.isfinite(nckd) and torch.isfinite(s.grad).all()


# --- RKD ------------------------------------------------------------------------------------------
def dist(a, b):
    return math.sqrt(sum((x - y) ** 2 for x, y in zip(a, b)))


def huber(x, y):
    d = abs(x - y)
    return 0.5 * d * d if d < 1 else d - 0.5


def reference_rkd_distance(s, t):
    """Park et al. eq. 4-5: psi_D(i, j) = ||e_i - e_j|| / mu, mu the mean over the pairs i != j;
    Huber loss averaged over all N^2 (i, j) (i == j contributes 0)."""
    n = len(s)

    def psi(e):
        d = [[dist(e[i], e[j]) for j in range(n)] for i in range(n)]
        mu = sum(d[i][j] for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
        return [[d[i][j] / mu for j in range(n)] for i in range(n)]

    ps, pt = psi(s), psi(t)
    return sum(huber(ps[i][j], pt[i][j]) for i in range(n) for j in range(n)) / n**2


def reference_rkd_angle(s, t):
    """Park et al. eq. 6-7: psi_A(i, j, k) = <e_ij, e_kj>, e_ij = (t_i - t_j) / ||t_i - t_j||, the
    angle at vertex j; 0 where a vector is zero (i == j or k == j); Huber averaged over N^3."""
    n = len(s)

    def psi(e):
        out = {}
        for i in range(n):
            for j in range(n):
                for k in range(n):
                    if i == j or k == j:
                        out[i, j, k] = 0.0
                        continue
                    u = [a - b for a, b in zip(e[i], e[j])]
                    v = [a - b for a, b in zip(e[k], e[j])]
                    out[i, j, k] = sum(a * b for a, b in zip(u, v)) / (dist(e[i], e[j]) * dist(e[k], e[j]))
        return out

    ps, pt = psi(s), psi(t)
    return sum(huber(ps[key], pt[key]) for key in ps) / n**3


def test_rkd_distance_and_angle_match_the_papers_equations():
    s, t = fixed(6, 4, seed=11), fixed(6, 9, seed=12) * 2  # embedding sizes may differ
    assert losses.rkd_distance(t32(s), t32(t)).item() == pytest.approx(reference_rkd_distance(s.tolist(), t.tolist()), rel=1e-4)
    assert losses.rkd_angle(t32(s), t32(t)).item() == pytest.approx(reference_rkd_angle(s.tolist(), t.tolist()), rel=1e-4)


def test_rkd_angle_gradient_is_the_numerical_one():
    s = torch.tensor(fixed(5, 3, seed=13), requires_grad=True)
    t = torch.tensor(fixed(5, 6, seed=14))
    assert torch.autograd.gradcheck(lambda x: losses.rkd_angle(x, t), (s,))
    assert torch.autograd.gradcheck(lambda x: losses.rkd_distance(x, t), (s,))


def test_rkd_shapes_and_invariances():
    s = torch.randn(8, 2, 3, 3)  # feature maps are flattened
    cos = losses.triplet_cosines(s.flatten(1))
    assert cos.shape == (8, 8, 8) and (cos.abs() <= 1 + 1e-5).all()
    assert (cos[torch.arange(8), torch.arange(8)] == 0).all() and (cos[torch.arange(8), :, torch.arange(8)] == 0).all()
    off = ~torch.eye(8, dtype=torch.bool)
    assert torch.allclose(cos.diagonal(dim1=1, dim2=2)[off], torch.ones(56), atol=1e-5)  # b == c != a: cos 0 = 1
    moved = 5.0 * s + 3.0  # scaled and translated: same relations
    assert losses.rkd_distance(moved, s).item() == pytest.approx(0.0, abs=1e-6)
    assert losses.rkd_angle(moved, s).item() == pytest.approx(0.0, abs=1e-6)
    d = losses.pairwise_distances(s.flatten(1))
    assert d.shape == (8, 8) and (d.diagonal() == 0).all() and torch.allclose(d, d.T)


# --- configs --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def registry():
    return registry_for(PLUGIN)


@pytest.mark.parametrize("method, options, message", [
    ("fitnet", {"hint_weight": -1.0}, "hint_weight"),
    ("fitnet", {"hint_layer": ""}, "hint_layer"),
    ("at", {"at_beta": float("nan")}, "at_beta"),
    ("at", {"student_layers": []}, "student_layers"),
    ("at", {"student_layers": ["1"], "teacher_layers": ["1", "4"]}, "pair up"),
    ("dkd", {"temperature": 0.0}, "temperature"),
    ("dkd", {"nckd_weight": -8.0}, "nckd_weight"),
    ("dkd", {"warmup": -1}, "warmup"),
    ("dkd", {"warmup": 2.5}, "warmup"),
    ("rkd", {"angle_weight": -50.0}, "angle_weight"),
    ("rkd", {"student_embedding": 6}, "student_embedding"),
])
def test_configs_reject_bad_values(registry, method, options, message):
    with pytest.raises(ConfigError, match=message):
        registry.get("methods", method).Config(**options)


def test_defaults_are_the_papers(registry):
    cfg = {name: registry.get("methods", name).Config() for name in ("fitnet", "at", "dkd", "rkd")}
    assert cfg["fitnet"].hint_weight == 100.0
    assert cfg["at"].at_beta == 1000.0
    assert (cfg["dkd"].temperature, cfg["dkd"].tckd_weight, cfg["dkd"].nckd_weight, cfg["dkd"].warmup) == (4.0, 1.0, 8.0, 20)
    assert (cfg["rkd"].distance_weight, cfg["rkd"].angle_weight) == (25.0, 50.0)


def test_dkd_warmup_follows_ctx_epoch(registry):
    class Ctx:  # what DKD reads of the engine: ctx.epoch, nothing counted by the method
        epoch = 0

    dkd = registry.get("methods", "dkd")
    method = dkd.__new__(dkd)
    method.ctx = Ctx()
    factors = []
    for warmup in (4, 0):
        method.config = dkd.Config(warmup=warmup)
        for epoch in range(6):
            method.ctx.epoch = epoch
            factors.append(method.warmup_factor())
    assert factors == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0] + [1.0] * 6  # mdistiller: min(epoch / warmup, 1), epochs from 1


# --- one tiny run of every arm --------------------------------------------------------------------
@pytest.mark.slow
def test_every_arm_runs_on_synthetic_data(tmp_path, no_onednn):
    """The quick profile's arms on synthetic 16x16 data (the zoo's conv trunks give 8x8 and 4x4
    maps there), one short epoch each: records ok, the regressor counted as the method's."""
    from kdbench.cli import main

    out = tmp_path / "runs"
    sets = as_sets(SYNTHETIC + ["method.warmup=2"])
    arms = "method=scratch,kd,fitnet,at,dkd,rkd,dist,ctkd,mlkd"  # the feature methods: tests/test_classic_feature.py
    code = main(["run", str(PLUGIN), "--grid", arms, "--seeds", "0", *sets, "--out", str(out), "--cache", str(tmp_path / "cache")])
    assert code == 0
    records = {r["method"]: r for r in (json.loads(p.read_text()) for p in out.rglob("record.json"))}
    assert sorted(records) == ["at", "ctkd", "dist", "dkd", "fitnet", "kd", "mlkd", "rkd", "scratch"]
    assert all(r["status"] == "ok" for r in records.values())
    student_params = records["scratch"]["student"]["params"]
    assert all(r["student"]["params"] == student_params for r in records.values())
    assert records["fitnet"]["method_params"] == {"regressor": 16 * 32 + 32 + 2 * 32}  # conv 1x1 16->32, BN
    history = [json.loads(line) for line in (out.rglob("dkd__*/**/history.jsonl").__next__()).read_text().splitlines()]
    assert all(row["train_tckd"] >= 0 and row["train_nckd"] >= 0 for row in history)
