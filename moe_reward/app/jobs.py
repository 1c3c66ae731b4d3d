"""Long work (embedding an upload, a UMAP fit, training) that runs once, in the background, under a key.

A job registry for one process: the dashboard's pages and reruns all live in one Python process, so a
page that submits "embed upload X" twice (a rerun, another page, another browser session) gets the job
that is already running, and any page can show its progress. Nothing here imports Streamlit.

    job = jobs.submit("embed:" + file_id, lambda report: embed(..., progress=report), "embedding X")
    job.status, job.fraction, job.message, job.eta_seconds   # poll from any page
    job.result / job.error                                    # when done / failed

`fn(report)` receives ``report(message: str, fraction: float)``. A failed job keeps its error until it is
resubmitted (a new submission under a failed key starts over); a finished one keeps its result until
`forget(key)`.
"""

from __future__ import annotations

import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

ReportFn = Callable[[str, float], None]

QUEUED, RUNNING, DONE, FAILED = "queued", "running", "done", "failed"


@dataclass
class Job:
    key: str
    description: str = ""
    status: str = QUEUED
    fraction: float = 0.0
    message: str = ""
    result: Any = None
    error: str | None = None  # one line, for the page
    details: str | None = None  # the traceback, for logs
    submitted: float = field(default_factory=time.time)
    started: float | None = None
    finished: float | None = None
    # keys of other jobs whose progress this one reports as its own (training reports the embedding it
    # waits for): a list of running work shows this job only, not both
    covers: tuple[str, ...] = ()

    @property
    def active(self) -> bool:
        return self.status in (QUEUED, RUNNING)

    @property
    def elapsed(self) -> float:
        if self.started is None:
            return 0.0
        return (self.finished or time.time()) - self.started

    @property
    def eta_seconds(self) -> float | None:
        """Remaining time, extrapolated from the progress so far (None until there is some)."""
        if self.status != RUNNING or self.fraction <= 0.02:
            return None
        return self.elapsed * (1 - self.fraction) / self.fraction

    def report(self, message: str, fraction: float) -> None:
        self.message = str(message)
        self.fraction = min(1.0, max(0.0, float(fraction)))


_lock = threading.Lock()
_jobs: dict[str, Job] = {}


def submit(key: str, fn: Callable[[ReportFn], Any], description: str = "") -> Job:
    """Start `fn` in a background thread under `key`, unless a job with that key is queued, running or
    done (then that job is returned and nothing new starts)."""
    with _lock:
        job = _jobs.get(key)
        if job is not None and job.status != FAILED:
            return job
        job = _jobs[key] = Job(key, description or key)

    def run() -> None:
        job.status, job.started = RUNNING, time.time()
        try:
            job.result = fn(job.report)
            job.fraction, job.status = 1.0, DONE
        except BaseException as exc:  # noqa: BLE001 (the page shows it; the thread must not die silently)
            job.error = f"{type(exc).__name__}: {exc}".splitlines()[0][:500]
            job.details = traceback.format_exc()
            job.status = FAILED
        finally:
            job.finished = time.time()

    threading.Thread(target=run, name=f"job:{key}", daemon=True).start()
    return job


def get(key: str) -> Job | None:
    with _lock:
        return _jobs.get(key)


def all_jobs(active_only: bool = False) -> list[Job]:
    with _lock:
        found = list(_jobs.values())
    return [j for j in found if j.active] if active_only else found


def visible(jobs: list[Job]) -> list[Job]:
    """`jobs` without those another job of the list covers (one piece of work, one entry)."""
    covered = {key for j in jobs for key in j.covers}
    return [j for j in jobs if j.key not in covered]


def forget(key: str) -> None:
    """Drop a finished or failed job (a running one keeps running and stays listed)."""
    with _lock:
        job = _jobs.get(key)
        if job is not None and not job.active:
            del _jobs[key]


def wait(key: str, timeout: float | None = None, poll: float = 0.05) -> Job | None:
    """Block until the job under `key` is no longer active (for the CLI and tests)."""
    deadline = None if timeout is None else time.time() + timeout
    while True:
        job = get(key)
        if job is None or not job.active:
            return job
        if deadline is not None and time.time() > deadline:
            return job
        time.sleep(poll)
