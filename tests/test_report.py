"""``kdbench report``: README blocks rerun and rewritten, under two CPU settings (subprocesses)."""
import re

import pytest

from conftest import write_plugin
from kdbench import report
from kdbench.errors import ConfigError


def readme(root, plugin):
    text = ("# Title\n\nKept as written.\n\n"
            f"<!-- kdbench-report: {plugin} --grid temperature=8 -->\nold table\n<!-- /kdbench-report -->\n\nAlso kept.\n")
    (root / "README.md").write_text(text)
    return text


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

    text = report.render_settings({"native": rows([1.0, 1.2, 0.9]), "default": rows([1.1, 1.0, 1.0])})
    assert "beyond the seeds' noise (the per-seed gains paired by seed, 95% interval of the shift): none." in text
    text = report.render_settings({"native": rows([1.0, 1.2, 0.9]), "default": rows([3.0, 3.3, 3.1])})
    assert re.search(r"noise \(.*\): kd under default \(\+2\.\d\d \[\+\d\.\d\d, \+\d\.\d\d\]\)\.", text)
