"""``kdbench report``: README blocks rerun and rewritten, under two CPU settings (subprocesses)."""
import os
import re
from pathlib import Path

import pytest

from conftest import write_plugin
from kdbench import report
from kdbench.errors import ConfigError
from kdbench.results import Results


def readme(root, plugin):
    text = ("# Title\n\nKept as written.\n\n"
            f"<!-- kdbench-report: {plugin} --grid temperature=8 -->\nold table\n<!-- /kdbench-report -->\n\nAlso kept.\n")
    (root / "README.md").write_text(text)
    return text


@pytest.mark.slow
def test_report_reruns_the_block_and_writes_intervals_machine_and_settings(tmp_path):
    plugin = write_plugin(tmp_path / "softkd")
    readme(tmp_path, plugin)
    written = report.generate(tmp_path, ["native", "default"], out=str(tmp_path / "runs"), seeds="0,1,2", log=lambda *_: None)
    assert written == [tmp_path / "README.md"]
    text = (tmp_path / "README.md").read_text()
    assert text.startswith("# Title\n\nKept as written.\n\n") and text.endswith("<!-- /kdbench-report -->\n\nAlso kept.\n")
    assert "old table" not in text and f"`python -m kdbench run {plugin} --grid temperature=8` — 3 seeds (0, 1, 2)" in text
    assert "setting `native`" in text and "torch " in text
    row = next(line for line in text.splitlines() if line.startswith("| soft-kd temperature=8 |"))
    assert " ± " in row and re.search(r"[-+]\d+\.\d\d \[[-+]\d+\.\d\d, [-+]\d+\.\d\d\] (\*|n\.s\.)", row)  # mean ± interval; gain [interval] verdict
    assert "| teacher |" in text
    # the second setting: levels and gains per setting, and how far the levels moved
    assert "native: top1 best" in text and "default: top1 best" in text and "level moved" in text
    assert (tmp_path / "runs" / "cache" / "default" / "teachers").is_dir()  # a teacher cache per setting
    assert re.search(r"Gains that moved from native beyond the seeds' noise \(.*\): (none|soft-kd .*)\.\n", text)

    # --no-run writes the same block from the records already there, without running anything
    report.generate(tmp_path, ["native", "default"], out=str(tmp_path / "runs"), seeds="0,1,2", run=False, log=lambda *_: None)
    again = (tmp_path / "README.md").read_text()
    assert again == text.replace(text[text.index("; wall time"):text.index("noisy).") + len("noisy).")], ".")


def test_report_rejects_bad_settings_and_unknown_plugins_before_running(tmp_path):
    with pytest.raises(ConfigError, match="unknown CPU setting.*avx3.*native, avx512, avx2, default"):
        report.parse_settings("native,avx3")
    assert report.parse_settings("all") == ["avx512", "avx2", "default"]
    with pytest.raises(ConfigError, match="no <!-- kdbench-report"):
        report.generate(tmp_path)
    readme(tmp_path, write_plugin(tmp_path / "softkd"))
    with pytest.raises(ConfigError, match="no README block runs hinton; blocks run: softkd"):
        report.generate(tmp_path, only=["hinton"])


def test_a_gain_that_moved_with_the_cpu_setting_is_named():
    """The shift of a gain between two settings is the paired interval of its per-seed gains."""
    def rows(gains):
        out = []
        for seed, gain in enumerate(gains):
            for method, top1 in (("scratch", 80.0 + seed), ("kd", 80.0 + seed + gain)):
                out.append({"experiment": "e", "cell_id": method, "seed": seed, "method": method, "baseline": "scratch",
                            "labels": {"method": method}, "config": {}, "metrics": {"top1_best": top1, "top1_last": top1},
                            "selection": {"metric": "top1", "direction": "max", "best_epoch": 1}, "directions": {"top1": "max"},
                            "student": {"model": "mlp", "params": 10}, "teacher": None, "status": "ok"})
        return out

    text = report.render_settings({"native": Results(rows([1.0, 1.2, 0.9])), "default": Results(rows([1.1, 1.0, 1.0]))})
    assert "beyond the seeds' noise (the per-seed gains paired by seed, 95% interval of the shift): none." in text
    text = report.render_settings({"native": Results(rows([1.0, 1.2, 0.9])), "default": Results(rows([3.0, 3.3, 3.1]))})
    assert re.search(r"noise \(.*\): kd under default \(\+2\.\d\d \[\+\d\.\d\d, \+\d\.\d\d\]\)\.", text)


