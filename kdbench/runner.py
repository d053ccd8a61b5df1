"""Running the cells of a grid: one job per (cell, seed), through an executor.

The driver skips finished records, hands the rest to the executor, and writes each record
the executor returns; a failed job is recorded with its error and the grid goes on.
"""
import collections
import dataclasses
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
from kdbench.executors import WorkerLost, driver_gone


@dataclasses.dataclass
class RunOptions:
    out: str = "runs"
    cache: str = ""  # "" -> KDBENCH_CACHE or ~/.cache/kdbench
    device: str = "auto"
    force: bool = False
    teacher_path: str = ""
    strict_plugins: bool = False
    keep_stale: bool = False  # reuse finished records whose identity changed, marked "stale"
    loggers: tuple = ()  # names of registered loggers (--log), each given every run


@dataclasses.dataclass
class Job:
    """One (cell, seed): plain and picklable, so any executor can ship it. ``identity`` is what the
    driver expects the run to use (see ``identity``); the record states what it really used."""

    cell: object
    seed: int
    options: RunOptions
    identity: dict = None

    @property
    def folder(self):
        return store.run_dir(self.options.out, self.cell, self.seed)


@dataclasses.dataclass
class TeacherJob:
    """Train or verify one teacher before the grid fans out (see ``teacher_checksum``)."""

    spec: dict
    plugin_dirs: tuple
    options: RunOptions
    stores: tuple = ()  # the experiment's shipped teachers


def run_grid(cells, seeds, options, executor=None, log=print):
    """Run every (cell, seed) without a finished record of the same identity (see ``plan``).
    Returns (records, all_ok).

    A run whose folder another process has locked (it is running it) is skipped; once the rest
    are done, it is waited for, and reused if that process finished it, or run here if not."""
    from kdbench.executors import LocalExecutor

    executor = executor or LocalExecutor()
    from kdbench.teachers import default_cache_dir

    for experiment in {cell.experiment for cell in cells}:  # before any teacher trains: no write leaves --out
        store.check_inside(Path(options.out) / experiment, options.out)
    cache = Path(options.cache).expanduser() if options.cache else default_cache_dir()
    store.check_inside(cache, cache)  # nor the teacher cache
    jobs, records = plan(cells, seeds, options, executor, log)
    progress = GridProgress(len(jobs))
    log = progress.wrap(log)
    all_ok, count, pending = True, 0, jobs
    while pending:
        busy = []
        for job, record in executor.map(run_job, pending):
            if isinstance(record, WorkerLost):  # recorded here, as its own process would have
                record = record_base(job) | {"status": "failed", "error": f"WorkerLost: {record}"}
                store.write_record(job.folder, record)
            if record is None:
                log(f"kdbench: {job.cell.name} seed {job.seed}: another process is running it; skipped for now")
                busy.append(job)
                continue
            count += 1
            progress.update(count)
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
            progress.update(count)
            records.append(record)
            log(f"[{count}/{len(jobs)}] {job.cell.name} seed {job.seed}: finished by another process: {headline(record)}")
    progress.close()
    return records, all_ok and all(r["status"] == "ok" for r in records)


class GridProgress:
    """On a terminal (stderr, unless KDBENCH_QUIET), one line for the whole grid, updated as each
    run finishes: "[7/18 runs] 2m13s elapsed, ~3m40s left". Runs' own bars show below it."""

    def __init__(self, total):
        self.total, self.started, self.bar = total, time.monotonic(), None
        if total and sys.stderr.isatty() and not os.environ.get("KDBENCH_QUIET"):
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, bar_format="{desc}", file=sys.stderr, dynamic_ncols=True)
            self.update(0)

    def update(self, done):
        if self.bar is not None:
            self.bar.set_description_str(progress_line(done, self.total, time.monotonic() - self.started))

    def wrap(self, log):
        """``log``, printing above the progress line instead of through it."""
        if self.bar is None:
            return log

        def write(message):
            with self.bar.external_write_mode():
                log(message)

        return write

    def close(self):
        if self.bar is not None:
            self.bar.close()


def progress_line(done, total, elapsed):
    from kdbench.plan import duration

    left = f"~{duration(elapsed / done * (total - done))} left" if done else "time left: after the first run"
    return f"[{done}/{total} runs] {duration(elapsed)} elapsed, {left}"


