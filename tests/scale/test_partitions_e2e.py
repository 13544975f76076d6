"""A 4-partition sync with its state in PostgreSQL, one worker process per partition (``d365 sync run --partition
K/4``): the worker of partition 0 is SIGKILLed mid-run; its lease keeps another worker off the partition until it
expires, then that worker continues it, and the table ends equal to the source with no duplicates."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from connector.connection import Connection
from connector.sync.partition import Partition, partition_of
from dataverse_emulator.testing import EmulatorHandle, running_emulator
from tests.sync.conftest import accounts

ROWS, LEASE_S = 1200, 30.0  # a killed worker's lease has 20-30 s left (renewed every third), which the refused
# worker's start must not outlast on a loaded machine: 10 s (6.7-10 s left) did once, at load 10 on 2 cores
D365 = str(Path(sys.executable).parent / "d365")


@pytest.fixture
def emulator() -> Iterator[EmulatorHandle]:
    with running_emulator(key_activation_s=0, latency_ms=10) as handle:
        with Connection.from_config(handle.connection_config()) as conn:
            key = {
                "@odata.type": "Microsoft.Dynamics.CRM.EntityKeyMetadata",
                "SchemaName": "new_accountnumber",
                "DisplayName": {"LocalizedLabels": [{"Label": "number", "LanguageCode": 1033}]},
                "KeyAttributes": ["accountnumber"],
            }
            conn.client.request("POST", "EntityDefinitions(LogicalName='account')/Keys", json=key)
        yield handle


@pytest.fixture
def folder(tmp_path: Path, emulator: EmulatorHandle, postgres_url: str) -> Path:
    (tmp_path / "connection.json").write_text(json.dumps(emulator.connection_config()), encoding="utf-8")
    schema = f"s{os.getpid()}_{time.monotonic_ns()}"  # a database of its own per test: the cluster is shared
    engine = sa.create_engine(postgres_url, isolation_level="AUTOCOMMIT")
    with engine.connect() as db:
        db.execute(sa.text(f"CREATE DATABASE {schema}"))
    engine.dispose()
    definition = {
        "name": "accounts",
        "source": {"path": "companies.csv"},
        "target": "account",
        "match": {"key": ["accountnumber"]},
        "mapping": [{"source": "num", "target": "accountnumber"}, {"source": "name", "target": "name"}],
        "batch_size": 20,
        "state": postgres_url.rsplit("/", 1)[0] + f"/{schema}",
    }
    (tmp_path / "sync.json").write_text(json.dumps(definition), encoding="utf-8")
    with (tmp_path / "companies.csv").open("w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(["num", "name"])
        w.writerows((f"N-{i:05}", f"Company {i}") for i in range(ROWS))
    return tmp_path


def match_key(i: int) -> str:
    """The mapper's match key of source row ``i``: its key columns as compact JSON with sorted names."""
    return json.dumps({"accountnumber": f"N-{i:05}"}, separators=(",", ":"))


def worker(folder: Path, partition: str) -> subprocess.Popen[str]:
    args = [D365, "sync", "run", str(folder / "sync.json"), "--partition", partition, "--lease-s", str(LEASE_S)]
    env = {**os.environ, "D365_CONNECTION": str(folder / "connection.json"), "D365_POLICY": "local"}
    args += ["--json", "--progress", "none"]
    return subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_lease_expiry(state: sa.Engine, name: str) -> None:
    """Until the database's own clock passes the partition lease's expiry: the lease is judged on that clock, so the
    test asks it rather than sleeping a fixed time on this process's."""
    query = sa.text(
        "SELECT expires - EXTRACT(EPOCH FROM CURRENT_TIMESTAMP) FROM sync_partition_leases WHERE sync = :name"
    )
    deadline = time.monotonic() + 10 * LEASE_S
    while time.monotonic() < deadline:
        with state.connect() as db:
            left = db.execute(query, {"name": name}).scalar()
        if left is None or left < 0:
            return
        time.sleep(min(float(left), 0.5))
    raise AssertionError(f"the lease of {name} did not expire within {10 * LEASE_S} s")


