"""Executors run jobs and hand their records back to the driver.

An executor has one method, ``map(fn, jobs)``, yielding ``(job, fn(job))`` as jobs finish.
Jobs and records are plain picklable data, so a cluster executor (Ray, SLURM) only has to
ship them; the job writes its record under its run folder's lock (a shared file system).
"""


class LocalExecutor:
    """Runs jobs one after another in this process (teachers and data are loaded once)."""

    def map(self, fn, jobs):
        for job in jobs:
            yield job, fn(job)
