"""Run identity: a finished record is reused only while its config, seed, teacher checkpoint,
plugin code and placement are unchanged; stale records are rerun, or kept and marked."""
from pathlib import Path

import pytest
import torch

from conftest import read_records, write_plugin
from kdbench import identity
from kdbench.plugins import folder_fingerprint

pytestmark = pytest.mark.slow

# scratch on a built-in student uses no code of the plugin; soft-kd uses its method
FAST = ["--seeds", "0", "--set", "student.model=mlp", "--set", "student.hidden=16", "--set", "train.epochs=1",
        "--set", "teacher.train.epochs=1"]


def records(tmp_path):
    return {r["method"]: r for r in read_records(tmp_path / "runs")}


def test_fingerprint_covers_sources_only(tmp_path):
    folder = write_plugin(tmp_path / "p")
    before = folder_fingerprint(folder)
    (folder / "tests").mkdir()
    (folder / "tests" / "test_x.py").write_text("x = 1\n")
    (folder / "__pycache__").mkdir()
    (folder / "__pycache__" / "plugin.cpython-311.py").write_text("junk")
    (folder / "README.md").write_text("words")
    assert folder_fingerprint(folder) == before
    (folder / "helpers.py").write_text("y = 2\n")
    assert folder_fingerprint(folder) != before


def test_records_carry_identity_and_plugin_provenance(tmp_path, cli):
    folder = write_plugin(tmp_path / "softkd")
    code, out, err = cli("run", str(folder), *FAST)
    assert code == 0, err
    kd, scratch = records(tmp_path)["soft-kd"], records(tmp_path)["scratch"]
    assert kd["identity"]["teacher"] == kd["teacher"]["sha256"] and len(kd["identity"]["teacher"]) == 64
    assert set(kd["identity"]["plugins"]) == {"kdbench.builtin", "softkd"}
    assert set(scratch["identity"]["plugins"]) == {"kdbench.builtin"} and scratch["identity"]["teacher"] is None
    assert kd["identity"]["threads"] == kd["train_threads"] and kd["identity"]["device"] == "cpu"
    info = kd["provenance"]["plugins"]["softkd"]
    assert info["fingerprint"] == folder_fingerprint(folder) and info["source"] == str(folder.resolve())


def test_editing_a_loss_reruns_exactly_that_plugins_runs_or_keeps_them_marked(tmp_path, cli):
    folder = write_plugin(tmp_path / "softkd")
    assert cli("run", str(folder), *FAST)[0] == 0
    first = records(tmp_path)
    source = (folder / "plugin.py").read_text()
    (folder / "plugin.py").write_text(source.replace("(1 - self.config.alpha) * kd", "(1 - self.config.alpha) * 2 * kd"))

    code, out, _ = cli("run", str(folder), *FAST, "--keep-stale")  # kept and marked, nothing trained
    assert code == 0 and "2 finished run(s) reused" in out and "1 of them stale" in out
    kept = records(tmp_path)
    assert kept["soft-kd"]["stale"] == "plugin 'softkd' code changed" and "stale" not in kept["scratch"]
    assert kept["soft-kd"]["metrics"] == first["soft-kd"]["metrics"]

    (folder / "plugin.py").write_text(source)  # the identity matches again: the mark goes
    code, out, _ = cli("run", str(folder), *FAST)
    assert "2 finished run(s) reused" in out and "stale" not in out
    assert "stale" not in records(tmp_path)["soft-kd"]

    (folder / "plugin.py").write_text(source.replace("(1 - self.config.alpha) * kd", "(1 - self.config.alpha) * 2 * kd"))
    code, out, _ = cli("run", str(folder), *FAST)
    assert code == 0 and "1 finished run(s) reused" in out
    assert "1 stale run(s) rerun: plugin 'softkd' code changed (1)" in out
    second = records(tmp_path)
    assert second["scratch"]["provenance"]["started"] == first["scratch"]["provenance"]["started"]
    assert second["soft-kd"]["identity"]["plugins"]["softkd"] != first["soft-kd"]["identity"]["plugins"]["softkd"]
    assert "stale" not in second["soft-kd"]


