"""The local parallel executor (--workers N): spawned processes give the same records as the
sequential executor; a worker that dies costs only its job (tried once more)."""
import json
from pathlib import Path

import pytest

from conftest import THIRD_PARTY_PLUGIN, THIRD_PARTY_TOML, write_plugin

pytestmark = pytest.mark.slow

# threads pinned: a run's float sums depend on its thread count, and so does its identity
GRID = ["--grid", "temperature=8", "--seeds", "0,1", "--set", "train.threads=1", "--set", "train.epochs=2",
        "--set", "teacher.train.epochs=1"]


def runs(out):
    """(cell, seed) -> (metrics, history, identity) of every record under ``out``."""
    found = {}
    for path in Path(out).rglob("record.json"):
        record = json.loads(path.read_text())
        found[record["cell_name"], record["seed"]] = (record["metrics"], (path.parent / "history.jsonl").read_text(), record["identity"])
    return found


def test_workers_give_the_sequential_records(tmp_path):
    from kdbench.cli import main

    folder = write_plugin(tmp_path / "softkd")
    # a teacher cache each: the driver trains the teacher itself (on all its threads) with or
    # without workers, so the teacher too, and with it every identity, is the same
    assert main(["run", str(folder), *GRID, "--cache", str(tmp_path / "cache1"), "--out", str(tmp_path / "one")]) == 0
    assert main(["run", str(folder), *GRID, "--cache", str(tmp_path / "cache2"), "--out", str(tmp_path / "two"), "--workers", "2"]) == 0
    one, two = runs(tmp_path / "one"), runs(tmp_path / "two")
    assert len(one) == 4 and one == two


# a method whose process dies in its first step: always, or only the first time (a marker file)
DYING = THIRD_PARTY_PLUGIN + '''

class Dying(SoftKD):
    def train_step(self, batch):
        import os, signal
        from pathlib import Path

        marker = Path(os.environ["DYING_MARKER"])
        if self.config.temperature == 2.0 or not marker.exists():
            marker.touch()
            os.kill(os.getpid(), signal.SIGKILL)
        return super().train_step(batch)


@kdbench.hookimpl(specname="kdbench_register_methods")
def register_dying(register):
    register("dying", Dying)
'''


def test_a_killed_worker_fails_only_its_job_after_one_more_try(tmp_path, monkeypatch, cli):
    monkeypatch.setenv("DYING_MARKER", str(tmp_path / "died-once"))
    folder = write_plugin(tmp_path / "softkd", plugin=DYING, toml=THIRD_PARTY_TOML.replace('"soft-kd"]', '"soft-kd", "dying"]'))
    code, out, err = cli("run", str(folder), "--grid", "method=scratch,dying", "--grid", "temperature=2,8", "--seeds", "0",
                         "--set", "train.threads=1", "--set", "train.epochs=1", "--set", "teacher.train.epochs=1", "--workers", "2")
    assert code == 1, err
    records = {(r["method"], r["labels"].get("temperature")): r for r in map(json.loads, map(Path.read_text, (tmp_path / "runs").rglob("record.json")))}
    assert records["scratch", None]["status"] == "ok"
    assert records["dying", "8"]["status"] == "ok"  # killed once, then run again
    assert records["dying", "2"]["status"] == "failed" and "WorkerLost" in records["dying", "2"]["error"]


def test_grid_progress_line():
    from kdbench.schedule import progress_line

    assert progress_line(7, 18, 133) == "[7/18 runs] 2m13s elapsed, ~3m29s left"
    assert progress_line(0, 4, 2.4) == "[0/4 runs] 2s elapsed, time left: after the first run"
    assert progress_line(1, 3, 4000) == "[1/3 runs] 1h06m elapsed, ~2h13m left"


def test_default_workers_only_where_no_result_can_change(monkeypatch):
    """--workers defaults to one per core only when every cell pins train.threads (the thread count
    is part of a run's identity, so records then equal the sequential executor's); else 1."""
    from types import SimpleNamespace

    import torch

    from kdbench.cli import default_workers

    def cells(*threads):
        return [SimpleNamespace(config={"train": {"threads": t}}) for t in threads]

    monkeypatch.setattr(torch, "get_num_threads", lambda: 4)
    assert default_workers(cells(1, 1), "cpu") == 4
    assert default_workers(cells(2, 1), "cpu") == 2
    assert default_workers(cells(1, 0), "cpu") == 1  # a cell on torch's default threads
    assert default_workers(cells(8), "cpu") == 1


