"""Leaderboards: pandas over the run records, one row per cell with mean and std over seeds,
plus one row per teacher; exported as markdown (tabulate), CSV or HTML. No torch here."""
import math

import pandas as pd

ARROW = {"max": "↑", "min": "↓"}


def flatten(record):
    """One flat row per finished record."""
    speed = record.get("speed") or {}
    teacher = record.get("teacher") or {}
    row = {
        "experiment": record["experiment"],
        "cell_id": record["cell_id"],
        "method": record["method"],
        "baseline": record.get("baseline", "scratch"),
        "setting": " ".join(f"{k}={v}" for k, v in record["labels"].items() if k != "method"),
        "student": record["student"]["model"],
        "student_config": repr(sorted(record["config"]["student"].items())),
        "seed": record["seed"],
        "metric": record["selection"]["metric"],
        "direction": record["selection"]["direction"],
        "best_epoch": record["selection"]["best_epoch"],
        "teacher_top1": (teacher.get("metrics") or {}).get("top1"),
        "params": record["student"]["params"],
        "param_ratio": record.get("param_ratio"),
        "throughput": speed.get("throughput"),
        "latency_ms": speed.get("latency_ms"),
        "speed_at": f"{speed.get('device_name')} b{speed.get('throughput_batch')} {speed.get('dtype')}" if speed else None,
        "train_time_s": record.get("train_time_s"),
    }
    row |= {k: v for k, v in record["metrics"].items()}
    return row


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
            "baseline": record.get("baseline", "scratch"),
            "setting": "", "student": teacher["model"], "seed": 0, "metric": record["selection"]["metric"],
            "direction": record["selection"]["direction"], "params": teacher["params"], "param_ratio": 1.0,
            "throughput": speed.get("throughput"), "latency_ms": speed.get("latency_ms"),
            "speed_at": f"{speed.get('device_name')} b{speed.get('throughput_batch')} {speed.get('dtype')}" if speed else None,
        } | {f"{k}_best": v for k, v in metrics.items()} | {f"{k}_last": v for k, v in metrics.items()})
    return rows


def summarize(records):
    """The leaderboard as a numeric DataFrame: ``<metric>_mean``/``<metric>_std`` columns."""
    ok = [r for r in records if r.get("status") == "ok"]
    if not ok:
        return pd.DataFrame()
    runs = pd.DataFrame([flatten(r) for r in ok])
    metric_cols = [c for c in runs.columns if c.endswith(("_best", "_last")) and c != "best_epoch"]
    keys = ["experiment", "cell_id"]
    first = runs.groupby(keys, sort=False).first()
    grouped = runs.groupby(keys, sort=False)
    table = first[["method", "baseline", "setting", "student", "student_config", "metric", "direction", "params", "param_ratio", "speed_at"]].copy()
    directions = {}
    for record in ok:
        directions |= record.get("directions", {})
    table["seeds"] = grouped["seed"].nunique()
    table["teacher_top1"] = grouped["teacher_top1"].first()
    for col in metric_cols + ["throughput", "latency_ms", "train_time_s"]:
        table[f"{col}_mean"] = grouped[col].mean()
        table[f"{col}_std"] = grouped[col].std(ddof=1) if table["seeds"].max() > 1 else float("nan")
    table = table.reset_index()
    table["gain_vs_baseline"] = gains(table)
    teachers = pd.DataFrame(teacher_rows(ok))
    if not teachers.empty:
        teachers["seeds"] = 1
        for col in [c for c in teachers.columns if c.endswith(("_best", "_last"))] + ["throughput", "latency_ms"]:
            teachers[f"{col}_mean"] = teachers.pop(col)
        table = pd.concat([teachers, table], ignore_index=True)
    table.attrs["directions"] = directions  # metric -> "max" | "min", for the arrows
    return table


def gains(table):
    """How much better than the baseline arm (``scratch`` unless the experiment names another)
    with the same student the primary metric is at the best epoch; positive is better."""
    out = []
    for _, row in table.iterrows():
        col = f"{row['metric']}_best_mean"
        base = table[(table["experiment"] == row["experiment"]) & (table["method"] == row["baseline"])
                     & (table["student_config"] == row["student_config"])]
        if base.empty or row["method"] == row["baseline"] or col not in table:
            out.append(float("nan"))
        else:
            sign = 1 if row["direction"] == "max" else -1
            out.append(sign * (row[col] - base[col].iloc[0]))
    return out


