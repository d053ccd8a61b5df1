"""End to end: a third-party method plugin written to a temporary folder, nothing installed,
a 2x2 grid with 2 seeds on synthetic data, then the leaderboard; resuming an interrupted grid."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from conftest import HOLDING_PLUGIN, REPO, THIRD_PARTY_PLUGIN, sigint_default, write_plugin

pytestmark = pytest.mark.slow


def test_plugin_is_short():
    assert len(THIRD_PARTY_PLUGIN.strip().splitlines()) < 60


def test_third_party_grid_end_to_end(plugin_dir, cli, tmp_path):
    code, out, err = cli("run", str(plugin_dir), "--grid", "temperature=2,8", "--grid", "size=small,big")
    assert code == 0, err
    # 2 sizes x (scratch + 2 temperatures) = 6 cells; temperature does not split scratch
    records = [json.loads(p.read_text()) for p in (tmp_path / "runs").rglob("record.json")]
    assert len(records) == 6 * 2
    assert all(r["status"] == "ok" for r in records)
    scratch = [r for r in records if r["method"] == "scratch"]
    assert {tuple(sorted(r["labels"])) for r in scratch} == {("method", "size")}
    record = next(r for r in records if r["method"] == "soft-kd")
    for key in ("teacher", "config", "seed", "provenance", "speed", "train_time_s", "precision"):
        assert record[key] is not None, key
    assert record["teacher"]["metrics"]["top1"] > 50  # the synthetic data is learnable
    assert record["provenance"]["torch"] and record["speed"]["throughput_batch"] == 32
    assert {"top1_last", "top1_best", "top5_last", "top5_best"} <= set(record["metrics"])
    history = [json.loads(l) for l in (Path(record["run_dir"]) / "history.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in history] == [1, 2] and "val_top1" in history[0] and "train_kd" in history[0]

    board = (tmp_path / "runs" / "softkd" / "leaderboard.md").read_text()
    assert "teacher" in board and "soft-kd" in board and "temperature=8 size=big" in board
    assert "top1 best ↑" in board and "±" in board

    code, out, _ = cli("leaderboard", str(tmp_path / "runs"), "--format", "csv", "--out", str(tmp_path / "b.csv"))
    assert code == 0
    table = pd.read_csv(tmp_path / "b.csv")
    kd_big = table[(table["method"] == "soft-kd") & (table["setting"] == "temperature=8 size=big")].iloc[0]
    seeds = [r["metrics"]["top1_best"] for r in records if r["method"] == "soft-kd" and r["labels"] == {"method": "soft-kd", "temperature": "8", "size": "big"}]
    assert kd_big["seeds"] == 2 and abs(kd_big["top1_best_mean"] - sum(seeds) / 2) < 1e-9
    scratch_big = table[(table["method"] == "scratch") & (table["setting"] == "size=big")].iloc[0]
    assert abs(kd_big["gain_mean"] - (kd_big["top1_best_mean"] - scratch_big["top1_best_mean"])) < 1e-9
    assert (table["method"] == "teacher").sum() == 1

    # a rerun reuses every finished record and trains nothing
    code, out, _ = cli("run", str(plugin_dir), "--grid", "temperature=2,8", "--grid", "size=small,big")
    assert code == 0 and "12 finished run(s) reused" in out


def start_held(command, tmp_path, hold):
    """Start ``command`` with the soft-kd run ``hold`` = (temperature, 0-based epoch) held at its
    first step of that epoch (conftest.HOLDING_PLUGIN); returns the process once it is there."""
    marker = tmp_path / "held"
    env = dict(os.environ, PYTHONPATH=str(REPO), KDBENCH_QUIET="1", KDBENCH_TEST_HOLD=f"{hold[0]}:{hold[1]}:{marker}")
    log = open(tmp_path / "held.log", "w+")
    proc = subprocess.Popen(command, env=env, stdout=log, stderr=log, text=True, preexec_fn=sigint_default)
    while not marker.exists():
        assert proc.poll() is None, (tmp_path / "held.log").read_text()
        time.sleep(0.2)
    return proc


def test_ctrl_c_then_rerun_resumes(tmp_path):
    folder = write_plugin(tmp_path / "softkd", plugin=HOLDING_PLUGIN)
    command = [sys.executable, "-m", "kdbench", "run", str(folder), "--grid", "temperature=2,4,8", "--seeds", "0",
               "--set", "train.epochs=3", "--out", str(tmp_path / "runs"), "--cache", str(tmp_path / "cache")]
    proc = start_held(command, tmp_path, (8, 1))  # the last cell, in its second epoch
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=900) == 130, (tmp_path / "held.log").read_text()  # timeout: a hang guard only
    assert "Rerun the same command to resume" in (tmp_path / "held.log").read_text()
    finished = [json.loads(p.read_text())["labels"] for p in (tmp_path / "runs").rglob("record.json")]
    assert sorted(labels.get("temperature", "-") for labels in finished) == ["-", "2", "4"]

    env = dict(os.environ, PYTHONPATH=str(REPO), KDBENCH_QUIET="1")
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "3 finished run(s) reused" in done.stdout and "resuming" in done.stderr and "after epoch" in done.stderr
    assert len(list((tmp_path / "runs").rglob("record.json"))) == 4


def test_killed_run_resumes_from_its_checkpoint(tmp_path):
    folder = write_plugin(tmp_path / "softkd", plugin=HOLDING_PLUGIN)
    command = [sys.executable, "-m", "kdbench", "run", str(folder), "--grid", "method=soft-kd", "--seeds", "0",
               "--set", "train.epochs=4", "--out", str(tmp_path / "runs"), "--cache", str(tmp_path / "cache")]
    proc = start_held(command, tmp_path, (4, 2))  # checkpointed after epochs 1 and 2, in the third
    proc.kill()
    proc.wait()
    history = next((tmp_path / "runs").rglob("history.jsonl"))
    assert [json.loads(l)["epoch"] for l in history.read_text().splitlines()] == [1, 2]
    env = dict(os.environ, PYTHONPATH=str(REPO), KDBENCH_QUIET="1")
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "resuming" in done.stderr and "after epoch 2" in done.stderr
    epochs = [json.loads(l)["epoch"] for l in history.read_text().splitlines()]
    assert epochs == [1, 2, 3, 4]  # resumed: every epoch logged once
    assert not list((tmp_path / "runs").rglob("checkpoint.pt"))  # removed once the run finished


def test_unreadable_checkpoint_restarts_the_run(plugin_dir, cli, tmp_path):
    args = ("run", str(plugin_dir), "--grid", "method=scratch", "--seeds", "0", "--set", "train.epochs=2")
    assert cli(*args)[0] == 0
    [record] = (tmp_path / "runs").rglob("record.json")
    record.unlink()  # as if the run had been killed after writing a (now damaged) checkpoint
    (record.parent / "checkpoint.pt").write_bytes(b"\x00garbage")
    code, _, err = cli(*args)
    assert code == 0 and "is unreadable" in err and "afresh" in err
    assert json.loads(record.read_text())["status"] == "ok"


def test_one_teacher_measurement_per_run_folder(plugin_dir, cli, tmp_path):
    """Records made by two commands (or two workers) into one folder show the teacher's first
    measured speed, so the printed and the saved leaderboard show one teacher throughput."""
    args = ("run", str(plugin_dir), "--seeds", "0", "--set", "train.epochs=1", "--set", "teacher.train.epochs=1")
    assert cli(*args, "--grid", "temperature=2")[0] == 0
    code, printed, err = cli(*args, "--grid", "temperature=8")
    assert code == 0, err
    records = [json.loads(p.read_text()) for p in (tmp_path / "runs").rglob("record.json")]
    speeds = [r["teacher"]["speed"] for r in records if r["method"] == "soft-kd"]
    assert len(speeds) == 2 and speeds[0] == speeds[1]
    saved = (tmp_path / "runs" / "softkd" / "leaderboard.md").read_text()
    [teacher_row] = [line for line in printed.splitlines() if "teacher" in [cell.strip() for cell in line.split("|")]]
    assert teacher_row in saved.splitlines()
