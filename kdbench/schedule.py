"""Scheduling the jobs of a grid: one job per (cell, seed), which to run, reuse or rerun (see
``jobs_to_run``), the teachers every job needs before the grid fans out, and the run folders'
locks. The driver skips finished records, hands the rest to an executor, and writes each record
the executor returns; a failed job is recorded with its error and the grid goes on.
"""
import collections
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

from kdbench import store
from kdbench.errors import KDBenchError
from kdbench.executors import WorkerLost
from kdbench.identity import finished_record, identity, stale_reason
from kdbench.job import record_base, run_job


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
    options: RunOptions
    stores: tuple = ()  # the experiment's shipped teachers


def run_grid(session, cells, seeds, options, executor=None, log=print):
    """Run every (cell, seed) without a finished record of the same identity (see ``jobs_to_run``),
    in this process's ``session`` or each worker's. Returns (records, all_ok).

    A run whose folder another process has locked (it is running it) is skipped; once the rest
    are done, it is waited for, and reused if that process finished it, or run here if not."""
    from kdbench.executors import LocalExecutor

    executor = executor or LocalExecutor()
    from kdbench.teachers import default_cache_dir

    for experiment in {cell.experiment for cell in cells}:  # before any teacher trains: no write leaves --out
        store.check_inside(Path(options.out) / experiment, options.out)
    cache = Path(options.cache).expanduser() if options.cache else default_cache_dir()
    store.check_inside(cache, cache)  # nor the teacher cache
    jobs, records = jobs_to_run(session, cells, seeds, options, executor, log)
    progress = GridProgress(len(jobs))
    log = progress.wrap(log)
    all_ok, count, pending = True, 0, jobs
    while pending:
        busy = []
        for job, record in executor.map(run_job, pending, session):
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


def jobs_to_run(session, cells, seeds, options, executor, log):
    """(jobs to run, finished records reused). A finished record is reused while its identity
    matches the run's; a stale one is rerun, or with --keep-stale kept and marked "stale"."""
    teachers, failed_teachers = resolve_teachers(session, cells, options, executor, log)
    jobs, records, reasons, stale, kept = [], [], collections.Counter(), 0, 0
    for cell in cells:
        for seed in seeds:
            expected = identity(cell, seed, session.registry, teachers.get(cell.id), *executor.placement(options))
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


def resolve_teachers(session, cells, options, executor, log):
    """({cell id: sha256 of its teacher's checkpoint}, {ids of cells whose teacher failed}) for the
    cells whose method uses a teacher. Every distinct teacher is trained into the cache if missing,
    or verified, before any cell runs: reuse needs its hash, and workers then only load it."""
    users = {}  # teacher spec as JSON -> ids of the cells that use it
    jobs = []
    for cell in cells:
        if not session.registry.get("methods", cell.method).needs_teacher:
            continue
        spec = cell.config["teacher"] | ({"path": options.teacher_path} if options.teacher_path else {})
        key = json.dumps(spec, sort_keys=True, default=str)
        if key not in users:
            users[key] = []
            jobs.append(TeacherJob(spec, options, tuple(cell.teacher_stores)))
        users[key].append(cell.id)
    hashes, failed = {}, set()
    for job, result in executor.map_teachers(teacher_checksum, jobs, session):
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


def teacher_checksum(session, job):
    """The sha256 of a teacher, trained into the cache first if it is missing ({"error": ...} if that fails)."""
    from kdbench.teachers import teacher_key

    given = bool(job.options.teacher_path or job.spec.get("url"))
    try:
        cache = session.teacher_cache(job.stores)
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
