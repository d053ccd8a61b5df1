"""The engine owns the lifecycle: feature hooks removed at teardown (also after a failure),
ctx.epoch/global_step restored on resume, trainable modules in the default optimizer and reported
as the method's parameters, the best snapshot of every module."""
import json
import re
import sys

import pytest
import torch

from conftest import fake_data, hand_context, read_history, read_records, registry_for, write_plugin

# A FitNets-style method through the public API only: features of both models, a trainable
# regressor, a warm-up on ctx.epoch. Failures are injected through the environment, so a rerun of
# the same cell (same config) resumes from its checkpoint.
HINT_PLUGIN = '''
import os
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

import kdbench
from kdbench.method import Method

TAPPED = []  # every model this plugin hooked
TORN_DOWN = []


@dataclass
class HintConfig:
    weight: float = 1.0
    warmup: int = 4  # epochs over which the hint weight ramps up


class Hint(Method):
    Config = HintConfig

    def __init__(self, config, ctx):
        super().__init__(config, ctx)
        s = ctx.feature_shapes(self.student, ["1"])["1"]
        t = ctx.feature_shapes(self.teacher, ["3"])["3"]
        self.regressor = ctx.add_module("regressor", nn.Linear(s.numel(), t.numel()))
        assert (tuple(s), tuple(t)) == ((16,), (16, 4, 4))
        self.s_tap = ctx.features(self.student, ["1"])
        self.t_tap = ctx.features(self.teacher, ["3"])
        TAPPED.extend([self.student, self.teacher])

    def train_step(self, batch):
        if self.ctx.global_step == int(os.environ.get("HINT_FAIL_AT_STEP", -1)):
            raise RuntimeError("planned failure")
        images, labels = batch
        logits = self.student(images)
        with torch.no_grad():
            self.teacher(images)
        target = self.t_tap["3"]
        assert not target.requires_grad and self.s_tap["1"].requires_grad
        hint = F.mse_loss(self.regressor(self.s_tap["1"]), target.flatten(1))
        ramp = min(1.0, (self.ctx.epoch + 1) / self.config.warmup)
        loss = F.cross_entropy(logits, labels) + ramp * self.config.weight * hint
        self.ctx.step(self.optimizer, loss)
        return {"hint": hint, "ramp": ramp, "step": float(self.ctx.global_step)}

    def end_epoch(self, epoch):
        assert epoch == self.ctx.epoch
        if epoch == int(os.environ.get("HINT_FAIL_AFTER_EPOCH", -1)):
            raise RuntimeError("planned failure")

    def teardown(self):
        TORN_DOWN.append(self.config.weight)


@kdbench.hookimpl
def kdbench_register_methods(register):
    register("hint", Hint, description="hint loss on features with a regressor")
'''

HINT_TOML = '''
[experiment]
name = "hint"
methods = ["hint"]
seeds = [0]

[data]
name = "synthetic"
val_size = 400

[teacher]
model = "small-cnn"
c1 = 8
c2 = 16
hidden = 32
[teacher.train]
epochs = 2
optimizer = "adam"
lr = 0.003

[student]
model = "mlp"
hidden = 16

[train]
epochs = 2
optimizer = "adam"
lr = 0.002

[measure]
throughput_batch = 8
throughput_repeats = 1
latency_repeats = 1
warmup = 1

[axes.weight]
key = "method.weight"
'''


@pytest.fixture
def hint_dir(tmp_path):
    return write_plugin(tmp_path / "hint", HINT_PLUGIN, HINT_TOML)


def plugin_module(folder):
    return sys.modules[registry_for(folder).get("methods", "hint").__module__]


