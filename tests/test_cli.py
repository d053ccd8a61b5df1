"""The command line's bad-input cases: one line naming the problem and the fix, non-zero
exit, no traceback, nothing finished lost."""
import json
import os
import subprocess
import sys

from conftest import REPO, THIRD_PARTY_PLUGIN, THIRD_PARTY_TOML, write_plugin

NAN_PLUGIN = THIRD_PARTY_PLUGIN.replace(
    "        self.ctx.step(self.optimizer, loss)",
    "        if self.config.temperature > 5:\n            loss = loss * float('nan')\n        self.ctx.step(self.optimizer, loss)",
)


def test_help_does_not_import_torch():
    code = "import sys\nfrom kdbench.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass\nassert 'torch' not in sys.modules, 'torch imported'\n"
    done = subprocess.run([sys.executable, "-c", code], env=dict(os.environ, PYTHONPATH=str(REPO)), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "run" in done.stdout and "leaderboard" in done.stdout


def test_unknown_plugin_folder_suggests_close_ones(tmp_path, cli):
    write_plugin(tmp_path / "plugins" / "softkd")
    code, _, err = cli("run", str(tmp_path / "plugins" / "sofkd"))
    assert code == 2 and err.count("\n") == 1
    assert "plugin folder" in err and "does not exist" in err and "softkd" in err


def test_nan_loss_fails_its_cell_and_the_grid_goes_on(tmp_path, cli):
    folder = write_plugin(tmp_path / "nan", plugin=NAN_PLUGIN)
    code, out, err = cli("run", str(folder), "--grid", "temperature=2,8", "--seeds", "0", "--set", "train.epochs=1")
    assert code == 1 and "some runs failed" in err
    rows = {r["labels"].get("temperature", "-"): r for r in map(lambda p: json.loads(p.read_text()), (tmp_path / "runs").rglob("record.json"))}
    assert rows["8"]["status"] == "failed" and rows["8"]["error"].startswith("NonFiniteLoss: loss became nan")
    assert rows["2"]["status"] == "ok" and rows["-"]["status"] == "ok"
    assert "soft-kd" in out and "temperature=2" in out  # the leaderboard of what finished is still printed
    # a rerun retries only the failed cell
    code, out, _ = cli("run", str(folder), "--grid", "temperature=2,8", "--seeds", "0", "--set", "train.epochs=1")
    assert code == 1 and "2 finished run(s) reused" in out


def test_missing_dataset_is_one_line_before_training(tmp_path, cli):
    folder = write_plugin(tmp_path / "c10", toml=THIRD_PARTY_TOML.replace('name = "synthetic"', f'name = "cifar10"\nroot = "{tmp_path}/nodata"'))
    code, out, err = cli("run", str(folder))
    assert code == 2 and err.count("\n") == 1 and "download=true" in err
    assert not (tmp_path / "runs").exists() or not list((tmp_path / "runs").rglob("record.json"))


def test_bad_grid_and_toml_errors_reach_the_user_as_one_line(plugin_dir, tmp_path, cli):
    for args, message in [(("--grid", "temperature=2,,8"), "empty value in the list"),
                          (("--set", "train.lr=fast"), "not a valid float"),
                          (("--seeds", "0,x"), "malformed --seeds")]:
        code, _, err = cli("run", str(plugin_dir), *args)
        assert code == 2 and message in err and err.count("\n") == 1
    bad = write_plugin(tmp_path / "bad", toml=THIRD_PARTY_TOML + "\n[teacher.train]\nepochs = 3\n")
    code, _, err = cli("run", str(bad))
    assert code == 2 and "kdbench.toml: TOML syntax error" in err and err.count("\n") == 1


def test_leaderboard_errors_and_formats(plugin_dir, cli, tmp_path):
    code, _, err = cli("leaderboard", str(tmp_path / "nowhere"))
    assert code == 2 and "does not exist" in err
    assert cli("run", str(plugin_dir), "--grid", "method=scratch", "--seeds", "0,1", "--set", "train.epochs=1")[0] == 0
    code, out, _ = cli("leaderboard", str(tmp_path / "runs"), "--format", "html")
    assert code == 0 and "<table" in out and "scratch" in out
    code, out, _ = cli("leaderboard", str(tmp_path / "runs"), "--sort", "params", "--plot", str(tmp_path / "p.png"))
    assert code == 0 and "scratch" in out
    assert (tmp_path / "p.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    code, _, err = cli("leaderboard", str(tmp_path / "runs"), "--sort", "nonsense")
    assert code == 2 and "cannot sort by 'nonsense'" in err