# ------------------------------------------------------------------------------------------------
# report edits the user's documents: it never loses a byte it was not asked to replace


def fake_records(out, args, seeds=(0, 1, 2)):
    """Finished records of scratch and kd for ``args`` where ``report --no-run`` reads them."""
    from kdbench import store

    for seed in seeds:
        for method, top1 in (("scratch", 80.0 + seed), ("kd", 81.0 + seed)):
            record = {"experiment": "softkd", "cell_id": method, "seed": seed, "method": method, "baseline": "scratch",
                      "labels": {"method": method}, "config": {}, "metrics": {"top1_best": top1, "top1_last": top1},
                      "selection": {"metric": "top1", "direction": "max", "best_epoch": 1}, "directions": {"top1": "max"},
                      "student": {"model": "mlp", "params": 10}, "teacher": None, "status": "ok"}
            store.write_record(out / "native" / report.slug(args) / method / f"seed{seed}", record)


MACHINE = {"cpu": "test cpu", "cores": 2, "torch": "2.x", "capability": "AVX2", "onednn": "unset"}


@pytest.fixture
def no_training(monkeypatch):
    """report runs nothing in these tests: the machine is fixed, a run would be a failure."""
    monkeypatch.setattr(report, "machine", lambda name: MACHINE)

    def run_command(*args, **kwargs):
        raise AssertionError("report trained before refusing")

    monkeypatch.setattr(report, "run_command", run_command)


def two_blocks(root, first, second):
    """A README holding prose and two blocks (``first``, ``second``: the args of each)."""
    text = (f"# Title\n\nProse.\n\n<!-- kdbench-report: {first} -->\nold a\n<!-- /kdbench-report -->\n\nMiddle prose.\n\n"
            f"<!-- kdbench-report: {second} -->\nold b\n<!-- /kdbench-report -->\n\nEnd.\n")
    (root / "README.md").write_text(text)
    return text


@pytest.mark.parametrize("damage, message", [
    (lambda t: t.replace("old a\n<!-- /kdbench-report -->", "old a"), "the block opened at line 5 has no end marker before the next block opens at line 10"),
    (lambda t: t.replace("old b\n<!-- /kdbench-report -->", "old b"), "the block opened at line 11 has no end marker"),
    (lambda t: t.replace("Middle prose.", "Middle <!-- /kdbench-report --> prose."), "the end marker at line 9 closes no block"),
])
def test_markers_that_do_not_pair_are_refused_naming_the_lines(tmp_path, no_training, damage, message):
    plugin = write_plugin(tmp_path / "softkd")
    text = damage(two_blocks(tmp_path, f"{plugin} --grid temperature=8", f"{plugin} --grid temperature=4"))
    (tmp_path / "README.md").write_text(text)
    with pytest.raises(ConfigError, match=re.escape(f"{tmp_path / 'README.md'}: kdbench-report markers do not pair: {message}")):
        report.generate(tmp_path, out=str(tmp_path / "runs"), log=lambda *_: None)
    assert (tmp_path / "README.md").read_text() == text


