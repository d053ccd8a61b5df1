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


@pytest.fixture
def no_onednn(monkeypatch):
    """oneDNN compiles kernels for every new conv shape (seconds each on a busy CPU); tests that
    run each shape once are much faster on the native kernels."""
    import torch

    monkeypatch.setattr(torch.backends.mkldnn, "enabled", False)


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