# a method that holds every worker at a known point: its first step says so (a file named by its
# pid) and waits until the test lets it go (another file)
HOLDING = THIRD_PARTY_PLUGIN + '''

from kdbench.method import Scratch


class Holding(Scratch):
    def train_step(self, batch):
        import os, time
        from pathlib import Path

        folder = Path(os.environ["HOLD_DIR"])
        (folder / f"held-{os.getpid()}").touch()
        while not (folder / "release").exists():
            time.sleep(0.05)
        return super().train_step(batch)


@kdbench.hookimpl(specname="kdbench_register_methods")
def register_holding(register):
    register("holding", Holding)
'''


def start_held_grid(tmp_path):
    """A driver of `run --workers 2` (in its own process group, as a terminal's job) whose two
    workers are both held in their first step; returns (driver, worker pids)."""
    import os
    import subprocess
    import sys
    import time

    from conftest import REPO, sigint_default

    folder = write_plugin(tmp_path / "softkd", plugin=HOLDING, toml=THIRD_PARTY_TOML.replace('"soft-kd"]', '"soft-kd", "holding"]'))
    hold = tmp_path / "hold"
    hold.mkdir()
    env = dict(os.environ, PYTHONPATH=str(REPO), KDBENCH_QUIET="1", HOLD_DIR=str(hold))
    env.pop("KDBENCH_WORKERS")
    command = [sys.executable, "-m", "kdbench", "run", str(folder), "--grid", "method=holding", "--seeds", "0,1", "--set", "train.epochs=1",
               "--workers", "2", "--out", str(tmp_path / "runs"), "--cache", str(tmp_path / "cache")]
    # output to files: an orphan worker would hold a pipe open after its driver ends
    with open(tmp_path / "out.txt", "w") as out, open(tmp_path / "err.txt", "w") as err:
        driver = subprocess.Popen(command, env=env, stdout=out, stderr=err, start_new_session=True, preexec_fn=sigint_default)
    while len(held := list(hold.glob("held-*"))) < 2:  # both workers at the known point
        assert driver.poll() is None, (tmp_path / "err.txt").read_text()
        time.sleep(0.1)
    return driver, [int(path.name.split("-")[1]) for path in held]


def wait_gone(pid):
    """Until process ``pid`` has ended (a zombie counts as ended)."""
    import time

    while True:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except FileNotFoundError:
            return
        if state in ("Z", "X"):
            return
        time.sleep(0.1)


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads process states from /proc")
@pytest.mark.parametrize("signal_name", ["SIGKILL", "SIGTERM"])
def test_workers_die_with_their_driver_and_write_nothing(tmp_path, signal_name):
    import signal

    driver, workers = start_held_grid(tmp_path)
    before = files(tmp_path / "runs")
    driver.send_signal(getattr(signal, signal_name))
    driver.wait()
    (tmp_path / "hold" / "release").touch()  # an orphan would now finish its run and record it
    for pid in workers:
        wait_gone(pid)
    assert files(tmp_path / "runs") == before
    assert not list((tmp_path / "runs").rglob("record.json"))


def files(folder):
    """path -> (size, modification time) of every file under ``folder``."""
    return {path: (path.stat().st_size, path.stat().st_mtime_ns) for path in Path(folder).rglob("*") if path.is_file()}


@pytest.mark.slow
def test_ctrl_c_with_workers_prints_one_clean_line(tmp_path):
    import os
    import signal

    driver, workers = start_held_grid(tmp_path)
    os.killpg(driver.pid, signal.SIGINT)  # as a terminal sends Ctrl-C: to the driver and its workers
    driver.wait(timeout=900)  # a hang guard only
    for pid in workers:  # their output too is in err.txt
        wait_gone(pid)
    (tmp_path / "hold" / "release").touch()
    err = (tmp_path / "err.txt").read_text()
    assert driver.returncode == 130 and "Rerun the same command to resume" in err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
