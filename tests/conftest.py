import functools
import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads OpenMP (shared 2-core machines)
os.environ["KDBENCH_QUIET"] = "1"
os.environ["KDBENCH_WORKERS"] = "1"  # in-process runs: tests monkeypatch what spawned workers would not see

import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# A complete third-party method plugin, as a user would write it: one file, no install.
THIRD_PARTY_PLUGIN = '''
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

import kdbench
from kdbench.losses import kd_kl_loss
from kdbench.method import Method


@dataclass
class SoftKDConfig:
    temperature: float = 4.0
    alpha: float = 0.5  # weight of the label loss


class SoftKD(Method):
    """Hinton-style KD: alpha * CE + (1 - alpha) * T^2 KL."""

    Config = SoftKDConfig

    def train_step(self, batch):
        images, labels = batch
        logits = self.student(images)
        with torch.no_grad():
            soft = self.teacher(images)
        kd = kd_kl_loss(logits, soft, self.config.temperature)
        loss = self.config.alpha * F.cross_entropy(logits, labels) + (1 - self.config.alpha) * kd
        self.ctx.step(self.optimizer, loss)
        return {"loss": loss, "kd": kd}


def linear_student(num_classes, in_channels, image_size, hidden: int = 32):
    return nn.Sequential(nn.Flatten(), nn.Linear(in_channels * image_size**2, hidden), nn.ReLU(), nn.Linear(hidden, num_classes))


@kdbench.hookimpl
def kdbench_register_methods(register):
    register("soft-kd", SoftKD, description="KD with soft targets")


@kdbench.hookimpl
def kdbench_register_students(register):
    register("linear-student", linear_student)
'''

# The plugin above with a hold for tests that stop a run: with $KDBENCH_TEST_HOLD set to
# "TEMPERATURE:EPOCH:FILE", the soft-kd run of that temperature creates FILE at its first step of
# that (0-based) epoch and then waits there until it is interrupted or killed. The test acts once
# FILE exists, at a known point however loaded the machine is, never after a guessed delay.
HOLDING_PLUGIN = THIRD_PARTY_PLUGIN + '''

import os
import time

train_step_as_written = SoftKD.train_step


def train_step_with_hold(self, batch):
    temperature, epoch, marker = (os.environ.get("KDBENCH_TEST_HOLD") or "-1:-1:").split(":", 2)
    if self.config.temperature == float(temperature) and self.ctx.epoch == int(epoch):
        open(marker, "w").close()
        while True:  # until SIGINT (a KeyboardInterrupt here) or SIGKILL
            time.sleep(0.1)
    return train_step_as_written(self, batch)


SoftKD.train_step = train_step_with_hold
'''

THIRD_PARTY_TOML = '''
[experiment]
name = "softkd"
methods = ["scratch", "soft-kd"]
seeds = [0, 1]
profile = "quick"

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
model = "linear-student"

[train]
epochs = 2
optimizer = "adam"
lr = 0.002
batch_size = 128

[measure]
throughput_batch = 32
throughput_repeats = 3
latency_repeats = 3

[axes.temperature]
key = "method.temperature"

[axes.size]
values = { small = { "student.hidden" = 8 }, big = { "student.hidden" = 32 } }

[profiles.quick]
train = { epochs = 2 }

[profiles.longer]
train = { epochs = 3 }
'''


def write_plugin(folder, plugin=THIRD_PARTY_PLUGIN, toml=THIRD_PARTY_TOML):
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "plugin.py").write_text(textwrap.dedent(plugin))
    (folder / "kdbench.toml").write_text(textwrap.dedent(toml))
    return folder


def pytest_collection_modifyitems(items):
    """Benchmark claims, paper profiles and DDP runs are slow tests too: `-m "not slow"` (the
    everyday tier) leaves them out, and `-m claims` still selects them alone."""
    for item in items:
        if any(item.get_closest_marker(name) for name in ("claims", "paper", "ddp")):
            item.add_marker(pytest.mark.slow)


@pytest.fixture
def no_onednn(monkeypatch):
    """oneDNN compiles kernels for every new conv shape (seconds each on a busy CPU); tests that
    run each shape once are much faster on the native kernels."""
    import torch

    monkeypatch.setattr(torch.backends.mkldnn, "enabled", False)


