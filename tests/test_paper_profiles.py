"""Every plugin's paper profile end to end, the way a user's command runs it
(``kdbench.cli.main(["run", PLUGIN, "--profile", "paper", ...])``), on tiny CIFAR-10, CIFAR-100 and
MNIST copies in the real on-disk formats (tests/datasets_on_disk.py) read by the real loaders:
teacher and students at the sources' sizes, trained into the cache, validated, both test passes,
the records and the leaderboard. Only epochs, steps, batch and split sizes and the timing repeats
are overridden (the sources' batches of 128-256 images on 11-24 M-parameter models would take
minutes a step on a 2-core CPU); the models and the data code are the paper profile's."""
import json

import pytest

import datasets_on_disk as disk
from conftest import REPO
from kdbench.cli import main

pytestmark = pytest.mark.paper

SMALL = [  # one short epoch of everything; the cell's own models, data and method constants
    "train.epochs=1", "train.steps_per_epoch=1", "train.eval_batch_size=16",
    "teacher.train.epochs=1", "teacher.train.steps_per_epoch=1", "teacher.train.batch_size=8", "teacher.train.eval_batch_size=16",
    "data.val_size=8",
    "measure.throughput_batch=2", "measure.throughput_repeats=1", "measure.latency_repeats=1", "measure.warmup=0",
]


def run_paper(plugin, data_root, tmp_path, capsys, sets=(), profile="paper"):
    args = ["run", str(REPO / "plugins" / plugin), "--profile", profile, "--seeds", "0", "--device", "cpu",
            "--out", str(tmp_path / "runs"), "--cache", str(tmp_path / "cache")]
    for item in [*SMALL, f"data.root={data_root}", *sets]:
        args += ["--set", item]
    code = main(args)
    captured = capsys.readouterr()
    assert code == 0, captured.out[-3000:] + captured.err[-3000:]
    records = [json.loads(p.read_text()) for p in sorted((tmp_path / "runs").rglob("record.json"))]
    assert records and all(r["status"] == "ok" for r in records), [r.get("error") for r in records]
    board = (tmp_path / "runs" / plugin / "leaderboard.md").read_text()
    assert "teacher" in board
    return records, board


def check_record(record, metric="top1"):
    """Both test passes (last and best epoch), the best epoch chosen on validation, the data it says."""
    assert {f"{metric}_last", f"{metric}_best"} <= set(record["metrics"])
    assert record["selection"]["best_epoch"] == 1 and record["selection"]["val_best"] is not None
    assert record["epochs"] == 1 and record["device"] == "cpu"


def test_hinton_paper_on_cifar10(monkeypatch, tmp_path, capsys):
    disk.install_cifar(monkeypatch, tmp_path / "data", "cifar10", per_batch=8, n_test=16)
    records, board = run_paper("hinton", tmp_path / "data", tmp_path, capsys)
    assert sorted(r["method"] for r in records) == ["hinton", "scratch"]
    for r in records:
        check_record(r)
        assert r["config"]["data"]["name"] == "cifar10" and r["config"]["data"]["augment"] == ["hflip", "vflip"]
        assert r["student"]["params"] == 114_186  # the source's 3-block CNN
        assert r["teacher"]["model"] == "vgg19-bn-torchvision" and r["teacher"]["params"] == 20_286_282
    hinton = next(r for r in records if r["method"] == "hinton")
    assert hinton["teacher"]["metrics"]["top1"] is not None  # the cached teacher, measured on the test set


def test_akd_paper_on_cifar100(monkeypatch, tmp_path, capsys):
    disk.install_cifar(monkeypatch, tmp_path / "data", "cifar100", n_train=48, n_test=16)
    # an outer iteration of 15 student steps at the source's batch of 256 takes minutes here; 2 at batch 4
    records, board = run_paper("akd", tmp_path / "data", tmp_path, capsys, sets=["train.batch_size=4", "method.student_steps=2"])
    assert sorted(r["method"] for r in records) == ["akd", "akd-kd-real", "akd-random"]
    for r in records:
        check_record(r)
        assert r["student"]["params"] == 11_220_132  # ResNet18_8x on CIFAR-100
        assert r["teacher"]["model"] == "resnet34" and r["teacher"]["params"] == 21_328_292  # DFAD's ResNet34_8x
    assert "akd-random" in board