def ledgered(state: sa.Engine, name: str) -> tuple[str | None, int]:
    """The status of the partition's last run and how many rows its ledger holds."""
    with state.connect() as db:
        run = db.execute(
            sa.text("SELECT id, status FROM sync_runs WHERE sync = :s ORDER BY id DESC LIMIT 1"), {"s": name}
        ).first()
        if run is None:
            return None, 0
        count = db.execute(sa.text("SELECT count(*) FROM sync_ledger WHERE run = :r"), {"r": run.id}).scalar_one()
        return str(run.status), int(count)


def test_a_killed_partition_is_continued_by_another_worker_after_its_lease(
    folder: Path, emulator: EmulatorHandle
) -> None:
    state = sa.create_engine(json.loads((folder / "sync.json").read_text())["state"])
    sizes = Counter(partition_of(match_key(i), 4) for i in range(ROWS))
    status = subprocess.run([D365, "sync", "status", str(folder / "sync.json")], capture_output=True, text=True)
    assert status.returncode == 0 and status.stdout == "", status.stderr  # creates the schema, shows no run yet
    workers = {k: worker(folder, f"{k}/4") for k in range(4)}
    try:
        check_kill_and_resume(folder, emulator, state, sizes, workers)
    finally:
        for proc in workers.values():
            if proc.poll() is None:
                proc.kill()
            proc.communicate()
        state.dispose()


def check_kill_and_resume(
    folder: Path,
    emulator: EmulatorHandle,
    state: sa.Engine,
    sizes: Counter[int],
    workers: dict[int, subprocess.Popen[str]],
) -> None:
    deadline = time.monotonic() + 60
    while ledgered(state, "accounts#0/4")[1] < 40 and time.monotonic() < deadline and workers[0].poll() is None:
        time.sleep(0.02)
    os.kill(workers[0].pid, signal.SIGKILL)
    _, killed_err = workers[0].communicate()
    status, done = ledgered(state, "accounts#0/4")
    assert status == "running" and 40 <= done < sizes[0], killed_err  # killed mid-run

    busy = worker(folder, "0/4")  # its lease has not expired yet: refused before any row is read
    out, err = busy.communicate(timeout=120)
    assert busy.returncode != 0 and "another worker" in err, err
    for k in (1, 2, 3):
        out, err = workers[k].communicate(timeout=300)
        assert workers[k].returncode == 0, err
        assert json.loads(out)["counts"] == {"created": sizes[k]}

    wait_for_lease_expiry(state, "accounts#0/4")  # the killed worker's lease runs out on the database's clock
    resumed = worker(folder, "0/4")
    out, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err
    assert sum(json.loads(out)["counts"].values()) == sizes[0]

    with Connection.from_config(emulator.connection_config()) as conn:
        numbers = Counter(r["accountnumber"] for r in accounts(conn))
    assert numbers == Counter(f"N-{i:05}" for i in range(ROWS))  # every row once: no duplicates, none missing
    status_lines = subprocess.run(
        [D365, "sync", "status", str(folder / "sync.json")], capture_output=True, text=True, check=True
    ).stdout.splitlines()
    statuses = {line["sync"]: line["status"] for line in map(json.loads, status_lines)}
    assert statuses == {f"accounts#{k}/4": "done" for k in range(4)}


def test_partitions_split_keys_stably_and_refuse_bad_specs() -> None:
    assert partition_of("N-00001", 4) == partition_of("N-00001", 4)
    assert partition_of("", 1) == 0
    shares = Counter(partition_of(f"N-{i:05}", 4) for i in range(4000))
    assert set(shares) == {0, 1, 2, 3} and min(shares.values()) > 800  # an even split
    assert Partition.parse(" 3/4 ") == Partition(3, 4)
    for bad in ("4/4", "1", "-1/4", "a/b", "0/0"):
        with pytest.raises(Exception, match="--partition"):
            Partition.parse(bad)
