"""The results layer: what a set of run records says, computed once, for every renderer.

``Results(records)`` holds

- ``runs``: one row per (experiment, cell, seed) of the finished records (a (cell, seed) found
  twice counts once), each with ``base``, the cell of the experiment's baseline arm it pairs with:
  the same student, data and training settings (``pairing_key``), the same primary metric;
- ``teachers``: one row per distinct teacher, with its measured test metrics;
- ``failed``: one row per failed (or malformed) record;
- ``table``: the leaderboard's numbers (seed means, stds, 95% intervals, the paired gain over the
  baseline, teacher and failed rows), and ``gain(cell, column, direction)`` for any metric;
- ``costs(reference)``: what each arm pays beyond the student: the method's own parameters and
  its train time per step against a reference arm's (``kd`` where it runs).

The leaderboard (markdown, CSV, HTML), the plot and ``report``'s README blocks are renderers of
it; none derives a pairing or an interval of its own. No torch here.
"""
import copy
import functools
import json
import math

import pandas as pd

from kdbench import stats
from kdbench.errors import ConfigError

# the columns a CSV always has, so that even a board without one finished run parses
BASE_COLUMNS = ["experiment", "cell_id", "method", "baseline", "setting", "student", "status", "seeds", "seed", "metric", "direction"]
GAIN_COLUMNS = ["gain_mean", "gain_ci_low", "gain_ci_high", "gain_n", "gain_significant"]
KEYS = ["experiment", "cell_id"]
BUILTIN = "kdbench.builtin"  # kdbench.plugins.BUILTIN: the engine's fingerprint in a record's identity


def is_usable(record):
    """A finished record with what a leaderboard row needs."""
    return record.get("status") == "ok" and all(isinstance(record.get(k), dict) for k in ("metrics", "selection", "student"))


def pairing_key(config):
    """What a gain's two arms must share besides the seed: the student, the data and the training
    settings. The method section differs by definition and the teacher may (scratch has none)."""
    return json.dumps({k: (config or {}).get(k) for k in ("student", "data", "train")}, sort_keys=True, default=str)


def setting(record):
    return " ".join(f"{k}={v}" for k, v in (record.get("labels") or {}).items() if k != "method")


def one_line(text, limit=200):
    line = (str(text).strip().splitlines() or [""])[0] if text else ""
    line = line or "(no error recorded)"
    return line if len(line) <= limit else line[: limit - 1] + "…"


def speed_at(speed):
    return f"{speed.get('device_name')} b{speed.get('throughput_batch')} {speed.get('dtype')}" if speed else None


def step_time_s(record):
    """Train seconds per step: ``train_time_s / (epochs * steps_per_epoch)`` (the training loop's
    wall time, the per-epoch validation passes included); None when the record lacks one."""
    steps = (record.get("epochs") or 0) * (record.get("steps_per_epoch") or 0)
    return record["train_time_s"] / steps if steps and record.get("train_time_s") is not None else None


def flatten(record):
    """One flat row per finished record."""
    speed = record.get("speed") or {}
    teacher = record.get("teacher") or {}
    row = {
        "experiment": record["experiment"],
        "cell_id": record["cell_id"],
        "method": record["method"],
        "baseline": record.get("baseline", "scratch"),
        "setting": setting(record),
        "student": record["student"]["model"],
        "student_config": repr(sorted(((record.get("config") or {}).get("student") or {}).items())),
        "pair_key": pairing_key(record.get("config")),
        "seed": record["seed"],
        "metric": record["selection"]["metric"],
        "direction": record["selection"]["direction"],
        "best_epoch": record["selection"]["best_epoch"],
        "teacher_top1": (teacher.get("metrics") or {}).get("top1"),
        "teacher_hash": teacher.get("hash"),
        "params": record["student"]["params"],
        "param_ratio": record.get("param_ratio"),
        # the method's own modules (regressors, heads, memory banks), trained or kept beside the student
        "method_params": sum(record["method_params"].values()) if isinstance(record.get("method_params"), dict) else None,
        "throughput": speed.get("throughput"),
        "latency_ms": speed.get("latency_ms"),
        "speed_at": speed_at(speed),
        "train_time_s": record.get("train_time_s"),
        "step_time_s": step_time_s(record),
        "stale": record.get("stale") or "",
        "identity": record.get("identity"),
    }
    row |= {k: v for k, v in record["metrics"].items()}
    return row


