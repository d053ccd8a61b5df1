"""Executors run jobs and hand their results back to the driver: LocalExecutor (one after
another in this process), ProcessExecutor (--workers N) and RayExecutor (--executor ray).

An executor has two methods: ``map(fn, jobs, session)`` yields ``(job, fn(session, job))`` as
jobs finish, ``session`` being the driver's (kdbench.session) or one each worker process builds
from its spec (or ``(job, WorkerLost(...))`` for a job whose worker died under it), and ``placement(options)``
says where each job will run: (device type, intra-op CPU threads per job), part of a run's
identity; ``check_shared(paths)`` checks that its workers see the given folders;
``map_teachers(fn, jobs, session)`` is ``map`` for the teachers the driver trains before the grid fans out. Jobs and
records are plain picklable data, so a cluster executor only has to ship them; a job writes its
record under its run folder's lock, and a remote one's record is written again by the driver.
"""
import collections
import os
import signal
import sys
from pathlib import Path

from kdbench.errors import ConfigError


class WorkerLost(Exception):
    """The process running a job died (killed, out of memory) before it returned."""


class LocalExecutor:
    """Runs jobs one after another in this process (teachers and data are loaded once)."""

    def map(self, fn, jobs, session):
        for job in jobs:
            yield job, fn(session, job)

    map_teachers = map

    def check_shared(self, paths):
        """Nothing to check: the jobs run on this machine."""

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

    def check_shared(self, paths):
        """Nothing to check: the jobs run on this machine."""

    def placement(self, options):
        from kdbench.engine import resolve_device

        return resolve_device(options.device).type, self.threads

    def map_teachers(self, fn, jobs, session):
        """Teachers train here, in the driver, on all its threads, as without workers: a teacher's
        floats depend on its thread count, and it must not depend on --workers."""
        return LocalExecutor().map(fn, jobs, session)

    def map(self, fn, jobs, session):
        import multiprocessing
        from multiprocessing.connection import wait

        context = multiprocessing.get_context("spawn")
        todo, idle, busy, lost = collections.deque(jobs), [], {}, collections.Counter()
        try:
            while todo or busy:
                while todo and len(busy) < self.workers:
                    process, conn = idle.pop() if idle else self.start(context, fn, session.spec)
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
        finally:  # the idle workers are told to stop; on Ctrl-C or an error the busy ones are ended
            for process, conn in idle:
                conn.close()  # the worker's recv() sees EOF and it exits
            for process, _ in busy.values():
                process.terminate()  # its run's checkpoint stays for the rerun to resume
            for process, conn in list(busy.values()) + idle:
                process.join(timeout=5)
                if process.is_alive():
                    process.kill()
                    process.join()

    def start(self, context, fn, spec):
        parent, child = context.Pipe()
        process = context.Process(target=worker_loop, args=(child, fn, self.threads, os.getpid(), spec), daemon=True)
        process.start()
        child.close()  # only the worker holds its end now: its death shows as EOF here
        return process, parent


DRIVER = None  # in a worker process: the pid of the driver it works for


def die_with(driver):
    """End this worker when its driver dies, however it dies (kill -9, SIGTERM from a scheduler):
    on Linux the kernel kills it with the driver (PR_SET_PDEATHSIG); everywhere ``driver_gone``
    tells before anything is written. A driver already gone by now ends it at once."""
    global DRIVER
    DRIVER = driver
    if sys.platform.startswith("linux"):
        import ctypes

        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if driver_gone():
        os._exit(1)


def driver_gone():
    """In a worker: whether its driver has died (the worker was then handed to another parent)."""
    return DRIVER is not None and os.getppid() != DRIVER


def worker_loop(conn, fn, threads, driver, spec):
    """A spawned worker: ``threads`` intra-op threads and no per-run progress bars (the driver
    shows the grid's progress; several bars would fight over one terminal line); runs the jobs it
    is sent in one Session built from ``spec``, until the driver closes the pipe. It dies with the driver, and ignores Ctrl-C: the
    terminal sends it to the driver too, which ends its workers quietly and says how to resume."""
    die_with(driver)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    os.environ["KDBENCH_QUIET"] = "1"
    os.environ["OMP_NUM_THREADS"] = str(threads)
    import traceback

    import torch

    from kdbench.session import Session

    torch.set_num_threads(threads)
    session = Session(spec)
    while True:
        try:
            job = conn.recv()
        except EOFError:
            return
        try:
            conn.send(("ok", fn(session, job)))
        except Exception:  # a bug, not a failed run (run_job records those): the driver stops
            conn.send(("error", traceback.format_exc()))