@pytest.mark.slow
def test_hooks_are_removed_after_a_grid_and_after_a_failure(hint_dir, cli, tmp_path, monkeypatch):
    monkeypatch.setenv("HINT_FAIL_AT_STEP", "3")
    code, _, err = cli("run", str(hint_dir), "--grid", "weight=0.5,1,2", "--seeds", "0")
    assert code == 1  # failures are recorded, the grid goes on
    rows = read_records(tmp_path / "runs")
    assert [r["status"] for r in rows] == ["failed"] * 3 and "planned failure" in rows[0]["error"]
    module = plugin_module(hint_dir)
    assert len(module.TAPPED) == 6 and sorted(module.TORN_DOWN) == [0.5, 1.0, 2.0]
    monkeypatch.delenv("HINT_FAIL_AT_STEP")
    code, _, err = cli("run", str(hint_dir), "--grid", "weight=0.5,1,2", "--seeds", "0")
    assert code == 0, err
    assert len(module.TAPPED) == 12 and len(module.TORN_DOWN) == 6
    teachers = module.TAPPED[1::2]
    assert all(t is teachers[3] for t in teachers[3:])  # one teacher object shared by a run's cells
    for model in module.TAPPED:
        assert not any(m._forward_hooks for m in model.modules())


@pytest.mark.slow
def test_trainable_module_is_optimised_and_reported_as_the_methods(hint_dir, cli, tmp_path):
    code, _, err = cli("run", str(hint_dir), "--grid", "weight=1", "--seeds", "0")
    assert code == 0, err
    [row] = read_records(tmp_path / "runs")
    # mlp with 16 hidden units on 16x16 images; the regressor maps its 16 features to 16x4x4
    assert row["student"]["params"] == 256 * 16 + 16 + 16 * 10 + 10
    assert row["method_params"] == {"regressor": 16 * 256 + 256}


def test_default_optimizer_covers_trainable_modules_only(tmp_path):
    from kdbench.engine import build_method
    from kdbench.method import Method
    from kdbench.plugins import load_registry

    registry = load_registry([])

    class TwoHeads(Method):
        def __init__(self, config, ctx):
            super().__init__(config, ctx)
            self.head = ctx.add_module("head", torch.nn.Linear(3, 3))
            self.other = ctx.add_module("other", torch.nn.Linear(3, 3), trainable=False)

    data = fake_data(n=8)
    student = registry.build_model("students", "mlp", data.info, hidden=4)
    ctx = hand_context(tmp_path, registry, data, student)
    method = build_method(TwoHeads, TwoHeads.Config(), ctx)
    optimised = {id(p) for group in method.optimizer.param_groups for p in group["params"]}
    assert optimised == {id(p) for p in [*student.parameters(), *method.head.parameters()]}
    assert ctx.optimizers == [method.optimizer]


@pytest.mark.slow
def test_resumed_run_sees_the_same_epochs_and_steps(hint_dir, cli, tmp_path, monkeypatch):
    grid = ("--grid", "weight=1", "--seeds", "0", "--set", "train.epochs=4")
    code, _, err = cli("run", str(hint_dir), *grid)
    assert code == 0, err
    [fresh] = read_records(tmp_path / "runs")
    history = (tmp_path / "runs" / "hint").rglob("history.jsonl")
    fresh_history = next(history).read_text()
    monkeypatch.setenv("HINT_FAIL_AFTER_EPOCH", "2")  # dies after checkpointing epochs 1 and 2
    code, _, err = cli("run", str(hint_dir), *grid, "--force")
    assert code == 1
    monkeypatch.delenv("HINT_FAIL_AFTER_EPOCH")
    code, _, err = cli("run", str(hint_dir), *grid)
    assert code == 0 and "resuming" in err and "after epoch 2" in err
    [resumed] = read_records(tmp_path / "runs")
    assert resumed["metrics"] == fresh["metrics"] and resumed["selection"] == fresh["selection"]
    rows = read_history(resumed)
    assert [r["train_ramp"] for r in rows] == [0.25, 0.5, 0.75, 1.0]
    assert next((tmp_path / "runs" / "hint").rglob("history.jsonl")).read_text() == fresh_history


def test_unknown_feature_path_lists_the_valid_ones():
    from kdbench.errors import ConfigError
    from kdbench.features import FeatureTap

    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.ReLU())
    with pytest.raises(ConfigError, match=r"unknown module path\(s\) '2' of Sequential; valid: 0, 1"):
        FeatureTap(model, ["2"])
    assert not model[0]._forward_hooks