def failed_row(record):
    """One row per failed (or malformed) record: where it belongs, its status and its error."""
    labels = record.get("labels") or {}
    status = record.get("status") or "unknown"
    error = record.get("error")
    if status == "ok":  # claims to be finished but lacks what a row needs
        status = "malformed"
        error = "record lacks " + ", ".join(k for k in ("metrics", "selection", "student") if not isinstance(record.get(k), dict))
    student = ((record.get("config") or {}).get("student") or {}).get("model", "")
    return {
        "experiment": record.get("experiment", "?"), "cell_id": record.get("cell_id", "?"),
        "method": record.get("method") or labels.get("method", "?"), "baseline": record.get("baseline", "scratch"),
        "setting": setting(record), "student": student, "status": status, "seed": record.get("seed"),
        "error": one_line(error), "stale": record.get("stale") or "",
    }


def teacher_rows(records):
    """One row per distinct teacher used in an experiment, with its measured test metrics."""
    rows, seen = [], set()
    for record in records:
        teacher = record.get("teacher") or {}
        if "hash" not in teacher or (record["experiment"], teacher["hash"]) in seen:
            continue
        seen.add((record["experiment"], teacher["hash"]))
        speed = teacher.get("speed") or {}
        metrics = teacher.get("metrics") or {}
        rows.append({
            "experiment": record["experiment"], "cell_id": f"teacher-{teacher['hash'][:8]}", "method": "teacher",
            "baseline": record.get("baseline", "scratch"), "status": "ok",
            "setting": "", "student": teacher["model"], "metric": record["selection"]["metric"],
            "direction": record["selection"]["direction"], "params": teacher["params"], "param_ratio": 1.0,
            "throughput": speed.get("throughput"), "latency_ms": speed.get("latency_ms"), "speed_at": speed_at(speed),
        } | {f"{k}_best": v for k, v in metrics.items()} | {f"{k}_last": v for k, v in metrics.items()})
    return rows


def metric_columns(runs):
    """The per-seed frame's metric columns (``top1_best``, ``fd_last``, ...)."""
    return [c for c in runs.columns if c.endswith(("_best", "_last")) and c != "best_epoch"]


def identity_differences(a, b, same_cell):
    """What differs between two runs' identities that a comparison of them must not hide: the code
    of the plugins both ran (kdbench's own included), the device and thread count, the number of
    DDP processes, and, between two seeds of one cell, the teacher (an arm and its baseline differ
    in config and teacher by definition). Nothing is known of a record without an identity."""
    if not a or not b:
        return []
    found = []
    if same_cell and a.get("teacher") != b.get("teacher"):
        found.append("teacher")
    if (a.get("device"), a.get("threads")) != (b.get("device"), b.get("threads")):
        found.append("device or thread count")
    if a.get("processes", 1) != b.get("processes", 1):
        found.append("number of DDP processes")
    ours, theirs = a.get("plugins") or {}, b.get("plugins") or {}
    for name in sorted(set(ours) & set(theirs)):
        if ours[name] != theirs[name]:
            found.append("kdbench code" if name == BUILTIN else f"plugin {name!r} code")
    return found


