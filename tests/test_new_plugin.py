"""new-plugin: the generated folder runs, its own test passes as written, and with --installable
its pyproject declares the kdbench entry point (checked by building and loading the wheel in a
throwaway --target folder, never in this environment)."""
import json
import os
import subprocess
import sys
import zipfile

import pytest

from conftest import REPO

pytestmark = pytest.mark.slow


def env_with(*paths):
    return {**os.environ, "PYTHONPATH": os.pathsep.join([*map(str, paths), str(REPO)])}


def test_generated_plugin_runs_and_its_test_passes(cli, tmp_path):
    code, out, _ = cli("new-plugin", "my-kd", "--dir", str(tmp_path))
    folder = tmp_path / "my-kd"
    assert code == 0 and f"python -m kdbench run {folder}" in out
    assert sorted(p.name for p in folder.iterdir()) == ["kdbench.toml", "plugin.py", "test_my_kd.py"]

    tests = subprocess.run([sys.executable, "-m", "pytest", str(folder), "-q", "-p", "no:cacheprovider"],
                           cwd=tmp_path, env=env_with(), capture_output=True, text=True, timeout=900)
    assert tests.returncode == 0 and "2 passed" in tests.stdout, tests.stdout + tests.stderr

    run = subprocess.run([sys.executable, "-m", "kdbench", "run", str(folder), "--seeds", "0", "--out", str(tmp_path / "runs"),
                          "--cache", str(tmp_path / "cache")], cwd=tmp_path, env=env_with(), capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr
    records = [json.loads(p.read_text()) for p in (tmp_path / "runs").rglob("record.json")]
    assert sorted(r["method"] for r in records) == ["my-kd", "scratch"] and all(r["status"] == "ok" for r in records)


def test_installable_plugin_declares_the_entry_point(cli, tmp_path):
    assert cli("new-plugin", "tiny-kd", "--dir", str(tmp_path), "--installable")[0] == 0
    folder = tmp_path / "tiny-kd"
    assert (folder / "pyproject.toml").is_file()
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(tmp_path / "wheel"), str(folder)],
                           capture_output=True, text=True, timeout=600)
    assert build.returncode == 0, build.stderr
    [wheel] = (tmp_path / "wheel").glob("kdbench_tiny_kd-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        [entry_points] = [n for n in zf.namelist() if n.endswith(".dist-info/entry_points.txt")]
        assert zf.read(entry_points).decode().split() == ["[kdbench]", "tiny-kd", "=", "kdbench_tiny_kd.plugin"]
    target = tmp_path / "site"
    install = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), str(wheel)],
                             capture_output=True, text=True, timeout=600)
    assert install.returncode == 0, install.stderr
    listed = subprocess.run([sys.executable, "-m", "kdbench", "list", "methods", "--strict-plugins"], cwd=tmp_path,
                            env=env_with(target), capture_output=True, text=True, timeout=300)
    assert listed.returncode == 0, listed.stderr
    [line] = [l for l in listed.stdout.splitlines() if l.split()[:1] == ["tiny-kd"]]
    assert line.split()[1] == "tiny-kd"  # registered by the installed distribution's entry point


def test_bad_names_and_existing_folders_are_one_line_errors(cli, tmp_path):
    code, _, err = cli("new-plugin", "My_KD", "--dir", str(tmp_path))
    assert code == 2 and "plugin name 'My_KD' is not valid" in err and len(err.strip().splitlines()) == 1
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "notes.txt").write_text("mine")
    code, _, err = cli("new-plugin", "taken", "--dir", str(tmp_path))
    assert code == 2 and "already exists and is not empty" in err
    assert (tmp_path / "taken" / "notes.txt").read_text() == "mine"


def test_names_it_cannot_write_or_run_and_files_in_the_way_are_one_line_errors(cli, tmp_path):
    (tmp_path / "a-file").write_text("mine")
    cases = [
        (["kd"], "plugin name 'kd' is taken: method 'kd' is registered by kdbench.builtin"),
        (["scratch"], "plugin name 'scratch' is taken"),
        (["f"], "would name its class F, which plugin.py already uses"),  # F is torch.nn.functional there
        (["none"], "would name its class None"),
        (["k" * 300], "is 300 characters long; at most 64"),
        (["a-file"], "a-file exists and is a file; choose another NAME or --dir"),
        (["my-kd", "--dir", str(tmp_path / "a-file")], "--dir " + str(tmp_path / "a-file") + " is a file, not a folder"),
        (["my-kd", "--dir", str(tmp_path / "a-file" / "below")], "cannot write the plugin folder"),
    ]
    for args, message in cases:
        if "--dir" not in args:
            args = [*args, "--dir", str(tmp_path)]
        code, out, err = cli("new-plugin", *args)
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1, (args, err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file"] and (tmp_path / "a-file").read_text() == "mine"
