"""write_entities against the emulator over a real socket: 5,000 rows a run, checked row by row and from the log.

The emulator's admin request log gives each request's emulated start and end time, its wall-clock order and the
requests in flight when it started, so parallelism, request counts and the wait after a 429 are read from the server's
side, not from the connector's own account. The throttled run shares one :class:`FakeClock` between the emulator and
the connection: the emulator computes its windows and ``Retry-After`` on it and the connector's waits advance it, so
seconds of throttling cost no real time (the same arrangement as ``tests/connector/test_governor_emulator.py``).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from connector import RetryPolicy
from connector.clock import FakeClock
from connector.connection import Connection
from connector.errors import InputError
from connector.runtime import Runtime
from dataverse_emulator.testing import EmulatorHandle, running_emulator
from tests.e2e.conftest import web_api_requests

DOP_HINT = 4
ARGS = ("--json", "--input", "-")
GRACE_S = 0.05


@pytest.fixture(scope="module")
def emulator() -> Iterator[EmulatorHandle]:
    # a little latency per request, so chunks really overlap on a 2-core machine
    with running_emulator(key_activation_s=0, latency_ms=5, dop_hint=DOP_HINT) as handle:
        yield handle


def create_key(connection: Connection, table: str, schema_name: str, columns: list[str]) -> None:
    connection.client.request(
        "POST",
        f"EntityDefinitions(LogicalName='{table}')/Keys",
        json={
            "@odata.type": "Microsoft.Dynamics.CRM.EntityKeyMetadata",
            "SchemaName": schema_name,
            "DisplayName": {"LocalizedLabels": [{"Label": schema_name, "LanguageCode": 1033}]},
            "KeyAttributes": columns,
        },
    )
    connection.metadata.invalidate(table)


def all_rows(connection: Connection, select: str) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    url: str | None = f"accounts?$select={select}"
    while url:
        page = connection.client.get_json(url, prefer=["odata.maxpagesize=5000"])
        rows += page["value"]
        url = page.get("@odata.nextLink")
    return rows


def peak_in_flight(entries: list[dict[str, Any]]) -> int:
    """The most of these requests that overlapped, from their wall-clock start and end times."""
    events = sorted([(e["wall_start"], 1) for e in entries] + [(e["wall_end"], -1) for e in entries])
    peak = current = 0
    for _, step in events:
        current += step
        peak = max(peak, current)
    return peak


def test_write_entities_upserts_5000_with_3_bad_rows(
    runtime: Runtime, connection: Connection, fresh_emulator: EmulatorHandle
) -> None:
    create_key(connection, "account", "acc_number", ["accountnumber"])
    seeded = range(0, 5000, 3)  # a third exist already: those are updated, the rest created
    fresh_emulator.admin.seed("account", [{"name": "old", "accountnumber": f"N-{i:05d}"} for i in seeded])
    bad = {17, 2500, 4999}
    records = [
        {"key": {"accountnumber": f"N-{i:05d}"}, "fields": {"name": "x" * 200 if i in bad else f"new {i}"}}
        for i in range(5000)
    ]
    fresh_emulator.admin.clear_requests()
    started = time.perf_counter()
    out = runtime.run_action(
        "write_entities", {"table": "account", "mode": "upsert", "records": records, "chunk_size": 100}, connection
    )
    elapsed = time.perf_counter() - started
    log = web_api_requests(fresh_emulator)
    failed = [r for r in out["results"] if r["status"] == "failed"]
    assert [r["index"] for r in failed] == sorted(bad)
    # Longer than the column's MaxLength: failed by itself before sending (the server's 0x80044331 before issue 15).
    assert all(r["code"] == "InputError" and "'name'" in r["message"] for r in failed)
    assert all(r["message"].startswith("not sent:") for r in failed)
    expected = {i: ("updated" if i % 3 == 0 else "created") for i in range(5000) if i not in bad}
    assert {r["index"]: r["status"] for r in out["results"] if r["status"] != "failed"} == expected
    assert out["summary"]["created"] + out["summary"]["updated"] == 4997
    rows = {r["accountnumber"]: r for r in all_rows(connection, "accountid,accountnumber,name")}
    ids = {r["index"]: r["id"] for r in out["results"]}
    for i in range(5000):
        number = f"N-{i:05d}"
        if i in bad:
            assert rows.get(number, {"name": "old"})["name"] == "old"  # nothing of a bad row landed
        else:
            assert rows[number]["name"] == f"new {i}" and rows[number]["accountid"] == ids[i]
    assert len(rows) == len(set(seeded) | (set(range(5000)) - bad))
    # from the server's log: writes in parallel within the hint, at most one read ahead beside them, and no request
    # beyond the bound of the design
    writes = [r for r in log if r["path"].endswith("UpsertMultiple")]
    assert 2 <= peak_in_flight(writes) <= DOP_HINT and max(r["in_flight_at_start"] for r in log) <= DOP_HINT + 1
    pre_reads = [r for r in log if r["method"] == "GET" and r["path"].endswith("/accounts")]
    probes = [r for r in log if "sdkmessagefilters" in r["path"]]
    metadata = [r for r in log if "EntityDefinitions" in r["path"]]
    # one pre-read serves at most two chunks of 100: chunks waiting for a place are read ahead two at a time (ReadAhead)
    assert len(probes) == 1 and 25 <= len(pre_reads) < 50 and len(pre_reads) == out["summary"]["pre_reads"]
    bound = 50 + len(pre_reads) + 2 * len(bad) * math.ceil(math.log2(100)) + len(probes) + len(metadata)
    assert len(log) <= bound, (len(log), bound)
    assert len(writes) == 50 + out["summary"]["split_requests"]
    print(f"5,000 upserts in {elapsed:.1f} s, {len(log)} requests (bound {bound})")


def test_chunks_waiting_for_a_place_are_read_ahead_while_the_hints_writes_run(runtime: Runtime) -> None:
    """Under the calibrated model (a chunk of 200 writes for about 0.3 s) with a hint of 2, the rows of the chunks
    waiting for a place are read in the one place beside the hint's: the server sees a pre-read arrive while two
    writes are in flight, never a third write, and fewer pre-reads than chunks."""
    with running_emulator(throttle="dataverse", dop_hint=2, latency_ms=2) as emulator:
        with Connection.from_config(emulator.connection_config()) as connection:
            records = [{"id": f"00000000-0000-4000-8000-{i:012d}", "fields": {"name": f"r{i}"}} for i in range(1600)]
            emulator.admin.clear_requests()
            out = runtime.run_action(
                "write_entities",
                {"table": "account", "mode": "upsert", "records": records, "chunk_size": 200},
                connection,
            )
        log = web_api_requests(emulator)
    assert out["summary"]["created"] == 1600 and out["summary"]["chunks"] == 8
    writes = [r for r in log if r["path"].endswith("UpsertMultiple")]
    reads = [r for r in log if r["method"] == "GET" and r["path"].endswith("/accounts")]
    assert peak_in_flight(writes) == 2 and max(r["in_flight_at_start"] for r in log) <= 3
    beside = [r for r in reads if sum(w["wall_start"] <= r["wall_start"] < w["wall_end"] for w in writes) == 2]
    assert beside, [(r["wall_start"], r["in_flight_at_start"]) for r in reads]
    assert len(reads) == out["summary"]["pre_reads"] < 8


def test_write_entities_creates_5000_exactly_once_under_strict_throttling_and_faults() -> None:
    clock = FakeClock(start=time.time())
    with running_emulator(
        clock=clock.time, throttle="strict", fault_rate=0.05, seed=5, dop_hint=DOP_HINT, latency_ms=2
    ) as emulator:
        policy = RetryPolicy(max_attempts=12, max_elapsed_s=86_400, max_wait_s=86_400)
        runtime = Runtime(load_entrypoints=False, validate_output=True)
        with Connection.from_config(emulator.connection_config(), clock=clock, retry=policy) as conn:
            records = [{"fields": {"name": f"bulk-{i:05d}"}} for i in range(5000)]
            out = runtime.run_action("write_entities", {"table": "account", "mode": "create", "records": records}, conn)
            rows = all_rows(conn, "accountid,name")
        log = [r for r in emulator.admin.requests() if "/api/data/" in r["path"]]
    assert out["summary"]["created"] == 5000, out["summary"]
    assert sorted(r["name"] for r in rows) == [r["fields"]["name"] for r in records]  # each row exactly once
    assert {r["accountid"] for r in rows} == {r["id"] for r in out["results"]}
    throttled = [r for r in log if r["status"] == 429]
    assert throttled, "the run was never throttled: the test proves nothing"
    assert any(r.get("fault") == "commit_then_drop" and r["path"].endswith("CreateMultiple") for r in log)
    # after the client received a 429, nothing left before Retry-After had passed on the shared clock. The log's
    # wall_end is taken on the server before the answer travels; requests starting within GRACE_S of it may have
    # left before the client read the 429 (the clock is shared and frozen between waits, so they carry its instant)
    for refused in throttled:
        later = [r for r in log if r["wall_start"] > refused["wall_end"] + GRACE_S]
        assert all(r["start"] >= refused["start"] + float(refused["retry_after"]) - 1e-6 for r in later)
    assert max(r["in_flight_at_start"] for r in log) <= DOP_HINT


def test_write_entities_falls_back_to_batch_where_the_bulk_messages_are_missing(
    runtime: Runtime, connection: Connection, fresh_emulator: EmulatorHandle
) -> None:
    list_id = runtime.run_action(
        "create_entity", {"table": "list", "fields": {"listname": "L", "createdfromcode": 1}}, connection
    )["id"]
    fresh_emulator.admin.clear_requests()
    out = runtime.run_action(
        "write_entities",
        {
            "table": "listmember",
            "mode": "create",
            "records": [{"fields": {"listid": {"table": "list", "id": list_id}}} for _ in range(3)],
        },
        connection,
    )
    assert out["route"] == "batch" and out["summary"]["created"] == 3
    log = web_api_requests(fresh_emulator)
    assert [r["path"].rsplit("/", 1)[1] for r in log if r["method"] == "POST"] == ["$batch"]
    assert "odata.continue-on-error" in next(r for r in log if r["method"] == "POST")["headers"]["prefer"]


def test_write_entities_bad_input_exits_2_before_any_request(
    runtime: Runtime, connection: Connection, fresh_emulator: EmulatorHandle, connection_file: Path
) -> None:
    fresh_emulator.admin.clear_requests()
    bad = {"table": "account", "mode": "upsert", "records": [{"fields": {"name": "a"}}], "chunk_size": 0}
    done = subprocess.run(
        [sys.executable, "-m", "connector.cli", "run", "write_entities", "--connection", str(connection_file), *ARGS],
        input=json.dumps(bad),
        capture_output=True,
        text=True,
        timeout=120,
        env=dict(os.environ),
    )
    assert done.returncode == 2, done.stderr
    assert "$.chunk_size" in done.stderr
    assert web_api_requests(fresh_emulator) == []
    with pytest.raises(InputError) as caught:
        runtime.run_action("write_entities", {**bad, "chunk_size": 10}, connection)
    assert [p.path for p in caught.value.problems] == ["$.records[0].id"]
    assert all(r["method"] == "GET" and "EntityDefinitions" in r["path"] for r in web_api_requests(fresh_emulator))


def test_write_entities_failed_record_carries_dataverse_request_id(
    runtime: Runtime, connection: Connection, fresh_emulator: EmulatorHandle
) -> None:
    """A record Dataverse refused names the request that refused it (x-ms-service-request-id): support asks for it."""
    existing = runtime.run_action("create_entity", {"table": "account", "fields": {"name": "Here"}}, connection)["id"]
    missing = "00000000-0000-4000-8000-00000000dead"
    out = runtime.run_action(
        "write_entities",
        {
            "table": "account",
            "mode": "update",
            "records": [{"id": existing, "fields": {"name": "Still here"}}, {"id": missing, "fields": {"name": "x"}}],
        },
        connection,
    )
    ok, failed = out["results"]
    assert ok["status"] == "updated" and failed["status"] == "failed"
    served = {r.get("request_id") for r in fresh_emulator.admin.requests()}
    assert failed["request_id"] in served
