"""What a grid will cost, before it runs: ``python -m kdbench run ... --dry-run``.

For every cell it lists the seeds to run (and those already finished in --out), the student's
parameters, the teacher it needs and whether the cache has it, and an estimate of the wall time,
measured on the chosen device: a few real training steps of each distinct (model, method and its
options, batch, data) are timed through the engine (``engine.prepare``, its data stream and
``engine.train_step``), plus one validation pass, and extrapolated by the engine's rules (steps per
epoch, evaluation schedule, post-hoc epochs, test phases). Teachers to train are timed with their
real initialisation; teachers that are files (--teacher PATH, shipped, downloaded) are loaded and
checked as ``run`` loads them, so a bad one stops the dry run with run's error; teachers a method
loads itself through ``ctx.load_teacher`` (gankd's feature classifier) are found the same way.
Nothing is written to the teacher cache or to --out.
"""
import statistics
import tempfile
import time
from pathlib import Path

import torch

from kdbench import engine, store
from kdbench.errors import KDBenchError
from kdbench.measure import count_params, device_name, synchronize
from kdbench.spec import config_hash, model_options, resolve_teacher
from kdbench.teachers import META, WEIGHTS, TeacherCache, default_cache_dir, sha256_file, shipped_folder, teacher_key

# A step is timed after one warm-up step (allocations, kernel selection), repeatedly until both
# MIN_STEPS steps and MIN_SECONDS have been timed, or MAX_SECONDS have passed; the median step
# is the estimate (a burst of load from other processes moves it less than the mean). A first
# step slower than MAX_SECONDS is itself the measurement (the warm-up is small beside it).
MIN_STEPS, MIN_SECONDS, MAX_SECONDS = 3, 2.0, 10.0