def sort_table(table, sort=None):
    if table.empty:
        return table
    if sort:
        col = sort if sort in table else f"{sort}_mean"
        if col not in table:
            from kdbench.errors import ConfigError

            raise ConfigError(f"cannot sort by {sort!r}; columns: {', '.join(c.removesuffix('_mean') for c in table.columns if not c.endswith('_std'))}")
        return table.sort_values(col, ascending=False, kind="stable")
    parts = []
    for _, part in table.groupby("experiment", sort=True):
        metric, direction = part["metric"].iloc[0], part["direction"].iloc[0]
        key = part[f"{metric}_best_mean"] * (1 if direction == "min" else -1)
        part = part.assign(_teacher=part["method"] != "teacher", _key=key).sort_values(["_teacher", "_key"], kind="stable")
        parts.append(part.drop(columns=["_teacher", "_key"]))
    return pd.concat(parts, ignore_index=True)


def fmt(mean, std, digits=2):
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return ""
    if std is None or (isinstance(std, float) and math.isnan(std)):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def display_frame(table):
    """Human columns, per experiment: the primary metric (last and best) with its direction."""
    rows = []
    for _, r in table.iterrows():
        metric, arrow = r["metric"], ARROW[r["direction"]]
        row = {"experiment": r["experiment"], "method": r["method"], "setting": r["setting"], "model": r["student"], "seeds": int(r["seeds"])}
        row[f"{metric} best {arrow}"] = fmt(r.get(f"{metric}_best_mean"), r.get(f"{metric}_best_std"))
        row[f"{metric} last {arrow}"] = fmt(r.get(f"{metric}_last_mean"), r.get(f"{metric}_last_std"))
        for col in table.columns:  # the other metrics a method reports (top5, mse_teacher, ...)
            name = col.removesuffix("_best_mean")
            if col.endswith("_best_mean") and name != metric:
                header = f"{name.replace('_', ' ')} best {ARROW[table.attrs.get('directions', {}).get(name, 'max')]}"
                row[header] = fmt(r[col], r.get(f"{name}_best_std"))
        row["teacher top1"] = fmt(r.get("teacher_top1"), None)
        row[f"gain vs {r['baseline']}"] = fmt(r.get("gain_vs_baseline"), None)
        row["params"] = f"{int(r['params']):,}"
        row["ratio"] = fmt(r.get("param_ratio"), None, 3)
        row["throughput/s"] = fmt(r.get("throughput_mean"), None, 0)
        row["measured on"] = r.get("speed_at") or ""
        row["train s"] = fmt(r.get("train_time_s_mean"), None, 0)
        rows.append(row)
    frame = pd.DataFrame(rows).fillna("")
    return frame.loc[:, (frame != "").any(axis=0)]


def render(records, fmt_name="md", sort=None):
    """The leaderboard of ``records`` as text in ``fmt_name`` (md, csv or html)."""
    table = sort_table(summarize(records), sort)
    if table.empty:
        return "(no finished runs)\n"
    if fmt_name == "csv":
        return table.drop(columns=["student_config", "seed"], errors="ignore").to_csv(index=False)
    shown = display_frame(table)
    if fmt_name == "html":
        return shown.to_html(index=False)
    from tabulate import tabulate

    return tabulate(shown, headers="keys", tablefmt="github", showindex=False) + "\n"


def plot(records, path):
    """A PNG of the primary metric (best epoch, seed mean) against parameters, per experiment."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    table = summarize(records)
    if table.empty:
        from kdbench.errors import ConfigError

        raise ConfigError("no finished runs to plot")
    experiments = list(dict.fromkeys(table["experiment"]))
    fig, axes = plt.subplots(1, len(experiments), figsize=(5 * len(experiments), 4), squeeze=False)
    for ax, name in zip(axes[0], experiments):
        part = table[table["experiment"] == name]
        metric, direction = part["metric"].iloc[0], part["direction"].iloc[0]
        ax.errorbar(part["params"], part[f"{metric}_best_mean"], yerr=part.get(f"{metric}_best_std"), fmt="o")
        for _, row in part.iterrows():
            ax.annotate(f"{row['method']} {row['setting']}".strip(), (row["params"], row[f"{metric}_best_mean"]), fontsize=7)
        ax.set_xscale("log")
        ax.set(title=name, xlabel="parameters", ylabel=f"{metric} (best epoch) {ARROW[direction]}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
