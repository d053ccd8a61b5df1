"""Leaderboards from records: seed means and stds, gains over scratch, teacher rows, generator
rows ranked by their own metric (lower is better), exports."""
import io
import math

import pandas as pd

from kdbench import leaderboard, store


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
    table = leaderboard.sort_table(leaderboard.summarize(records))
    assert list(table["method"]) == ["teacher", "kd", "scratch"]
    kd = table[table["method"] == "kd"].iloc[0]
    assert kd["seeds"] == 2 and kd["top1_best_mean"] == 85.0 and math.isclose(kd["top1_best_std"], math.sqrt(2))
    assert kd["gain_vs_baseline"] == 4.0 and kd["setting"] == "T=4" and kd["throughput_mean"] == 100.5
    teacher = table[table["method"] == "teacher"].iloc[0]
    assert teacher["top1_best_mean"] == 90.0 and teacher["params"] == 4000
    text = leaderboard.render(records, "md")
    assert "85.00 ± 1.41" in text and "4.00" in text and "top1 best ↑" in text
    csv = pd.read_csv(io.StringIO(leaderboard.render(records, "csv")))
    assert set(csv["method"]) == {"teacher", "kd", "scratch"} and "top1_best_std" in csv


def test_generator_rows_use_their_metric_lower_is_better():
    records = [record("adv-only", s, fd, experiment="gan", metric="fd", direction="min") for s, fd in ((0, 110.0), (1, 100.0))]
    records += [record("gan-kd", s, fd, experiment="gan", metric="fd", direction="min") for s, fd in ((0, 90.0), (1, 86.0))]
    for r in records:
        r |= {"baseline": "adv-only", "directions": {"fd": "min", "mse_teacher": "min"}}
        r["metrics"] |= {"mse_teacher_best": 0.5, "mse_teacher_last": 0.5}
    table = leaderboard.sort_table(leaderboard.summarize(records))
    assert list(table["method"]) == ["teacher", "gan-kd", "adv-only"]  # ascending: lower FD first
    assert table[table["method"] == "gan-kd"]["gain_vs_baseline"].iloc[0] == 17.0  # 105 -> 88: positive is better
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