class Planner:
    def __init__(self, registry, device, scratch, cache="", teacher_path="", stores=()):
        self.registry = registry
        self.stores = stores
        self.device = device
        self.cache_root = (Path(cache).expanduser() if cache else default_cache_dir()) / "teachers"
        # loads the teachers that are files (--teacher PATH, shipped, downloaded) as run does, with
        # its checks and errors; what a load writes (evaluation output) goes to the folder ``scratch``
        self.data = engine.DataCache(registry)  # its own: timing changes a bundle's state in place
        self.files = TeacherCache(scratch, registry, device, stores=stores, data=self.data)
        self.teacher_path = teacher_path
        self.timings = {}  # what shapes a run's cost -> Timing
        self.teachers = {}  # cache key -> {"spec", "cached", "params", "timing", "used_by"}
        self.stand_ins = {}  # cache key -> engine.Teacher at its real initialisation (timing only)

    # -- teachers -------------------------------------------------------------------------------

    def teacher(self, spec, used_by):
        """The teacher of ``spec`` for timing: a file (--teacher PATH, a shipped or an already
        downloaded one) loaded and checked as ``run`` loads it, so that a bad one is the same error
        here; else a stand-in (its model and its method's extra modules at their initialisation).
        Notes whether the cache holds it and what training it costs."""
        key = teacher_key(spec)
        if key not in self.teachers:
            folder = self.cache_root / key
            given = bool(spec.get("path") or spec.get("url"))  # --teacher PATH or a URL: loaded, never trained
            shipped = not given and shipped_folder(self.stores, key) is not None
            cached = given or shipped or ((folder / WEIGHTS).is_file() and (folder / META).is_file())
            entry = {"spec": spec, "cached": cached, "used_by": [], "key": key, "given": given, "shipped": shipped}
            real = self.load_file(spec, shipped)
            self.teachers[key] = entry
            with engine.preserved_rng():
                method, ctx, timing = self.time_training(
                    role="teachers", model_spec={"model": spec["model"]} | model_options(spec), method_name=spec["method"],
                    method_options=spec["method_options"], data_cfg=spec["data"], train_cfg=spec["train"])
            entry["params"] = count_params(ctx.student)
            entry["timing"] = timing
            self.stand_ins[key] = real or engine.Teacher(ctx.student, {n: m for n, m in ctx.modules.items() if n != "student"},
                                                         {"model": spec["model"], "params": entry["params"], "metrics": {}})
        if used_by not in self.teachers[key]["used_by"]:
            self.teachers[key]["used_by"].append(used_by)
        return self.stand_ins[key]

    def load_file(self, spec, shipped):
        """The teacher in a file, loaded as ``run`` loads it (and failing as it fails), or None
        when it is to be trained, or given by a URL not downloaded yet (a dry run downloads nothing)."""
        downloaded = self.cache_root / "downloads" / f"{spec.get('sha256')}.pt"
        try:
            if spec.get("url"):
                if not downloaded.is_file() or sha256_file(downloaded) != spec["sha256"]:
                    return None  # run downloads it (again) before anything else
                return self.files.load_file(spec, downloaded, spec["sha256"], f"teacher {spec['url']}")
            return self.files.get(spec) if spec.get("path") or shipped else None
        except KDBenchError as exc:  # the message run stops with
            raise KDBenchError(f"teacher {spec['model']}: {exc}") from None

    def loader(self, data_cfg, used_by):
        """``ctx.load_teacher`` for the timed runs: a stand-in, never the cache."""
        return lambda partial: self.teacher(resolve_teacher(self.registry, partial, data_cfg), used_by)

    # -- timing ---------------------------------------------------------------------------------

    def time_training(self, *, role, model_spec, method_name, method_options, data_cfg, train_cfg, teacher=None):
        """(method, ctx, timing) of one configuration, built through the engine; the timing is
        measured once per distinct (model, method and options, batch, threads, data, teacher)."""
        key = config_hash({"role": role, "model": model_spec, "method": method_name, "options": method_options,
                           "batch": train_cfg["batch_size"], "threads": train_cfg["threads"], "amp": train_cfg["amp"],
                           "data": data_cfg, "teacher": teacher_key_of(teacher)})
        with tempfile.TemporaryDirectory(prefix="kdbench-plan-") as run_dir:
            method, ctx = engine.prepare(
                registry=self.registry, role=role, model_spec=model_spec, method_name=method_name,
                method_options=method_options, data_cfg=data_cfg, data_cache=self.data, train_cfg=train_cfg, seed=0, device=self.device,
                run_dir=run_dir, teacher=teacher, teacher_loader=self.loader(data_cfg, f"{method_name} ({role[:-1]})"))
            try:
                if key not in self.timings:
                    with engine.cpu_threads(train_cfg["threads"], self.device):
                        self.timings[key] = measure_steps(method, ctx)
            finally:
                engine.teardown(method, ctx)
        return method, ctx, self.timings[key]

    def cell(self, cell, seeds, out):
        config = cell.config
        method_cls = self.registry.get("methods", cell.method)
        teacher = None
        if method_cls.needs_teacher:
            spec = config["teacher"] | ({"path": self.teacher_path} if self.teacher_path else {})
            teacher = self.teacher(spec, cell.name)
        method_options = {k: v for k, v in config["method"].items() if k != "name"}
        _, ctx, timing = self.time_training(
            role="students", model_spec=config["student"], method_name=cell.method, method_options=method_options,
            data_cfg=config["data"], train_cfg=config["train"], teacher=teacher)
        todo = [s for s in seeds if not store.is_finished(store.run_dir(out, cell, s))]
        return {
            "cell": cell.name, "method": cell.method, "student": config["student"]["model"],
            "params": count_params(ctx.student), "epochs": config["train"]["epochs"], "batch": config["train"]["batch_size"],
            "timing": timing, "per_run_s": run_seconds(timing, config["train"]), "seeds": list(seeds), "todo": todo,
        }


def teacher_key_of(teacher):
    return None if teacher is None else id(teacher.model)


def measure_steps(method, ctx):
    """Time training steps (and post-hoc steps, if the method has them) and one validation pass
    of a prepared (method, ctx), through the engine's own step, stream and evaluation."""
    cfg = ctx.train
    steps = engine.steps_per_epoch(method, cfg, ctx.data.info["train_size"])
    ctx.epoch = 0
    step_s = time_steps(method, ctx, "train")
    posthoc_s = 0.0
    if method.posthoc_epochs:  # after the last epoch, from the best snapshot (here: the state reached so far)
        ctx.best = engine.snapshot(ctx, method)
        posthoc_s = time_steps(method, ctx, "posthoc")
    val_s = time_validation(method, ctx)
    return {
        "step_s": step_s, "steps_per_epoch": steps, "posthoc_epochs": method.posthoc_epochs, "posthoc_step_s": posthoc_s,
        "posthoc_steps": engine.batches_per_pass(ctx.data.info["train_size"], cfg["batch_size"]),
        "val_s": val_s, "val_size": ctx.data.size("val"), "test_size": ctx.data.size("test"),
    }


