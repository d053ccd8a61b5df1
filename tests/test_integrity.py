"""Integrity: bad values stop before any training with one line (exit 2), files are verified
before they are trusted, concurrent processes share one --out, plugin names never clash silently,
and the teacher cache deletes only what is really corrupt."""
import json
import os
from pathlib import Path

import pytest

from conftest import REPO, THIRD_PARTY_TOML, read_records, write_plugin
from kdbench.cli import main

TINY = ("--seeds", "0", "--set", "train.epochs=1")


def run_cli(capsys, *args):
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def nothing_trained(tmp_path):
    return not (tmp_path / "runs").exists() and not (tmp_path / "cache").exists()


@pytest.mark.parametrize("option, message", [
    ("train.epochs=0", "invalid train.epochs = 0; valid: an integer >= 1"),
    ("train.batch_size=0", "train.batch_size = 0"),
    ("train.batch_size=-5", "train.batch_size = -5"),
    ("train.steps_per_epoch=-1", "train.steps_per_epoch = -1; valid: an integer >= 0"),
    ("train.eval_every=0", "train.eval_every = 0"),
    ("train.checkpoint_every=0", "train.checkpoint_every = 0"),
    ("train.betas=0.5", "train.betas = [0.5]; valid: two numbers in [0, 1)"),
    ("train.lr=-1", "train.lr = -1.0; valid: a number > 0"),
    ("train.lr=nan", "train.lr = nan"),
    ("data.augment=crop+flop", "data.augment = ['crop', 'flop']; valid: a list of crop, hflip, vflip"),
    ("train.schedule=cosinus", "train.schedule = 'cosinus'; valid: none, cosine, step, multistep"),
    ("train.optimizer=adamx", "train.optimizer = 'adamx'; valid: sgd, adam, adamw"),
    ("data.normalize=foo", "data.normalize = 'foo'; valid: standard, symmetric, unit"),
    ("train.milestones=1+x", "train.milestones = [1, 'x']; valid: epochs as integers >= 1"),
    ("data.val_size=0", "data.val_size = 0"),
    ("data.train_subset=999999", "data.train_subset=999999 exceeds the 3600 training images of 'synthetic'"),
    ("teacher.data.test_subset=5000", "data.test_subset=5000 exceeds the 1000 test images of 'synthetic'"),
    ("teacher.train.epochs=0", "invalid teacher.train.epochs = 0"),
    ("teacher.data.normalize=foo", "invalid teacher.data.normalize = 'foo'"),
    ("teacher.seed=-1", "invalid teacher.seed = -1"),
])
def test_bad_values_stop_before_training(plugin_dir, tmp_path, cli, option, message):
    code, _, err = cli("run", str(plugin_dir), *TINY, "--set", option)
    assert code == 2 and message in err and err.count("\n") == 1, err
    assert nothing_trained(tmp_path)


@pytest.mark.parametrize("seeds, message", [
    ("", "--seeds is empty"),
    ("0,0", "0 is listed twice"),
    (str(2**64), "valid: an integer from 0 to 2**64-1"),
    ("-1", "invalid --seeds"),
])
def test_bad_seeds_stop_before_training(plugin_dir, tmp_path, cli, seeds, message):
    code, _, err = cli("run", str(plugin_dir), "--seeds", seeds)
    assert code == 2 and message in err and err.count("\n") == 1, err
    assert nothing_trained(tmp_path)


def test_bad_seeds_in_the_file(tmp_path, cli):
    folder = write_plugin(tmp_path / "dup", toml=THIRD_PARTY_TOML.replace("seeds = [0, 1]", "seeds = [1, 1]"))
    code, _, err = cli("run", str(folder))
    assert code == 2 and "invalid experiment.seeds = [1, 1]" in err and err.count("\n") == 1
    assert nothing_trained(tmp_path)