# Shrinks an experiment to seconds (--set each): synthetic 16x16 data, two epochs of two steps, a
# one-epoch teacher, one timing repeat. A plugin's quick arms run end to end with these.
SYNTHETIC = ["data.name=synthetic", "data.val_size=200", "data.train_subset=256", "data.test_subset=200",
             "teacher.train.epochs=1", "teacher.data.train_subset=512", "train.epochs=2", "train.steps_per_epoch=2",
             "train.batch_size=32", "measure.throughput_batch=8", "measure.throughput_repeats=1", "measure.latency_repeats=1"]


def as_sets(settings):
    """["a=1", "b=2"] -> ["--set", "a=1", "--set", "b=2"]."""
    return [arg for s in settings for arg in ("--set", s)]


def read_records(folder):
    """Every record.json under ``folder``, sorted by cell name and seed."""
    import json

    found = (json.loads(p.read_text()) for p in Path(folder).rglob("record.json"))
    return sorted(found, key=lambda r: (r.get("cell_name", ""), r.get("seed", 0)))


def read_history(record):
    """The per-epoch rows (history.jsonl) of a record's run folder."""
    import json

    return [json.loads(line) for line in (Path(record["run_dir"]) / "history.jsonl").read_text().splitlines()]


def registry_for(folder):
    """The registry with plugin ``folder`` loaded, as a run's session builds it (one per folder
    for the test session)."""
    return cached_registry(str(Path(folder).resolve()))


@functools.cache
def cached_registry(folder):
    from kdbench.plugins import load_registry

    return load_registry([folder], strict=None)


def fake_data(n=16, size=16, val=None, augment=(), seed=0):
    """A DataBundle of ``n`` random 1-channel uint8 images and 10 classes on the CPU; val and test
    are the first ``val`` training images (all of them by default)."""
    import torch

    from kdbench.config import DataConfig
    from kdbench.data import DataBundle

    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (n, 1, size, size), dtype=torch.uint8, generator=g)
    y = torch.randint(10, (n,), generator=g)
    held = (x[:val], y[:val]) if val else (x, y)
    return DataBundle("fake", {"train": (x, y), "val": held, "test": held}, 10, (0.5,), (0.25,),
                      DataConfig(augment=list(augment)), "cpu")


def hand_context(tmp_path, registry, data, student, teacher=None, seed=0, **train):
    """A Context for a method built by hand (kdbench.engine.build_method): ``student`` a model,
    ``teacher`` a model or None, [train] defaults with ``train`` over them."""
    from dataclasses import asdict

    import torch

    from kdbench.config import TrainConfig
    from kdbench.engine import Context, Teacher

    teacher = Teacher(teacher, {}, {}) if teacher is not None else None
    return Context(student=student, teacher=teacher, data=data, train=asdict(TrainConfig()) | train, seed=seed,
                   device=torch.device("cpu"), run_dir=tmp_path, registry=registry)


def paired_gain(records, arm, baseline, metric, direction="max"):
    """The gain of ``arm`` over ``baseline`` in ``metric`` (kdbench.stats: paired by seed, 95% interval)."""
    from kdbench import stats

    def by_seed(method):
        return {r["seed"]: r["metrics"][metric] for r in records if r["method"] == method}

    return stats.paired_gain(by_seed(arm), by_seed(baseline), direction)


def shared_cache(tmp_path_factory):
    """One teacher cache for the session: plugins/hinton and plugins/akd share their quick teacher."""
    return tmp_path_factory.getbasetemp() / "plugin-teacher-cache"


@pytest.fixture
def plugin_dir(tmp_path):
    return write_plugin(tmp_path / "softkd")


@pytest.fixture
def cli(tmp_path, capsys):
    """Run the command line in-process with --out/--cache in tmp_path: returns (code, out, err)."""
    from kdbench.cli import main

    def run(*args):
        args = list(args)
        if args and args[0] == "run":
            args += ["--out", str(tmp_path / "runs"), "--cache", str(tmp_path / "cache")]
        code = main(args)
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return run


def sigint_default():
    """``preexec_fn`` for a child the test will Ctrl-C: a suite started in the background (``cmd &``,
    nohup, some CI runners) hands its children SIGINT ignored, and Python then installs no
    KeyboardInterrupt handler, so the signal would be lost and the test would wait for ever."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)