def time_steps(method, ctx, phase):
    """The median seconds of a step in ``phase`` ("train" or "posthoc"), timed as the engine runs it."""
    ctx.phase = phase
    engine.set_train_mode(ctx, True)
    ctx.stream = engine.training_batches(ctx, ctx.train, engine.shuffle_generator(ctx.seed))

    def step():
        start = time.perf_counter()
        engine.train_step(method, ctx, posthoc=phase == "posthoc")
        synchronize(ctx.device)
        return time.perf_counter() - start

    first = step()
    if first > MAX_SECONDS:
        times = [first]
    else:
        times = []
        began = time.perf_counter()
        while (len(times) < MIN_STEPS or sum(times) < MIN_SECONDS) and time.perf_counter() - began < MAX_SECONDS:
            times.append(step())
    ctx.stream = None
    return statistics.median(times)


def time_validation(method, ctx):
    """Seconds of one validation pass: timed on the first evaluation batch of the split and scaled
    by its size, or timed whole (the faster of two warm passes) when that comes to under MIN_SECONDS."""
    full = ctx.data.splits["val"]
    n = min(len(full[1]), ctx.train["eval_batch_size"])
    ctx.data.splits["val"] = (full[0][:n], full[1][:n])
    try:
        part = time_call(lambda: engine.evaluate(method, ctx, "val"), ctx.device)
    finally:
        ctx.data.splits["val"] = full
    if part * len(full[1]) / n >= MIN_SECONDS:
        return part * len(full[1]) / n
    time_call(lambda: engine.evaluate(method, ctx, "val"), ctx.device)  # warm-up
    return min(time_call(lambda: engine.evaluate(method, ctx, "val"), ctx.device) for _ in range(2))


def time_call(fn, device):
    start = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - start


def run_seconds(timing, train_cfg, test_passes=len(engine.TEST_PHASES)):
    """One run: every epoch's steps, the validation passes, the post-hoc epochs, and the test
    passes, a test pass taken as a validation pass scaled by the split sizes."""
    epochs = train_cfg["epochs"]
    val_passes = sum(1 for e in range(epochs) if engine.validates_after(e, train_cfg))
    test_s = timing["val_s"] * timing["test_size"] / max(timing["val_size"], 1)
    posthoc_s = timing["posthoc_epochs"] * timing["posthoc_steps"] * timing["posthoc_step_s"]
    return timing["step_s"] * timing["steps_per_epoch"] * epochs + val_passes * timing["val_s"] + test_passes * test_s + posthoc_s


def estimate(cells, seeds, registry, device, out="runs", cache="", teacher_path="", workers=1):
    """The plan of a grid: cells (with timings), teachers, totals. Trains nothing, writes nothing.
    With ``workers`` processes the runs share the wall time (the longest run at least); teachers
    train first, in the driver."""
    with tempfile.TemporaryDirectory(prefix="kdbench-plan-") as scratch:
        planner = Planner(registry, device, scratch, cache, teacher_path, cells[0].teacher_stores if cells else ())
        rows = [planner.cell(cell, seeds, out) for cell in cells]
    teachers = []
    for entry in planner.teachers.values():
        spec = entry["spec"]
        # training, then measured once on the test set when it is loaded
        train_s = 0.0 if entry["cached"] else run_seconds(entry["timing"], spec["train"], test_passes=len(engine.TEST_PHASES) + 1)
        teachers.append(entry | {"train_s": train_s})
    runs_s = runs_wall_seconds(rows, workers)
    return {
        "device": str(device), "device_name": device_name(device), "threads": torch.get_num_threads(),
        "cells": rows, "teachers": teachers, "seeds": list(seeds), "workers": workers,
        "runs": sum(len(r["todo"]) for r in rows), "finished": sum(len(r["seeds"]) - len(r["todo"]) for r in rows),
        "teachers_s": sum(t["train_s"] for t in teachers), "runs_s": runs_s,
        "total_s": runs_s + sum(t["train_s"] for t in teachers),
    }


