"""Executing one job: train and measure one (cell, seed) in this process, into its record."""
import functools
import json
import os
import platform
import socket
import sys
import time
import traceback
from pathlib import Path

from kdbench import distributed, store
from kdbench.errors import KDBenchError
from kdbench.executors import driver_gone
from kdbench.identity import cell_plugins, finished_record, identity


def run_job(session, job):
    """Train and measure one (cell, seed) in this process's ``session`` under its run folder's
    lock, and write its record. Returns the record, or None at once when another process holds the lock."""
    with store.file_lock(job.folder / store.LOCK, wait=False) as held:
        if not held:
            return None
        finished = None if job.options.force else finished_record(job, log=lambda msg: None)
        if finished is not None:  # another process finished it since the driver looked
            return finished
        record = train_job(session, job)
        if driver_gone():  # a worker whose driver died writes nothing more
            os._exit(1)
        store.write_record(job.folder, record)
        return record


def train_job(session, job):
    """Train and measure one (cell, seed); always returns a record, failed or ok."""
    started = time.time()
    folder = job.folder
    base = record_base(job)
    previous = store.read_json(folder / store.CONFIG)
    if job.identity and previous and previous.get("identity") != job.identity:
        from kdbench.engine import CHECKPOINT

        (folder / CHECKPOINT).unlink(missing_ok=True)  # its epochs came from other code or another teacher
    store.write_json(folder / store.CONFIG, base)
    from kdbench import loggers

    run_loggers = []
    try:
        run_loggers = loggers.start(job.options.loggers, session.registry, folder, base)
        result = train_and_measure(session, job, on_epoch=lambda row: loggers.log_epoch(run_loggers, row))
        status = {"status": "ok"}
    except KeyboardInterrupt:
        raise
    except Exception as exc:  # recorded; the grid goes on
        (folder / "error.txt").write_text(traceback.format_exc())
        one_line = str(exc).splitlines()[0] if str(exc) else ""
        result, status = {}, {"status": "failed", "error": f"{type(exc).__name__}: {one_line}"}
        if not isinstance(exc, KDBenchError):
            status["error"] += f" (traceback in {folder / 'error.txt'})"
    record = base | result | status
    record["provenance"] = base["provenance"] | result.get("provenance", {}) | {"wall_time_s": time.time() - started}
    loggers.finish(run_loggers, record)
    return record


def record_base(job):
    """What every record of ``job`` says, finished or failed."""
    return {
        "experiment": job.cell.experiment, "cell_id": job.cell.id, "cell_name": job.cell.name,
        "labels": job.cell.labels, "method": job.cell.method, "baseline": job.cell.baseline, "seed": job.seed, "config": job.cell.config,
        "run_dir": str(job.folder), "identity": job.identity, "provenance": provenance(job.options),
    }


def train_and_measure(session, job, on_epoch=None):
    from kdbench import engine, measure
    from kdbench.precision import dtype_name

    if distributed.active() and distributed.is_main():
        distributed.broadcast(job)  # the other ranks train it with this one (see follow)
    cell, options = job.cell, job.options
    registry, device, cache = session.registry, session.device, session.teacher_cache(cell.teacher_stores)
    config = cell.config
    method_cls = registry.get("methods", cell.method)
    teacher_spec = config["teacher"]
    if teacher_spec is not None and options.teacher_path:
        teacher_spec = teacher_spec | {"path": options.teacher_path}
    teacher = cache.get(teacher_spec) if method_cls.needs_teacher else None
    prepare = functools.partial(
        engine.prepare,
        registry=registry, role="students", model_spec=config["student"], method_name=cell.method,
        method_options={k: v for k, v in config["method"].items() if k != "name"}, data_cfg=config["data"], data_cache=session.data,
        train_cfg=config["train"], seed=job.seed, device=device, run_dir=job.folder, teacher=teacher,
        teacher_loader=cache.get_partial(config["data"]), ddp=distributed.active(),
    )
    method, ctx, result = engine.prepare_and_train(prepare, cell.name, on_epoch, afresh=f"starting {cell.name} seed {job.seed}")
    if not distributed.is_main():
        return {}  # rank 0 measures and records
    student = ctx.modules["student"]  # the bare model (under DDP ctx.student is its wrapper)
    params = measure.count_params(student)
    teacher_info = teacher.info if teacher else None
    if teacher_info is None and teacher_spec is not None:  # scratch rows still show the size ratio
        teacher_info = {"model": teacher_spec["model"], "params": teacher_params(registry, teacher_spec, ctx.data.info)}
    speed = measure.speed(student, method.example_input, device, config["train"]["amp"], config["measure"])
    if teacher is not None:  # timed like the student, so the two speeds compare
        teacher_info = teacher_info | {"speed": teacher_speed(
            job, teacher_info["sha256"], device, lambda: measure.speed(teacher.model, method.example_input, device, config["train"]["amp"], config["measure"]))}
    threads = result["threads"] if device.type == "cpu" else None
    used = identity(cell, job.seed, registry, teacher.info["sha256"] if teacher else None, device.type, threads)
    return {
        "identity": used,  # what this run really used (the driver's expectation is in config.json)
        "provenance": {"plugins": cell_plugins(cell, registry)},  # merged into run_job's
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
        "precision": dtype_name(device, config["train"]["amp"]),
        "device": str(device),
        "train_threads": threads,
    }


TEACHER_SPEEDS = "teacher-speeds.json"



def teacher_speed(job, sha256, device, measure_speed):
    """The teacher's speed as its experiment folder first measured it (``measure_speed()``, under
    the same conditions): every record, and so every leaderboard, of a folder shows one measurement
    of each teacher, whichever process or command made the record."""
    import torch

    path = Path(job.options.out) / job.cell.experiment / TEACHER_SPEEDS
    key = json.dumps([sha256, job.cell.config["measure"], job.cell.config["train"]["amp"], str(device), torch.get_num_threads()])
    with store.file_lock(path.with_suffix(".lock")):
        speeds = store.read_json(path) or {}
        if key not in speeds:
            speeds[key] = measure_speed()
            store.write_json(path, speeds)
    return speeds[key]


def follow(session):
    """The loop of a DDP rank other than 0: train each job rank 0 hands over, until it says stop."""
    while (job := distributed.broadcast()) is not None:
        try:
            train_and_measure(session, job)
        except Exception as exc:  # rank 0 fails the same way and records it
            print(f"kdbench: rank {distributed.rank()}: {job.cell.name} seed {job.seed}: {type(exc).__name__}: {exc}", file=sys.stderr)


def teacher_params(registry, spec, data_info):
    from kdbench.measure import count_params
    from kdbench.spec import model_options

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
