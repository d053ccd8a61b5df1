"""Leaderboards from records: seed means with 95% intervals, paired gains over the baseline with
verdicts, teacher rows, failed and stale rows, generator rows ranked by their own metric (lower is
better), exports (markdown, CSV, HTML), the plot, and the saved leaderboard of a run."""
import csv
import io
import math

import pandas as pd
import pytest

from kdbench import leaderboard, plot, stats, store
from kdbench.errors import ConfigError
from kdbench.results import Results


def record(method, seed, score, experiment="exp", labels=None, metric="top1", direction="max", student="mlp", teacher=True):
    metrics = {f"{metric}_best": score, f"{metric}_last": score - 1}
    if metric == "top1":
        metrics |= {"top5_best": 99.0, "top5_last": 98.0}
    return {
        "status": "ok", "experiment": experiment, "cell_id": f"{method}-{labels}", "method": method, "seed": seed,
        "labels": {"method": method} | (labels or {}), "config": {"student": {"model": student}},
        "selection": {"metric": metric, "direction": direction, "best_epoch": 3},
        "metrics": metrics, "student": {"model": student, "params": 1000},
        "teacher": {"hash": "abc123", "model": "big", "params": 4000, "metrics": {metric: 90.0}} if teacher else None,
        "param_ratio": 0.25, "speed": {"throughput": 100.0 + seed, "device_name": "cpu", "throughput_batch": 256, "dtype": "float32"},
        "train_time_s": 10.0,
    }


def test_means_stds_gain_and_teacher_row():
    records = [record("scratch", 0, 80.0), record("scratch", 1, 82.0), record("kd", 0, 84.0, labels={"T": "4"}),
               record("kd", 1, 86.0, labels={"T": "4"}), {"status": "failed", "experiment": "exp"}]
    table = Results(records).sorted()
    assert list(table["method"]) == ["teacher", "kd", "scratch", "?"]  # the failed record last, as a row
    kd = table[table["method"] == "kd"].iloc[0]
    assert kd["seeds"] == 2 and kd["top1_best_mean"] == 85.0 and math.isclose(kd["top1_best_std"], math.sqrt(2))
    assert kd["gain_mean"] == 4.0 and kd["gain_n"] == 2 and kd["setting"] == "T=4" and kd["throughput_mean"] == 100.5
    assert math.isclose(kd["top1_best_ci95"], stats.t_quantile(2) * math.sqrt(2) / math.sqrt(2))
    teacher = table[table["method"] == "teacher"].iloc[0]
    assert teacher["top1_best_mean"] == 90.0 and teacher["params"] == 4000
    text = leaderboard.render(records, "md")
    assert "85.00 ± 12.71" in text and "top1 best ↑" in text  # ± is the 95% half-width: t(0.975, 1) * std / sqrt(2)
    assert "| +4.00 " in text and "gain vs scratch (best)" in text  # 2 seed pairs: the mean, no verdict
    csv = pd.read_csv(io.StringIO(leaderboard.render(records, "csv")))
    assert set(csv["method"]) >= {"teacher", "kd", "scratch"} and {"top1_best_std", "top1_best_ci95", "gain_mean"} <= set(csv)


def test_generator_rows_use_their_metric_lower_is_better():
    records = [record("adv-only", s, fd, experiment="gan", metric="fd", direction="min") for s, fd in ((0, 110.0), (1, 100.0))]
    records += [record("gan-kd", s, fd, experiment="gan", metric="fd", direction="min") for s, fd in ((0, 90.0), (1, 86.0))]
    for r in records:
        r |= {"baseline": "adv-only", "directions": {"fd": "min", "mse_teacher": "min"}}
        r["metrics"] |= {"mse_teacher_best": 0.5, "mse_teacher_last": 0.5}
    table = Results(records).sorted()
    assert list(table["method"]) == ["teacher", "gan-kd", "adv-only"]  # ascending: lower FD first
    assert table[table["method"] == "gan-kd"]["gain_mean"].iloc[0] == 17.0  # 105 -> 88: positive is better
    text = leaderboard.render(records, "md")
    assert "fd best ↓" in text and "mse teacher best ↓" in text and "gain vs adv-only" in text and "top1" not in text


def test_records_round_trip_through_the_store(tmp_path):
    rows = [record("scratch", 0, 80.0), record("kd", 0, 84.0)]
    for i, row in enumerate(rows):
        store.write_json(tmp_path / "exp" / f"cell{i}" / "seed0" / store.RECORD, row)
    (tmp_path / "exp" / "cell9" / "seed0").mkdir(parents=True)
    (tmp_path / "exp" / "cell9" / "seed0" / store.RECORD).write_text("{ truncated")
    loaded = list(store.iter_records([tmp_path]))
    assert len(loaded) == 2 and {r["method"] for r in loaded} == {"scratch", "kd"}
    assert store.is_finished(tmp_path / "exp" / "cell0" / "seed0") and not store.is_finished(tmp_path / "exp" / "cell9" / "seed0")
    assert not list(tmp_path.rglob("*.tmp"))


