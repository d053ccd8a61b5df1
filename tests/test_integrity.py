"""Integrity: bad values stop before any training with one line (exit 2), files are verified
before they are trusted, concurrent processes share one --out, plugin names never clash silently,
and the teacher cache deletes only what is really corrupt."""
import json
import os
from pathlib import Path

import pytest

from conftest import REPO, THIRD_PARTY_TOML, write_plugin
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
    assert code == 2 and "invalid method.cgan = 'later'; valid: concurrent, posthoc" in err
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
