"""Running the cells of a grid: one job per (cell, seed), through an executor.

The driver skips finished records, hands the rest to the executor, and writes each record
the executor returns; a failed job is recorded with its error and the grid goes on.
"""
import dataclasses
import functools
import json
import platform
import socket
import sys
import time
import traceback
from pathlib import Path

from kdbench import store
from kdbench.errors import CheckpointError, KDBenchError


@dataclasses.dataclass
class RunOptions:
    out: str = "runs"
    cache: str = ""  # "" -> KDBENCH_CACHE or ~/.cache/kdbench
    device: str = "auto"
    force: bool = False
    teacher_path: str = ""
    strict_plugins: bool = False


@dataclasses.dataclass
class Job:
    """One (cell, seed): plain and picklable, so any executor can ship it."""

    cell: object
    seed: int
    options: RunOptions

    @property
    def folder(self):
        return store.run_dir(self.options.out, self.cell, self.seed)


def run_grid(cells, seeds, options, executor=None, log=print):
    """Run every (cell, seed) not already finished. Returns (records, all_ok).

    A run whose folder another process has locked (it is running it) is skipped; once the rest
    are done, it is waited for, and reused if that process finished it, or run here if not."""
    from kdbench.executors import LocalExecutor

    executor = executor or LocalExecutor()
    jobs, records = [], []
    for cell in cells:
        for seed in seeds:
            job = Job(cell, seed, options)
            record = finished_record(job, log)
            if not options.force and record is not None:
                records.append(record)
            else:
                jobs.append(job)
    if records:
        log(f"kdbench: {len(records)} finished run(s) reused from {options.out} (--force redoes them)")
    all_ok, count, pending = True, 0, jobs
    while pending:
        busy = []
        for job, record in executor.map(run_job, pending):
            if record is None:
                log(f"kdbench: {job.cell.name} seed {job.seed}: another process is running it; skipped for now")
                busy.append(job)
                continue
            count += 1
            records.append(record)
            if record["status"] == "ok":
                log(f"[{count}/{len(jobs)}] {job.cell.name} seed {job.seed}: {headline(record)}")
            else:
                all_ok = False
                log(f"[{count}/{len(jobs)}] {job.cell.name} seed {job.seed}: FAILED: {record['error']}")
        pending = []
        for job in busy:
            with store.file_lock(job.folder / store.LOCK):  # until the other process is done with it
                pass
            record = finished_record(job, log)
            if record is None:
                pending.append(job)  # it stopped without finishing: run it here
                continue
            count += 1
            records.append(record)
            log(f"[{count}/{len(jobs)}] {job.cell.name} seed {job.seed}: finished by another process: {headline(record)}")
    return records, all_ok and all(r["status"] == "ok" for r in records)


def finished_record(job, log=print):
    """The job's finished ("ok") record, else None; an unreadable one is never trusted."""
    try:
        record = store.load_record(job.folder)
    except store.UnreadableRecord as exc:
        log(f"kdbench: record {exc}; running it again")
        return None
    if record is None or record["status"] != "ok":
        return None
    return record | {"baseline": job.cell.baseline}  # as the file says now


def headline(record):
    metric = record["selection"]["metric"]
    return f"{metric} last {record['metrics'][metric + '_last']:.2f} / best {record['metrics'][metric + '_best']:.2f} in {record['train_time_s']:.0f}s"


def download_teachers(cells, cache=""):
    """Fetch and verify the teachers given by URL before any training (each once; later runs
    find them in the cache)."""
    from kdbench.teachers import default_cache_dir, download

    root = Path(cache).expanduser() if cache else default_cache_dir()
    wanted = {(c.config["teacher"]["url"], c.config["teacher"]["sha256"]) for c in cells if (c.config["teacher"] or {}).get("url")}
    for url, sha256 in sorted(wanted):
        download(url, sha256, root / "teachers" / "downloads", lambda msg: print(f"kdbench: {msg}", file=sys.stderr))


@functools.lru_cache(maxsize=4)
def registry_for(plugin_dirs, strict):
    from kdbench.plugins import load_registry

    return load_registry(plugin_dirs, strict=strict or None)


@functools.lru_cache(maxsize=4)
def teacher_cache(cache, registry, device):
    from kdbench.teachers import TeacherCache, default_cache_dir

    return TeacherCache(cache or default_cache_dir(), registry, device)


def run_job(job):
    """Train and measure one (cell, seed) in this process under its run folder's lock, and write
    its record. Returns the record, or None at once when another process holds the lock."""
    with store.file_lock(job.folder / store.LOCK, wait=False) as held:
        if not held:
            return None
        finished = None if job.options.force else finished_record(job, log=lambda msg: None)
        if finished is not None:  # another process finished it since the driver looked
            return finished
        record = train_job(job)
        store.write_record(job.folder, record)
        return record


