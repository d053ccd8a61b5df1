"""The leaderboard's figure: per experiment, the primary metric against parameters and against
throughput with the Pareto front, each point labelled where the label overlaps nothing else.
A renderer of kdbench.results; matplotlib is imported only when a figure is made."""
import math

import pandas as pd

from kdbench.errors import ConfigError
from kdbench.leaderboard import ARROW, marks
from kdbench.results import Results


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


def figure(results):
    """The figure ``plot`` saves: per experiment, the primary metric at the best epoch (seed mean,
    95% interval as error bars) against parameters and against throughput, with the Pareto front
    (fewer parameters / more throughput and a better metric) as a step line and ringed points.
    ``results``: a kdbench.results.Results, or the records to build one from."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not isinstance(results, Results):
        results = Results(results)
    table = results.table
    table = table[table["status"] == "ok"] if not table.empty else table
    if table.empty:
        raise ConfigError("no finished runs to plot")
    experiments = list(dict.fromkeys(table["experiment"]))
    fig, axes = plt.subplots(len(experiments), 2, figsize=(13, 5 * len(experiments)), squeeze=False, dpi=120)
    panels = []
    for (ax_params, ax_speed), name in zip(axes, experiments):
        part = table[table["experiment"] == name].reset_index(drop=True)
        metric, direction = part["metric"].iloc[0], part["direction"].iloc[0]
        ys = part[f"{metric}_best_mean"].astype(float)
        errs = part.get(f"{metric}_best_ci95", pd.Series(math.nan, index=part.index)).astype(float)
        labels = [f"{row['method']}{marks(row)} {row['setting'] if isinstance(row['setting'], str) else ''}".strip()
                  for _, row in part.iterrows()]
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


def plot(results, path):
    """Save ``figure(results)`` to ``path``; its suffix picks the format (png, pdf, svg, ...; the
    command line checks it and that the path is writable before any work)."""
    import matplotlib.pyplot as plt

    fig = figure(results)
    try:
        fig.savefig(path, dpi=fig.dpi)  # the dpi the labels were placed at
    finally:
        plt.close(fig)
