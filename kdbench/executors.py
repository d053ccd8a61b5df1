"""Executors run jobs and hand their results back to the driver.

An executor has two methods: ``map(fn, jobs)`` yields ``(job, fn(job))`` as jobs finish (or
``(job, WorkerLost(...))`` for a job whose worker died under it), and ``placement(options)``
says where each job will run: (device type, intra-op CPU threads per job), part of a run's
identity. Jobs and records are plain picklable data, so a cluster executor only has to ship
them; a job writes its record under its run folder's lock (a shared file system).
"""
import collections
import os


class WorkerLost(Exception):
    """The process running a job died (killed, out of memory) before it returned."""


class LocalExecutor:
    """Runs jobs one after another in this process (teachers and data are loaded once)."""

    def map(self, fn, jobs):
        for job in jobs:
            yield job, fn(job)

    def placement(self, options):
        import torch

        from kdbench.engine import resolve_device

        return resolve_device(options.device).type, torch.get_num_threads()


class ProcessExecutor:
    """Runs jobs in ``workers`` spawned processes on this machine, one job per process at a time.
    Each process trains on its share of this process's intra-op threads (at least one), unless a
    cell pins ``train.threads``. A job whose process dies is tried once more in a fresh process;
    lost twice, it is handed back as WorkerLost. The other processes go on."""

    def __init__(self, workers):
        import torch

        self.workers = workers
        self.threads = max(1, torch.get_num_threads() // workers)

    def placement(self, options):
        from kdbench.engine import resolve_device

        return resolve_device(options.device).type, self.threads

    def map(self, fn, jobs):
        import multiprocessing
        from multiprocessing.connection import wait

        context = multiprocessing.get_context("spawn")
        todo, idle, busy, lost = collections.deque(jobs), [], {}, collections.Counter()
        try:
            while todo or busy:
                while todo and len(busy) < self.workers:
                    process, conn = idle.pop() if idle else self.start(context, fn)
                    job = todo.popleft()
                    conn.send(job)
                    busy[conn] = process, job
                wait(list(busy) + [process.sentinel for process, _ in busy.values()])
                for conn, (process, job) in list(busy.items()):
                    if not conn.poll() and process.is_alive():
                        continue  # still working
                    del busy[conn]
                    try:
                        kind, result = conn.recv()
                    except EOFError:  # the process died with the job
                        process.join()
                        lost[id(job)] += 1
                        if lost[id(job)] < 2:
                            todo.appendleft(job)
                            continue
                        kind, result = "ok", WorkerLost(f"its worker process died twice (exit code {process.exitcode}: killed, or out of memory?)")
                    if kind == "error":
                        raise RuntimeError(f"a worker process failed: {result}")
                    idle.append((process, conn))
                    yield job, result
        finally:  # normally the idle workers are told to stop; on Ctrl-C or an error all are ended
            for process, conn in idle:
                conn.close()  # the worker's recv() sees EOF and it exits
            for process, conn in list(busy.values()) + idle:
                process.join(timeout=5)
                if process.is_alive():
                    process.terminate()
                    process.join()

    def start(self, context, fn):
        parent, child = context.Pipe()
        process = context.Process(target=worker_loop, args=(child, fn, self.threads), daemon=True)
        process.start()
        child.close()  # only the worker holds its end now: its death shows as EOF here
        return process, parent


def worker_loop(conn, fn, threads):
    """A spawned worker: ``threads`` intra-op threads and no per-run progress bars (the driver
    shows the grid's progress; several bars would fight over one terminal line); runs the jobs it
    is sent until the driver closes the pipe."""
    os.environ["KDBENCH_QUIET"] = "1"
    os.environ["OMP_NUM_THREADS"] = str(threads)
    import traceback

    import torch

    torch.set_num_threads(threads)
    while True:
        try:
            job = conn.recv()
        except (EOFError, KeyboardInterrupt):
            return
        try:
            conn.send(("ok", fn(job)))
        except Exception:  # a bug, not a failed run (run_job records those): the driver stops
            conn.send(("error", traceback.format_exc()))