def finished_record(job, log=print):
    """The job's finished ("ok") record of the same identity, else None; an unreadable one is
    never trusted."""
    try:
        record = store.load_record(job.folder)
    except store.UnreadableRecord as exc:
        log(f"kdbench: record {exc}; running it again")
        return None
    if record is None or record["status"] != "ok":
        return None
    if job.identity is not None and stale_reason(record.get("identity"), job.identity):
        return None  # not this run any more: it is done again
    return record


def plan(cells, seeds, options, executor, log):
    """(jobs to run, finished records reused). A finished record is reused while its identity
    matches the run's; a stale one is rerun, or with --keep-stale kept and marked "stale"."""
    teachers, failed_teachers = resolve_teachers(cells, options, executor, log)
    jobs, records, reasons, stale, kept = [], [], collections.Counter(), 0, 0
    for cell in cells:
        registry = registry_for(tuple(cell.plugin_dirs), options.strict_plugins)
        for seed in seeds:
            expected = identity(cell, seed, registry, teachers.get(cell.id), *executor.placement(options))
            job = Job(cell, seed, options, expected)
            try:
                record = None if options.force else store.load_record(job.folder)
            except store.UnreadableRecord as exc:
                log(f"kdbench: record {exc}; running it again")
                record = None
            if record is None or record["status"] != "ok":
                jobs.append(job)
                continue
            reason = stale_reason(record.get("identity"), expected)
            if cell.id in failed_teachers:  # its teacher cannot be had now: keep the record as it is
                reason = record.get("stale")
            elif reason and not options.keep_stale:
                reasons.update(reason.split("; "))
                stale += 1
                jobs.append(job)
                continue
            if record.get("stale") != reason:  # marked when kept stale, cleared when it matches again
                record = {k: v for k, v in record.items() if k != "stale"} | ({"stale": reason} if reason else {})
                store.write_record(job.folder, record)
            kept += bool(reason)
            records.append(record)
    if records:
        log(f"kdbench: {len(records)} finished run(s) reused from {options.out} (--force redoes them)"
            + (f"; {kept} of them stale, kept by --keep-stale and marked" if kept else ""))
    if stale:
        why = ", ".join(f"{reason} ({n})" for reason, n in reasons.most_common())
        log(f"kdbench: {stale} stale run(s) rerun: {why} (--keep-stale keeps them)")
    return jobs, records


# ---------------------------------------------------------------------------------------------
# Run identity: a record is reused only while everything that determines its result is unchanged.


def identity(cell, seed, registry, teacher_sha256, device_type, threads):
    """What determines a run's result: its config and seed, the checkpoint of the teacher it uses
    (sha256; None without one), the fingerprints of the plugins that supply its components, and
    where it runs: the device type and, on CPU, the intra-op thread count (float sums depend on it;
    ``threads`` is the executor's count per cell, used when the cell leaves train.threads at 0)."""
    from kdbench.spec import config_hash

    threads = cell.config["train"]["threads"] or threads
    processes = distributed.world_size()  # DDP processes sharing each global batch
    return {
        "config": config_hash(cell.config), "seed": seed, "teacher": teacher_sha256,
        "plugins": {name: info["fingerprint"] for name, info in cell_plugins(cell, registry).items()},
        "device": device_type, "threads": threads if device_type == "cpu" else None,
    } | ({"processes": processes} if processes > 1 else {})


def cell_plugins(cell, registry):
    """The plugins whose code a cell runs: the built-ins (the engine) and those that supply its
    method, student model, dataset and (for methods that use one) teacher model. Models a method
    builds for itself (its generators) come from its own plugin in practice, so its fingerprint
    covers them."""
    from kdbench.plugins import BUILTIN

    config = cell.config
    names = {BUILTIN, registry.plugin_of("methods", cell.method), registry.plugin_of("datasets", config["data"]["name"]),
             registry.model_plugin("students", config["student"]["model"])}
    if registry.get("methods", cell.method).needs_teacher:
        names.add(registry.model_plugin("teachers", config["teacher"]["model"]))
    return {name: registry.plugins[name] for name in sorted(names) if name in registry.plugins}