class RayExecutor:
    """Runs jobs as plain Ray tasks, on the cluster at ``address`` or on a local one sized to this
    machine. Each job asks for ``cpus`` CPUs and ``gpus`` GPUs (fractions allowed); a request
    that no node can meet is refused before anything is submitted. Results stream back as tasks
    finish and the driver writes them into its --out, so workers need no shared --out; a task
    lost with its worker or node is retried (``retries`` times), then handed back as WorkerLost."""

    def __init__(self, address="", cpus=1.0, gpus=0.0, device="auto", retries=3):
        check_ray_options(address, cpus, gpus, device)
        import ray

        self.ray, self.cpus, self.gpus, self.retries = ray, cpus, gpus, retries
        if not ray.is_initialized():
            try:
                if address:
                    ray.init(address=address, log_to_driver=True)
                else:
                    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=True)
            except (ConnectionError, RuntimeError, ValueError) as exc:
                raise ConfigError(f"--ray-address {address or '(local)'}: cannot start or join the Ray cluster: {str(exc).splitlines()[0]}") from None
        self.check_resources()

    def nodes(self):
        return [node for node in self.ray.nodes() if node["Alive"]]

    def check_resources(self):
        """Some node must have ``cpus`` and ``gpus`` for one job, or the tasks would wait forever."""
        sizes = [(node["Resources"].get("CPU", 0), node["Resources"].get("GPU", 0)) for node in self.nodes()]
        if not any(cpu >= self.cpus and gpu >= self.gpus for cpu, gpu in sizes):
            largest = ", ".join(f"{cpu:g} CPUs + {gpu:g} GPUs" for cpu, gpu in sorted(set(sizes), reverse=True)) or "no live node"
            raise ConfigError(f"--cpus-per-cell {self.cpus:g} --gpus-per-cell {self.gpus:g}: no node of the Ray cluster has that "
                              f"(its nodes: {largest}); ask for less, or add nodes")

    def check_shared(self, paths):
        """Every node's workers must see ``paths`` (name -> path) at the same place: a file is
        looked for as it is; into a folder (the teacher cache) a probe file is written first."""
        import secrets

        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        token = f".kdbench-probe-{secrets.token_hex(8)}"
        probes = {name: Path(path) / token if Path(path).is_dir() else Path(path) for name, path in paths.items()}
        written = [probe for probe in probes.values() if probe.name == token]
        for probe in written:
            probe.touch()
        try:
            task = self.ray.remote(missing_paths)
            answers = {}
            for node in self.nodes():
                strategy = NodeAffinitySchedulingStrategy(node["NodeID"], soft=False)
                answers[node["NodeManagerAddress"]] = task.options(num_cpus=0, scheduling_strategy=strategy).remote(
                    {name: str(probe) for name, probe in probes.items()})
            for host, ref in answers.items():
                try:
                    missing = self.ray.get(ref, timeout=120)
                except self.ray.exceptions.GetTimeoutError:
                    raise ConfigError(f"the Ray workers on node {host} did not answer within 120 s; is the cluster healthy?") from None
                if missing:
                    name = missing[0]
                    raise ConfigError(f"the Ray workers on node {host} cannot see the {name} {paths[name]}; put it on storage "
                                      "every node mounts at the same path (see README, 'Parallel and cluster runs')")
        finally:
            for probe in written:
                probe.unlink(missing_ok=True)

    def placement(self, options):
        device = "cuda" if self.gpus and options.device != "cpu" else "cpu"
        return device, max(1, int(self.cpus))

    def map_teachers(self, fn, jobs, session):
        """Teachers train as tasks like the cells (the driver may have no GPU)."""
        return self.map(fn, jobs, session)

    def map(self, fn, jobs, session):
        ray = self.ray
        task = ray.remote(run_task).options(num_cpus=self.cpus, num_gpus=self.gpus, max_retries=self.retries)
        threads = max(1, int(self.cpus))
        spec = shipped_spec(session.spec)
        pending = {task.remote(fn, spec, shipped(job), threads): job for job in jobs}
        try:
            while pending:
                [ref], _ = ray.wait(list(pending), num_returns=1)
                job = pending.pop(ref)
                try:
                    result = ray.get(ref)
                except ray.exceptions.RayTaskError as exc:  # a bug in fn, not a failed run (run_job records those)
                    raise RuntimeError(f"a Ray task failed: {str(exc).splitlines()[0]}") from None
                except ray.exceptions.RayError as exc:  # its worker or node died, also on the last retry
                    result = WorkerLost(f"its Ray task was lost after {self.retries} retries ({type(exc).__name__})")
                yield job, land(job, result)
        finally:  # on Ctrl-C or an error: cancel what has not finished; finished records stay
            for ref in pending:
                ray.cancel(ref, force=True)