def test_method_config_checks_run_at_expansion(tmp_path, cli):
    """The shipped methods' Configs check their ranges; expansion instantiates every arm's."""
    hinton = REPO / "plugins" / "hinton"
    for option, message in [("method.temperature=0", "invalid method.temperature = 0.0; valid: a number > 0"),
                            ("method.alpha=1.5", "invalid method.alpha = 1.5; valid: a number >= 0 and <= 1")]:
        code, _, err = cli("run", str(hinton), "--set", option)
        assert code == 2 and message in err and err.count("\n") == 1, err
    code, _, err = cli("run", str(REPO / "plugins" / "akd"), "--set", "method.student_steps=0")
    assert code == 2 and "invalid method.student_steps = 0" in err
    code, _, err = cli("run", str(REPO / "plugins" / "gankd"), "--set", "method.match=first")
    assert code == 2 and "invalid method.match = 'first'; valid: last, all" in err
    code, _, err = cli("run", str(REPO / "plugins" / "vkd"), "--set", "teacher.method_options.cgan=later")
    assert code == 2 and "teacher.method_options of 'vkd-teacher': invalid method.cgan = 'later'; valid: concurrent, posthoc" in err
    assert nothing_trained(tmp_path)


def test_data_free_method_needs_steps_per_epoch(tmp_path, cli):
    code, _, err = cli("run", str(REPO / "plugins" / "akd"), "--set", "train.steps_per_epoch=0")
    assert code == 2 and "is data-free: set train.steps_per_epoch" in err and err.count("\n") == 1
    assert nothing_trained(tmp_path)


def test_unusable_out_and_cache_folders(plugin_dir, tmp_path, capsys):
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    for flag in ("--out", "--cache"):
        for target in (a_file, a_file / "below"):
            other = "--cache" if flag == "--out" else "--out"
            code, _, err = run_cli(capsys, "run", plugin_dir, *TINY, flag, target, other, tmp_path / "other")
            assert code == 2 and f"{flag} {target}: {a_file} is a file, not a folder" in err and err.count("\n") == 1
    assert not (tmp_path / "other").exists()


def test_unwritable_out_folder(plugin_dir, tmp_path, capsys, monkeypatch):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    real_access = os.access  # root may write anywhere: the folder is also reported unwritable to kdbench
    monkeypatch.setattr(os, "access", lambda path, mode: Path(path) != locked and real_access(path, mode))
    code, _, err = run_cli(capsys, "run", plugin_dir, *TINY, "--out", locked / "runs", "--cache", tmp_path / "cache")
    assert code == 2 and "is not writable" in err and err.count("\n") == 1


def test_unwritable_experiment_folder_inside_out_stops_before_the_teacher_trains(plugin_dir, tmp_path, capsys, monkeypatch):
    out = tmp_path / "runs"
    for locked in (out / "softkd", out / "softkd" / "an-earlier-run"):  # the experiment's folder, a folder below it
        locked.mkdir(parents=True, exist_ok=True)
        real_access = os.access  # root may write anywhere: the folder is also reported unwritable to kdbench
        monkeypatch.setattr(os, "access", lambda path, mode: Path(path) != locked and real_access(path, mode))
        code, _, err = run_cli(capsys, "run", plugin_dir, *TINY, "--out", out, "--cache", tmp_path / "cache")
        assert code == 2 and f"{locked} is not writable" in err and err.count("\n") == 1, err
        monkeypatch.undo()
    assert not (tmp_path / "cache").exists() and list(out.rglob("*")) == [out / "softkd", out / "softkd" / "an-earlier-run"]


def test_leaderboard_output_paths(tmp_path, capsys):
    (tmp_path / "runs").mkdir()
    code, _, err = run_cli(capsys, "leaderboard", tmp_path / "runs", "--plot", tmp_path / "x.xyz")
    assert code == 2 and "unknown image format 'xyz'; valid:" in err and "png" in err and err.count("\n") == 1
    for flag in ("--plot", "--out"):
        code, _, err = run_cli(capsys, "leaderboard", tmp_path / "runs", flag, tmp_path / "missing" / "b.png")
        assert code == 2 and "does not exist" in err and err.count("\n") == 1
        code, _, err = run_cli(capsys, "leaderboard", tmp_path / "runs", flag, tmp_path / "runs")
        assert code == 2 and "is a folder; name a file" in err and err.count("\n") == 1