def stale_reason(recorded, expected):
    """Why a finished record no longer stands for this run ("; "-joined), or None."""
    if not recorded:
        return "recorded before kdbench tracked run identity"
    from kdbench.plugins import BUILTIN

    reasons = []
    if (recorded.get("config"), recorded.get("seed")) != (expected["config"], expected["seed"]):
        reasons.append("config changed")
    if recorded.get("teacher") != expected["teacher"]:
        reasons.append("teacher changed")
    if (recorded.get("device"), recorded.get("threads")) != (expected["device"], expected["threads"]):
        reasons.append("device or thread count changed")
    if recorded.get("processes", 1) != expected.get("processes", 1):
        reasons.append("number of DDP processes changed")
    old, new = recorded.get("plugins", {}), expected["plugins"]
    for name in sorted(set(old) | set(new)):
        if old.get(name) == new.get(name):
            continue
        if name == BUILTIN:
            reasons.append("kdbench code changed")
        elif name not in old:
            reasons.append(f"plugin {name!r} now supplies a component")
        elif name not in new:
            reasons.append(f"plugin {name!r} no longer supplies a component")
        else:
            reasons.append(f"plugin {name!r} code changed")
    return "; ".join(reasons) or None


def resolve_teachers(cells, options, executor, log):
    """({cell id: sha256 of its teacher's checkpoint}, {ids of cells whose teacher failed}) for the
    cells whose method uses a teacher. Every distinct teacher is trained into the cache if missing,
    or verified, before any cell runs: reuse needs its hash, and workers then only load it."""
    users = {}  # teacher spec as JSON -> ids of the cells that use it
    jobs = []
    for cell in cells:
        registry = registry_for(tuple(cell.plugin_dirs), options.strict_plugins)
        if not registry.get("methods", cell.method).needs_teacher:
            continue
        spec = cell.config["teacher"] | ({"path": options.teacher_path} if options.teacher_path else {})
        key = json.dumps(spec, sort_keys=True, default=str)
        if key not in users:
            users[key] = []
            jobs.append(TeacherJob(spec, tuple(cell.plugin_dirs), options, tuple(cell.teacher_stores)))
        users[key].append(cell.id)
    hashes, failed = {}, set()
    for job, result in executor.map_teachers(teacher_checksum, jobs):
        ids = users[json.dumps(job.spec, sort_keys=True, default=str)]
        if isinstance(result, WorkerLost):
            result = {"error": f"teacher {job.spec['model']}: WorkerLost: {result}"}
        if "sha256" in result:
            hashes.update(dict.fromkeys(ids, result["sha256"]))
        elif result.get("given"):  # the user's file (path or URL) or a shipped one: bad input stops the grid before training
            raise KDBenchError(result["error"])
        else:  # its cells fail with this error when they run; the rest of the grid goes on
            log(f"kdbench: {result['error']}")
            failed.update(ids)
    return hashes, failed


def teacher_checksum(job):
    """The sha256 of a teacher, trained into the cache first if it is missing ({"error": ...} if that fails)."""
    from kdbench import engine
    from kdbench.teachers import teacher_key

    given = bool(job.options.teacher_path or job.spec.get("url"))
    try:
        registry = registry_for(job.plugin_dirs, job.options.strict_plugins)
        cache = teacher_cache(job.options.cache, registry, engine.resolve_device(job.options.device), job.stores)
        given = given or cache.shipped(teacher_key(job.spec)) is not None
        return {"sha256": cache.checksum(job.spec)}
    except KeyboardInterrupt:
        raise
    except Exception as exc:
        why = str(exc) if isinstance(exc, KDBenchError) else f"{type(exc).__name__}: {exc}"
        return {"error": f"teacher {job.spec['model']}: {why}", "given": given}


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
def teacher_cache(cache, registry, device, stores=()):
    from kdbench.teachers import TeacherCache, default_cache_dir

    return TeacherCache(cache or default_cache_dir(), registry, device, stores=stores)


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
        if driver_gone():  # a worker whose driver died writes nothing more
            os._exit(1)
        store.write_record(job.folder, record)
        return record


def train_job(job):
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
        registry = registry_for(tuple(job.cell.plugin_dirs), job.options.strict_plugins)
        run_loggers = loggers.start(job.options.loggers, registry, folder, base)
        result = train_and_measure(job, on_epoch=lambda row: loggers.log_epoch(run_loggers, row))
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


def train_and_measure(job, on_epoch=None):

    from kdbench import engine, measure
    from kdbench.precision import dtype_name

    if distributed.active() and distributed.is_main():
        distributed.broadcast(job)  # the other ranks train it with this one (see follow)
    cell, options = job.cell, job.options
    registry = registry_for(tuple(cell.plugin_dirs), options.strict_plugins)
    device = engine.resolve_device(options.device)
    cache = teacher_cache(options.cache, registry, device, tuple(cell.teacher_stores))
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


def follow(options):
    """The loop of a DDP rank other than 0: train each job rank 0 hands over, until it says stop."""
    while (job := distributed.broadcast()) is not None:
        try:
            train_and_measure(job)
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
