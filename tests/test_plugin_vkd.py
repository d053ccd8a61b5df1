"""plugins/vkd (source 000, Virtual Knowledge Distillation via a conditional GAN): the notebook's
cGAN sizes, the VKD loss, the paper profile (expanded, built, one step at a tiny size on CPU,
not trained), and a real quick experiment: KD + VKD against scratch over 3 seeds."""
import json
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from conftest import paired_gain, read_records
from kdbench import experiment
from kdbench.plugins import load_registry
from kdbench.cli import main
from kdbench.measure import count_params as count
from kdbench.plugins import import_plugin_folder

PLUGIN = Path(__file__).resolve().parents[1] / "plugins" / "vkd"
plugin = import_plugin_folder(PLUGIN)
from kdbench_plugins.vkd import models  # noqa: E402  (importable once the folder is loaded)


def mean(values):
    values = list(values)
    return sum(values) / len(values)


# -- models and loss --------------------------------------------------------------------------


def test_notebook_cgan_sizes():
    # the notebook's G and D on CIFAR-100: Embedding(100, 100), z 128, 3 x [Linear 256, BN, ReLU]
    assert count(models.KnowledgeGenerator(100, nz=128, hidden=256, depth=3)) == 227_444
    assert count(models.KnowledgeDiscriminator(100, hidden=256, depth=3)) == 194_833
    # the quick profile's scaled cGAN on 10 classes (z 32, 64-wide trunks)
    assert count(models.KnowledgeGenerator(10, nz=32, hidden=64)) == 12_206
    assert count(models.KnowledgeDiscriminator(10, hidden=64)) == 10_213
    # the paper figures' one-hot label input: no embedding weights
    assert count(models.KnowledgeGenerator(100, label_input="onehot")) == 227_444 - 100 * 100


def test_generator_emits_label_conditioned_distributions():
    torch.manual_seed(0)
    g = models.KnowledgeGenerator(10, nz=8, hidden=16).eval()
    y = torch.tensor([0, 3, 3, 9])
    p = g.sample(y)
    assert p.shape == (4, 10) and torch.allclose(p.sum(1), torch.ones(4)) and (p > 0).all()
    z = g.noise(y)
    assert torch.allclose(F.softmax(g.logits(z, y), 1), g(z, y))
    d = models.KnowledgeDiscriminator(10, hidden=16)
    assert d(p, y).shape == (4,)


def test_vkd_loss_feeds_generator_probabilities_as_temperature_scaled_logits():
    """The student's VKD term is kd_kl_loss(s, T * l, T) for G's logits l: exactly
    T^2 KL(softmax(l) || softmax(s / T)), the KL to G's probabilities."""
    from kdbench.losses import kd_kl_loss

    torch.manual_seed(0)
    s, l, t = torch.randn(6, 10), torch.randn(6, 10), 4.0
    p = F.softmax(l, 1)
    direct = t * t * (p * (p.log() - F.log_softmax(s / t, 1))).sum(1).mean()
    assert kd_kl_loss(s, t * l, t).item() == pytest.approx(direct.item(), rel=1e-5)


# -- the paper profile: expanded and validated, one step at a tiny size (not trained) ---------

TINY = [
    "data.name=synthetic", "data.val_size=32", "data.train_subset=32", "data.test_subset=32", "data.augment=crop+hflip",
    "train.epochs=1", "train.steps_per_epoch=1", "train.batch_size=8", "train.eval_batch_size=32",
    "teacher.train.epochs=1", "teacher.train.steps_per_epoch=1", "teacher.train.batch_size=8", "teacher.train.eval_batch_size=32",
    "teacher.method_options.cgan_epochs=1",
    "measure.throughput_batch=2", "measure.throughput_repeats=1", "measure.latency_repeats=1", "measure.warmup=1",
]


def test_paper_profile_expands_to_the_notebook_settings():
    registry = load_registry([str(PLUGIN)], strict=True)
    cells, seeds, profile = experiment.expand(PLUGIN, registry, profile="paper", plugin_dirs=[PLUGIN])
    assert profile == "paper" and [c.method for c in cells] == ["scratch", "vkd", "kd-ce", "kd-vkd"]
    config = next(c for c in cells if c.method == "kd-vkd").config
    assert config["data"]["name"] == "cifar100" and config["data"]["augment"] == ["crop", "hflip"]
    teacher = config["teacher"]
    assert teacher["model"] == "resnet50-torchvision" and teacher["method"] == "vkd-teacher"
    assert {k: teacher["train"][k] for k in ("optimizer", "lr", "momentum", "weight_decay", "schedule", "step_size", "epochs")} == {
        "optimizer": "sgd", "lr": 0.1, "momentum": 0.9, "weight_decay": 5e-4, "schedule": "step", "step_size": 30, "epochs": 100}
    options = teacher["method_options"]
    assert (options["cgan"], options["nz"], options["hidden"], options["cgan_lr"], options["cgan_betas"], options["temperature"]) == (
        "concurrent", 128, 256, 2e-4, [0.5, 0.999], 4.0)
    assert config["student"]["model"] == "resnet18-torchvision"
    assert (config["train"]["lr"], config["train"]["step_size"], config["train"]["epochs"], config["method"]["temperature"]) == (0.1, 20, 50, 4.0)
    info = {"num_classes": 100, "in_channels": 3, "image_size": 32}
    assert count(registry.build_model("teachers", "resnet50-torchvision", info)) == 23_712_932
    assert count(registry.build_model("students", "resnet18-torchvision", info)) == 11_227_812


