"""plugins/gankd (source 002, GAN knowledge distillation): the reconstructed generators' parameter
counts (Keras-style and PyTorch), the metrics, and a real test-sized experiment through the
command line: teacher GAN, feature classifier, 2 arms x 3 seeds, leaderboard."""
import json
from pathlib import Path

import pytest
import torch

from conftest import paired_gain, read_history
from kdbench.plugins import import_plugin_folder

PLUGIN = Path(__file__).resolve().parents[1] / "plugins" / "gankd"
plugin = import_plugin_folder(PLUGIN)
from kdbench_plugins.gankd import metrics, models  # noqa: E402  (importable once the folder is loaded)

QUICK_TEACHER = dict(nz=32, width=0.25, kernel_s1=3, dense_bn="channels")
QUICK_STUDENT = dict(nz=32, width=0.25, dense_bn="channels")


# -- models -----------------------------------------------------------------------------------


def test_source_generators_match_the_readme_counts_as_keras_counts_them():
    teacher, student = models.dcgan_teacher(), models.dcgan_student()
    # README: teacher 1,961,728 and student 784,640 parameters (Keras count_params: BN moving stats included)
    assert models.keras_param_count(teacher) == 1_961_728
    assert models.keras_param_count(student) == 784_640
    # what PyTorch (and the leaderboard's params column) counts: the trainable ones
    assert models.trainable_param_count(teacher) == 1_936_256
    assert models.trainable_param_count(student) == 771_968


def test_source_generator_layers():
    teacher = models.dcgan_teacher()
    assert teacher.dense.weight.shape == (7 * 7 * 256, 100) and teacher.dense.bias is None
    assert isinstance(teacher.dense_norm, torch.nn.BatchNorm1d)  # per feature, before the reshape (Keras)
    assert [tuple(c.weight.shape) for c in teacher.convs] == [(256, 128, 4, 4), (128, 64, 4, 4), (64, 1, 4, 4)]
    assert all(c.bias is None for c in teacher.convs)


def test_scaled_quick_models_match_the_spec_counts():
    assert models.trainable_param_count(models.dcgan_teacher(**QUICK_TEACHER)) == 127_456
    assert models.trainable_param_count(models.dcgan_student(**QUICK_STUDENT)) == 58_720
    assert models.trainable_param_count(models.Discriminator(width=16, kernel=4)) == 10_065
    # the TensorFlow DCGAN tutorial's discriminator, the paper profile's
    assert models.trainable_param_count(models.Discriminator(width=64, kernel=5)) == 212_865


@pytest.mark.parametrize("kwargs", [{}, {"quick": True}], ids=["seed", "quick"])
def test_hidden_outputs_pair_up_by_shape(kwargs):
    t_kw, s_kw = (QUICK_TEACHER, QUICK_STUDENT) if kwargs else ({}, {})
    teacher, student = models.dcgan_teacher(**t_kw).eval(), models.dcgan_student(**s_kw).eval()
    z = torch.randn(3, teacher.nz)
    t_img, t_feats = teacher(z, return_features=True)
    s_img, s_feats = student(z, return_features=True)
    assert t_img.shape == s_img.shape == (3, 1, 28, 28)
    assert t_img.abs().max() <= 1 and s_img.abs().max() <= 1  # tanh
    c = 1 if not kwargs else 0.25
    assert [f.shape[1:] for f in t_feats] == [(int(256 * c), 7, 7), (int(128 * c), 7, 7), (int(64 * c), 14, 14)]
    assert [f.shape[1:] for f in s_feats] == [(int(128 * c), 7, 7), (int(64 * c), 14, 14)]
    assert plugin.matched_pairs(student, teacher, "cpu", "all") == [(1, 2), (0, 1)]
    assert plugin.matched_pairs(student, teacher, "cpu", "last") == [(1, 2)]


def test_same_padding_transposed_conv_sizes():
    for k, s, size in [(4, 1, 7), (3, 1, 7), (4, 2, 7), (5, 2, 14), (4, 2, 14)]:
        conv = models.SameConvTranspose2d(2, 3, k, stride=s)
        assert conv(torch.zeros(1, 2, size, size)).shape[-2:] == (size * s, size * s)


# -- metrics ----------------------------------------------------------------------------------


