"""Leaderboards: pandas over the run records, one row per cell with the mean over seeds and its
95% interval (kdbench.stats), the paired gain over the experiment's baseline arm, one row per
teacher and one row per failed run; exported as markdown (tabulate), CSV or HTML, and plotted.
No torch here."""
import html
import json
import math

import pandas as pd

from kdbench import stats

ARROW = {"max": "↑", "min": "↓"}
STALE_MARK = "†"
# the columns a CSV always has, so that even a board without one finished run parses
BASE_COLUMNS = ["experiment", "cell_id", "method", "baseline", "setting", "student", "status", "seeds", "seed", "metric", "direction"]
GAIN_COLUMNS = ["gain_mean", "gain_ci_low", "gain_ci_high", "gain_n", "gain_significant"]


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
        "params": record["student"]["params"],
        "param_ratio": record.get("param_ratio"),
        "throughput": speed.get("throughput"),
        "latency_ms": speed.get("latency_ms"),
        "speed_at": f"{speed.get('device_name')} b{speed.get('throughput_batch')} {speed.get('dtype')}" if speed else None,
        "train_time_s": record.get("train_time_s"),
        "stale": record.get("stale") or "",
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
            "throughput": speed.get("throughput"), "latency_ms": speed.get("latency_ms"),
            "speed_at": f"{speed.get('device_name')} b{speed.get('throughput_batch')} {speed.get('dtype')}" if speed else None,
        } | {f"{k}_best": v for k, v in metrics.items()} | {f"{k}_last": v for k, v in metrics.items()})
    return rows


def summarize(records):
    """The leaderboard as a numeric DataFrame: ``<col>_mean``, ``_std`` (ddof=1) and ``_ci95`` (the
    half-width of the 95% Student-t interval) per metric, the paired gain (``gain_*``), one row
    per teacher, and one row per failed record (``status`` and ``error``)."""
    ok = [r for r in records if is_usable(r)]
    failed = pd.DataFrame([failed_row(r) for r in records if not is_usable(r)])
    directions = {}
    for record in ok:
        directions |= record.get("directions", {})
    parts = []
    if ok:
        # a (cell, seed) found twice (two run folders, or a folder renamed by its labels) counts once
        runs = pd.DataFrame([flatten(r) for r in ok]).drop_duplicates(["experiment", "cell_id", "seed"], keep="last")
        metric_cols = [c for c in runs.columns if c.endswith(("_best", "_last")) and c != "best_epoch"]
        keys = ["experiment", "cell_id"]
        grouped = runs.groupby(keys, sort=False)
        table = grouped.first()[["method", "baseline", "setting", "student", "pair_key", "metric", "direction", "params", "param_ratio", "speed_at"]].copy()
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
        table = pd.concat([table, gains(table, runs)], axis=1)
        teachers = pd.DataFrame(teacher_rows(ok))
        if not teachers.empty:
            teachers["seeds"] = 1
            for col in [c for c in teachers.columns if c.endswith(("_best", "_last"))] + ["throughput", "latency_ms"]:
                teachers[f"{col}_mean"] = teachers.pop(col)
            parts.append(teachers)
        parts.append(table)
    if not failed.empty:
        parts.append(failed)
    if not parts:
        return pd.DataFrame(columns=BASE_COLUMNS)
    table = pd.concat(parts, ignore_index=True)
    table.attrs["directions"] = directions  # metric -> "max" | "min", for the arrows
    return table


def gains(table, runs):
    """The paired gain of each cell over its baseline cell: same experiment, the baseline arm
    (``scratch`` unless the experiment names another), the same student, data and training
    settings; per-seed differences of the primary metric at the best-validation epoch, signed so
    that positive is better (kdbench.stats.paired_gain)."""
    per_seed = {key: dict(zip(part["seed"], part[f"{part['metric'].iloc[0]}_best"]))
                for key, part in runs.groupby(["experiment", "cell_id"], sort=False)}
    rows = []
    for _, row in table.iterrows():
        base = table[(table["experiment"] == row["experiment"]) & (table["method"] == row["baseline"])
                     & (table["pair_key"] == row["pair_key"]) & (table["metric"] == row["metric"])]
        if base.empty or row["method"] == row["baseline"]:
            rows.append(dict.fromkeys(GAIN_COLUMNS, math.nan) | {"gain_n": 0, "gain_significant": None})
            continue
        gain = stats.paired_gain(per_seed[(row["experiment"], row["cell_id"])],
                                 per_seed[(row["experiment"], base["cell_id"].iloc[0])], row["direction"])
        rows.append({"gain_mean": gain.mean, "gain_ci_low": gain.low, "gain_ci_high": gain.high,
                     "gain_n": gain.n, "gain_significant": gain.significant})
    return pd.DataFrame(rows, index=table.index, columns=GAIN_COLUMNS)


