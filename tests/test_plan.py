"""``run --dry-run``: the plan of a grid (cells x seeds, teachers to train or reuse, parameters) and
its estimate, extrapolated from timed steps to the configured grid; it trains and writes nothing."""
import re

import pytest

from conftest import REPO
from kdbench import plan
from kdbench.cli import main

pytestmark = pytest.mark.slow

PLUGIN = REPO / "plugins" / "hinton"


def test_dry_run_extrapolates_its_timed_steps_to_the_grid(tmp_path, capsys, monkeypatch):
    """The estimate is the timed step and validation pass scaled to the configured epochs, steps
    and passes. Timings are pinned here (a test asserts no speed: how close the estimate comes to a
    real run is measured in the README), so the totals follow from the configuration alone."""
    timed = plan.measure_steps
    monkeypatch.setattr(plan, "measure_steps", lambda method, ctx: timed(method, ctx) | {"step_s": 0.01, "val_s": 0.5})
    # one quick-profile cell of the Hinton experiment and its teacher (one epoch of it, to keep this short)
    args = ["run", str(PLUGIN), "--grid", "method=hinton", "--seeds", "0", "--set", "teacher.train.epochs=1",
            "--device", "cpu", "--out", str(tmp_path / "runs"), "--cache", str(tmp_path / "cache")]
    assert main(args + ["--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "1 cell(s) x 1 seed(s) = 1 run(s) to do" in out
    assert re.search(r"\| small-cnn +\| scratch .*\| +207,274 \| to train +\| 1 x 157 ", out)  # 20,000 images / 128
    assert re.search(r"\| hinton__\w+ +\| mlp +\| +118,282 \| 40 x 16 ", out)  # 2,000 images / 128
    test_s = 0.5 * 10_000 / 5_000  # a test pass: the validation pass scaled from 5,000 to 10,000 images
    teacher_s = 0.01 * 157 * 1 + 1 * 0.5 + 3 * test_s  # 1 epoch of 157 steps, 1 validation pass, 3 test passes
    run_s = 0.01 * 16 * 40 + 40 * 0.5 + 2 * test_s  # 40 epochs of 16 steps, validated after each, 2 test passes
    assert f"estimate: {plan.duration(teacher_s + run_s)} ({teacher_s + run_s:.0f} s) in all (teachers {plan.duration(teacher_s)}, runs {plan.duration(run_s)})" in out
    assert "assumptions:" in out
    assert not (tmp_path / "runs").exists() and not (tmp_path / "cache").exists()  # nothing trained or written

    assert main(args) == 0
    capsys.readouterr()
    # afterwards the teacher is in the cache and the run is finished: nothing left to do
    assert main(args + ["--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "= 0 run(s) to do, 1 already finished in --out" in out and "| cached " in out
    assert re.search(r"estimate: \S+ \(0 s\) in all", out)


def test_dry_run_shares_the_runs_among_the_workers(tmp_path, capsys):
    """With --workers 2 the runs' part of the estimate is half of one after another (the longest
    run at least), as the run itself shares them."""
    args = ["run", str(PLUGIN), "--grid", "method=hinton,scratch", "--seeds", "0,1", "--set", "teacher.train.epochs=1",
            "--set", "train.threads=1", "--device", "cpu", "--out", str(tmp_path / "runs"), "--cache", str(tmp_path / "cache"), "--dry-run"]
    runs = {}
    for workers in ("1", "2"):
        assert main(args + ["--workers", workers]) == 0
        out = capsys.readouterr().out
        runs[workers] = out
    assert "), one run after another on this cpu device" in runs["1"]
    assert "), 2 runs at a time (--workers), each as fast as timed here on this cpu device" in runs["2"]
    rows = [{"per_run_s": 10.0, "todo": [0, 1]}, {"per_run_s": 30.0, "todo": [0]}, {"per_run_s": 99.0, "todo": []}]
    assert plan.runs_wall_seconds(rows) == 50.0
    assert plan.runs_wall_seconds(rows, 2) == 30.0  # the longest run, not 25
    assert plan.runs_wall_seconds(rows + [{"per_run_s": 10.0, "todo": [0, 1, 2, 3]}], 2) == 45.0


def test_dry_run_stops_where_run_stops(plugin_dir, cli):
    """The dry run makes the checks run makes before training, with the same one-line error: here
    the Ray executor's options (checked without starting Ray); teacher files: test_teachers.py."""
    for bad in (["--cpus-per-cell", "0"], ["--gpus-per-cell", "-1"]):
        args = ("run", str(plugin_dir), "--seeds", "0", "--executor", "ray", *bad)
        code, _, err = cli(*args)
        assert code == 2 and err.count("\n") == 1, err
        assert cli(*args, "--dry-run")[::2] == (code, err)