def test_frechet_distance_closed_form():
    torch.manual_seed(0)
    d = 6
    a = (torch.zeros(d, dtype=torch.float64), torch.eye(d, dtype=torch.float64))
    b = (torch.ones(d, dtype=torch.float64), 4 * torch.eye(d, dtype=torch.float64))
    # |mu|^2 + tr(I + 4I - 2 * 2I) = d + d
    assert metrics.frechet_distance(a, b) == pytest.approx(2 * d)
    assert metrics.frechet_distance(b, b) == pytest.approx(0, abs=1e-9)
    # a non-commuting pair against scipy's sqrtm formula, computed here by eigendecomposition
    m1, m2 = torch.randn(d, d, dtype=torch.float64), torch.randn(d, d, dtype=torch.float64)
    s1, s2 = m1 @ m1.T, m2 @ m2.T
    eig = torch.linalg.eigvals(s1 @ s2).real.clamp_min(0).sqrt().sum()
    expected = float(s1.trace() + s2.trace() - 2 * eig)
    assert metrics.frechet_distance((torch.zeros(d, dtype=torch.float64), s1), (torch.zeros(d, dtype=torch.float64), s2)) == pytest.approx(expected, rel=1e-6)


def test_class_coverage():
    even = torch.eye(10).repeat(5, 1)
    collapsed = torch.zeros(50, 10)
    collapsed[:, 3] = 1
    assert metrics.class_coverage(even) == pytest.approx(1.0)
    assert metrics.class_coverage(collapsed) == pytest.approx(0.0)


def test_penultimate_features_take_the_input_of_the_last_linear():
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2))
    x = torch.randn(5, 1, 2, 2)
    logits, feats = metrics.PenultimateFeatures(net)(x)
    assert feats.shape == (5, 3) and torch.allclose(feats.float(), net[2](net[1](net[0](x))))
    assert torch.allclose(logits, net(x))


# -- a test-sized quick experiment: teacher GAN, feature classifier, gan-adv vs gankd (3 seeds) --

# The quick profile's models and losses, compressed: Adam at 1e-3 instead of 2e-4 for every G and
# D (teacher and both arms alike), batch 64, teacher 400 steps, students 200; a feature classifier
# trained for one epoch on 5,000 images; 1,000 images per distance.
TEST_SIZE = [
    "teacher.train.epochs=2", "teacher.train.steps_per_epoch=200", "teacher.train.batch_size=64", "teacher.method_options.lr=0.001",
    "train.epochs=2", "train.steps_per_epoch=100", "train.batch_size=64", "method.lr=0.001",
    "data.val_size=1000", "data.test_subset=1000",
    "method.fd_epochs=1", "method.fd_train_subset=5000", "method.eval_samples=1000",
    "teacher.method_options.fd_epochs=1", "teacher.method_options.fd_train_subset=5000", "teacher.method_options.eval_samples=1000",
    "measure.throughput_batch=64", "measure.throughput_repeats=2", "measure.latency_repeats=2",
]


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    from kdbench.cli import main

    out = tmp_path_factory.mktemp("gankd")
    sets = [x for s in TEST_SIZE for x in ("--set", s)]
    code = main(["run", str(PLUGIN), "--seeds", "0,1,2", *sets, "--out", str(out / "runs"), "--cache", str(out / "cache"), "--device", "cpu"])
    assert code == 0
    records = [json.loads(p.read_text()) for p in (out / "runs").rglob("record.json")]
    return records, out


@pytest.mark.claims
def test_quick_gankd_student_lands_closer_to_the_teacher(quick):
    records, _ = quick
    assert sorted(r["method"] for r in records) == ["gan-adv"] * 3 + ["gankd"] * 3
    assert all(r["status"] == "ok" for r in records)

    # pixel MSE to the teacher's images for the same noise (in [-1, 1] units), lower is better: the
    # distilled student is closer, the 95% interval of the gain over the three seed pairs lies above
    # zero (under all three CPU settings; the quick profile's numbers: README)
    gain = paired_gain(records, "gankd", "gan-adv", "mse_teacher_last", direction="min")
    assert gain.n == 3 and gain.low > 0, gain
    for r in records:
        m = r["metrics"]
        assert (r["selection"]["metric"], r["selection"]["direction"]) == ("fd", "min")
        assert r["selection"]["val_best"] == min(h["val_fd"] for h in read_history(r))  # the best epoch: lowest val FD
        assert 0 < m["real_fd_last"] < m["fd_last"]  # two real sets are closer than any generator here
        assert 0 < m["coverage_last"] <= 1
        assert r["student"]["params"] == 58_720 and r["student"]["kind"] == "generator"
        assert r["speed"]["throughput"] > 0  # samples per second, timed on noise batches
        assert r["teacher"]["params"] == 127_456 and r["teacher"]["method"] == "dcgan"


