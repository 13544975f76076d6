"""Three SIGKILLs at random points of a 5,000-row sync, each followed by a resume; the last run completes.

After it the table equals the source (no row twice), the completed run's ledger holds every source row exactly once,
and no crashed run's ledger holds a row twice. The kill points are drawn from a seeded generator as ledger sizes of
the running run (the worker is killed once its run has ledgered that many rows), so they fall mid-run, between or
inside a group's send and commit, wherever the process happens to be.
"""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from connector.connection import Connection
from connector.sync.state import StateStore
from dataverse_emulator.testing import EmulatorHandle

ROOT = Path(__file__).resolve().parents[2]
N = 5000


def ledgered(db: Path, after_run: int) -> tuple[int, int]:
    """The newest run's id and its ledger rows so far (0 until a run newer than ``after_run`` started)."""
    try:
        c = sqlite3.connect(db, timeout=0.1)
        try:
            run = int(c.execute("SELECT coalesce(max(id), 0) FROM sync_runs").fetchone()[0])
            if run <= after_run:
                return run, 0
            return run, int(c.execute("SELECT count(*) FROM sync_ledger WHERE run = ?", (run,)).fetchone()[0])
        finally:
            c.close()
    except sqlite3.Error:  # not created yet, or locked by the writer for a moment
        return after_run, 0


def start(emulator: EmulatorHandle, url: str) -> subprocess.Popen[bytes]:
    args = [sys.executable, "-m", "tests.sync.sync_worker", json.dumps(emulator.connection_config()), url, str(N)]
    return subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def all_accounts(connection: Connection) -> list[dict[str, str]]:
    out: list[dict[str, str]] = []
    url: str | None = "accounts?$select=accountnumber,name"
    while url:
        body = connection.client.get_json(url, prefer=["odata.maxpagesize=5000"])
        out += body["value"]
        url = body.get("@odata.nextLink")
    return out


def test_three_sigkills_then_a_resume(connection: Connection, emulator: EmulatorHandle, tmp_path: Path) -> None:
    db = tmp_path / "state.sqlite"
    url = f"sqlite:///{db}"
    rng = random.Random(18)
    last_run = 0
    for kill in range(3):
        at = rng.randrange(200, 1800)
        worker = start(emulator, url)
        deadline = time.monotonic() + 120
        while worker.poll() is None and time.monotonic() < deadline:
            run, n = ledgered(db, last_run)
            if n >= at:
                last_run = run
                break
            time.sleep(0.01)
        assert worker.poll() is None, f"kill {kill}: the run ended before {at} rows: {worker.communicate()}"
        os.kill(worker.pid, signal.SIGKILL)
        worker.communicate()
    final = start(emulator, url)
    out, err = final.communicate(timeout=300)
    assert final.returncode == 0, err.decode()[-2000:]
    result = json.loads(out)
    assert len(result["interrupted_runs"]) == 1  # the third crash; the others were closed by the runs after them
    table = all_accounts(connection)
    numbers = [r["accountnumber"] for r in table]
    assert len(numbers) == len(set(numbers)) == N
    assert {r["accountnumber"]: r["name"] for r in table} == {f"K-{i:05}": f"Company {i}" for i in range(N)}
    store = StateStore(url, "accounts")
    runs = store.runs()
    assert [r.status for r in runs] == ["done", "interrupted", "interrupted", "interrupted"]
    for run in runs:
        indexes = [e.source_index for e in store.ledger(run.id)]
        assert len(indexes) == len(set(indexes))
    assert sorted(e.source_index for e in store.ledger(runs[0].id)) == list(range(N))
    assert store.pending_intents() == []
    store.close()