def train_job(job):
    """Train and measure one (cell, seed); always returns a record, failed or ok."""
    started = time.time()
    folder = job.folder
    base = {
        "experiment": job.cell.experiment, "cell_id": job.cell.id, "cell_name": job.cell.name,
        "labels": job.cell.labels, "method": job.cell.method, "baseline": job.cell.baseline, "seed": job.seed, "config": job.cell.config,
        "run_dir": str(folder), "provenance": provenance(job.options),
    }
    store.write_json(folder / store.CONFIG, base)
    try:
        result = train_and_measure(job)
        status = {"status": "ok"}
    except KeyboardInterrupt:
        raise
    except Exception as exc:  # recorded; the grid goes on
        (folder / "error.txt").write_text(traceback.format_exc())
        one_line = str(exc).splitlines()[0] if str(exc) else ""
        result, status = {}, {"status": "failed", "error": f"{type(exc).__name__}: {one_line}"}
        if not isinstance(exc, KDBenchError):
            status["error"] += f" (traceback in {folder / 'error.txt'})"
    base["provenance"]["wall_time_s"] = time.time() - started
    return base | result | status


def train_and_measure(job):

    from kdbench import engine, measure

    cell, options = job.cell, job.options
    registry = registry_for(tuple(cell.plugin_dirs), options.strict_plugins)
    device = engine.resolve_device(options.device)
    cache = teacher_cache(options.cache, registry, device)
    config = cell.config
    method_cls = registry.get("methods", cell.method)
    teacher_spec = config["teacher"]
    if teacher_spec is not None and options.teacher_path:
        teacher_spec = teacher_spec | {"path": options.teacher_path}
    teacher = cache.get(teacher_spec) if method_cls.needs_teacher else None
    prepare = functools.partial(
        engine.prepare,
        registry=registry, role="students", model_spec=config["student"], method_name=cell.method,
        method_options={k: v for k, v in config["method"].items() if k != "name"}, data_cfg=config["data"],
        train_cfg=config["train"], seed=job.seed, device=device, run_dir=job.folder, teacher=teacher,
        teacher_loader=cache.get_partial(config["data"]),
    )
    method, ctx = prepare()
    try:
        result = engine.train(method, ctx, desc=cell.name)
    except CheckpointError as exc:  # an unreadable resume checkpoint: it is gone, start afresh
        print(f"kdbench: {exc}; starting {cell.name} seed {job.seed} afresh", file=sys.stderr)
        method, ctx = prepare()
        result = engine.train(method, ctx, desc=cell.name)
    params = measure.count_params(ctx.student)
    teacher_info = teacher.info if teacher else None
    if teacher_info is None and teacher_spec is not None:  # scratch rows still show the size ratio
        teacher_info = {"model": teacher_spec["model"], "params": teacher_params(registry, teacher_spec, ctx.data.info)}
    speed = measure.speed(ctx.student, method.example_input, device, config["train"]["amp"], config["measure"])
    if teacher is not None:  # timed like the student, so the two speeds compare
        key = ("speed", json.dumps(config["measure"], sort_keys=True))
        if key not in teacher.info:
            teacher.info[key] = measure.speed(teacher.model, method.example_input, device, config["train"]["amp"], config["measure"])
        teacher_info = teacher_info | {"speed": teacher.info[key]}
        teacher_info = {k: v for k, v in teacher_info.items() if not isinstance(k, tuple)}
    return {
        "metrics": result["metrics"],
        "selection": result["selection"],
        "directions": result["directions"],
        "student": {"model": config["student"]["model"], "params": params, "kind": method_cls.student_kind},
        # the method's own modules (regressors, generators, discriminators), never in the student's count
        "method_params": {name: measure.count_params(m) for name, m in ctx.modules.items() if name != "student"},
        "teacher": teacher_info,
        "param_ratio": params / teacher_info["params"] if teacher_info else None,
        "speed": speed,
        "train_time_s": result["train_time_s"],
        "epochs": result["epochs"],
        "steps_per_epoch": result["steps_per_epoch"],
        "precision": "bfloat16" if config["train"]["amp"] and device.type == "cuda" else "float32",
        "device": str(device),
        "train_threads": result["threads"] if device.type == "cpu" else None,
    }


def teacher_params(registry, spec, data_info):
    from kdbench.measure import count_params
    from kdbench.teachers import model_options

    return count_params(registry.build_model("teachers", spec["model"], data_info, **model_options(spec)))


def provenance(options):
    import kdbench

    info = {
        "kdbench": kdbench.__version__, "python": platform.python_version(), "platform": platform.platform(),
        "host": socket.gethostname(), "started": time.strftime("%Y-%m-%dT%H:%M:%S"), "argv": sys.argv,
        "device_option": options.device, "git_commit": git_commit(),
    }
    try:
        import torch

        info["torch"] = torch.__version__
        info["cuda"] = torch.version.cuda
    except ImportError:
        pass
    return info


@functools.lru_cache(maxsize=1)
def git_commit():
    import subprocess

    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None
