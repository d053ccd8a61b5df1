"""The leaderboard as text: kdbench.results' table (one row per cell with the mean over seeds
and its 95% interval, the paired gain over the experiment's baseline arm, one row per teacher
and one row per failed run) rendered as markdown (tabulate), CSV or HTML. No torch here."""
import html
import math

import pandas as pd

from kdbench import stats
from kdbench.results import BASE_COLUMNS, GAIN_COLUMNS, Results

ARROW = {"max": "↑", "min": "↓"}
STALE_MARK = "†"
MIXED_MARK = "‡"  # the numbers compare or average runs of different identities (kdbench.results.Results.mixed)


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
        method = r["method"] + marks(r)
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
        row["method params"] = "" if missing(r.get("method_params")) or not r["method_params"] else f"{int(r['method_params']):,}"
        row["throughput/s"] = fmt(r.get("throughput_mean"), None, 0)
        row["measured on"] = r.get("speed_at") or ""
        row["train s"] = fmt(r.get("train_time_s_mean"), None, 0)
        if any_failed:
            row["status"] = "ok"
        rows.append(row)
    frame = pd.DataFrame(rows).fillna("")
    return frame.loc[:, (frame != "").any(axis=0)]


def marks(row):
    """`` †`` for a row of records kept stale, `` ‡`` for one whose numbers mix run identities."""
    flag = lambda key: isinstance(row.get(key), str) and row[key]  # noqa: E731
    return (f" {STALE_MARK}" if flag("stale") else "") + (f" {MIXED_MARK}" if flag("mixed") else "")


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
    mixed = table[table["mixed"].fillna("") != ""] if "mixed" in table else table.iloc[:0]
    for _, r in mixed.iterrows():
        lines.append(f"{MIXED_MARK} {r['method']} {r['setting']}".rstrip() + f" ({r['experiment']}): {r['mixed']}; rerun its arms "
                     "on one code version and machine to compare like with like (run reruns the records whose identity changed)")
    return lines


def render(results, fmt_name="md", sort=None):
    """The leaderboard of ``results`` (a kdbench.results.Results, or the records to build one
    from) as text in ``fmt_name`` (md, csv or html)."""
    if not isinstance(results, Results):
        results = Results(results)
    table = results.sorted(sort)
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
    table = table.drop(columns=["pair_key", "student_config", "identity"], errors="ignore")
    for col in BASE_COLUMNS + GAIN_COLUMNS + ["stale", "mixed", "error"]:
        if col not in table:
            table[col] = None
    for col in ("seeds", "seed", "gain_n"):
        table[col] = pd.to_numeric(table[col]).astype("Int64")
    front = list(BASE_COLUMNS)
    for col in [c for c in table.columns if c.endswith("_mean") and not c.startswith("gain_")]:
        stem = col.removesuffix("_mean")
        front += [c for c in (f"{stem}_mean", f"{stem}_std", f"{stem}_ci95") if c in table]
    back = GAIN_COLUMNS + ["stale", "mixed", "error"]
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