def test_teachers_lists_a_meta_without_spec(tmp_path, capsys):
    for key, text in (("nospec", json.dumps({"key": "nospec"})), ("badutf8", b"\xff\xfe{")):
        folder = tmp_path / "cache" / "teachers" / key
        folder.mkdir(parents=True)
        path = folder / "meta.json"
        path.write_bytes(text if isinstance(text, bytes) else text.encode())
    code, out, err = run_cli(capsys, "teachers", "--cache", tmp_path / "cache")
    assert code == 0 and out.count("unreadable meta.json") == 2, out + err


# ---------------------------------------------------------------------------------------------
# Verify before trusting a file


def records_by_seed(root):
    return {r["seed"]: r for r in read_records(root)}


def test_corrupt_checkpoint_restarts_from_scratch_with_the_clean_metrics(plugin_dir, tmp_path, capsys, monkeypatch):
    from kdbench import engine

    args = ["run", plugin_dir, "--grid", "method=scratch", "--seeds", "0", "--set", "train.epochs=2", "--cache", tmp_path / "cache"]
    assert run_cli(capsys, *args, "--out", tmp_path / "clean")[0] == 0
    clean = records_by_seed(tmp_path / "clean")[0]

    save = engine.save_checkpoint

    def save_then_die(*a, **k):  # as if the process were killed right after the epoch-1 checkpoint
        save(*a, **k)
        raise KeyboardInterrupt

    monkeypatch.setattr(engine, "save_checkpoint", save_then_die)
    assert run_cli(capsys, *args, "--out", tmp_path / "runs")[0] == 130
    monkeypatch.undo()
    [checkpoint] = (tmp_path / "runs").rglob("checkpoint.pt")
    data = bytearray(checkpoint.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte in the tensor data: torch.load alone would not notice
    checkpoint.write_bytes(bytes(data))

    code, _, err = run_cli(capsys, *args, "--out", tmp_path / "runs")
    assert code == 0 and "fails its sha256 checksum" in err and "afresh" in err and "resuming" not in err
    again = records_by_seed(tmp_path / "runs")[0]
    assert again["status"] == "ok" and again["metrics"] == clean["metrics"]
    history = [json.loads(line)["epoch"] for line in (Path(again["run_dir"]) / "history.jsonl").read_text().splitlines()]
    assert history == [1, 2]


def test_unreadable_records_are_named_and_redone(plugin_dir, tmp_path, cli):
    args = ("run", str(plugin_dir), "--grid", "method=scratch", "--seeds", "0,1,2,3,4", "--set", "train.epochs=1")
    assert cli(*args)[0] == 0
    before = records_by_seed(tmp_path / "runs")
    paths = {seed: Path(r["run_dir"]) / "record.json" for seed, r in before.items()}
    text = {seed: path.read_text() for seed, path in paths.items()}
    paths[0].write_bytes(b"\xff\xfe" + text[0].encode())  # invalid UTF-8
    paths[1].write_text(text[1][: len(text[1]) // 2])  # truncated
    missing = json.loads(text[2])
    del missing["metrics"], missing["sha256"]
    paths[2].write_text(json.dumps(missing))  # no metrics (and no checksum: an old-style record)
    edited = json.loads(text[3])
    edited["metrics"]["top1_best"] += 1.0
    paths[3].write_text(json.dumps(edited))  # valid JSON, but not what was recorded
    old_style = json.loads(text[4])
    del old_style["sha256"]
    paths[4].write_text(json.dumps(old_style))  # written before records had a checksum: trusted

    code, out, err = cli("leaderboard", str(tmp_path / "runs"))
    assert code == 0 and err.count("\n") == 1 and "4 unreadable record(s) left out" in err
    for seed, reason in ((0, "not valid UTF-8"), (1, "not valid JSON"), (2, "lacks metrics"), (3, "fails its sha256 checksum")):
        assert f"{paths[seed]}: {reason}" in err
    assert "| scratch" in out

    code, out, _ = cli(*args)
    assert code == 0 and "1 finished run(s) reused" in out and out.count("running it again") == 4
    after = records_by_seed(tmp_path / "runs")
    assert all(after[s]["metrics"] == before[s]["metrics"] for s in range(5))
    assert cli("leaderboard", str(tmp_path / "runs"))[2] == ""


def test_records_and_checkpoints_leave_no_temp_files(plugin_dir, tmp_path, cli):
    assert cli("run", str(plugin_dir), "--grid", "method=soft-kd", "--seeds", "0", "--set", "train.epochs=2")[0] == 0
    assert not list(tmp_path.rglob("*.tmp"))


# ---------------------------------------------------------------------------------------------
# Two processes on one --out


def test_two_processes_share_one_out(plugin_dir, tmp_path, cli):
    """Two processes started together on one --out split the grid: a run the other holds is
    skipped, waited for at the end and reused (or run, if the other stopped); the records and
    curves equal one process's."""
    import subprocess
    import sys
    import time

    from kdbench import store

    grid = ["--grid", "method=scratch,soft-kd", "--seeds", "0,1", "--set", "train.epochs=2"]
    assert cli("run", str(plugin_dir), *grid)[0] == 0  # one process: the reference (and the cached teacher)
    single = {(r["cell_name"], r["seed"]): r for r in map(lambda p: json.loads(p.read_text()), (tmp_path / "runs").rglob("record.json"))}
    held = Path(next(iter(single.values()))["run_dir"]).relative_to(tmp_path / "runs")

    out = tmp_path / "shared"
    env = dict(os.environ, PYTHONPATH=str(REPO), KDBENCH_QUIET="1", PYTHONUNBUFFERED="1")  # logs readable as they come
    command = [sys.executable, "-m", "kdbench", "run", str(plugin_dir), *grid, "--out", str(out), "--cache", str(tmp_path / "cache")]
    skipped = f"{held.parent.name} seed {held.name.removeprefix('seed')}: another process is running it; skipped for now"
    logs = [open(tmp_path / f"log{i}.txt", "w+") for i in range(2)]
    with store.file_lock(out / held / store.LOCK):  # as if a third process were running this one
        procs = [subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, text=True) for log in logs]
        # held until both have met the held run and the others are done (no race on who saw what)
        while len(list(out.rglob("record.json"))) < len(single) - 1 or not all(skipped in open(log.name).read() for log in logs):
            assert all(p.poll() is None for p in procs), [open(log.name).read() for log in logs]
            time.sleep(0.2)
        assert not (out / held / "record.json").exists()
    for proc in procs:
        assert proc.wait(timeout=600) == 0, [open(log.name).read() for log in logs]
    texts = [open(log.name).read() for log in logs]
    assert "Traceback" not in "".join(texts)  # which of the two then ran the held run is a race: either is right

    shared = {(r["cell_name"], r["seed"]): r for r in map(lambda p: json.loads(p.read_text()), out.rglob("record.json"))}
    assert shared.keys() == single.keys()
    for key, record in shared.items():
        assert record["status"] == "ok" and record["metrics"] == single[key]["metrics"], key
        history = [json.loads(line)["epoch"] for line in (Path(record["run_dir"]) / "history.jsonl").read_text().splitlines()]
        assert history == [1, 2], key
    assert not list(out.rglob("*.tmp")) and not list(out.rglob("checkpoint.pt"))


# ---------------------------------------------------------------------------------------------
# Plugin names

FOLDER_DKD = '''
import kdbench
from kdbench.method import Scratch


@kdbench.hookimpl
def kdbench_register_methods(register):
    register("dkd", Scratch, description="from the folder")
'''


def installed_plugin(site, name, description):
    """An installed distribution declaring the kdbench entry point ``name`` (as pip leaves it)."""
    site.mkdir(parents=True, exist_ok=True)
    (site / f"fake_{name}.py").write_text(FOLDER_DKD.replace("from the folder", description))
    info = site / f"fake_{name}-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: fake-{name}\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(f"[kdbench]\n{name} = fake_{name}\n")


def test_a_plugin_folder_replaces_an_installed_plugin_of_its_name(tmp_path, monkeypatch):
    from kdbench.plugins import load_registry

    installed_plugin(tmp_path / "site", "dkd", "installed")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    assert load_registry([]).tables["methods"]["dkd"].metadata["description"] == "installed"
    folder = write_plugin(tmp_path / "mine" / "dkd", plugin=FOLDER_DKD, toml="")
    notices = []
    registry = load_registry([folder], strict=True, warn=notices.append)
    assert registry.tables["methods"]["dkd"].metadata["description"] == "from the folder"
    assert notices == [f"plugin folder {folder.resolve()} replaces the installed plugin 'dkd' (fake_dkd) of the same name"]


def test_two_plugin_folders_with_one_name_are_an_error(tmp_path, capsys):
    first = write_plugin(tmp_path / "a" / "dkd", plugin=FOLDER_DKD, toml="")
    second = write_plugin(tmp_path / "b" / "dkd", plugin=FOLDER_DKD, toml="")
    code, _, err = run_cli(capsys, "list", "methods", "--plugin", first, "--plugin", second)
    assert code == 2 and err.count("\n") == 1
    assert "two plugin folders are named 'dkd'" in err and "rename one" in err and "already registered" not in err


# ---------------------------------------------------------------------------------------------
# The teacher cache deletes only what is corrupt


def test_teacher_cache_keeps_a_teacher_on_other_errors(plugin_dir, tmp_path, cli, monkeypatch):
    from kdbench.teachers import TeacherCache

    args = ("run", str(plugin_dir), "--grid", "method=soft-kd", "--seeds", "0", "--set", "train.epochs=1")
    assert cli(*args)[0] == 0
    cached = sorted((tmp_path / "cache" / "teachers").glob("*/*.*"))
    assert {p.name for p in cached} == {"teacher.pt", "meta.json"}
    before = {p: p.read_bytes() for p in cached}

    def plugin_bug(self, spec, run_dir):
        raise RuntimeError("a bug in the teacher's method")

    monkeypatch.setattr(TeacherCache, "prepare", plugin_bug)  # fails while the cached teacher is rebuilt
    code, out, err = cli(*args, "--force")
    assert code == 1 and "FAILED: RuntimeError: a bug in the teacher's method" in out and "corrupt" not in err
    assert {p: p.read_bytes() for p in cached} == before  # nothing deleted
    monkeypatch.undo()
    code, _, err = cli(*args, "--force")
    assert code == 0 and "training teacher" not in err

    meta = next(p for p in cached if p.name == "meta.json")
    meta.write_bytes(b"\xff" + meta.read_bytes())  # a damaged meta.json is corruption: retrained
    code, _, err = cli(*args, "--force")
    assert code == 0 and "is corrupt (UnicodeDecodeError" in err and "training teacher" in err


def test_a_teachers_corrupt_checkpoint_restarts_its_training(plugin_dir, tmp_path, cli, monkeypatch):
    from kdbench import engine

    args = ("run", str(plugin_dir), "--grid", "method=soft-kd", "--seeds", "0", "--set", "train.epochs=1")
    assert cli(*args)[0] == 0
    meta = next((tmp_path / "cache" / "teachers").glob("*/meta.json"))
    clean = json.loads(meta.read_text())["trained_metrics"]
    for path in meta.parent.iterdir():
        path.unlink()
    save = engine.save_checkpoint

    def save_then_die(*a, **k):  # the teacher's training killed after its first epoch
        save(*a, **k)
        raise KeyboardInterrupt

    monkeypatch.setattr(engine, "save_checkpoint", save_then_die)
    assert cli(*args, "--force")[0] == 130
    monkeypatch.undo()
    checkpoint = meta.parent / "work" / "checkpoint.pt"
    checkpoint.write_bytes(checkpoint.read_bytes()[:-10])  # truncated
    code, _, err = cli(*args, "--force")
    assert code == 0 and "fails its sha256 checksum" in err and "training the teacher afresh" in err
    assert json.loads(meta.read_text())["trained_metrics"] == clean


# ---------------------------------------------------------------------------------------------
# Symbolic links: nothing is written or read through one that leaves --out


def test_run_refuses_a_history_linked_outside_out(plugin_dir, tmp_path, cli):
    args = ("run", str(plugin_dir), "--grid", "method=scratch", *TINY)
    assert cli(*args)[0] == 0
    history = next((tmp_path / "runs").rglob("history.jsonl"))
    outside = tmp_path / "outside.txt"
    outside.write_text("the user's own file\n")
    history.unlink()
    history.symlink_to(outside)
    code, out, err = cli(*args, "--force")
    assert code == 2 and err.count("\n") == 1, err
    assert f"{history} is a symbolic link to {outside}, outside {(tmp_path / 'runs').resolve()}" in err
    assert outside.read_text() == "the user's own file\n" and "[1/1]" not in out


def ok_record(method, seed):
    return {"experiment": "exp", "cell_id": method, "seed": seed, "method": method, "baseline": "scratch",
            "labels": {"method": method}, "config": {}, "metrics": {"top1_best": 80.0 + seed, "top1_last": 80.0},
            "selection": {"metric": "top1", "direction": "max", "best_epoch": 1}, "student": {"model": "mlp", "params": 10},
            "status": "ok"}


def test_leaderboard_follows_links_inside_its_folder_and_refuses_the_others(tmp_path, capsys):
    from kdbench import store

    for seed in (0, 1):
        store.write_record(tmp_path / "elsewhere" / "exp" / "scratch" / f"seed{seed}", ok_record("scratch", seed))
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "exp").symlink_to(tmp_path / "elsewhere" / "exp")  # the experiment folder, outside runs
    code, out, err = run_cli(capsys, "leaderboard", tmp_path / "runs")
    assert code == 2 and out == "" and err.count("\n") == 1
    assert f"{tmp_path / 'runs' / 'exp'} is a symbolic link to {tmp_path / 'elsewhere' / 'exp'}, outside {tmp_path / 'runs'}" in err

    code, out, err = run_cli(capsys, "leaderboard", tmp_path / "elsewhere")  # a link that stays inside is followed
    (tmp_path / "elsewhere" / "again").symlink_to(tmp_path / "elsewhere" / "exp")
    code2, out2, _ = run_cli(capsys, "leaderboard", tmp_path / "elsewhere")
    assert code == code2 == 0 and out == out2 and "| scratch " in out and "| 2 " in out  # two seeds, each counted once

    (tmp_path / "empty").mkdir()
    code, out, err = run_cli(capsys, "leaderboard", tmp_path / "empty")  # no rows: it says why
    assert code == 0 and out == "(no runs)\n" and f"no readable record.json under {tmp_path / 'empty'}" in err


def test_run_refuses_a_cached_teacher_linked_outside_the_cache(plugin_dir, tmp_path, cli):
    args = ("run", str(plugin_dir), "--grid", "method=soft-kd", *TINY, "--set", "teacher.train.epochs=1")
    assert cli(*args)[0] == 0
    teacher = next((tmp_path / "cache" / "teachers").glob("*/meta.json")).parent
    outside = tmp_path / "elsewhere"
    teacher.rename(outside)
    teacher.symlink_to(outside)
    before = sorted((p.relative_to(outside), p.stat().st_mtime_ns) for p in outside.rglob("*"))
    code, out, err = cli(*args, "--force")
    assert code == 2 and err.count("\n") == 1 and f"{teacher} is a symbolic link to {outside}, outside" in err, err
    assert sorted((p.relative_to(outside), p.stat().st_mtime_ns) for p in outside.rglob("*")) == before