def three_seed_records():
    """scratch and kd (T=4) over seeds 0-2 with a clear gain, kd (T=8) with none, kd (T=16) on
    2 seeds only."""
    records = [record("scratch", s, v) for s, v in enumerate((80.0, 82.0, 81.0))]
    records += [record("kd", s, v, labels={"T": "4"}) for s, v in enumerate((84.0, 86.0, 85.5))]  # +4, +4, +4.5
    records += [record("kd", s, v, labels={"T": "8"}) for s, v in enumerate((79.0, 83.0, 81.5))]  # -1, +1, +0.5
    records += [record("kd", s, v, labels={"T": "16"}) for s, v in enumerate((81.0, 83.0))]  # +1, +1
    return records


def test_gain_is_paired_by_seed_with_interval_and_verdict():
    records = three_seed_records()
    table = Results(records).table.set_index("setting")
    t4, t8, t16 = table.loc["T=4"], table.loc["T=8"], table.loc["T=16"]
    expected = stats.paired_gain({0: 84.0, 1: 86.0, 2: 85.5}, {0: 80.0, 1: 82.0, 2: 81.0})
    assert (t4["gain_mean"], t4["gain_ci_low"], t4["gain_ci_high"], t4["gain_n"]) == (expected.mean, expected.low, expected.high, 3)
    assert t4["gain_significant"] is True and t8["gain_significant"] is False
    assert t16["gain_n"] == 2 and t16["gain_significant"] is None
    text = leaderboard.render(records, "md")
    assert f"+4.17 [{expected.low:+.2f}, {expected.high:+.2f}] *" in text
    assert "+0.17 [" in text and "] n.s." in text
    row16 = next(line for line in text.splitlines() if "T=16" in line)
    assert "| +1.00 " in row16 and "[" not in row16  # fewer than 3 pairs: the mean, no verdict
    assert "95% Student-t interval" in text  # the footnote says what the marks mean


def test_a_missing_seed_drops_only_its_pair():
    records = three_seed_records()
    records = [r for r in records if not (r["method"] == "scratch" and r["seed"] == 1)]
    t4 = Results(records).table.set_index("setting").loc["T=4"]
    assert t4["seeds"] == 3 and t4["gain_n"] == 2 and t4["gain_mean"] == 4.25  # seeds 0 and 2: +4, +4.5


def test_gain_pairs_the_baseline_with_the_same_training_settings():
    records = []
    for lr, shift in (("0.1", 0.0), ("0.01", 10.0)):
        for s in range(3):
            for method, value in (("scratch", 70.0 + s), ("kd", 72.0 + s)):
                r = record(method, s, value + shift, labels={"train.lr": lr})
                r["config"]["train"] = {"lr": float(lr)}
                records.append(r)
    table = Results(records).table
    kd = table[table["method"] == "kd"]
    assert list(kd["gain_mean"]) == [2.0, 2.0]  # not 2 - 10 against the other learning rate's scratch


def test_failed_runs_are_rows_with_status_and_error():
    records = three_seed_records()[:6]
    records.append({"status": "failed", "experiment": "exp", "cell_id": "kd-x", "method": "kd", "seed": 2,
                    "labels": {"method": "kd", "T": "4"}, "config": {"student": {"model": "mlp"}},
                    "error": "NonFiniteLoss: loss became nan at step 3 | epoch 1\nsecond line"})
    records.append({"status": "ok", "experiment": "exp", "cell_id": "kd-y", "method": "kd", "seed": 0, "labels": {}})
    text = leaderboard.render(records, "md")
    failed = next(line for line in text.splitlines() if "failed" in line)
    assert "failed (seed 2)" in failed and "NonFiniteLoss: loss became nan at step 3 \\| epoch 1" in failed
    assert "second line" not in text
    assert "malformed (seed 0)" in text and "record lacks metrics, selection, student" in text
    assert "| ok " in text  # the finished rows say so when others failed
    html_text = leaderboard.render(records, "html")
    assert "failed (seed 2)" in html_text and "NonFiniteLoss" in html_text
    table = pd.read_csv(io.StringIO(leaderboard.render(records, "csv")))
    row = table[table["status"] == "failed"].iloc[0]
    assert row["seed"] == 2 and row["setting"] == "T=4" and row["error"].startswith("NonFiniteLoss")