def test_list_layers_shows_module_paths_and_output_shapes(cli):
    code, out, _ = cli("list", "students", "--layers", "small-cnn", "--dataset", "synthetic")
    assert code == 0 and "input 1x16x16" in out
    assert re.search(r"^ +3 +Conv2d +32x4x4$", out, re.M) and re.search(r"^ +10 +Linear +10$", out, re.M)
    code, _, err = cli("list", "--layers", "small-cnn")
    assert code == 2 and "list students --layers MODEL" in err


@pytest.mark.slow
def test_readme_feature_example_runs(tmp_path, cli):
    from conftest import REPO

    readme = (REPO / "docs" / "plugins.md").read_text()
    code = readme.split("```python\n# hintplugin/plugin.py\n", 1)[1].split("```", 1)[0]
    assert len(code.strip().splitlines()) < 100
    toml = HINT_TOML.replace('methods = ["hint"]', 'methods = ["scratch", "kd", "hint"]').replace(
        'model = "mlp"\nhidden = 16', 'model = "small-cnn"\nc1 = 8\nc2 = 16\nhidden = 32').replace(
        "c1 = 8\nc2 = 16\nhidden = 32\n[teacher.train]", "[teacher.train]")
    folder = write_plugin(tmp_path / "hintplugin", code, toml)
    code, _, err = cli("run", str(folder), "--seeds", "0")
    assert code == 0, err
    rows = {r["method"]: r for r in read_records(tmp_path / "runs")}
    assert set(rows) == {"scratch", "kd", "hint"} and all(r["status"] == "ok" for r in rows.values())
    # small-cnn's layer 3 has 16 channels in the student and 32 in the teacher: a 1x1 conv 16 -> 32
    assert rows["hint"]["method_params"] == {"regressor": 16 * 32 + 32} and rows["kd"]["method_params"] == {}
    assert rows["hint"]["student"]["params"] == rows["scratch"]["student"]["params"]


def fake_context(tmp_path, registry, **train):
    """A Context on 40 random images with augmentation (crop, flip): the student an mlp."""
    data = fake_data(n=40, val=8, augment=("crop", "hflip"))
    torch.manual_seed(0)
    student = registry.build_model("students", "mlp", data.info, hidden=4)
    return hand_context(tmp_path, registry, data, student,
                        **{"optimizer": "adam", "lr": 0.01, "batch_size": 16, "checkpoint_every": 100} | train)


def test_sample_indices_are_opt_in_and_leave_the_batches_unchanged(tmp_path):
    """A method that wants indices trains on exactly the batches scratch trains on (same seed), plus
    each sample's position in the training split; scratch's metrics are the same either way."""
    from kdbench.engine import build_method, train
    from kdbench.method import Scratch
    from kdbench.plugins import load_registry

    registry = load_registry([])

    class Recording(Scratch):
        def train_step(self, batch):
            seen.append([t.clone() for t in batch])
            if self.ctx.global_step % 2:  # ctx.next_batch() draws the same way
                seen.append([t.clone() for t in self.ctx.next_batch()])
            return super().train_step(batch[:2])

    class Indexed(Recording):
        wants_indices = True

    class ScratchWithIndices(Scratch):
        wants_indices = True

        def train_step(self, batch):
            return super().train_step(batch[:2])

    runs = {}
    for cls in (Recording, Indexed, Scratch, ScratchWithIndices):
        seen = []
        ctx = fake_context(tmp_path / cls.__name__, registry, epochs=2, threads=1)
        runs[cls] = (train(build_method(cls, cls.Config(), ctx), ctx), seen, ctx.data)
    (plain, plain_batches, _), (indexed, indexed_batches, data) = runs[Recording], runs[Indexed]
    assert plain["metrics"] == indexed["metrics"]
    assert runs[Scratch][0]["metrics"] == runs[ScratchWithIndices][0]["metrics"]
    assert len(plain_batches) == len(indexed_batches) > 4 and all(len(b) == 2 for b in plain_batches)
    x, y = data.splits["train"]
    for (images, labels), (images2, labels2, indices) in zip(plain_batches, indexed_batches):
        assert torch.equal(images, images2) and torch.equal(labels, labels2)
        assert indices.dtype == torch.int64 and torch.equal(y[indices], labels)
    # one epoch's batches (3 steps drawing 5 batches of 16 from 40 samples) start a permutation
    first = torch.cat([b[2] for b in indexed_batches[:3]])
    assert sorted(first.tolist()) == list(range(40))


