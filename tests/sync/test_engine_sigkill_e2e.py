"""Three SIGKILLs at random points of a 5,000-row sync, each followed by a resume; the last run completes.

After it the table equals the source (no row twice), the completed run's ledger holds every source row exactly once,
and no crashed run's ledger holds a row twice. The kill points are drawn from a seeded generator as ledger sizes of
the running run (the worker is killed once it reports, on its progress output, that its run has ledgered that many
rows), so they fall mid-run, between or inside a unit's send and commit, wherever the process happens to be.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

from connector.connection import Connection
from connector.sync.state import StateStore
from dataverse_emulator.testing import EmulatorHandle

ROOT = Path(__file__).resolve().parents[2]
N = 5000


def wait_until_ledgered(worker: subprocess.Popen[bytes], rows: int) -> bool:
    """Read the worker's progress lines (stderr) until its run has ledgered ``rows``; False if it ended first."""
    assert worker.stderr is not None
    for line in iter(worker.stderr.readline, b""):
        if line.startswith(b"{") and json.loads(line).get("done", 0) >= rows:
            return True
    return False


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
    url = f"sqlite:///{tmp_path / 'state.sqlite'}"
    rng = random.Random(18)
    for kill in range(3):
        at = rng.randrange(200, 1800)
        worker = start(emulator, url)
        assert wait_until_ledgered(worker, at), f"kill {kill}: the run ended before {at} rows: {worker.communicate()}"
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
