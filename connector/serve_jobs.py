"""Long actions run as jobs by the runtime server: one thread each, followed through #11's progress and cancellation.

Why threads and the existing mechanism: the actions are synchronous library code whose long ones already report
:class:`connector.progress.Progress` snapshots and stop at a :class:`connector.progress.CancellationToken` without
losing a result (rows not yet sent are reported ``not_sent``). A job is therefore ``Runtime.run_action`` on a thread
with a reporter that keeps the latest snapshot and a token that ``DELETE /jobs/{id}`` cancels. Jobs are held in
memory only (a restart forgets them) and every running one is cancelled on shutdown; finished jobs beyond
:data:`MAX_FINISHED` are forgotten, oldest first.
"""

from __future__ import annotations

import secrets
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from connector.progress import CancellationToken, Progress
from connector.serve_problems import problem_of

__all__ = ["MAX_FINISHED", "Job", "Jobs"]

#: Finished jobs kept for ``GET /jobs``; older ones are dropped.
MAX_FINISHED = 200
#: How long shutdown waits for cancelled jobs to return their results (requests in flight finish first).
SHUTDOWN_GRACE_S = 30.0


@dataclass
class Job:
    """One run of an action: its state, latest progress, and output or problem once finished."""

    id: str
    action: str
    connection: str
    cancel: CancellationToken = field(repr=False)
    status: str = "running"
    done: int = 0
    total: int | None = None
    message: str | None = None
    output: Any = None
    error: dict[str, Any] | None = None
    thread: threading.Thread | None = field(default=None, repr=False)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": self.id,
            "action": self.action,
            "connection": self.connection,
            "status": self.status,
            "progress": {"done": self.done, "total": self.total, "message": self.message},
        }
        if self.status == "succeeded" or (self.status == "cancelled" and self.error is None):
            out["output"] = self.output
        if self.error is not None:
            out["error"] = self.error
        return out

    def report(self, event: Progress) -> None:
        """The reporter handed to the action: keeps the latest snapshot (the tracker serializes the calls)."""
        self.done, self.total = event.done, event.total
        counts = ", ".join(f"{k} {v}" for k, v in sorted(event.counts.items()) if v)
        self.message = f"{event.operation} {event.event}" + (f": {counts}" if counts else "")


Runner = Callable[[Job, Callable[[Progress], None], CancellationToken], Any]


class Jobs:
    """The server's jobs, in memory: start, read, cancel, and cancel all on shutdown."""

    def __init__(self) -> None:
        self._jobs: dict[str, Job] = {}
        self._lock = threading.Lock()

    def start(self, action: str, connection: str, run: Runner) -> Job:
        """Start ``run(job, reporter, token)`` on a thread; its return value becomes the job's output."""
        job = Job(id=secrets.token_hex(8), action=action, connection=connection, cancel=CancellationToken())
        thread = threading.Thread(target=self._run, args=(job, run), name=f"d365-job-{job.id}", daemon=True)
        job.thread = thread
        with self._lock:
            self._jobs[job.id] = job
            self._forget_old()
        thread.start()
        return job

    def _run(self, job: Job, run: Runner) -> None:
        try:
            output = run(job, job.report, job.cancel)
        except BaseException as exc:  # a job's failure is its result, reported, never the server's crash
            job.error = problem_of(exc)
            job.status = "cancelled" if job.cancel.cancelled else "failed"
            return
        job.output = output
        job.status = "cancelled" if job.cancel.cancelled else "succeeded"

    def get(self, job_id: str) -> Job | None:
        with self._lock:
            return self._jobs.get(job_id)

    def all(self) -> list[Job]:
        with self._lock:
            return list(self._jobs.values())

    def cancel(self, job_id: str) -> Job | None:
        job = self.get(job_id)
        if job is not None and job.status == "running":
            job.cancel.cancel("cancelled through DELETE /jobs")
        return job

    def shutdown(self, grace_s: float = SHUTDOWN_GRACE_S) -> None:
        """Cancel every running job and wait (at most ``grace_s`` in all) for their threads to return."""
        running = [j for j in self.all() if j.status == "running"]
        for job in running:
            job.cancel.cancel("the server is shutting down")
        for job in running:
            if job.thread is not None:
                job.thread.join(grace_s)

    def _forget_old(self) -> None:
        finished = [j for j in self._jobs.values() if j.status != "running"]
        for job in finished[: max(0, len(finished) - MAX_FINISHED)]:
            del self._jobs[job.id]