def sort_table(table, sort=None):
    """Per experiment: teachers first, then cells best first by the primary metric at the best
    epoch, failed runs last; or everything by ``sort`` (a column, descending)."""
    if table.empty:
        return table
    if sort:
        col = sort if sort in table else f"{sort}_mean"
        if col not in table:
            from kdbench.errors import ConfigError

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


def missing(value):
    return value is None or (isinstance(value, float) and math.isnan(value))


def fmt(mean, spread=None, digits=2):
    """``mean`` or ``mean ± spread``; empty when there is no mean."""
    if missing(mean):
        return ""
    if missing(spread):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {spread:.{digits}f}"


def fmt_gain(mean, low, high, significant, digits=2):
    """``+1.45 [+0.90, +2.00] *`` (the interval excludes zero), ``... n.s.`` (it does not), or the
    mean alone with fewer than stats.MIN_PAIRS seed pairs."""
    if missing(mean):
        return ""
    if significant is None or missing(significant):
        return f"{mean:+.{digits}f}"
    verdict = "*" if significant else "n.s."
    return f"{mean:+.{digits}f} [{low:+.{digits}f}, {high:+.{digits}f}] {verdict}"


def display_frame(table):
    """Human columns, per experiment: the primary metric (last and best) with its direction."""
    rows = []
    any_failed = (table["status"] != "ok").any()
    for _, r in table.iterrows():
        method = r["method"] + (f" {STALE_MARK}" if isinstance(r.get("stale"), str) and r["stale"] else "")
        row = {"experiment": r["experiment"], "method": method, "setting": r["setting"], "model": r["student"]}
        if r["status"] != "ok":
            seed = "" if missing(r.get("seed")) else f" (seed {int(r['seed'])})"
            rows.append(row | {"seeds": "", "status": f"{r['status']}{seed}", "error": r["error"]})
            continue
        metric, arrow = r["metric"], ARROW[r["direction"]]
        row["seeds"] = int(r["seeds"])
        row[f"{metric} best {arrow}"] = fmt(r.get(f"{metric}_best_mean"), r.get(f"{metric}_best_ci95"))
        row[f"{metric} last {arrow}"] = fmt(r.get(f"{metric}_last_mean"), r.get(f"{metric}_last_ci95"))
        for col in table.columns:  # the other metrics a method reports (top5, mse_teacher, ...)
            name = col.removesuffix("_best_mean")
            if col.endswith("_best_mean") and name != metric:
                header = f"{name.replace('_', ' ')} best {ARROW[table.attrs.get('directions', {}).get(name, 'max')]}"
                row[header] = fmt(r[col], r.get(f"{name}_best_ci95"))
        row["teacher top1"] = fmt(r.get("teacher_top1"))
        row[f"gain vs {r['baseline']} (best)"] = fmt_gain(r.get("gain_mean"), r.get("gain_ci_low"), r.get("gain_ci_high"), r.get("gain_significant"))
        row["params"] = f"{int(r['params']):,}"
        row["ratio"] = fmt(r.get("param_ratio"), None, 3)
        row["throughput/s"] = fmt(r.get("throughput_mean"), None, 0)
        row["measured on"] = r.get("speed_at") or ""
        row["train s"] = fmt(r.get("train_time_s_mean"), None, 0)
        if any_failed:
            row["status"] = "ok"
        rows.append(row)
    frame = pd.DataFrame(rows).fillna("")
    return frame.loc[:, (frame != "").any(axis=0)]


