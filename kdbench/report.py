"""Regenerable README numbers: rerun the experiments the READMEs quote and rewrite their tables.

A README table is a block between two marker comments; the opening one holds the ``kdbench run``
arguments of the experiment the table comes from:

    <!-- kdbench-report: plugins/hinton --grid temperature=5,20 -->
    (written by ``python -m kdbench report``; edits here are overwritten)
    <!-- /kdbench-report -->

``generate`` finds every block in ``README.md`` and ``plugins/*/README.md``, runs each distinct
command once per CPU setting (a subprocess, so the ATen/oneDNN variables take effect; CPU only),
and writes each block: the machine, the command, every arm's primary metric as mean ± 95%
interval over seeds, the paired gains over the experiment's baseline with their verdicts, and,
when more than one CPU setting ran, how far levels and gains moved between the settings.

It edits the user's documents, so it never changes a byte outside the blocks it regenerates: a
README whose markers do not pair, that is not UTF-8 or that cannot be written is refused before
anything runs, and each README is rewritten atomically under a lock on its folder.
"""
import fcntl
import json
import os
import re
import shlex
import stat
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from kdbench import leaderboard, stats, store
from kdbench.results import Results
from kdbench.errors import ConfigError

# The CPU settings a run can be made under. "native" leaves the machine as it is; the others
# cap the vectorised kernels of ATen and oneDNN, which emulates CPUs with fewer instruction sets
# (default/SSE41 is the most different from a modern x86-64 machine).
CPU_SETTINGS = {
    "native": {},
    "avx512": {"ATEN_CPU_CAPABILITY": "avx512", "ONEDNN_MAX_CPU_ISA": "AVX512_CORE"},
    "avx2": {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"},
    "default": {"ATEN_CPU_CAPABILITY": "default", "ONEDNN_MAX_CPU_ISA": "SSE41"},
}
ALL_EMULATED = ["avx512", "avx2", "default"]

END = "<!-- /kdbench-report -->"
MARKER = re.compile(rb"<!-- kdbench-report: (?P<args>[^\n]*?) -->\n|" + re.escape(END.encode()))
NOTE = "(written by `python -m kdbench report`; edits here are overwritten)"

MACHINE_SNIPPET = """
import json, os, platform, torch
model = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), None) \\
    if os.path.exists("/proc/cpuinfo") else None
print(json.dumps({"cpu": model or platform.processor() or platform.machine(), "cores": os.cpu_count(),
                  "torch": torch.__version__, "capability": torch.backends.cpu.get_cpu_capability(),
                  "onednn": os.environ.get("ONEDNN_MAX_CPU_ISA", "unset")}))
"""


def readmes(root):
    root = Path(root)
    return [p for p in [root / "README.md", *sorted(root.glob("plugins/*/README.md"))] if p.is_file()]


def scan(path, data):
    """The blocks of README bytes ``data``: ``(blocks, problem)``, blocks a list of ``(args, start,
    end)`` (the byte range of each body, between the opening line and the end marker), problem
    None or a one-line description of markers that do not pair, naming ``path`` and the lines.
    Bytes, not text: finding the blocks decodes nothing, so a README in another encoding that
    ``report`` does not edit does not matter."""
    blocks, opened, problem = [], None, None
    for match in MARKER.finditer(data):
        line = data.count(b"\n", 0, match.start()) + 1
        if match["args"] is not None:  # an opening marker
            if opened and not problem:
                problem = f"the block opened at line {opened[1]} has no end marker before the next block opens at line {line}"
            opened = (match["args"].decode("utf-8", "replace").strip(), line, match.end())
        elif opened is None:
            problem = problem or f"the end marker at line {line} closes no block"
        else:
            blocks.append((opened[0], opened[2], match.start()))
            opened = None
    if opened and not problem:
        problem = f"the block opened at line {opened[1]} has no end marker ({END})"
    return blocks, problem and f"{path}: kdbench-report markers do not pair: {problem}; fix the markers, report rewrites only whole blocks"


def find_blocks(root):
    """``{readme path: [run arguments of each block]}`` for every README holding blocks (opening
    markers: a README whose markers do not pair is refused later, if report has to edit it)."""
    found = {}
    for path in readmes(root):
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise ConfigError(f"cannot read {path}: {exc.strerror or exc}") from None
        args = [m["args"].decode("utf-8", "replace").strip() for m in MARKER.finditer(data) if m["args"] is not None]
        if args:
            found[path] = args
    return found


def check_editable(path):
    """``report`` can rewrite ``path``: its markers pair, it is UTF-8 and it (and its folder, for the
    atomic rename) are writable. One-line ConfigError otherwise, before anything runs."""
    target = path.resolve()
    data = target.read_bytes()
    problem = scan(path, data)[1]
    if problem:
        raise ConfigError(problem)
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise ConfigError(f"{path} is not valid UTF-8 (byte 0x{data[exc.start]:02x} at line {line}); report writes UTF-8: convert the file first") from None
    if not os.access(target, os.W_OK) or not os.access(target.parent, os.W_OK | os.X_OK):
        raise ConfigError(f"{path} is not writable (report rewrites it through a temporary file in {target.parent}); make it and its folder writable")


def parse_settings(text):
    names = ALL_EMULATED if text == "all" else [s.strip() for s in text.split(",") if s.strip()]
    bad = [s for s in names if s not in CPU_SETTINGS]
    if bad or not names:
        raise ConfigError(f"unknown CPU setting(s) {', '.join(bad) or repr(text)}; choose from {', '.join(CPU_SETTINGS)} or 'all' (= {','.join(ALL_EMULATED)})")
    return names


def setting_env(name):
    """This process's environment under CPU setting ``name``, importing this same kdbench."""
    env = {k: v for k, v in os.environ.items() if k not in ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA")}
    here = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join([here, *filter(None, [env.get("PYTHONPATH")])])
    return env | CPU_SETTINGS[name]


def machine(name):
    """The CPU, core count, torch version and the kernels torch picks under CPU setting ``name``."""
    out = subprocess.run([sys.executable, "-c", MACHINE_SNIPPET], env=setting_env(name), capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def slug(args):
    return re.sub(r"[^A-Za-z0-9=.,_-]+", "_", args).strip("_")


def grid_of(root, args, seeds=None):
    """The (cell ids, seeds) that ``kdbench run ARGS`` runs from ``root``, expanded as ``run`` does."""
    from kdbench import experiment
    from kdbench.arguments import build_parser, parse_seeds
    from kdbench.plugins import load_registry

    ns = build_parser().parse_args(["run", *shlex.split(args)] + (["--seeds", seeds] if seeds else []))
    folder = (Path(root) / ns.plugin).resolve()
    registry = load_registry([str(folder)], strict=ns.strict_plugins or None)
    cells, seeds, _ = experiment.expand(folder, registry, grid=ns.grid, sets=ns.sets, profile=ns.profile,
                                        seeds=parse_seeds(ns.seeds) if ns.seeds else None, plugin_dirs=[folder])
    return {c.id for c in cells}, set(seeds)


def run_command(root, args, grid, name, out, cache, seeds=None, keep_stale=False, log=print):
    """Run ``kdbench run ARGS`` (from ``root``; ``grid`` from ``grid_of``) under CPU setting
    ``name`` in a subprocess.

    Records go to ``out/name/<args>``, teachers to ``cache/name`` (a teacher trained under one
    setting is another model than one trained under another). Finished records are reused as
    ``run`` reuses them. Returns the grid's finished records and the wall time in seconds.
    """
    folder = (Path(out) / name / slug(args)).resolve()
    argv = [sys.executable, "-m", "kdbench", "run", *shlex.split(args), "--device", "cpu",
            "--out", str(folder), "--cache", str((Path(cache) / name).resolve())]
    if seeds:
        argv += ["--seeds", seeds]
    if keep_stale:
        argv.append("--keep-stale")
    log(f"kdbench report: [{name}] kdbench run {args}")
    started = time.time()
    code = subprocess.run(argv, env=setting_env(name), cwd=root).returncode
    wall = time.time() - started
    if code != 0:
        raise ConfigError(f"`kdbench run {args}` under CPU setting {name} exited with {code}; its records are in {folder}")
    cell_ids, seed_set = grid  # the folder may also hold other grids' records
    records = [r for r in store.iter_records([folder]) if r.get("status") == "ok" and r["cell_id"] in cell_ids and r["seed"] in seed_set]
    return records, wall


# ------------------------------------------------------------------------------------------------
# Tables


def headline_metrics(results):
    """The primary metric and the other metrics with a declared direction, top-5 aside, and those
    that are equal in every run aside (a property of the data, such as a distance between two real
    image sets, not of the arm)."""
    runs = results.runs
    primary = runs["metric"].iloc[0]
    directions = {primary: runs["direction"].iloc[0]}
    for name, direction in results.directions.items():
        column = f"{name}_best"
        if name != "top5" and name not in directions and column in runs and runs[column].nunique(dropna=False) > 1:
            directions[name] = direction
    return primary, directions


def fmt_gain(gain):
    return leaderboard.fmt_gain(gain.mean, gain.low, gain.high, gain.significant)


def arm_label(first):
    return f"{first['method']} {first['setting']}".strip()


def student_label(first):
    return f"{first['student']} ({first['params']:,})"


def columns(primary, directions):
    """(header, metric key, epoch) of the value columns: the primary metric best and last, then
    every other directed metric at the best epoch."""
    arrow = leaderboard.ARROW
    cols = [(f"{primary} best {arrow[directions[primary]]}", primary, "best"), (f"{primary} last {arrow[directions[primary]]}", primary, "last")]
    cols += [(f"{name.replace('_', ' ')} best {arrow[d]}", name, "best") for name, d in directions.items() if name != primary]
    return cols


def arms(results):
    """``(experiment, cell id, first per-seed row, {seed: row})`` of each finished cell, in the
    leaderboard's order."""
    out = []
    for experiment, cell_id in results.cells():
        by_seed = results.seeds(experiment, cell_id)
        out.append((experiment, cell_id, next(iter(by_seed.values())), by_seed))
    return out


def render_table(results):
    """The markdown table of one experiment: teacher rows, then one row per arm."""
    primary, directions = headline_metrics(results)
    cols = columns(primary, directions)
    all_arms = arms(results)
    baseline = all_arms[0][2]["baseline"]
    header = ["arm", "student (params)", "seeds", *[c[0] for c in cols], *[f"gain vs {baseline}: {key} {epoch}".replace("_", " ") for _, key, epoch in cols]]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in results.teachers:
        values = [leaderboard.fmt(row.get(f"{key}_{epoch}")) for _, key, epoch in cols]
        lines.append("| " + " | ".join(["teacher", f"{row['student']} ({row['params']:,})", "", *values, *[""] * len(cols)]) + " |")
    for experiment, cell_id, first, by_seed in all_arms:
        values, gains = [], []
        for _, key, epoch in cols:
            column = f"{key}_{epoch}"
            mean, half, _ = stats.mean_ci([row.get(column, float("nan")) for row in by_seed.values()])
            values.append(leaderboard.fmt(mean, half))
            gain = results.gain(experiment, cell_id, column, directions[key])
            gains.append("" if gain is None else fmt_gain(gain))
        mark = f" {leaderboard.MIXED_MARK}" if results.mixed(experiment, cell_id) else ""
        lines.append("| " + " | ".join([arm_label(first) + mark, student_label(first), str(len(by_seed)), *values, *gains]) + " |")
    return "\n".join(lines) + "\n"


def render_costs(results, reference="kd"):
    """What each arm pays (``Results.costs``): its own modules' parameters and its train time per
    step as a ratio to ``reference``'s (the baseline's where it did not run); "" when no record
    says either."""
    costs = results.costs(reference)
    if not any(c["method_params"] is not None or c["step_ms"] is not None for c in costs):
        return ""
    labels = arm_labels(results)
    refs = sorted({c["reference_method"] for c in costs if c["step_ratio"] is not None})
    lines = [f"| arm | extra parameters | train ms per step | per step, × {' / '.join(refs) or reference} |", "|---|---|---|---|"]
    for c in costs:
        params = "" if c["method_params"] is None else f"{c['method_params']:,}"
        lines.append(f"| {labels[c['cell_id']]} | {params} | {leaderboard.fmt(c['step_ms'], None, 1)} | {leaderboard.fmt(c['step_ratio'], None, 2)} |")
    return ("What each arm pays: extra parameters are the method's own modules (regressors, heads; "
            "buffers such as memory banks are not parameters), never the student's; train time per step is the training "
            "loop's wall time (its per-epoch validation passes included) over epochs × steps per epoch, the mean over "
            f"seeds, and its ratio to {' / '.join(refs) or reference}'s from the same run (a shared machine: timings are noisy).\n\n"
            + "\n".join(lines) + "\n")


def mixed_note(results):
    """The lines that explain the arms marked as mixing run identities (none: empty)."""
    return [f"{leaderboard.MIXED_MARK} {arm_label(first)}: {results.mixed(experiment, cell_id)}." for experiment, cell_id, first, _ in arms(results)
            if results.mixed(experiment, cell_id)]


def arm_labels(results):
    """``{cell id: label}``: the arm and its setting, with the student where the setting does not tell."""
    all_arms = arms(results)
    plain = [arm_label(first) for _, _, first, _ in all_arms]
    return {cell_id: label if plain.count(label) == 1 else f"{label} / {student_label(first)}"
            for (_, cell_id, first, _), label in zip(all_arms, plain)}


def levels(results):
    """``{arm: mean}`` of the primary metric at the best epoch, teachers included (one seed)."""
    primary, _ = headline_metrics(results)
    out = {f"teacher ({row['student']})": row.get(f"{primary}_best") for row in results.teachers}
    labels = arm_labels(results)
    for _, cell_id, _, by_seed in arms(results):
        out[labels[cell_id]] = stats.mean_ci([r[f"{primary}_best"] for r in by_seed.values()])[0]
    return out


def seed_gains(results, metric):
    """``{arm: {seed: gain}}``: the per-seed differences of ``metric`` at the best epoch against
    the baseline, signed so that positive is better."""
    _, directions = headline_metrics(results)
    labels = arm_labels(results)
    out = {}
    for experiment, cell_id, _, _ in arms(results):
        diffs = results.differences(experiment, cell_id, f"{metric}_best", directions[metric])
        if diffs is not None:
            out[labels[cell_id]] = diffs
    return out


def gains_of(per_seed):
    """``{arm: Gain}`` (mean and 95% interval) from ``{arm: {seed: gain}}``."""
    return {arm: stats.paired_gain(diffs, dict.fromkeys(diffs, 0.0)) for arm, diffs in per_seed.items()}


def render_settings(by_setting):
    """How far each arm's level and gains moved across the CPU settings (best epoch): the primary
    metric's levels and gains, then the gains of the other metrics with a direction.
    ``by_setting``: ``{setting: Results}``."""
    names = list(by_setting)
    primary, directions = headline_metrics(next(iter(by_setting.values())))
    metric_names = [primary, *[m for m in directions if m != primary]]
    level = {n: levels(by_setting[n]) for n in names}
    per_seed = {(n, m): seed_gains(by_setting[n], m) for n in names for m in metric_names}
    gain = {key: gains_of(diffs) for key, diffs in per_seed.items()}
    arms = list(dict.fromkeys(a for n in names for a in level[n]))
    header = ["arm", *[f"{n}: {primary} best" for n in names], "level moved", *[f"{n}: gain (best)" for n in names]]
    lines = [f"The same grid under each CPU setting ({primary} at the best epoch, mean over seeds; gains as above):", "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    moves = {}
    for arm in arms:
        values = [level[n].get(arm) for n in names]
        known = [v for v in values if v is not None]
        moves[arm] = max(known) - min(known) if len(known) > 1 else float("nan")
        gains = [fmt_gain(gain[n, primary][arm]) if arm in gain[n, primary] else "" for n in names]
        lines.append("| " + " | ".join([arm, *[leaderboard.fmt(v) for v in values], leaderboard.fmt(moves[arm]), *gains]) + " |")
    if len(metric_names) > 1:
        lines += ["", "The other metrics' gains at the best epoch, under each setting:", "",
                  "| arm | metric | " + " | ".join(f"{n}: gain (best)" for n in names) + " |", "|" + "---|" * (2 + len(names))]
        for metric in metric_names[1:]:
            for arm in gain[names[0], metric]:
                cols = [fmt_gain(gain[n, metric][arm]) if arm in gain[n, metric] else "" for n in names]
                lines.append("| " + " | ".join([arm, metric.replace("_", " "), *cols]) + " |")
    worst = max((a for a in moves if moves[a] == moves[a]), key=lambda a: moves[a], default=None)
    # every (arm, metric) gain of the first setting, named "arm" for the primary metric
    keys = [(a, m) for m in metric_names for a in gain[names[0], m]]
    label = {(a, m): a if m == primary else f"{a} ({m.replace('_', ' ')})" for a, m in keys}
    held = [label[k] for k in keys if all(k[0] in gain[n, k[1]] and gain[n, k[1]][k[0]].significant for n in names)]
    first = {k: gain[names[0], k[1]][k[0]] for k in keys}
    compared = [(k, n) for k in keys for n in names[1:] if k[0] in gain[n, k[1]]]
    inside = [(k, n) for k, n in compared if first[k].low <= gain[n, k[1]][k[0]].mean <= first[k].high]
    summary = f"Across the settings the levels moved by up to {moves[worst]:.2f} ({worst}). " if worst else ""
    summary += (f"{len(inside)} of {len(compared)} gains under {', '.join(names[1:])} lie inside the {names[0]} interval; "
                f"significant under every setting: {', '.join(held) if held else 'none'}. ")
    # a replicate's mean falls outside the first run's 95% interval about one time in six by chance
    # alone; whether the CPU setting moved a gain is the paired test of the per-seed gains
    moved = []
    for (arm, metric), n in compared:
        shift = stats.paired_gain(per_seed[n, metric][arm], per_seed[names[0], metric][arm])
        if shift.significant:
            moved.append(f"{label[arm, metric]} under {n} ({fmt_gain(shift).rstrip(' *')})")
    summary += (f"Gains that moved from {names[0]} beyond the seeds' noise (the per-seed gains paired by seed, "
                f"95% interval of the shift): {'; '.join(moved) if moved else 'none'}.")
    return "\n".join(lines) + "\n\n" + summary + "\n"


def describe_machine(info, name):
    env = " ".join(f"{k}={v}" for k, v in CPU_SETTINGS[name].items()) or "no CPU variables set"
    return (f"{info['cpu']}, {info['cores']} cores, torch {info['torch']}, CPU capability {info['capability']} "
            f"(setting `{name}`: {env})")


def render_block(args, by_setting, machines, walls):
    """The body of a README block from ``{setting: records}`` (the first setting gives the table)."""
    results = {name: Results(records) for name, records in by_setting.items()}
    first = next(iter(by_setting))
    records = by_setting[first]
    seeds = sorted({r["seed"] for r in records})
    commits = sorted({(r.get("provenance") or {}).get("git_commit") or "unknown" for rs in by_setting.values() for r in rs})
    parts = [NOTE, "",
             f"`python -m kdbench run {args}` — {len(seeds)} seeds ({', '.join(map(str, seeds))}), CPU, "
             f"code at commit {', '.join(c[:7] for c in commits)}; {describe_machine(machines[first], first)}"
             + (f"; wall time {walls[first]:.0f} s (a shared machine: timings are noisy)." if walls[first] else "."), "",
             render_table(results[first]),
             "Mean ± half-width of the 95% Student-t interval over seeds; gains are paired by seed against the "
             "baseline arm with the same student, data and training settings, signed so that positive is better, "
             "[95% interval], * when it excludes zero, n.s. (not significant) when it does not; ↑/↓: higher/lower "
             "is better.", ""]
    costs = render_costs(results[first])
    if costs:
        parts += [costs]
    mixed = mixed_note(results[first])
    if mixed:
        parts += [" ".join(mixed) + " Rerun those arms on one code version to compare like with like.", ""]
    stale = sorted({r["stale"] for rs in by_setting.values() for r in rs if r.get("stale")})
    if stale:
        count = sum(1 for rs in by_setting.values() for r in rs if r.get("stale"))
        parts += [f"Kept although their identity changed (`--keep-stale`): {count} record(s), because: {'; '.join(stale)}. "
                  "The commits above name the code they came from.", ""]
    if len(by_setting) > 1:
        parts += [render_settings(results)]
    return "\n".join(parts)


def collect(args, grid, name, out):
    """The finished records already in ``out/name/<args>`` for the grid's seeds, whatever code and
    cells they came from (``--no-run``: the blocks' commits say which), and no wall time."""
    folder = (Path(out) / name / slug(args)).resolve()
    records = [r for r in store.iter_records([folder]) if r.get("status") == "ok" and r["seed"] in grid[1]]
    return records, None


def generate(root=".", settings=("native",), out="runs/report", cache="", only=None, seeds=None, keep_stale=False,
             run=True, log=print):
    """Rerun every README block's experiment under each CPU setting and rewrite the blocks.

    ``only``: plugin folder names (``hinton``) whose blocks are regenerated; the rest stay.
    ``keep_stale``: reuse finished records whose code or teacher changed (``run --keep-stale``);
    the blocks then say so. ``run=False``: run nothing, write the blocks from the records in
    ``out`` (settings without records are left out of a block).
    Returns the README paths written.
    """
    root = Path(root)
    blocks = find_blocks(root)
    if not blocks:
        raise ConfigError(f"no <!-- kdbench-report: ... --> blocks in {root}/README.md or {root}/plugins/*/README.md")
    commands = list(dict.fromkeys(a for args in blocks.values() for a in args))
    if only:
        known = {plugin_name(a) for a in commands}
        unknown = set(only) - known
        if unknown:
            raise ConfigError(f"no README block runs {', '.join(sorted(unknown))}; blocks run: {', '.join(sorted(known))}")
        commands = [a for a in commands if plugin_name(a) in only]
    for path, block_args in blocks.items():  # every README to rewrite, checked before anything runs
        if set(block_args) & set(commands):
            check_editable(path)
    grids = {args: grid_of(root, args, seeds) for args in commands}  # bad arguments fail here, before any run
    cache = cache or str(Path(out) / "cache")
    machines = {name: machine(name) for name in settings}  # this machine: with --no-run, where the blocks were written
    written = []
    for args in commands:  # each command's blocks are written as soon as it has run
        by_setting, walls = {}, {}
        for name in settings:
            records, walls[name] = (run_command(root, args, grids[args], name, out, cache, seeds, keep_stale, log) if run
                                    else collect(args, grids[args], name, out))
            if records:
                by_setting[name] = records
        if settings[0] not in by_setting:
            raise ConfigError(f"`kdbench run {args}` has no finished run under CPU setting {settings[0]} in {out}")
        body = render_block(args, by_setting, machines, walls)
        for path, block_args in blocks.items():
            if args in block_args:
                write_block(path, args, body, log)
                written.append(path)
                log(f"kdbench report: wrote {path}")
    return list(dict.fromkeys(written))


def plugin_name(args):
    """The plugin folder name a block's run arguments start with (``hinton``)."""
    try:
        return Path(shlex.split(args)[0]).name
    except (ValueError, IndexError):
        raise ConfigError(f"a README block's run arguments {args!r} do not start with a plugin folder") from None


def write_block(path, args, body, log=print):
    """Replace the body of every block of ``path`` that runs ``args``; every other byte stays.
    Read, replaced and written (atomically: a temporary file renamed over it) under a lock on the
    README's folder, so two reports writing one README keep both their blocks."""
    target = path.resolve()  # a README that is a symlink: the file it names is rewritten
    with folder_lock(target.parent, f"kdbench report: waiting for another report writing {path}", log):
        data = target.read_bytes()
        blocks, problem = scan(path, data)
        if problem:  # the file changed since the check before the runs
            raise ConfigError(problem)
        pieces, done = [], 0
        for block_args, start, end in blocks:
            if block_args == args:
                pieces += [data[done:start], body.encode() + b"\n"]
                done = end
        pieces.append(data[done:])
        tmp = store.temp_path(target)
        try:
            tmp.write_bytes(b"".join(pieces))
            os.chmod(tmp, stat.S_IMODE(target.stat().st_mode))
            os.replace(tmp, target)
        except OSError as exc:
            raise ConfigError(f"cannot write {path}: {exc.strerror or exc}; it is unchanged") from None
        finally:
            tmp.unlink(missing_ok=True)


@contextmanager
def folder_lock(folder, waiting, log):
    """Hold an exclusive lock on ``folder`` (flock on the folder itself: no lock file is left in
    the user's tree); logs ``waiting`` when another process holds it."""
    handle = os.open(folder, os.O_RDONLY)
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log(waiting)
            fcntl.flock(handle, fcntl.LOCK_EX)
        yield
    finally:
        os.close(handle)  # releases the lock