def runs_wall_seconds(rows, workers=1):
    """The runs' wall time: one after another, or shared by ``workers`` processes (but never less
    than the longest run)."""
    total = sum(r["per_run_s"] * len(r["todo"]) for r in rows)
    return max([total / workers] + [r["per_run_s"] for r in rows if r["todo"]]) if workers > 1 else total


def duration(seconds):
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds}s"
    minutes, s = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{s:02d}s"
    hours, m = divmod(minutes, 60)
    if hours < 48:
        return f"{hours}h{m:02d}m"
    return f"{hours / 24:.1f} days"


def render(plan, cache_root):
    from tabulate import tabulate

    lines = [f"kdbench: dry run on {plan['device']} ({plan['device_name']}, {plan['threads']} CPU threads): "
             f"{len(plan['cells'])} cell(s) x {len(plan['seeds'])} seed(s) = {plan['runs']} run(s) to do"
             + (f", {plan['finished']} already finished in --out" if plan["finished"] else ""), ""]
    rows = []
    for t in plan["teachers"]:
        spec, timing = t["spec"], t["timing"]
        status = "given (path or URL)" if t["given"] else "shipped" if t["shipped"] else "cached" if t["cached"] else "to train"
        rows.append([spec["model"], spec["method"], t["key"], f"{t['params']:,}", status,
                     f"{spec['train']['epochs']} x {timing['steps_per_epoch']}", spec["train"]["batch_size"],
                     f"{timing['step_s'] * 1000:.1f}", duration(t["train_s"]) if not t["cached"] else "-",
                     ", ".join(sorted(set(u.split("__")[0] for u in t["used_by"])))])
    if rows:
        lines.append(f"teachers (cache: {cache_root}):")
        lines.append(tabulate(rows, headers=["model", "trained by", "key", "params", "status", "epochs x steps",
                                             "batch", "ms/step", "est. training", "used by"], tablefmt="github"))
        lines.append("")
    rows = []
    for r in plan["cells"]:
        timing = r["timing"]
        rows.append([r["cell"], r["student"], f"{r['params']:,}", f"{r['epochs']} x {timing['steps_per_epoch']}", r["batch"],
                     f"{timing['step_s'] * 1000:.1f}", f"{timing['val_s']:.1f}", duration(r["per_run_s"]),
                     f"{len(r['todo'])}/{len(r['seeds'])}", duration(r["per_run_s"] * len(r["todo"]))])
    lines.append("cells:")
    lines.append(tabulate(rows, headers=["cell", "student", "params", "epochs x steps", "batch", "ms/step",
                                         "val pass s", "per run", "runs to do", "cell total"], tablefmt="github"))
    lines += [
        "",
        f"estimate: {duration(plan['total_s'])} ({plan['total_s']:.0f} s) in all (teachers {duration(plan['teachers_s'])}, runs {duration(plan['runs_s'])}), "
        + (f"{plan['workers']} runs at a time (--workers), each as fast as timed here" if plan["workers"] > 1
           else "one run after another") + f" on this {plan['device']} device",
        "assumptions: each (model, method and options, batch, data) had its training steps timed here (the median "
        f"after one warm-up step; {MIN_STEPS}+ steps and {MIN_SECONDS:.0f}s, or {MAX_SECONDS:.0f}s at most) with the teacher at its initialisation; a run "
        "is epochs x steps at that rate, plus its validation passes (one timed, or its first batch scaled by the split "
        "size) and 2 test passes scaled from it by split size (a teacher: 3); not counted: data loading, checkpoints, the throughput/latency "
        "measurement, other processes sharing the device. Nothing was trained into the cache, no records written.",
    ]
    return "\n".join(lines)


def dry_run(cells, seeds, registry, options, workers=1):
    """What ``run --dry-run`` prints."""
    device = engine.resolve_device(options.device)
    plan = estimate(cells, seeds, registry, device, options.out, options.cache, options.teacher_path, workers)
    cache_root = (Path(options.cache).expanduser() if options.cache else default_cache_dir()) / "teachers"
    return plan, render(plan, cache_root)


