"""The results layer renders the same bytes for the same records: the leaderboard (markdown, CSV,
HTML, sorted) and the README blocks of ``report`` from a fixed set of records (the records of a
tiny real run of the third-party plugin, plus crafted ones: failed, malformed, stale, a missing
seed pair, two seeds, another student, a generator experiment whose metric is lower-is-better).
The expected files were rendered by the code before the results layer was rebuilt; to render
them again after a deliberate change of format: ``python tests/test_results.py``."""
import copy
import json
from pathlib import Path

import pytest

from kdbench import leaderboard, report
from kdbench.results import Results

DATA = Path(__file__).parent / "data" / "results"
MACHINES = {name: {"cpu": "AMD EPYC", "cores": 2, "torch": "2.14.1", "capability": cap, "onednn": "unset"}
            for name, cap in (("native", "AVX2"), ("default", "DEFAULT"))}


def shifted(records, by):
    """The same records as if run under another CPU setting: every metric moved by a per-seed amount."""
    out = copy.deepcopy(records)
    for r in out:
        if r.get("status") == "ok" and isinstance(r.get("metrics"), dict):
            r["metrics"] = {k: v + by * (1 + r["seed"]) * (1 if r["method"] != "scratch" else 0.5) for k, v in r["metrics"].items()}
    return out


def renders():
    """{file name: text} of every rendering checked."""
    sets = json.loads((DATA / "records.json").read_text())
    real, crafted, gan = sets["real"], sets["crafted"], sets["gan"]
    everything = real + crafted + gan
    out = {}
    for fmt in ("md", "csv", "html"):
        out[f"leaderboard.{fmt}"] = leaderboard.render(copy.deepcopy(everything), fmt)
    out["leaderboard-sorted.md"] = leaderboard.render(copy.deepcopy(everything), "md", sort="throughput")
    out["leaderboard-real.md"] = leaderboard.render(copy.deepcopy(real), "md")
    ok = [r for r in crafted if r.get("status") == "ok" and "metrics" in r]
    out["block-real.md"] = report.render_block("plugins/softkd --grid size=small,big", {"native": copy.deepcopy(real), "default": shifted(real, 0.5)},
                                               MACHINES, {"native": 12.0, "default": 30.0})
    out["block-crafted.md"] = report.render_block("plugins/x --grid T=4,8,16", {"native": copy.deepcopy(ok), "default": shifted(ok, -0.25)},
                                                  MACHINES, {"native": None, "default": None})
    out["block-gan.md"] = report.render_block("plugins/gan", {"native": copy.deepcopy(gan)}, MACHINES, {"native": 3.0})
    return out


NAMES = ["leaderboard.md", "leaderboard.csv", "leaderboard.html", "leaderboard-sorted.md", "leaderboard-real.md",
         "block-real.md", "block-crafted.md", "block-gan.md"]


def cost_records():
    """The real run's size=big cells as three arms with set step times: scratch 10 ms, kd 20 ms and
    a method with a 608-parameter regressor at 50 ms per step, and one record of before records
    reported method_params."""
    real = [r for r in json.loads((DATA / "records.json").read_text())["real"] if r["labels"]["size"] == "big"]
    out = []
    for r in real:
        for method, cell_id, ms, modules in (("scratch", "c-scratch", 10, {}), ("kd", "c-kd", 20, {}),
                                             ("fitnet", "c-fitnet", 50, {"regressor": 608})):
            if r["method"] == ("scratch" if method == "scratch" else "soft-kd"):
                out.append(copy.deepcopy(r) | {"method": method, "cell_id": cell_id, "labels": {"method": method},
                                               "method_params": modules, "epochs": 2, "steps_per_epoch": 25,
                                               "train_time_s": ms / 1000 * 2 * 25})
    return out


def test_costs_are_the_methods_params_and_step_time_against_kd():
    costs = {c["method"]: c for c in Results(cost_records()).costs()}
    assert {m: c["method_params"] for m, c in costs.items()} == {"scratch": 0, "kd": 0, "fitnet": 608}
    assert costs["fitnet"]["step_ms"] == pytest.approx(50) and costs["scratch"]["step_ms"] == pytest.approx(10)
    assert {m: c["step_ratio"] for m, c in costs.items()} == pytest.approx({"scratch": 0.5, "kd": 1.0, "fitnet": 2.5})
    assert {c["reference_method"] for c in costs.values()} == {"kd"}
    block = report.render_block("plugins/x", {"native": cost_records()}, MACHINES, {"native": None})
    assert "| fitnet | 608 | 50.0 | 2.50 |" in block and "| kd | 0 | 20.0 | 1.00 |" in block


def test_costs_fall_back_to_the_baseline_and_say_what_records_do_not():
    records = [r for r in cost_records() if r["method"] != "kd"]
    for r in records:
        if r["method"] == "fitnet":
            del r["method_params"]  # a record made before records reported them
    costs = {c["method"]: c for c in Results(records).costs()}
    assert costs["fitnet"]["reference_method"] == "scratch" and costs["fitnet"]["step_ratio"] == pytest.approx(5.0)
    assert costs["fitnet"]["method_params"] is None and costs["scratch"]["method_params"] == 0
    assert "| fitnet |  | 50.0 | 5.00 |" in report.render_block("plugins/x", {"native": records}, MACHINES, {"native": None})


@pytest.fixture(scope="module")
def rendered():
    return renders()


@pytest.mark.parametrize("name", NAMES)
def test_rendered_results_are_byte_identical(rendered, name):
    assert rendered[name] == (DATA / name).read_text(encoding="utf-8")


if __name__ == "__main__":
    for name, text in renders().items():
        (DATA / name).write_text(text, encoding="utf-8")
        print(f"wrote {DATA / name}")


def test_a_selection_renders_as_the_results_of_its_records():
    """``run`` prints its own grid's leaderboard as a selection of the whole experiment's results:
    the same table as the results of those records alone, without reading or flattening again."""
    from kdbench.results import Results

    sets = json.loads((DATA / "records.json").read_text())
    everything = sets["crafted"] + sets["gan"]
    part = [r for r in everything if r.get("labels", {}).get("T") in (None, "4") and r.get("experiment") == "exp" and r.get("seed") != 3]
    keys = [(r["experiment"], r["cell_id"], r["seed"]) for r in part]
    for fmt in ("md", "csv"):
        assert leaderboard.render(Results(everything).select(keys), fmt) == leaderboard.render(Results(part), fmt)
    assert "gan-kd" not in leaderboard.render(Results(everything).select(keys))
    assert leaderboard.render(Results(everything).select([]), "md") == "(no runs)\n"