class Results:
    """The per-seed frame of ``records`` with its baseline pairing, and the summaries built from it
    (see the module's docstring)."""

    def __init__(self, records, baseline=None):
        """``baseline``: the baseline arm as the experiment file names it now, for every record
        (default: the one each record was made with)."""
        if baseline is not None:
            records = [r | {"baseline": baseline} for r in records]
        ok = [r for r in records if is_usable(r)]
        self.directions = {}  # metric -> "max" | "min", for the arrows
        for record in ok:
            self.directions |= record.get("directions", {})
        self.teachers = teacher_rows(ok)
        self.failed = [failed_row(r) for r in records if not is_usable(r)]
        self.runs = pd.DataFrame()
        if ok:
            # a (cell, seed) found twice (two run folders, or a folder renamed by its labels) counts once
            self.set_runs(pd.DataFrame([flatten(r) for r in ok]).drop_duplicates(["experiment", "cell_id", "seed"], keep="last"))

    def set_runs(self, runs):
        """Take ``runs`` as the per-seed frame, each row with its baseline cell (``base``)."""
        self.runs = runs.copy()
        if not runs.empty:
            base = self.pairing()
            self.runs["base"] = pd.Series([base[k] for k in zip(runs["experiment"], runs["cell_id"])], index=runs.index, dtype=object)

    def select(self, keys):
        """These results restricted to the runs ``keys`` (``(experiment, cell id, seed)`` each), the
        cells paired among themselves: the per-seed frame is filtered, nothing is read or
        flattened again (``run`` prints its own grid's leaderboard this way and saves the whole
        experiment's)."""
        keys = set(keys)
        part = copy.copy(self)
        part.__dict__.pop("table", None)  # computed again, for the part
        part.failed = [row for row in self.failed if (row["experiment"], row["cell_id"], row["seed"]) in keys]
        if not self.runs.empty:
            inside = [k in keys for k in zip(self.runs["experiment"], self.runs["cell_id"], self.runs["seed"])]
            runs = self.runs[inside].drop(columns="base")
            part.set_runs(runs.drop(columns=[c for c in metric_columns(runs) if runs[c].isna().all()]))  # metrics of the other runs
            used = {(e, f"teacher-{h[:8]}") for e, h in zip(part.runs["experiment"], part.runs["teacher_hash"]) if isinstance(h, str)}
            part.teachers = [row for row in self.teachers if (row["experiment"], row["cell_id"]) in used]
        return part

    def pairing(self):
        """``{(experiment, cell id): cell id of its baseline}`` (None for the baseline itself and
        for a cell without one): the first cell of the experiment's baseline arm with the same
        student, data and training settings and the same primary metric."""
        cells = self.runs.groupby(KEYS, sort=False).first().reset_index()
        base = {}
        for _, row in cells.iterrows():
            match = cells[(cells["experiment"] == row["experiment"]) & (cells["method"] == row["baseline"])
                          & (cells["pair_key"] == row["pair_key"]) & (cells["metric"] == row["metric"])]
            base[row["experiment"], row["cell_id"]] = None if match.empty or row["method"] == row["baseline"] else match["cell_id"].iloc[0]
        return base

    def mixed(self, experiment, cell_id):
        """Why a cell's numbers compare or average runs of different identities ("" when they do
        not): its seeds against each other, and each seed against its baseline's seed. Such a gain
        is not a paired gain; the leaderboard marks it as it marks records kept stale."""
        by_seed = self.seeds(experiment, cell_id)
        identities = [r["identity"] for r in by_seed.values()]
        own = sorted({d for other in identities[1:] for d in identity_differences(identities[0], other, True)})
        reasons = [f"its seeds ran with different {', '.join(own)}"] if own else []
        base = self.base_of(experiment, cell_id)
        if base is not None:
            baseline = self.seeds(experiment, base)
            paired = sorted({d for s, r in by_seed.items() if s in baseline
                             for d in identity_differences(r["identity"], baseline[s]["identity"], False)})
            if paired:
                reasons.append(f"its gain pairs runs of different {', '.join(paired)} with {baseline[next(iter(baseline))]['method']}'s, "
                               "not a paired gain")
        return "; ".join(reasons)

    def base_of(self, experiment, cell_id):
        return self.runs.loc[(self.runs["experiment"] == experiment) & (self.runs["cell_id"] == cell_id), "base"].iloc[0]

    def seeds(self, experiment, cell_id):
        """The cell's per-seed rows (plain dicts, by seed)."""
        part = self.runs[(self.runs["experiment"] == experiment) & (self.runs["cell_id"] == cell_id)]
        return {row["seed"]: row for row in part.to_dict("records")}

    def gain(self, experiment, cell_id, column, direction):
        """The paired gain (kdbench.stats.paired_gain) of a cell's ``column`` over its baseline
        cell's, seed by seed; None for a cell without a baseline."""
        base = self.base_of(experiment, cell_id)
        if base is None:
            return None
        arm, baseline = self.seeds(experiment, cell_id), self.seeds(experiment, base)
        return stats.paired_gain({s: r.get(column, math.nan) for s, r in arm.items()},
                                 {s: r.get(column, math.nan) for s, r in baseline.items()}, direction)

    def differences(self, experiment, cell_id, column, direction):
        """``{seed: difference}`` of a cell's ``column`` from its baseline cell's, for the seeds
        both have, signed so that positive is better; None for a cell without a baseline."""
        base = self.base_of(experiment, cell_id)
        if base is None:
            return None
        sign = 1.0 if direction == "max" else -1.0
        arm, baseline = self.seeds(experiment, cell_id), self.seeds(experiment, base)
        return {s: sign * (r.get(column, math.nan) - baseline[s].get(column, math.nan)) for s, r in arm.items() if s in baseline}

    def costs(self, reference="kd"):
        """What each finished cell pays, in the leaderboard's order: one dict per cell with
        ``experiment``, ``cell_id``, ``method``, ``method_params`` (its own modules' parameters,
        None when its records do not say), ``step_ms`` (mean train milliseconds per step over its
        seeds) and ``step_ratio``: ``step_ms`` over that of the cell of arm ``reference`` with the
        same student, data and training settings in the same experiment (these records: the same
        run, so the same machine and load), or of the baseline's when no such cell ran; None
        without either. ``reference_method`` names which."""
        if self.runs.empty:
            return []
        cells = self.runs.groupby(KEYS, sort=False).agg(
            method=("method", "first"), baseline=("baseline", "first"), pair_key=("pair_key", "first"),
            method_params=("method_params", "first"), step_s=("step_time_s", "mean"))
        rows = []
        for experiment, cell_id in self.cells():
            cell = cells.loc[(experiment, cell_id)]
            peers = cells.loc[experiment]
            peers = peers[peers["pair_key"] == cell["pair_key"]]
            ref = next((m for m in (reference, cell["baseline"]) if (peers["method"] == m).any()), None)
            ref_s = peers.loc[peers["method"] == ref, "step_s"].iloc[0] if ref else math.nan
            known = lambda v: v is not None and v == v  # noqa: E731 (not None, not NaN)
            rows.append({"experiment": experiment, "cell_id": cell_id, "method": cell["method"],
                         "method_params": int(cell["method_params"]) if known(cell["method_params"]) else None,
                         "step_ms": 1000 * cell["step_s"] if known(cell["step_s"]) else None,
                         "step_ratio": cell["step_s"] / ref_s if known(cell["step_s"]) and known(ref_s) and ref_s > 0 else None,
                         "reference_method": ref})
        return rows

    @functools.cached_property
    def table(self):
        """The leaderboard as a numeric DataFrame: ``<col>_mean``, ``_std`` (ddof=1) and ``_ci95``
        (the half-width of the 95% Student-t interval) per metric, the paired gain at the best epoch
        (``gain_*``), one row per teacher, and one row per failed record (``status`` and ``error``)."""
        parts = []
        if not self.runs.empty:
            runs = self.runs
            metric_cols = metric_columns(runs)
            grouped = runs.groupby(KEYS, sort=False)
            table = grouped.first()[["method", "baseline", "setting", "student", "pair_key", "metric", "direction", "params", "param_ratio", "method_params", "speed_at"]].copy()
            table["status"] = "ok"
            table["seeds"] = grouped["seed"].nunique()
            table["teacher_top1"] = grouped["teacher_top1"].first()
            for col in metric_cols + ["throughput", "latency_ms", "train_time_s"]:
                table[f"{col}_mean"] = grouped[col].mean()
                table[f"{col}_std"] = grouped[col].std(ddof=1)
                if col in metric_cols:
                    table[f"{col}_ci95"] = grouped[col].agg(lambda s: stats.mean_ci(s)[1])
            table["stale"] = grouped["stale"].agg(lambda s: "; ".join(sorted({x for x in s if x})))
            table = table.reset_index()
            table["mixed"] = [self.mixed(e, c) for e, c in zip(table["experiment"], table["cell_id"])]
            table = pd.concat([table, self.gain_columns(table)], axis=1)
            teachers = pd.DataFrame(self.teachers)
            if not teachers.empty:
                teachers["seeds"] = 1
                for col in [c for c in teachers.columns if c.endswith(("_best", "_last"))] + ["throughput", "latency_ms"]:
                    teachers[f"{col}_mean"] = teachers.pop(col)
                parts.append(teachers)
            parts.append(table)
        if self.failed:
            parts.append(pd.DataFrame(self.failed))
        if not parts:
            return pd.DataFrame(columns=BASE_COLUMNS)
        table = pd.concat(parts, ignore_index=True)
        table.attrs["directions"] = self.directions
        return table

    def gain_columns(self, table):
        """The ``gain_*`` columns of the cells of ``table``: the primary metric at the best epoch."""
        rows = []
        for _, row in table.iterrows():
            gain = self.gain(row["experiment"], row["cell_id"], f"{row['metric']}_best", row["direction"])
            rows.append(dict.fromkeys(GAIN_COLUMNS, math.nan) | {"gain_n": 0, "gain_significant": None} if gain is None else
                        {"gain_mean": gain.mean, "gain_ci_low": gain.low, "gain_ci_high": gain.high, "gain_n": gain.n,
                         "gain_significant": gain.significant})
        return pd.DataFrame(rows, index=table.index, columns=GAIN_COLUMNS)

    def sorted(self, sort=None):
        """``table`` per experiment: teachers first, then cells best first by the primary metric at
        the best epoch, failed runs last; or everything by ``sort`` (a column, descending)."""
        table = self.table
        if table.empty:
            return table
        if sort:
            col = sort if sort in table else f"{sort}_mean"
            if col not in table:
                raise ConfigError(f"cannot sort by {sort!r}; columns: {', '.join(c.removesuffix('_mean') for c in table.columns if not c.endswith(('_std', '_ci95')))}")
            return table.sort_values(col, ascending=False, kind="stable", na_position="last")
        parts = []
        for _, part in table.groupby("experiment", sort=True):
            finished = part[part["status"] == "ok"]
            rank = (part["status"] != "ok") * 2 + ((part["status"] == "ok") & (part["method"] != "teacher"))
            key = pd.Series(0.0, index=part.index)
            if not finished.empty and f"{finished['metric'].iloc[0]}_best_mean" in part:
                metric, direction = finished["metric"].iloc[0], finished["direction"].iloc[0]
                key = part[f"{metric}_best_mean"] * (1 if direction == "min" else -1)
            part = part.assign(_rank=rank, _key=key).sort_values(["_rank", "_key"], kind="stable", na_position="last")
            parts.append(part.drop(columns=["_rank", "_key"]))
        return pd.concat(parts, ignore_index=True)

    def cells(self):
        """The finished cells as ``(experiment, cell id)``, in the leaderboard's order."""
        if self.runs.empty:
            return []
        found = set(zip(self.runs["experiment"], self.runs["cell_id"]))
        ordered = self.sorted()
        return list(dict.fromkeys(k for k in zip(ordered["experiment"], ordered["cell_id"]) if k in found))