def check_ray_options(address, cpus, gpus, device):
    """What --executor ray needs before it starts or joins a cluster (``run --dry-run`` checks it too)."""
    import importlib.util

    if importlib.util.find_spec("ray") is None:
        raise ConfigError("--executor ray needs Ray: pip install -e '.[ray]' (or pip install ray)")
    if cpus <= 0 or gpus < 0:
        raise ConfigError(f"--cpus-per-cell {cpus:g} / --gpus-per-cell {gpus:g}: give cpus > 0 and gpus >= 0")
    if device == "cuda" and not gpus:
        raise ConfigError("--device cuda with --executor ray needs --gpus-per-cell > 0 (Ray hides the GPUs from tasks that ask for none)")
    if "ray" not in sys.modules:  # no cluster joined yet: a dead address fails here, Ray retries it for minutes
        check_reachable(address)


def check_reachable(address, timeout=5):
    """A HOST:PORT Ray address (also ray://HOST:PORT) must answer: Ray itself retries a dead one
    for minutes. ``auto`` and other forms are left to Ray."""
    import socket

    host, colon, port = address.split("://", 1)[-1].rpartition(":")
    if not colon or not port.isdigit():
        return
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as exc:
        raise ConfigError(f"--ray-address {address}: no Ray cluster answers there ({exc.strerror or type(exc).__name__}); "
                          "start one with `ray start --head` and give the address it prints") from None


def shipped_spec(spec):
    """``spec`` with absolute plugin folders and teacher cache, as a worker on any node must read them."""
    import dataclasses

    from kdbench.teachers import default_cache_dir

    return dataclasses.replace(spec, plugin_dirs=tuple(str(Path(d).resolve()) for d in spec.plugin_dirs),
                               cache=str(Path(spec.cache).resolve() if spec.cache else default_cache_dir()))


def shipped(job):
    """``job`` with absolute --out and --cache, as a worker on any node must read them."""
    import dataclasses

    from kdbench.teachers import default_cache_dir

    options = dataclasses.replace(job.options, out=str(Path(job.options.out).resolve()),
                                  cache=str(Path(job.options.cache).resolve() if job.options.cache else default_cache_dir()))
    return dataclasses.replace(job, options=options)


def run_task(fn, spec, job, threads):
    """A Ray task: ``fn(session, job)`` in a Session built from ``spec``, on ``threads`` intra-op threads; a run's record comes back with its
    training curve, so the driver can write both where workers share no --out with it."""
    os.environ["KDBENCH_QUIET"] = "1"
    import torch

    from kdbench.session import Session

    torch.set_num_threads(threads)
    result = fn(Session(spec), job)
    if isinstance(result, dict) and "run_dir" in result:
        history = Path(result["run_dir"]) / "history.jsonl"
        result = {"record": result, "history": history.read_text() if history.exists() else ""}
    return result


def land(job, result):
    """Write a run that came back from another machine into the driver's --out (the same files
    when the storage is shared), and return its record."""
    if not (isinstance(result, dict) and "record" in result and "history" in result):
        return result
    from kdbench import store

    record = result["record"] | {"run_dir": str(job.folder)}
    with store.file_lock(job.folder / store.LOCK, wait=False) as held:
        if held:
            store.write_bytes(job.folder / "history.jsonl", result["history"].encode())
            store.write_record(job.folder, record)
    return record


def missing_paths(probes):
    """On a Ray node: the names of the probe files this node cannot see."""
    return [name for name, path in probes.items() if not Path(path).exists()]