def test_only_the_readmes_it_rewrites_are_decoded(tmp_path, no_training):
    plugin = write_plugin(tmp_path / "softkd")
    args = f"{plugin} --grid temperature=8"
    text = readme(tmp_path, plugin)
    other = tmp_path / "plugins" / "other" / "README.md"  # another plugin's README, in Latin-1
    other.parent.mkdir(parents=True)
    latin = "Café, naïve.\n\n<!-- kdbench-report: plugins/other -->\nold\n<!-- /kdbench-report -->\n".encode("latin-1")
    other.write_bytes(latin)
    fake_records(tmp_path / "runs", args)
    report.generate(tmp_path, out=str(tmp_path / "runs"), only=["softkd"], seeds="0,1,2", run=False, log=lambda *_: None)
    assert other.read_bytes() == latin
    written = (tmp_path / "README.md").read_text()
    assert "| kd temperature=8 |" not in written and "| kd |" in written and written.endswith("\n\nAlso kept.\n")

    other.write_bytes(latin.replace(b"plugins/other", str(plugin).encode()))  # now it holds a block to rewrite
    with pytest.raises(ConfigError, match=re.escape(f"{other} is not valid UTF-8 (byte 0xe9 at line 1)")):
        report.generate(tmp_path, out=str(tmp_path / "runs"), only=["softkd"], seeds="0,1,2", run=False, log=lambda *_: None)
    assert (tmp_path / "README.md").read_text() == written


def test_a_readme_it_cannot_write_is_refused_before_any_run(tmp_path, no_training, monkeypatch):
    plugin = write_plugin(tmp_path / "softkd")
    text = readme(tmp_path, plugin)
    path = tmp_path / "README.md"
    path.chmod(0o444)
    if os.geteuid() == 0:  # root writes read-only files: ask as an unprivileged user would be answered
        access = os.access
        monkeypatch.setattr(os, "access", lambda p, mode, **kw: False if Path(p) == path and mode & os.W_OK else access(p, mode, **kw))
    with pytest.raises(ConfigError, match=re.escape(f"{path} is not writable")):
        report.generate(tmp_path, out=str(tmp_path / "runs"), log=lambda *_: None)
    assert path.read_text() == text


def test_a_failed_write_leaves_the_readme_as_it_was(tmp_path, no_training, monkeypatch):
    plugin = write_plugin(tmp_path / "softkd")
    text = readme(tmp_path, plugin)
    fake_records(tmp_path / "runs", f"{plugin} --grid temperature=8")

    def full_disk(*args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", full_disk)
    with pytest.raises(ConfigError, match="cannot write .*README.md: No space left on device; it is unchanged"):
        report.generate(tmp_path, out=str(tmp_path / "runs"), seeds="0,1,2", run=False, log=lambda *_: None)
    assert (tmp_path / "README.md").read_text() == text
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_file()) == ["README.md"]  # no temporary file left


def reaches_the_lock(proc):
    for line in iter(proc.stdout.readline, ""):
        if "waiting for another report" in line:
            return True
    return False


@pytest.mark.slow
def test_two_reports_on_one_readme_keep_both_blocks(tmp_path):
    """Two ``report --only`` processes on one README: the test holds the README's lock until both
    wait for it, then lets them go; each reads the README under the lock, so both blocks survive."""
    import fcntl
    import subprocess
    import sys

    a, b = write_plugin(tmp_path / "a"), write_plugin(tmp_path / "b")
    text = two_blocks(tmp_path, str(a), str(b))
    for plugin in (a, b):
        fake_records(tmp_path / "runs", str(plugin))
    env = os.environ | {"PYTHONUNBUFFERED": "1"}
    handle = os.open(tmp_path, os.O_RDONLY)
    fcntl.flock(handle, fcntl.LOCK_EX)
    procs = []
    try:
        for name in ("a", "b"):
            procs.append(subprocess.Popen([sys.executable, "-m", "kdbench", "report", "--only", name, "--no-run", "--seeds", "0,1,2",
                                           "--root", str(tmp_path), "--out", str(tmp_path / "runs")],
                                          cwd=Path(report.__file__).parents[1], env=env, stdout=subprocess.PIPE, text=True))
        waited = [reaches_the_lock(proc) for proc in procs]  # a report that does not lock runs to its end instead
    finally:
        os.close(handle)
    for proc in procs:
        proc.stdout.read()
        assert proc.wait() == 0
    assert waited == [True, True]
    written = (tmp_path / "README.md").read_text()
    assert "old a" not in written and "old b" not in written, written
    assert written.count("| kd |") == 2 and written.startswith("# Title\n\nProse.\n\n") and "\n\nMiddle prose.\n\n" in written
    assert written.endswith("<!-- /kdbench-report -->\n\nEnd.\n")
