"""--executor ray on a local Ray cluster (2 CPUs, no dashboard): the local executor's records,
a failing cell recorded and the grid going on, an infeasible GPU request refused at once, a
task whose worker is killed retried. Skipped where Ray is not installed (pip install -e '.[ray]')."""
import json
from pathlib import Path

import pytest

from conftest import THIRD_PARTY_PLUGIN, THIRD_PARTY_TOML, write_plugin

pytestmark = pytest.mark.slow

ray = pytest.importorskip("ray")

FAST = ["--seeds", "0,1", "--set", "train.threads=1", "--set", "train.epochs=2", "--set", "teacher.train.epochs=1"]

# soft-kd that fails at T=2 (a recorded failure) and whose worker dies once at T=8 (then retried)
TROUBLED = THIRD_PARTY_PLUGIN + '''

class Troubled(SoftKD):
    def train_step(self, batch):
        import os, signal
        from pathlib import Path

        if self.config.temperature == 2.0:
            raise ValueError("this cell fails")
        marker = Path(self.ctx.run_dir).parents[2] / "killed-once"  # in --out: Ray workers keep their first environment
        if not marker.exists():
            marker.touch()
            os.kill(os.getpid(), signal.SIGKILL)
        return super().train_step(batch)


@kdbench.hookimpl(specname="kdbench_register_methods")
def register_troubled(register):
    register("troubled", Troubled)
'''


@pytest.fixture(scope="module")
def cluster():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def runs(out):
    found = {}
    for path in Path(out).rglob("record.json"):
        record = json.loads(path.read_text())
        found[record["cell_name"], record["seed"]] = (record["metrics"], (path.parent / "history.jsonl").read_text(), record["identity"])
    return found


def test_ray_gives_the_local_records(cluster, tmp_path):
    from kdbench.cli import main

    folder = write_plugin(tmp_path / "softkd")
    common = ["run", str(folder), "--grid", "temperature=8", *FAST, "--cache", str(tmp_path / "cache")]
    assert main(common + ["--out", str(tmp_path / "local")]) == 0
    assert main(common + ["--out", str(tmp_path / "ray"), "--executor", "ray"]) == 0
    local, remote = runs(tmp_path / "local"), runs(tmp_path / "ray")
    assert len(local) == 4 and local == remote
    assert main(common + ["--out", str(tmp_path / "ray"), "--executor", "ray"]) == 0  # all reused: nothing submitted


def test_failing_cell_and_killed_worker(cluster, tmp_path, cli):
    folder = write_plugin(tmp_path / "softkd", plugin=TROUBLED, toml=THIRD_PARTY_TOML.replace('"soft-kd"]', '"soft-kd", "troubled"]'))
    code, out, err = cli("run", str(folder), "--grid", "method=scratch,troubled", "--grid", "temperature=2,8", "--seeds", "0",
                         "--set", "train.epochs=1", "--set", "teacher.train.epochs=1", "--executor", "ray")
    assert code == 1
    records = {(r["method"], r["labels"].get("temperature")): r for r in map(json.loads, map(Path.read_text, (tmp_path / "runs").rglob("record.json")))}
    assert records["scratch", None]["status"] == "ok"
    assert records["troubled", "2"]["status"] == "failed" and "this cell fails" in records["troubled", "2"]["error"]
    assert (tmp_path / "runs" / "killed-once").exists() and records["troubled", "8"]["status"] == "ok"  # killed, then retried


def test_infeasible_gpu_request_is_refused_before_anything_runs(cluster, cli, tmp_path):
    folder = write_plugin(tmp_path / "softkd")
    code, out, err = cli("run", str(folder), *FAST, "--executor", "ray", "--gpus-per-cell", "0.5")
    assert code == 2 and "--gpus-per-cell 0.5: no node of the Ray cluster has that" in err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "runs").exists()


def test_workers_must_see_the_cache(cluster, tmp_path):
    from kdbench.errors import ConfigError
    from kdbench.executors import RayExecutor, missing_paths

    executor = RayExecutor()
    (tmp_path / "cache").mkdir()
    executor.check_shared({"teacher cache": tmp_path / "cache"})  # one machine: seen
    assert not list((tmp_path / "cache").iterdir())  # the probe file is gone again
    assert missing_paths({"teacher cache": str(tmp_path / "nowhere")}) == ["teacher cache"]
    with pytest.raises(ConfigError, match="cannot see the plugin folder"):
        executor.check_shared({"plugin folder": tmp_path / "absent" / "plugin.py"})
    with pytest.raises(ConfigError, match="--cpus-per-cell 64"):
        RayExecutor(cpus=64)


def test_unreachable_address_is_a_one_line_error_at_once(tmp_path):
    """Nothing listens on port 1: a one-line error before any training, not minutes of Ray retries."""
    import os
    import subprocess
    import sys

    from conftest import REPO

    folder = write_plugin(tmp_path / "softkd")
    done = subprocess.run([sys.executable, "-m", "kdbench", "run", str(folder), "--executor", "ray", "--ray-address", "127.0.0.1:1",
                           "--out", str(tmp_path / "runs"), "--cache", str(tmp_path / "cache")],
                          env=dict(os.environ, PYTHONPATH=str(REPO)), capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines() == [
        "kdbench: error: --ray-address 127.0.0.1:1: no Ray cluster answers there (Connection refused); "
        "start one with `ray start --head` and give the address it prints"]
    assert not (tmp_path / "runs").exists() and not (tmp_path / "cache").exists()