def test_csv_is_valid_with_only_failed_runs_or_none():
    only_failed = [{"status": "failed", "experiment": "exp", "cell_id": "c", "method": "kd", "seed": s,
                    "labels": {"method": "kd"}, "error": f'ValueError: bad, "quoted" value {s}'} for s in (0, 1)]
    text = leaderboard.render(only_failed, "csv")
    rows = list(csv.DictReader(io.StringIO(text)))
    assert [r["status"] for r in rows] == ["failed", "failed"] and rows[1]["error"] == 'ValueError: bad, "quoted" value 1'
    assert "failed (seed 0)" in leaderboard.render(only_failed, "md")
    empty = pd.read_csv(io.StringIO(leaderboard.render([], "csv")))
    assert empty.empty and {"experiment", "method", "status", "error", "gain_mean"} <= set(empty.columns)


def test_stale_records_are_marked_with_a_footnote():
    records = three_seed_records()
    for r in records:
        if r["method"] == "kd" and r["labels"]["T"] == "4":
            r["stale"] = "plugin code changed"
    text = leaderboard.render(records, "md")
    row = next(line for line in text.splitlines() if "T=4" in line)
    assert "| kd † " in row and "† stale record (kept on request): plugin code changed" in text
    assert "kd †" not in next(line for line in text.splitlines() if "T=8" in line)
    assert pd.read_csv(io.StringIO(leaderboard.render(records, "csv"))).set_index("setting").loc["T=4", "stale"] == "plugin code changed"


def test_html_is_a_utf8_document_with_sortable_columns_and_the_markdown_intervals():
    records = three_seed_records()
    page = leaderboard.render(records, "html")
    assert page.startswith("<!DOCTYPE html>") and '<meta charset="utf-8">' in page
    assert "<th" in page and 'addEventListener("click"' in page  # headers sort on click
    md = leaderboard.render(records, "md")
    for cell in ("85.17 ± ", "+4.17 [", "] *", "] n.s.", "gain vs scratch (best)"):
        assert cell in md and cell in page


def crowded_records():
    """Nine cells of one student size within a point of each other, a teacher, a smaller scratch."""
    records = [record("scratch", s, 82.0 + 0.2 * s) for s in range(3)]
    for t in range(1, 10):
        for s in range(3):
            r = record("kd", s, 83.0 + 0.05 * t + 0.2 * s, labels={"temperature": str(t)})
            r["student"]["params"], r["speed"]["throughput"] = 5000, 80.0 + t
            records.append(r)
    records[0]["teacher"]["speed"] = {"throughput": 40.0, "device_name": "cpu", "throughput_batch": 256, "dtype": "float32"}
    return records