def test_gankd_paper_on_mnist(monkeypatch, tmp_path, capsys):
    disk.write_mnist(tmp_path / "data", n_train=64, n_test=32)
    records, board = run_paper("gankd", tmp_path / "data", tmp_path, capsys, sets=[
        "train.batch_size=16", "teacher.train.batch_size=16",
        "method.eval_samples=16", "teacher.method_options.eval_samples=16",
        "method.fd_epochs=1", "teacher.method_options.fd_epochs=1"])
    assert sorted(r["method"] for r in records) == ["gan-adv", "gankd"]
    for r in records:
        check_record(r, metric="fd")
        assert r["config"]["data"]["name"] == "mnist"
        assert r["student"]["params"] == 771_968  # 784,640 as Keras counts them (BN moving statistics)
        assert r["teacher"]["model"] == "dcgan-teacher" and r["teacher"]["params"] == 1_936_256  # Keras: 1,961,728
    assert "mse_teacher_last" in records[0]["metrics"]


def test_vkd_paper_on_cifar100(monkeypatch, tmp_path, capsys):
    disk.install_cifar(monkeypatch, tmp_path / "data", "cifar100", n_train=48, n_test=16)
    records, board = run_paper("vkd", tmp_path / "data", tmp_path, capsys, sets=["train.batch_size=8"])
    assert sorted(r["method"] for r in records) == ["kd-ce", "kd-vkd", "scratch", "vkd"]
    for r in records:
        check_record(r)
        assert r["config"]["data"]["name"] == "cifar100" and r["config"]["data"]["augment"] == ["crop", "hflip"]
        assert r["student"]["params"] == 11_227_812  # torchvision ResNet-18, 100 classes
        assert r["teacher"]["model"] == "resnet50-torchvision" and r["teacher"]["params"] == 23_712_932
    [meta] = (tmp_path / "cache" / "teachers").glob("*/meta.json")
    assert json.loads(meta.read_text())["spec"]["data"]["root"] == str(tmp_path / "data")


# plugins/classic's paper profiles: the CIFAR-100 pairs of mdistiller's table, every arm
CLASSIC_PAIRS = {  # profile: (teacher, its parameters, student, its parameters, the student's lr)
    "paper-resnet32x4-resnet8x4": ("resnet32x4", 7_433_860, "resnet8x4", 1_233_540, 0.05),
    "paper-wrn-40-2-wrn-40-1": ("wrn-40-2", 2_255_156, "wrn-40-1", 569_780, 0.05),
    "paper-vgg13-vgg8": ("vgg13-cifar", 9_462_180, "vgg8-cifar", 3_965_028, 0.05),
    "paper-resnet56-resnet20": ("resnet56", 861_620, "resnet20", 278_324, 0.05),
    "paper-resnet32x4-shufflenetv2": ("resnet32x4", 7_433_860, "shufflenetv2", 1_355_528, 0.01),
    "paper-vgg13-mobilenetv2": ("vgg13-cifar", 9_462_180, "mobilenetv2", 812_836, 0.01),
}
CLASSIC_ARMS = ["at", "crd", "ctkd", "dist", "dkd", "fitnet", "kd", "mlkd", "nst", "ofd", "pkt", "reviewkd", "rkd", "scratch", "sp", "vid"]


@pytest.mark.slow
@pytest.mark.paper
@pytest.mark.parametrize("profile", sorted(CLASSIC_PAIRS))
def test_classic_paper_pairs_on_cifar100(profile, monkeypatch, tmp_path, capsys):
    teacher, teacher_params, student, student_params, lr = CLASSIC_PAIRS[profile]
    disk.install_cifar(monkeypatch, tmp_path / "data", "cifar100", n_train=24, n_test=8)
    # one step of 2 images per arm (full-size models on a 2-core CPU); CRD's 16,384 negatives need
    # that many images, so 4 here; everything else (models, layers, weights, schedule) is the profile's
    records, board = run_paper("classic", tmp_path / "data", tmp_path, capsys, profile=profile, sets=[
        "train.batch_size=2", "teacher.train.batch_size=2", "method.nce_k=4"])
    assert sorted(r["method"] for r in records) == CLASSIC_ARMS
    for r in records:
        check_record(r)
        config = r["config"]
        assert config["data"]["name"] == "cifar100" and config["data"]["augment"] == ["crop", "hflip"]
        assert config["train"]["lr"] == lr and config["train"]["milestones"] == [150, 180, 210]
        assert r["student"]["model"] == student and r["student"]["params"] == student_params
        assert r["teacher"]["model"] == teacher and r["teacher"]["params"] == teacher_params
