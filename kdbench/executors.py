"""Executors run jobs and hand their results back to the driver.

An executor has two methods: ``map(fn, jobs)`` yields ``(job, fn(job))`` as jobs finish, and
``placement(options)`` says where each job will run: (device type, intra-op CPU threads per job),
part of a run's identity. Jobs and records are plain picklable data, so a cluster executor only
has to ship them; a job writes its record under its run folder's lock (a shared file system).
"""


class LocalExecutor:
    """Runs jobs one after another in this process (teachers and data are loaded once)."""

    def map(self, fn, jobs):
        for job in jobs:
            yield job, fn(job)

    def placement(self, options):
        import torch

        from kdbench.engine import resolve_device

        return resolve_device(options.device).type, torch.get_num_threads()