@pytest.mark.slow
def test_quick_sample_grids_are_saved(quick):
    from PIL import Image

    records, _ = quick
    for r in records:
        for name in ("samples_last.png", "samples_best.png", "teacher_samples.png"):
            with Image.open(Path(r["run_dir"]) / name) as image:
                assert image.size == (8 * 29 + 1, 8 * 29 + 1)  # 8 x 8 images of 28 px, 1 px padding


@pytest.mark.slow
def test_quick_teacher_and_classifier_are_cached_like_teachers(quick):
    _, out = quick
    metas = [json.loads(p.read_text()) for p in (out / "cache" / "teachers").glob("*/meta.json")]
    by_model = {m["spec"]["model"]: m for m in metas}
    assert set(by_model) == {"dcgan-teacher", "small-cnn"}  # one feature classifier, shared by all runs
    assert by_model["small-cnn"]["trained_metrics"]["top1_best"] > 70
    assert by_model["small-cnn"]["spec"]["data"]["normalize"] == "symmetric"
    teacher = by_model["dcgan-teacher"]
    assert teacher["selection"]["metric"] == "fd" and teacher["selection"]["direction"] == "min"
    saved = torch.load(Path(out / "cache" / "teachers" / teacher["key"] / "teacher.pt"), weights_only=True)["modules"]
    assert set(saved) == {"model", "discriminator"}


@pytest.mark.slow
def test_quick_leaderboard_ranks_generators_by_fd_lower_first(quick):
    _, out = quick
    board = (out / "runs" / "gankd" / "leaderboard.md").read_text()
    assert "mse teacher best" in board
    assert "top1" not in board  # generator rows have no accuracy
    lines = board.splitlines()
    header = [c.strip() for c in lines[0].split("|")]
    column = header.index("fd best ↓")  # the quality metric, marked lower-is-better
    rows = [[c.strip() for c in line.split("|")] for line in lines[2:] if line.startswith("| gankd ")]
    assert [row[header.index("method")] for row in rows][0] == "teacher"
    fds = [float(row[column].split("±")[0]) for row in rows[1:]]
    assert len(fds) == 2 and fds == sorted(fds)  # students ranked by fd, lower first


# -- the paper profile: the source's own generators, expanded (run end to end in test_paper_profiles.py) --


def test_paper_profile_expands_to_the_source_models():
    from kdbench import experiment
    from kdbench.plugins import load_registry

    registry = load_registry([str(PLUGIN)], strict=True)
    cells, _, profile = experiment.expand(PLUGIN, registry, profile="paper", plugin_dirs=[PLUGIN])
    config = next(c for c in cells if c.method == "gankd").config
    assert profile == "paper" and config["data"]["name"] == "mnist" and config["data"]["normalize"] == "symmetric"
    info = {"num_classes": 10, "in_channels": 1, "image_size": 28}
    options = {k: v for k, v in config["teacher"].items() if k in ("nz", "width", "kernel", "kernel_s1", "dense_bn")}
    teacher = registry.build_model("teachers", config["teacher"]["model"], info, **options)
    student = registry.build_model("students", config["student"]["model"], info, **{k: v for k, v in config["student"].items() if k != "model"})
    assert models.keras_param_count(teacher) == 1_961_728 and models.keras_param_count(student) == 784_640
    assert (config["method"]["adv_weight"], config["method"]["distill_weight"], config["method"]["d_width"], config["method"]["d_kernel"]) == (0.5, 0.5, 64, 5)
    assert config["train"]["batch_size"] == 256 and config["train"]["epochs"] == 50
    # run end to end on MNIST files in the real format: test_paper_profiles.py
