"""Trackers: --log tensorboard writes event files TensorBoard's reader parses with the run's
scalars; a third-party logger is a plugin (no core change) that gets each run's config, every
history row and the final record; a missing package or an unknown logger stops before training."""
import json
import sys

import pytest

from conftest import THIRD_PARTY_PLUGIN, write_plugin

GRID = ("--grid", "method=soft-kd", "--seeds", "0", "--set", "train.epochs=2")

# What a W&B/trackio/MLflow plugin does, with a JSON file in place of the service.
LOGGER_PLUGIN = (THIRD_PARTY_PLUGIN + '''

class FileLogger:
    def __init__(self, run_dir):
        self.path = run_dir / "tracked.json"
        self.seen = {"config": None, "rows": [], "record": None}

    def start(self, config):
        self.seen["config"] = config

    def log_epoch(self, row):
        self.seen["rows"].append(row)

    def finish(self, record):
        self.seen["record"] = record
        self.path.write_text(json.dumps(self.seen, default=str))


@kdbench.hookimpl
def kdbench_register_loggers(register):
    register("file-tracker", FileLogger, description="a tracker in a test")
''').replace("import torch\n", "import json\n\nimport torch\n", 1)


def run_folder(tmp_path):
    [folder] = [p.parent for p in (tmp_path / "runs").rglob("record.json")]
    return folder, json.loads((folder / "record.json").read_text())


def history(folder):
    return [json.loads(line) for line in (folder / "history.jsonl").read_text().splitlines()]


def test_tensorboard_event_files_hold_the_runs_scalars(plugin_dir, cli, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    code, _, err = cli("run", str(plugin_dir), *GRID, "--log", "tensorboard")
    assert code == 0, err
    folder, record = run_folder(tmp_path)
    events = EventAccumulator(str(folder / "tensorboard"))
    events.Reload()
    rows = history(folder)
    assert len(rows) == 2
    for key in ("train_loss", "train_kd", "val_top1", "val_top5"):
        split, name = key.split("_", 1)
        logged = events.Scalars(f"{split}/{name}")
        assert [e.step for e in logged] == [1, 2]
        assert [e.value for e in logged] == pytest.approx([row[key] for row in rows], rel=1e-6)
    for key in ("top1_best", "top1_last"):
        [final] = events.Scalars(f"test/{key}")
        assert final.step == 2 and final.value == pytest.approx(record["metrics"][key], rel=1e-6)
    assert "config/text_summary" in events.Tags()["tensors"]  # add_text lands as a tensor summary


def test_a_tracker_plugin_gets_config_rows_and_record(cli, tmp_path):
    plugin = write_plugin(tmp_path / "tracked", plugin=LOGGER_PLUGIN)
    code, out, _ = cli("list", "loggers", "--plugin", str(plugin))
    assert code == 0 and "file-tracker" in out and "tensorboard" in out
    code, _, err = cli("run", str(plugin), *GRID, "--log", "file-tracker")
    assert code == 0 and "failed to finish" not in err, err
    folder, record = run_folder(tmp_path)
    seen = json.loads((folder / "tracked.json").read_text())
    assert seen["config"]["seed"] == 0 and seen["config"]["config"] == record["config"]
    assert seen["rows"] == history(folder)
    assert seen["record"]["status"] == "ok" and seen["record"]["metrics"] == record["metrics"]


def test_missing_package_or_unknown_logger_stops_before_training(plugin_dir, cli, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # as if it were not installed
    code, _, err = cli("run", str(plugin_dir), *GRID, "--log", "tensorboard")
    assert code == 2 and err.strip() == "kdbench: error: --log tensorboard needs the tensorboard package: pip install tensorboard"
    code, _, err = cli("run", str(plugin_dir), *GRID, "--log", "tensorbord")
    assert code == 2 and "unknown logger 'tensorbord'" in err and "did you mean 'tensorboard'" in err
    assert not (tmp_path / "runs").exists()


def test_a_resumed_run_replaces_the_epochs_it_logs_again(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from kdbench.loggers import TensorBoardLogger

    first = TensorBoardLogger(tmp_path)  # killed after epoch 3, checkpointed after epoch 2
    first.start({"seed": 0})
    for epoch in (1, 2, 3):
        first.log_epoch({"epoch": epoch, "train_loss": float(epoch)})
    first.writer.close()
    resumed = TensorBoardLogger(tmp_path)
    resumed.start({"seed": 0})
    for epoch in (3, 4):
        resumed.log_epoch({"epoch": epoch, "train_loss": 10.0 * epoch})
    resumed.finish({"metrics": {"top1_best": 50.0}, "epochs": 4})
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    assert [(e.step, e.value) for e in events.Scalars("train/loss")] == [(1, 1.0), (2, 2.0), (3, 30.0), (4, 40.0)]


def test_a_broken_tensorboard_stops_before_training(plugin_dir, tmp_path):
    """A tensorboard that imports but cannot write (here one without tensorboard.compat, as a
    half-removed install leaves it) fails the logger's check, before any teacher or cell trains."""
    import os
    import subprocess

    from conftest import REPO

    fake = tmp_path / "site" / "tensorboard"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text('__version__ = "2.20.0"\n')
    done = subprocess.run([sys.executable, "-m", "kdbench", "run", str(plugin_dir), *GRID, "--log", "tensorboard",
                           "--out", str(tmp_path / "runs"), "--cache", str(tmp_path / "cache")],
                          env={**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path / "site"), str(REPO)])},
                          capture_output=True, text=True)
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert "--log tensorboard: the installed tensorboard does not work" in done.stderr and "tensorboard.compat" in done.stderr
    assert not (tmp_path / "runs").exists() and not (tmp_path / "cache" / "teachers").exists()