@pytest.mark.paper
@pytest.mark.parametrize("cgan", ["posthoc"])  # concurrent, the default: test_paper_profiles.py, on CIFAR-100 files
def test_paper_profile_runs_one_step_at_a_tiny_size(tmp_path, capsys, cgan):
    sets = [x for s in TINY + [f"teacher.method_options.cgan={cgan}"] for x in ("--set", s)]
    code = main(["run", str(PLUGIN), "--profile", "paper", "--seeds", "0", *sets,
                 "--out", str(tmp_path / "runs"), "--cache", str(tmp_path / "cache"), "--device", "cpu"])
    assert code == 0, capsys.readouterr().err
    done = read_records(tmp_path / "runs")
    assert sorted(r["method"] for r in done) == ["kd-ce", "kd-vkd", "scratch", "vkd"]
    assert all(r["status"] == "ok" for r in done)
    vkd = next(r for r in done if r["method"] == "vkd")
    assert vkd["teacher"]["model"] == "resnet50-torchvision" and vkd["steps_per_epoch"] == 1
    [meta] = (tmp_path / "cache" / "teachers").glob("*/meta.json")
    assert json.loads(meta.read_text())["spec"]["method_options"]["cgan"] == cgan
    # G and D are cached with the teacher they belong to
    saved = torch.load(meta.parent / "teacher.pt", weights_only=True)["modules"]
    assert {"model", "generator", "discriminator"} <= set(saved)


def test_vkd_without_a_generator_says_which_teacher_method_to_use(tmp_path, capsys):
    folder = tmp_path / "vkd"
    shutil.copytree(PLUGIN, folder, ignore=shutil.ignore_patterns("__pycache__"))
    (folder / "kdbench.toml").write_text(
        '[experiment]\nmethods = ["vkd"]\n[data]\nname = "synthetic"\nval_size = 32\ntrain_subset = 32\ntest_subset = 32\n'
        '[teacher]\nmodel = "small-cnn"\nmethod = "scratch"\n[teacher.train]\nepochs = 1\nsteps_per_epoch = 1\n'
        '[student]\nmodel = "mlp"\n[train]\nepochs = 1\nsteps_per_epoch = 1\n')
    code = main(["run", str(folder), "--seeds", "0", "--out", str(tmp_path / "runs"), "--cache", str(tmp_path / "cache"), "--device", "cpu"])
    out = capsys.readouterr().out
    assert code == 1 and "has no virtual knowledge generator" in out and 'method = "vkd-teacher"' in out


# -- the quick profile: the notebook's KD + VKD student against scratch (3 seeds), teacher + G
# trained concurrently --


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("vkd")
    code = main(["run", str(PLUGIN), "--grid", "method=scratch,kd-vkd", "--seeds", "0,1,2",
                 "--out", str(out / "runs"), "--cache", str(out / "cache"), "--device", "cpu"])
    assert code == 0
    return read_records(out / "runs"), out


@pytest.mark.claims
def test_quick_kd_vkd_beats_scratch(quick):
    # the notebook's student beats scratch at the best-validation epoch: the 95% interval of the
    # gain over the three seed pairs lies above zero (under all three CPU settings; README). VKD
    # alone against scratch is not significant (README), so it is not asserted.
    done, _ = quick
    assert len(done) == 6 and all(r["status"] == "ok" for r in done)
    gain = paired_gain(done, "kd-vkd", "scratch", "top1_best")
    assert gain.n == 3 and gain.low > 0, gain


@pytest.mark.slow
def test_quick_generator_mimics_the_teacher(quick):
    done, out = quick
    teacher = next(r for r in done if r["method"] == "kd-vkd")["teacher"]
    metrics = teacher["metrics"]
    assert metrics["top1"] > 84  # the spec's small-cnn teacher reaches ~87 %
    # G's virtual distribution puts its maximum on the label far more often than chance (10 %;
    # measured 87.5 % under ATEN_CPU_CAPABILITY=avx512, 95.1 % under default: one teacher, no
    # interval, so the bound is far from both) and is about as soft as the teacher's T = 4 outputs
    assert metrics["g_label_agreement"] > 50
    assert abs(metrics["g_top_prob"] - metrics["teacher_top_prob"]) < 0.1
    board = (out / "runs" / "vkd" / "leaderboard.md").read_text()
    assert "| kd-vkd " in board and "scratch" in board and "g label agreement" in board
