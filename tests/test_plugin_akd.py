"""plugins/akd (seed 001, data-free adversarial KD): the seed's architectures and parameter counts,
the paper profile's grid and one real training step of it on CPU, the method's mechanics, and the
quick profile's effect (the data-free student beats the RANDOM-input baseline)."""
import json
from pathlib import Path

import pytest
import torch

from conftest import REPO, shared_cache
from kdbench.measure import count_params as count
from kdbench import experiment, runner
from kdbench.data import RawData
from kdbench.registry import Entry

PLUGIN = REPO / "plugins" / "akd"
CIFAR100 = {"num_classes": 100, "in_channels": 3, "image_size": 32}


@pytest.fixture(scope="module")
def registry():
    return runner.registry_for((str(PLUGIN),), False)  # the registry run_job uses


# ------------------------------------------------------------------------------------------------
# Architectures


def test_paper_students_are_resnet18_8x_and_its_half_width_small(registry, no_onednn):
    cells, _, _ = experiment.expand(PLUGIN, registry, grid=["students=50,20"], profile="paper")
    students = {json.dumps(c.config["student"], sort_keys=True): c.config["student"] for c in cells}
    counts = sorted(count(registry.build_model("students", s["model"], CIFAR100, **{k: v for k, v in s.items() if k != "model"}))
                    for s in students.values())
    assert counts == [2_820_740, 11_220_132]  # ResNet18_8x_Small, ResNet18_8x (the seed's README, exact)


def test_generator_a_matches_dfad_and_standardises_its_batches(registry, no_onednn):
    torch.manual_seed(0)
    generator = registry.build_model("generators", "akd-generator-a", CIFAR100, nz=100, ngf=64)
    assert count(generator) == 1_051_139
    images = generator(torch.randn(16, 100))
    assert images.shape == (16, 3, 32, 32)
    # the last BatchNorm (affine=False) standardises each channel over the batch in train mode
    assert images.mean(dim=(0, 2, 3)).abs().max() < 1e-4
    assert (images.std(dim=(0, 2, 3)) - 1).abs().max() < 0.01
    small = registry.build_model("generators", "akd-generator-a", {"in_channels": 1, "image_size": 28}, nz=100, ngf=8)
    assert small(torch.randn(4, 100)).shape == (4, 1, 28, 28)
    assert count(small) == 82_817  # the quick profile's generator (README)


def test_seed_teacher_is_torchvision_resnet34_fed_224_pixels(registry, no_onednn):
    teacher = registry.build_model("teachers", "resnet34-imagenet", CIFAR100)
    assert count(teacher) == 21_335_972  # the seed's README: 21.336 M
    seen = []
    teacher.model.conv1.register_forward_hook(lambda module, args, out: seen.append(args[0].shape[-1]))
    teacher.eval()
    with torch.no_grad():
        assert teacher(torch.randn(1, 3, 32, 32)).shape == (1, 100)
    assert seen == [224]


# ------------------------------------------------------------------------------------------------
# The paper profile: its grid, and one real step on CPU (fake CIFAR-100, random teacher)


def test_paper_grid_expands_with_the_seeds_settings(registry):
    cells, seeds, profile = experiment.expand(PLUGIN, registry, grid=["students=50,20"], profile="paper")
    assert profile == "paper" and seeds == [0, 1]
    assert sorted(c.method for c in cells) == ["akd", "akd", "akd-kd-real", "akd-kd-real", "akd-random", "akd-random"]
    akd = next(c for c in cells if c.method == "akd")
    cfg = akd.config
    assert cfg["data"]["name"] == "cifar100" and cfg["data"]["test_subset"] == 0
    assert cfg["teacher"]["model"] == "resnet34"
    assert {k: cfg["train"][k] for k in ("epochs", "steps_per_epoch", "batch_size", "optimizer", "lr", "momentum", "weight_decay")} == {
        "epochs": 100, "steps_per_epoch": 100, "batch_size": 256, "optimizer": "sgd", "lr": 0.01, "momentum": 0.9, "weight_decay": 5e-4}
    assert {k: cfg["method"][k] for k in ("student_steps", "generator_steps", "nz", "ngf", "lr_g", "peer")} == {
        "student_steps": 15, "generator_steps": 1, "nz": 100, "ngf": 64, "lr_g": 1e-3, "peer": {}}

    seed_cells, _, _ = experiment.expand(PLUGIN, registry, grid=["variant=seed"], profile="paper")
    seed = next(c for c in seed_cells if c.method == "akd").config
    assert seed["teacher"]["model"] == "resnet34-imagenet"
    assert seed["student"] == {"model": "resnet18", "width": 1.0}
    assert seed["method"]["peer"] == {"model": "resnet18", "width": 0.5}


def fake_cifar100(cfg):
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (24, 3, 32, 32), generator=g, dtype=torch.uint8)
    y = torch.randint(100, (24,), generator=g)
    return RawData("cifar100", x[:16], y[:16], x[16:], y[16:], 100, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762))