def notes(table, shown):
    """The footnotes that explain the marks a table shows."""
    lines = []
    if shown.map(lambda v: " ± " in str(v)).any().any():
        lines.append("± is the half-width of the 95% Student-t interval of the mean over seeds, t(0.975, n-1)·s/√n "
                     "(s: the standard deviation over the n seeds); one seed: no interval.")
    gain_headers = [c for c in shown.columns if c.startswith("gain vs ")]
    gain_headers = [c for c in gain_headers if (shown[c] != "").any()]
    if gain_headers:
        lines.append(f"{' / '.join(gain_headers)}: the mean over seeds of the per-seed difference from the baseline arm with the "
                     "same student, data and training settings and the same seed, at the best-validation epoch, positive = "
                     f"better; [low, high] is its 95% Student-t interval; * it excludes zero, n.s. it does not; with fewer than "
                     f"{stats.MIN_PAIRS} seed pairs the mean alone, no verdict.")
    for reason in sorted({x for x in table.get("stale", pd.Series(dtype=str)).dropna() if x}):
        lines.append(f"{STALE_MARK} stale record (kept on request): {reason}")
    return lines


def render(records, fmt_name="md", sort=None):
    """The leaderboard of ``records`` as text in ``fmt_name`` (md, csv or html)."""
    table = sort_table(summarize(records), sort)
    if fmt_name == "csv":
        return csv_frame(table).to_csv(index=False)
    if table.empty:
        return render_html_document("<p>(no runs)</p>") if fmt_name == "html" else "(no runs)\n"
    shown = display_frame(table)
    footnotes = notes(table, shown)
    if fmt_name == "html":
        return render_html(shown, footnotes)
    from tabulate import tabulate

    text = tabulate(shown.map(lambda v: str(v).replace("|", "\\|")), headers="keys", tablefmt="github", showindex=False,
                    disable_numparse=True)  # keeps "+1.45" signed and "0.500" as written
    return text + "\n" + "".join(f"\n{line}\n" for line in footnotes)


def csv_frame(table):
    """Numeric columns for everything shown: means, stds, 95% half-widths, gains, status, error."""
    table = table.drop(columns=["pair_key", "student_config"], errors="ignore")
    for col in BASE_COLUMNS + GAIN_COLUMNS + ["stale", "error"]:
        if col not in table:
            table[col] = None
    for col in ("seeds", "seed", "gain_n"):
        table[col] = pd.to_numeric(table[col]).astype("Int64")
    front = list(BASE_COLUMNS)
    for col in [c for c in table.columns if c.endswith("_mean") and not c.startswith("gain_")]:
        stem = col.removesuffix("_mean")
        front += [c for c in (f"{stem}_mean", f"{stem}_std", f"{stem}_ci95") if c in table]
    back = GAIN_COLUMNS + ["stale", "error"]
    return table[front + [c for c in table.columns if c not in front + back] + back]


HTML_SORT = """<script>
// click a column header to sort by it (numbers by value, text alphabetically; empty cells last)
document.querySelectorAll("table.kdbench th").forEach((th, col) => th.addEventListener("click", () => {
  const body = th.closest("table").tBodies[0];
  const ascending = th.getAttribute("aria-sort") !== "ascending";
  th.closest("tr").querySelectorAll("th").forEach(h => h.removeAttribute("aria-sort"));
  th.setAttribute("aria-sort", ascending ? "ascending" : "descending");
  const key = cell => { const text = cell.textContent.replace(/,/g, "").trim(); const x = parseFloat(text); return isNaN(x) ? text : x; };
  const rows = Array.from(body.rows).sort((a, b) => {
    const x = key(a.cells[col]), y = key(b.cells[col]);
    if (x === "" || y === "") return (x === "") - (y === "");
    const order = typeof x === typeof y ? (x < y ? -1 : x > y ? 1 : 0) : (typeof x === "number" ? -1 : 1);
    return ascending ? order : -order;
  });
  rows.forEach(row => body.appendChild(row));
}));
</script>"""


def render_html(shown, footnotes):
    head = "".join(f'<th title="click to sort">{html.escape(str(c))}</th>' for c in shown.columns)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in row) + "</tr>\n" for row in shown.itertuples(index=False))
    notes_html = "".join(f"<p>{html.escape(line)}</p>\n" for line in footnotes)
    return render_html_document(f'<table class="kdbench">\n<thead><tr>{head}</tr></thead>\n<tbody>\n{body}</tbody>\n</table>\n{notes_html}{HTML_SORT}')