def test_evaluation_batches_can_carry_indices_too():
    from kdbench.config import DataConfig
    from kdbench.data import DataBundle

    x = torch.randint(0, 256, (5, 1, 4, 4), dtype=torch.uint8)
    y = torch.arange(5)
    data = DataBundle("fake", {"train": (x, y), "val": (x, y), "test": (x, y)}, 10, (0.5,), (0.25,), DataConfig(), "cpu")
    batches = list(data.batches("val", 2, indices=True))
    assert [b[2].tolist() for b in batches] == [[0, 1], [2, 3], [4]]
    assert all(torch.equal(b[1], b[2]) for b in batches)


def test_teardown_runs_after_a_failed_init(tmp_path):
    """teardown() always runs: also when __init__ raised (after its hooks were removed), and an
    error in that teardown is a note on the build's error, not a replacement for it."""
    from kdbench.engine import build_method
    from kdbench.method import Method
    from kdbench.plugins import load_registry

    registry = load_registry([])
    torn_down = []

    class FailsInInit(Method):
        def __init__(self, config, ctx):
            super().__init__(config, ctx)
            self.tap = ctx.features(ctx.student, ["1"])
            raise RuntimeError("bad layer")

        def teardown(self):
            torn_down.append(not any(m._forward_hooks for m in self.student.modules()))
            if getattr(self, "fail_teardown", False):
                raise ValueError("teardown too")

    ctx = fake_context(tmp_path, registry)
    with pytest.raises(RuntimeError, match="bad layer"):
        build_method(FailsInInit, FailsInInit.Config(), ctx)
    assert torn_down == [True]
    FailsInInit.fail_teardown = True
    with pytest.raises(RuntimeError, match="bad layer") as info:
        build_method(FailsInInit, FailsInInit.Config(), fake_context(tmp_path, registry))
    assert info.value.__notes__ == ["teardown() after the failed build raised too: ValueError: teardown too"]


def test_layer_options_are_checked_before_any_training(tmp_path, cli):
    """A method's layer_options (here the README's hint plugin) are checked against the teacher
    and the student before anything trains: a one-line error naming the option, the model and
    the valid paths; no teacher trained, no run folder written."""
    from conftest import REPO

    readme = (REPO / "docs" / "plugins.md").read_text()
    code = readme.split("```python\n# hintplugin/plugin.py\n", 1)[1].split("```", 1)[0]
    folder = write_plugin(tmp_path / "hintplugin", code, HINT_TOML)
    code, _, err = cli("run", str(folder), "--seeds", "0", "--set", "method.teacher_layer=99")
    assert code == 2 and err.count("\n") == 1
    assert ("method.teacher_layer of 'hint' names '99', not a module path of the teacher 'small-cnn'; valid: 0, 1, 2, 3, "
            in err) and "list teachers --layers small-cnn --dataset synthetic" in err
    code, _, err = cli("run", str(folder), "--seeds", "0", "--set", "method.student_layer=7", "--dry-run")
    assert code == 2 and "method.student_layer of 'hint' names '7', not a module path of the student 'mlp'; valid: 0, 1, 2, 3 (" in err
    assert not (tmp_path / "runs").exists() and not (tmp_path / "cache").exists()


class Interrupted(Exception):
    pass


