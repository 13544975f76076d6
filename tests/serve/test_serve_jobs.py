"""Jobs: a 5,000-row write_entities followed through #11's progress snapshots, and cancelled through DELETE.

The job is held at its first chunk by the test (its reporter waits on an event), so what the API shows mid-run is
known, not raced: no sleeps.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from connector.progress import Progress
from connector.serve_app import ServeState
from connector.serve_jobs import Job
from tests.serve.conftest import BEARER

ROWS = 5000


class Gate:
    """Holds the job at its first ``advance`` snapshot until released; records every snapshot's ``done``."""

    def __init__(self) -> None:
        self.reached = threading.Event()
        self.release = threading.Event()
        self.seen: list[int] = []


@pytest.fixture
def gate(monkeypatch: pytest.MonkeyPatch) -> Iterator[Gate]:
    held = Gate()
    original = Job.report

    def report(self: Job, event: Progress) -> None:
        original(self, event)
        held.seen.append(event.done)
        if event.event == "advance" and not held.reached.is_set():
            held.reached.set()
            assert held.release.wait(60), "the test never released the job"

    monkeypatch.setattr(Job, "report", report)
    yield held
    held.release.set()


def _start(client: httpx.Client, chunk_size: int = 250) -> dict[str, Any]:
    records = [{"fields": {"name": f"Row {n}"}} for n in range(ROWS)]
    inputs = {"table": "account", "mode": "create", "records": records, "chunk_size": chunk_size}
    answer = client.post("/jobs", json={"action": "write_entities", "connection": "emu", "inputs": inputs},
                         headers=BEARER)  # fmt: skip
    assert answer.status_code == 202, answer.text
    job: dict[str, Any] = answer.json()
    assert job["status"] == "running" and job["action"] == "write_entities"
    return job


def _finish(state: ServeState, job_id: str) -> None:
    job = state.jobs.get(job_id)
    assert job is not None and job.thread is not None
    job.thread.join(120)
    assert not job.thread.is_alive()


def test_a_5000_row_job_reports_rising_progress(client: httpx.Client, state: ServeState, gate: Gate) -> None:
    job = _start(client)
    assert gate.reached.wait(60)
    midway = client.get(f"/jobs/{job['id']}", headers=BEARER).json()
    assert midway["status"] == "running"
    assert 0 < midway["progress"]["done"] < ROWS and midway["progress"]["total"] == ROWS
    assert "write_entities" in midway["progress"]["message"] or "created" in midway["progress"]["message"]
    gate.release.set()
    _finish(state, job["id"])
    done = client.get(f"/jobs/{job['id']}", headers=BEARER).json()
    assert done["status"] == "succeeded", done
    assert done["progress"]["done"] == ROWS > midway["progress"]["done"]
    assert done["output"]["summary"]["created"] == ROWS
    assert gate.seen == sorted(gate.seen) and len(set(gate.seen)) > 3  # rising, in several steps
    assert job["id"] in {j["id"] for j in client.get("/jobs", headers=BEARER).json()["jobs"]}


def test_a_job_is_cancelled_through_delete(client: httpx.Client, state: ServeState, gate: Gate) -> None:
    job = _start(client)
    assert gate.reached.wait(60)
    cancelling = client.delete(f"/jobs/{job['id']}", headers=BEARER)
    assert cancelling.status_code == 202
    gate.release.set()
    _finish(state, job["id"])
    ended = client.get(f"/jobs/{job['id']}", headers=BEARER).json()
    assert ended["status"] == "cancelled", ended
    assert ended["progress"]["done"] == ROWS  # every row accounted for: written, or reported not sent
    summary = ended["output"]["summary"]
    assert 0 < summary["created"] < ROWS and summary["not_sent"] == ROWS - summary["created"]
    assert len(ended["output"]["results"]) == ROWS
    assert client.delete("/jobs/nope", headers=BEARER).status_code == 404


def test_shutdown_cancels_running_jobs(client: httpx.Client, state: ServeState, gate: Gate) -> None:
    job = _start(client)
    assert gate.reached.wait(60)
    state.jobs.shutdown(grace_s=0)  # what the server's lifespan does on exit (there with a grace period)
    gate.release.set()
    _finish(state, job["id"])
    ended = client.get(f"/jobs/{job['id']}", headers=BEARER).json()
    assert ended["status"] == "cancelled" and ended["output"]["summary"]["not_sent"] > 0