def run_paper_cell(registry, monkeypatch, tmp_path, grid, sets=()):
    """Run the paper cells on a fake CIFAR-100 with a random teacher: one outer iteration, batch 2."""
    from kdbench import engine

    monkeypatch.setitem(registry.tables["datasets"], "cifar100", Entry("cifar100", fake_cifar100, "test"))
    engine.load_raw.cache_clear()
    engine.load_bundle.cache_clear()
    tiny = ["train.batch_size=2", "train.epochs=1", "train.steps_per_epoch=1", "data.val_size=8", "method.student_steps=1", "measure.throughput_batch=2",
            "measure.throughput_repeats=1", "measure.latency_repeats=1", "measure.warmup=0", *sets]
    cells, _, _ = experiment.expand(PLUGIN, registry, grid=grid, sets=tiny, profile="paper", plugin_dirs=[PLUGIN])
    try:
        records = []
        for cell in cells:
            path = tmp_path / f"teacher-{cell.config['teacher']['model']}.pt"
            if not path.exists():
                torch.save(registry.build_model("teachers", cell.config["teacher"]["model"], CIFAR100).state_dict(), path)
            options = runner.RunOptions(out=str(tmp_path / "runs"), cache=str(tmp_path / "cache"), device="cpu", teacher_path=str(path))
            records.append(runner.run_job(runner.Job(cell, 0, options)))
        return records
    finally:
        engine.load_raw.cache_clear()
        engine.load_bundle.cache_clear()


def test_paper_profile_runs_one_step_of_every_arm(registry, monkeypatch, tmp_path, no_onednn):
    records = run_paper_cell(registry, monkeypatch, tmp_path, grid=["students=20"])
    assert [r["status"] for r in records] == ["ok"] * 3, [r.get("error") for r in records]
    by_method = {r["method"]: r for r in records}
    assert set(by_method) == {"akd", "akd-random", "akd-kd-real"}
    assert all(r["student"]["params"] == 2_820_740 for r in records)
    history = [json.loads(line) for line in (Path(by_method["akd"]["run_dir"]) / "history.jsonl").read_text().splitlines()]
    assert history[0]["train_student_l1"] > 0 and history[0]["train_generator_l1"] > 0


def test_paper_seed_variant_trains_both_students_against_one_generator(registry, monkeypatch, tmp_path, no_onednn):
    # the 224x224 teacher is the expensive part: check the variant's wiring with a 32x32 input size
    records = run_paper_cell(registry, monkeypatch, tmp_path, grid=["variant=seed", "method=akd"],
                             sets=["teacher.model=resnet34-imagenet", "teacher.input_size=32"])
    (record,) = records
    assert record["status"] == "ok", record.get("error")
    assert record["student"]["params"] == 11_220_132
    assert {"peer_top1_last", "peer_top1_best", "top1_last"} <= set(record["metrics"])


# ------------------------------------------------------------------------------------------------
# Mechanics of one AKD iteration


def test_one_iteration_updates_student_and_generator_and_never_the_teacher(registry, tmp_path):
    from kdbench.config import DataConfig, TrainConfig
    from kdbench.data import DataBundle
    from kdbench.engine import Context, Teacher
    from dataclasses import asdict

    torch.manual_seed(0)
    x = torch.randint(0, 256, (32, 1, 28, 28), dtype=torch.uint8)
    y = torch.randint(10, (32,))
    data = DataBundle("fake", {"train": (x, y), "val": (x, y), "test": (x, y)}, 10, (0.5,), (0.25,), DataConfig(), "cpu")
    teacher = Teacher(registry.build_model("teachers", "small-cnn", data.info), {}, {})
    student = registry.build_model("students", "tiny-cnn", data.info)
    train = asdict(TrainConfig()) | {"batch_size": 8, "lr": 0.01}
    ctx = Context(student=student, teacher=teacher, data=data, train=train, seed=0, device=torch.device("cpu"),
                  run_dir=tmp_path, registry=registry)
    akd_cls = registry.get("methods", "akd")
    method = akd_cls(akd_cls.Config(ngf=8), ctx)
    def no_real_images(*args, **kwargs):
        raise AssertionError("a real image reached the data-free method")

    data.batches = data.tensors = data.split = no_real_images  # AKD draws every input from its generator
    calls = []
    student.register_forward_hook(lambda *a: calls.append("student"))
    before = {name: [p.detach().clone() for p in m.parameters()] for name, m in
              (("student", student), ("generator", method.generator), ("teacher", teacher.model))}
    losses = method.train_step(None)
    assert set(losses) == {"student_l1", "generator_l1"}
    assert calls.count("student") == 15 + 1  # 15 student steps : 1 generator step
    changed = {name: any(not torch.equal(a, b) for a, b in zip(params, dict(
        student=student, generator=method.generator, teacher=teacher.model)[name].parameters())) for name, params in before.items()}
    assert changed == {"student": True, "generator": True, "teacher": False}
    assert all(p.requires_grad for p in student.parameters())  # unfrozen again after the generator step
    assert not any(p.requires_grad for p in teacher.model.parameters())


# ------------------------------------------------------------------------------------------------
# The quick profile's effect: real training on Fashion-MNIST, 2 seeds


def test_quick_profile_data_free_student_beats_random_inputs(tmp_path, tmp_path_factory):
    from kdbench.cli import main

    out = tmp_path / "runs"
    code = main(["run", str(PLUGIN), "--grid", "method=akd,akd-random", "--out", str(out),
                 "--cache", str(shared_cache(tmp_path_factory))])
    assert code == 0
    records = [json.loads(p.read_text()) for p in out.rglob("record.json")]
    assert len(records) == 4 and all(r["status"] == "ok" for r in records)

    def mean(method, which):
        values = [r["metrics"][f"top1_{which}"] for r in records if r["method"] == method]
        assert len(values) == 2
        return sum(values) / 2

    # the target is +10 points (mean of 2 seeds); the margin leaves room for seed noise
    assert mean("akd", "best") > mean("akd-random", "best") + 5
    assert mean("akd", "last") > mean("akd-random", "last") + 5
    board = (out / "akd" / "leaderboard.md").read_text()
    assert "akd-random" in board and "teacher" in board