def test_post_hoc_epochs_have_progress_history_and_resume(tmp_path, monkeypatch):
    """A method's post-hoc training (posthoc_epochs of posthoc_step after the last epoch, on the
    frozen best student) runs in the engine: counted in the progress bar, logged in the history
    (as are the losses end_epoch returns), checkpointed, and resumed to the same end state."""
    from dataclasses import asdict

    import torch.nn.functional as F

    from kdbench import engine
    from kdbench.config import DataConfig, TrainConfig
    from kdbench.data import DataBundle
    from kdbench.method import Method
    from kdbench.plugins import load_registry

    registry = load_registry([])
    fail_in_epoch = []

    class PostHoc(Method):
        needs_teacher = False
        posthoc_epochs = 2

        def __init__(self, config, ctx):
            super().__init__(config, ctx)
            self.critic = ctx.add_module("critic", torch.nn.Linear(10, 1), trainable=False, snapshot=False)
            self.critic_opt = ctx.optimizer(self.critic.parameters(), lr=0.01)

        def train_step(self, batch):
            images, labels = batch
            loss = F.cross_entropy(self.student(images), labels)
            self.ctx.step(self.optimizer, loss)
            return {"ce": loss}

        def end_epoch(self, epoch):
            return {"extra": epoch + 0.5}

        def posthoc_step(self, batch):
            assert self.ctx.phase == "posthoc"
            frozen = self.ctx.best_model()
            assert frozen is not self.student and not frozen.training and not any(p.requires_grad for p in frozen.parameters())
            assert all(torch.equal(v, self.ctx.best_state()["student"][k]) for k, v in frozen.state_dict().items())
            images, _ = batch
            with torch.no_grad():
                target = frozen(images)
            loss = F.mse_loss(self.critic(target).squeeze(1), images.flatten(1).mean(1))
            self.ctx.step(self.critic_opt, loss)
            if self.ctx.epoch in fail_in_epoch:
                raise Interrupted
            return {"mse": loss}

    torch.manual_seed(0)
    x = torch.randint(0, 256, (24, 1, 8, 8), dtype=torch.uint8)
    y = torch.randint(10, (24,))
    data = DataBundle("fake", {"train": (x, y), "val": (x[:8], y[:8]), "test": (x[:8], y[:8])}, 10, (0.5,), (0.25,), DataConfig(), "cpu")
    train_cfg = asdict(TrainConfig()) | {"epochs": 2, "batch_size": 8, "checkpoint_every": 1, "optimizer": "adam", "lr": 0.01}
    bars = []

    class Bar:
        def __init__(self, total, desc):
            self.total, self.done = total, 0
            bars.append(self)

        def update(self, n):
            self.done += n

        def close(self):
            pass

    monkeypatch.setattr(engine, "progress", Bar)

    def run(folder):
        engine.seed_everything(0)
        ctx = engine.Context(student=registry.build_model("students", "mlp", data.info, hidden=8), teacher=None, data=data,
                             train=train_cfg, seed=0, device=torch.device("cpu"), run_dir=tmp_path / folder, registry=registry)
        method = engine.build_method(PostHoc, PostHoc.Config(), ctx)
        return engine.train(method, ctx)

    straight = run("straight")
    assert bars[-1].total == bars[-1].done == 2 * 3 + 2 * 3  # 2 epochs of 3 steps, then 2 post-hoc passes of 3 batches
    rows = [json.loads(line) for line in (tmp_path / "straight" / "history.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3, 4]
    assert [sorted(r) for r in rows] == [["epoch", "train_ce", "train_extra", "val_top1", "val_top5"]] * 2 + [["epoch", "posthoc_mse"]] * 2
    assert [r["train_extra"] for r in rows[:2]] == [0.5, 1.5]

    fail_in_epoch.append(3)  # the second post-hoc epoch, after the checkpoint of the first
    with pytest.raises(Interrupted):
        run("resumed")
    fail_in_epoch.clear()
    resumed = run("resumed")
    assert bars[-1].done == bars[-1].total  # the bar resumed where the checkpoint left it
    assert resumed["metrics"] == straight["metrics"]
    for name, state in straight["best_state"].items():
        assert all(torch.equal(v, resumed["best_state"][name][k]) for k, v in state.items()), name
    assert (tmp_path / "resumed" / "history.jsonl").read_text() == (tmp_path / "straight" / "history.jsonl").read_text()