def test_plot_labels_do_not_overlap_and_the_front_is_marked(tmp_path):
    from matplotlib.text import Text

    fig = plot.figure(crowded_records())
    renderer = fig.canvas.get_renderer()
    assert len(fig.axes) == 2  # against parameters and against throughput
    for ax in fig.axes:
        labels = [t for t in ax.texts]
        assert len(labels) == 11  # teacher, scratch, 9 kd cells
        for label in labels:
            label.update_positions(renderer)
        boxes = [Text.get_window_extent(t, renderer) for t in labels]
        frame = ax.get_window_extent(renderer)
        assert not [(a, b) for i, a in enumerate(boxes) for b in boxes[i + 1:] if a.overlaps(b)]
        assert all(frame.x0 <= b.x0 and b.x1 <= frame.x1 and frame.y0 <= b.y0 and b.y1 <= frame.y1 for b in boxes)
        assert ax.get_legend().get_texts()[0].get_text() == "Pareto front"
        assert any(len(c.get_segments()) for c in ax.collections if c.get_segments)  # error bars
    import matplotlib.pyplot as plt

    plt.close(fig)
    plot.plot(crowded_records(), tmp_path / "board.png")
    assert (tmp_path / "board.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ConfigError, match="no finished runs to plot"):
        plot.plot([{"status": "failed", "experiment": "exp", "error": "boom"}], tmp_path / "none.png")


def test_pareto_front_is_direction_aware():
    xs, ys = [1, 2, 3, 4], [50, 70, 60, 80]
    assert plot.pareto_front(xs, ys, "min", "max") == [0, 1, 3]  # fewer parameters, higher accuracy
    assert plot.pareto_front(xs, ys, "max", "max") == [3]  # more throughput, higher accuracy
    assert plot.pareto_front(xs, ys, "min", "min") == [0]  # lower FD is better


def test_saved_leaderboard_covers_every_record_of_the_experiment(plugin_dir, cli, tmp_path):
    args = ["--grid", "method=scratch", "--set", "train.epochs=1", "--grid", "size=small,big"]
    assert cli("run", str(plugin_dir), *args, "--seeds", "0")[0] == 0
    code, out, _ = cli("run", str(plugin_dir), *args, "--seeds", "1")  # another command: only seed 1
    assert code == 0 and "all 4 record(s)" in out, out
    saved = (tmp_path / "runs" / "softkd" / "leaderboard.md").read_text()
    assert "size=small" in saved and "size=big" in saved
    table = pd.read_csv(tmp_path / "runs" / "softkd" / "leaderboard.csv").set_index("setting")
    assert table.loc["size=small", "seeds"] == 2 and table.loc["size=big", "seeds"] == 2


def test_gains_follow_the_baseline_the_experiment_names_now(plugin_dir, cli, tmp_path):
    args = ["--seeds", "0", "--set", "train.epochs=1", "--set", "teacher.train.epochs=1"]
    code, out, _ = cli("run", str(plugin_dir), *args)
    assert code == 0 and "gain vs scratch (best)" in out
    toml = plugin_dir / "kdbench.toml"
    toml.write_text(toml.read_text().replace('profile = "quick"', 'profile = "quick"\nbaseline = "soft-kd"'))
    code, out, _ = cli("run", str(plugin_dir), *args)  # nothing reruns: the baseline is no part of a run
    assert code == 0 and "2 finished run(s) reused" in out and "gain vs soft-kd (best)" in out and "gain vs scratch" not in out
    assert "gain vs soft-kd (best)" in (tmp_path / "runs" / "softkd" / "leaderboard.md").read_text()
    table = Results(three_seed_records(), baseline="kd").table
    assert table[table["method"] == "scratch"]["gain_mean"].iloc[0] < 0  # against kd T=4, the first kd cell
    assert (table[table["method"] == "kd"]["gain_n"] == 0).all()


def test_a_record_found_twice_counts_once():
    records = three_seed_records()
    twice = records + [dict(records[0])]  # the same (cell, seed) in two folders
    one, two = (Results(r).table.set_index("method").loc["scratch"] for r in (records, twice))
    assert two["top1_best_std"] == one["top1_best_std"] and two["seeds"] == 3


def with_identity(records, code, method=None, seeds=None):
    """``records`` with an identity whose kdbench fingerprint is ``code`` (for ``method``'s records
    and ``seeds`` only, when given)."""
    for r in records:
        if (method is None or r["method"] == method) and (seeds is None or r["seed"] in seeds):
            r["identity"] = {"config": "c", "seed": r["seed"], "teacher": None, "plugins": {"kdbench.builtin": code, "p": "p1"},
                             "device": "cpu", "threads": 1}
    return records


def test_runs_of_different_code_are_never_paired_or_averaged_unmarked():
    from kdbench import report

    records = with_identity(three_seed_records(), "k1")
    assert "‡" not in leaderboard.render(records, "md")  # one code version: nothing to say
    with_identity(records, "k2", method="scratch")  # scratch rerun on new code, kd left as it was
    with_identity(records, "k2", method="kd", seeds={2})  # and one seed of each kd cell
    text = leaderboard.render(records, "md")
    row = next(line for line in text.splitlines() if "T=4" in line and "| kd" in line)
    assert "| kd ‡ " in row and "+4.17 [" in row  # the gain is still shown, marked
    assert ("‡ kd T=4 (exp): its seeds ran with different kdbench code; its gain pairs runs of different kdbench code with "
            "scratch's, not a paired gain; rerun its arms") in text
    assert "| scratch " in text and "‡ scratch" not in text  # its own seeds are one code version
    table = pd.read_csv(io.StringIO(leaderboard.render(records, "csv"))).set_index("setting")
    assert "not a paired gain" in table.loc["T=4", "mixed"]
    block = report.render_table(Results(records))
    assert "| kd T=4 ‡ |" in block and "| scratch |" in block
    with_identity(records, "k2", method="kd")  # every run on the new code: unmarked again
    assert "‡" not in leaderboard.render(records, "md")


def test_method_params_column():
    """A method's own parameters (record["method_params"]: regressors, heads, memory banks) are a
    column beside the student's; a table whose methods have none shows no such column."""
    records = [record("scratch", s, 80.0) | {"method_params": {}} for s in (0, 1)]
    assert "method params" not in leaderboard.render(records, "md")
    records += [record("fitnet", s, 84.0) | {"method_params": {"regressor": 117_000, "head": 2_345}} for s in (0, 1)]
    table = Results(records).sorted()
    assert table.set_index("method")["method_params"].to_dict() | {"teacher": 0} == {"teacher": 0, "fitnet": 119_345, "scratch": 0}
    text = leaderboard.render(records, "md")
    header = [c.strip() for c in text.splitlines()[0].split("|")]
    fitnet = [c.strip() for c in next(line for line in text.splitlines() if "| fitnet" in line).split("|")]
    assert fitnet[header.index("method params")] == "119,345" and fitnet[header.index("params")] == "1,000"
    assert pd.read_csv(io.StringIO(leaderboard.render(records, "csv"))).set_index("method")["method_params"]["fitnet"] == 119_345