def render_html_document(content):
    style = ("body{font-family:sans-serif}table{border-collapse:collapse}th,td{border:1px solid #ccc;padding:2px 6px;"
             "white-space:nowrap}th{cursor:pointer;background:#eee}th[aria-sort=ascending]::after{content:' ▲'}"
             "th[aria-sort=descending]::after{content:' ▼'}")
    return (f'<!DOCTYPE html>\n<html>\n<head>\n<meta charset="utf-8">\n<title>kdbench leaderboard</title>\n'
            f"<style>{style}</style>\n</head>\n<body>\n{content}\n</body>\n</html>\n")


def pareto_front(xs, ys, x_better, y_better):
    """Indices of the points no other point beats on both axes, in the order the front runs
    (from the best x to the worst)."""
    sx = 1 if x_better == "min" else -1
    sy = -1 if y_better == "max" else 1
    order = sorted(range(len(xs)), key=lambda i: (sx * xs[i], sy * ys[i]))
    front, best = [], math.inf
    for i in order:
        if sy * ys[i] < best:
            front.append(i)
            best = sy * ys[i]
    return front


def figure(records):
    """The figure ``plot`` saves: per experiment, the primary metric at the best epoch (seed mean,
    95% interval as error bars) against parameters and against throughput, with the Pareto front
    (fewer parameters / more throughput and a better metric) as a step line and ringed points."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    table = summarize(records)
    table = table[table["status"] == "ok"] if not table.empty else table
    if table.empty:
        from kdbench.errors import ConfigError

        raise ConfigError("no finished runs to plot")
    experiments = list(dict.fromkeys(table["experiment"]))
    fig, axes = plt.subplots(len(experiments), 2, figsize=(13, 5 * len(experiments)), squeeze=False, dpi=120)
    panels = []
    for (ax_params, ax_speed), name in zip(axes, experiments):
        part = table[table["experiment"] == name].reset_index(drop=True)
        metric, direction = part["metric"].iloc[0], part["direction"].iloc[0]
        ys = part[f"{metric}_best_mean"].astype(float)
        errs = part.get(f"{metric}_best_ci95", pd.Series(math.nan, index=part.index)).astype(float)
        labels = [f"{m}{' ' + STALE_MARK if isinstance(st, str) and st else ''} {s}".strip()
                  for m, s, st in zip(part["method"], part["setting"].fillna(""), part.get("stale", [""] * len(part)))]
        colors = [plt.cm.tab10(i % 10) for i in range(len(part))]
        ylabel = f"{metric} at the best epoch {ARROW[direction]} (mean, 95% interval)"
        where = ", ".join(sorted({str(s) for s in part["speed_at"].dropna()}))
        for ax, xs, x_better, xlabel in (
            (ax_params, part["params"].astype(float), "min", "parameters (log scale)"),
            (ax_speed, part["throughput_mean"].astype(float), "max", f"throughput, items/s (log scale; {where})"),
        ):
            keep = [i for i in range(len(part)) if not (math.isnan(xs[i]) or math.isnan(ys[i]))]
            panels.append(draw_panel(ax, [xs[i] for i in keep], [ys[i] for i in keep], [errs[i] for i in keep],
                                     [labels[i] for i in keep], [colors[i] for i in keep], x_better, direction))
            ax.set(title=name, xlabel=xlabel, ylabel=ylabel)
    fig.tight_layout()
    for panel in panels:  # after the layout: placement measures the labels where they will be drawn
        place_labels(*panel)
    return fig


def draw_panel(ax, xs, ys, errs, labels, colors, x_better, y_better):
    """Points with error bars (points at the same x are spread apart a little so each bar shows),
    and the Pareto front. Returns what place_labels needs."""
    ax.set_xscale("log")
    if not xs:
        ax.text(0.5, 0.5, "not measured", transform=ax.transAxes, ha="center")
        return ax, [], [], [], []
    logs = [math.log10(x) for x in xs]
    step = 0.02 * max(max(logs) - min(logs), 0.5)
    shown_x = []
    for i, x in enumerate(logs):
        same = [j for j, other in enumerate(logs) if abs(other - x) < step / 2]
        shown_x.append(10 ** (x + (same.index(i) - (len(same) - 1) / 2) * step))
    for x, y, err, color in zip(shown_x, ys, errs, colors):
        ax.errorbar([x], [y], yerr=None if math.isnan(err) else [err], fmt="o", color=color, capsize=3, ms=5)
    front = pareto_front(xs, ys, x_better, y_better)
    ax.step([xs[i] for i in front], [ys[i] for i in front], where="post", color="0.35", ls="--", lw=1, zorder=0,
            label="Pareto front")
    ax.scatter([shown_x[i] for i in front], [ys[i] for i in front], s=160, facecolors="none", edgecolors="0.2", lw=1.2)
    ax.legend(loc="best", fontsize=8)
    ax.margins(x=0.3, y=0.2)
    ax.grid(True, which="both", alpha=0.25)
    return ax, list(zip(shown_x, ys)), errs, labels, colors


LABEL_BOX = {"boxstyle": "square,pad=0.1", "facecolor": "white", "edgecolor": "none", "alpha": 0.8}  # lines stay behind text


def place_labels(ax, points, errs, labels, colors):
    """Put each label where it overlaps no other label, point, error bar or the legend, trying
    positions around its point at growing distances (a leader line joins the far ones); the first
    free position wins, so the result is deterministic. Falls back to the least crowded spot."""
    from matplotlib.transforms import Bbox

    renderer = ax.figure.canvas.get_renderer()
    frame = ax.get_window_extent(renderer)
    to_display = ax.transData.transform
    obstacles = []
    for (x, y), err in zip(points, errs):
        px, py = to_display((x, y))
        obstacles.append(Bbox.from_bounds(px - 5, py - 5, 10, 10))
        if not math.isnan(err):
            (_, low), (_, high) = to_display((x, y - err)), to_display((x, y + err))
            obstacles.append(Bbox.from_extents(px - 4, low, px + 4, high))
    if ax.get_legend() is not None:
        obstacles.append(ax.get_legend().get_window_extent(renderer))
    angles = (0, 180, 90, 270, 30, 150, 210, 330, 60, 120, 240, 300)
    candidates = [(r * math.cos(math.radians(a)), r * math.sin(math.radians(a))) for r in (8, 16, 28, 42, 60, 80) for a in angles]
    placed = []
    for i in sorted(range(len(points)), key=lambda i: (-points[i][1], points[i][0])):  # top to bottom
        best = None
        for dx, dy in candidates:
            ha = "left" if dx > 0.5 else "right" if dx < -0.5 else "center"
            va = "bottom" if dy > 0.5 else "top" if dy < -0.5 else "center"
            text = ax.annotate(labels[i], points[i], xytext=(dx, dy), textcoords="offset points", ha=ha, va=va,
                               fontsize=8, color=colors[i], annotation_clip=False, bbox=LABEL_BOX)
            box = text.get_window_extent(renderer).padded(2)
            outside = box.x0 < frame.x0 or box.x1 > frame.x1 or box.y0 < frame.y0 or box.y1 > frame.y1
            crowd = sum(box.overlaps(other) for other in placed + obstacles) + 10 * outside
            if best is None or crowd < best[0]:
                if best is not None:
                    best[1].remove()
                best = (crowd, text, box, math.hypot(dx, dy))
            else:
                text.remove()
            if crowd == 0:
                break
        _, text, box, distance = best
        if distance > 20:  # far from its point: a leader line says whose label it is
            text.remove()
            dx, dy = text.xyann
            text = ax.annotate(labels[i], points[i], xytext=(dx, dy), textcoords="offset points", ha=text.get_ha(),
                               va=text.get_va(), fontsize=8, color=colors[i], annotation_clip=False, bbox=LABEL_BOX,
                               arrowprops={"arrowstyle": "-", "color": colors[i], "lw": 0.6, "shrinkA": 1, "shrinkB": 4})
        placed.append(box)


def plot(records, path):
    """Save ``figure(records)`` to ``path``; its suffix picks the format (png, pdf, svg, ...; the
    command line checks it and that the path is writable before any work)."""
    import matplotlib.pyplot as plt

    fig = figure(records)
    try:
        fig.savefig(path, dpi=fig.dpi)  # the dpi the labels were placed at
    finally:
        plt.close(fig)