def test_another_teacher_file_reruns_exactly_the_runs_that_use_a_teacher(tmp_path, cli):
    folder = write_plugin(tmp_path / "softkd")
    from kdbench.zoo import MODELS

    paths = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        path = tmp_path / f"teacher{seed}.pt"
        torch.save(MODELS["small-cnn"](num_classes=10, in_channels=1, image_size=16, c1=8, c2=16, hidden=32).state_dict(), path)
        paths.append(path)
    assert cli("run", str(folder), *FAST, "--teacher", str(paths[0]))[0] == 0
    code, out, _ = cli("run", str(folder), *FAST, "--teacher", str(paths[0]))
    assert "2 finished run(s) reused" in out and "stale" not in out
    code, out, err = cli("run", str(folder), *FAST, "--teacher", str(paths[1]))
    assert code == 0, err
    assert "1 finished run(s) reused" in out and "1 stale run(s) rerun: teacher changed (1)" in out
    assert records(tmp_path)["soft-kd"]["teacher"]["path"] == str(paths[1])


def test_stale_reasons():
    new = {"config": "c", "seed": 0, "teacher": "t2", "plugins": {"kdbench.builtin": "k", "a": "a2", "b": "b"},
           "device": "cpu", "threads": 2}
    old = new | {"teacher": "t1", "plugins": {"kdbench.builtin": "k0", "a": "a1", "c": "c"}, "threads": 1}
    assert identity.stale_reason(new, new) is None
    assert identity.stale_reason(old, new) == (
        "teacher changed; device or thread count changed; plugin 'a' code changed; plugin 'b' now supplies a component; "
        "plugin 'c' no longer supplies a component; kdbench code changed")
    assert identity.stale_reason(None, new) == "recorded before kdbench tracked run identity"


def test_the_engine_fingerprint_follows_the_code_that_computes_results(tmp_path):
    """kdbench's fingerprint (the built-in plugin's, in every record's identity) changes when a
    source that can change a result changes, and not for one that only presents results."""
    import shutil
    import subprocess
    import sys

    import kdbench
    import kdbench_ext

    for package in (kdbench, kdbench_ext):
        source = Path(package.__file__).parent
        shutil.copytree(source, tmp_path / source.name, ignore=shutil.ignore_patterns("__pycache__"))

    def fingerprint():
        code = "from kdbench.plugins import engine_fingerprint; print(engine_fingerprint())"
        return subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True).stdout

    first = fingerprint()
    with open(tmp_path / "kdbench" / "report.py", "a") as f:
        f.write("\n# a presentation change\n")
    assert fingerprint() == first
    with open(tmp_path / "kdbench" / "engine.py", "a") as f:
        f.write("\n# an engine change\n")
    assert fingerprint() != first


def test_a_subset_rerun_after_a_code_change_marks_the_gains_it_mixes(tmp_path, cli):
    """The plugin supplies the student of both arms; after its code changed only scratch is rerun:
    soft-kd's records are of the old code, so its gain against the new scratch is marked, in the
    leaderboard saved for the whole experiment and in the one `leaderboard` prints."""
    folder = write_plugin(tmp_path / "softkd")
    args = ["--seeds", "0", "--set", "train.epochs=1", "--set", "teacher.train.epochs=1"]
    assert cli("run", str(folder), *args)[0] == 0
    assert "‡" not in (tmp_path / "runs" / "softkd" / "leaderboard.md").read_text()
    (folder / "plugin.py").write_text((folder / "plugin.py").read_text() + "\n# a change\n")
    code, out, _ = cli("run", str(folder), *args, "--grid", "method=scratch")
    assert code == 0 and "1 stale run(s) rerun: plugin 'softkd' code changed (1)" in out
    saved = (tmp_path / "runs" / "softkd" / "leaderboard.md").read_text()
    row = next(line for line in saved.splitlines() if "| soft-kd" in line)
    assert "soft-kd ‡" in row
    assert "its gain pairs runs of different plugin 'softkd' code with scratch's, not a paired gain" in saved
    code, printed, _ = cli("leaderboard", str(tmp_path / "runs"))
    assert code == 0 and "soft-kd ‡" in printed and "not a paired gain" in printed
