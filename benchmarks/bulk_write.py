"""Records per second of three ways to upsert rows by alternate key, on the emulator with ``--latency-ms 20`` and the
throttle model on:

(a) one ``upsert_entity`` per record, one after another (what a workflow loop over rows does);
(b) ``run_batch_operations`` of 1,000 upserts per call, one call after another;
(c) ``write_entities`` (UpsertMultiple chunks of 100 in parallel through the governor), with client-generated ids
    (the default) and without them (Microsoft's advice), so the design note can weigh both.

Prints the rates, the ratios (c)/(a) and (c)/(b), and the share of the throttle model's ceiling that (c) reaches.
The throttle model runs Dataverse's rates (6,000 requests and 1,200 s of execution per 300 s) on a 30 s window
(600 requests, 120 s), so a run of seconds meets the limits instead of fitting in one window's burst. The model lets
``cap = min(max_requests * chunk, max_exec_s / (RECORD_COST_S + REQUEST_COST_S / chunk))`` records through per
window: sustained, ``cap / window`` records/s; for a run of ``n`` records (a sliding window lets the first ``cap``
through at once) no faster than ``n`` records in ``window * (n / cap - 1)`` seconds, which is the ceiling (c) is
compared with. Each scenario writes new keys (every record a create) on a fresh connection, with the throttle windows
emptied before it; waits are real. Never part of the test suite.

    .venv/bin/python benchmarks/bulk_write.py [--single 2000] [--records 20000] [--batch 1000] [--chunk 100]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any

from connector.connection import Connection
from connector.runtime import Runtime
from dataverse_emulator.testing import EmulatorHandle, running_emulator
from dataverse_emulator.throttle import RECORD_COST_S, REQUEST_COST_S

WINDOW_S, MAX_REQUESTS, MAX_EXEC_S = 30.0, 600, 120.0
LATENCY_MS = 20


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    started = time.perf_counter()
    out = fn()
    return time.perf_counter() - started, out


def records(prefix: str, n: int) -> list[dict[str, Any]]:
    return [{"key": {"accountnumber": f"{prefix}-{i:06d}"}, "fields": {"name": f"{prefix} {i}"}} for i in range(n)]


def single(runtime: Runtime, conn: Connection, n: int) -> float:
    rows = records("S", n)
    seconds, _ = timed(
        lambda: [runtime.run_action("upsert_entity", {"table": "account", **r}, conn) for r in rows]  # type: ignore[func-returns-value]
    )
    return n / seconds


def batches(runtime: Runtime, conn: Connection, n: int, size: int) -> float:
    rows = records("B", n)

    def run() -> None:
        for start in range(0, n, size):
            ops = [{"table": "account", "action": "upsert", **r} for r in rows[start : start + size]]
            out = runtime.run_action("run_batch_operations", {"operations": ops}, conn)
            assert out["failed"] == 0, out

    seconds, _ = timed(run)
    return n / seconds


def bulk(runtime: Runtime, conn: Connection, n: int, chunk: int, client_ids: bool) -> float:
    rows = records("C1" if client_ids else "C0", n)
    inputs = {"table": "account", "mode": "upsert", "records": rows, "chunk_size": chunk, "client_ids": client_ids}
    seconds, out = timed(lambda: runtime.run_action("write_entities", inputs, conn))
    assert out["summary"]["created"] == n, out["summary"]
    return n / seconds


def throttled(h: EmulatorHandle) -> int:
    return sum(1 for r in h.admin.requests() if r.get("status") == 429)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--single", type=int, default=2000, help="records for (a)")
    parser.add_argument("--records", type=int, default=20000, help="records for (b) and (c)")
    parser.add_argument("--batch", type=int, default=1000, help="operations per run_batch_operations call")
    parser.add_argument("--chunk", type=int, default=100, help="write_entities chunk size")
    args = parser.parse_args()
    runtime = Runtime(load_entrypoints=False)
    rates: dict[str, float] = {}
    refused: dict[str, int] = {}
    with running_emulator(
        key_activation_s=0,
        latency_ms=LATENCY_MS,
        throttle="dataverse",
        window_s=WINDOW_S,
        max_requests=MAX_REQUESTS,
        max_exec_s=MAX_EXEC_S,
    ) as h:
        with Connection.from_config(h.connection_config()) as conn:
            conn.client.request(
                "POST",
                "EntityDefinitions(LogicalName='account')/Keys",
                json={
                    "@odata.type": "Microsoft.Dynamics.CRM.EntityKeyMetadata",
                    "SchemaName": "bench_accountnumber",
                    "DisplayName": {"LocalizedLabels": [{"Label": "Account number", "LanguageCode": 1033}]},
                    "KeyAttributes": ["accountnumber"],
                },
            )
        scenarios: list[tuple[str, Callable[[Runtime, Connection], float]]] = [
            (f"(a) upsert_entity x {args.single:,}", lambda r, c: single(r, c, args.single)),
            (
                f"(b) run_batch_operations {args.batch:,} x {args.records // args.batch}",
                lambda r, c: batches(r, c, args.records, args.batch),
            ),
            (f"(c) write_entities {args.records:,}", lambda r, c: bulk(r, c, args.records, args.chunk, True)),
            (
                f"(c') write_entities {args.records:,}, server ids",
                lambda r, c: bulk(r, c, args.records, args.chunk, False),
            ),
        ]
        for name, fn in scenarios:
            h.admin.clear_requests()
            h.emulator.throttle.reset()  # each scenario starts with an empty window
            with Connection.from_config(h.connection_config()) as conn:
                rates[name] = fn(runtime, conn)
            refused[name] = throttled(h)
    per_record_s = RECORD_COST_S + REQUEST_COST_S / args.chunk
    cap = min(MAX_REQUESTS * args.chunk, MAX_EXEC_S / per_record_s)
    sustained = cap / WINDOW_S
    fastest_s = WINDOW_S * (args.records / cap - 1)
    print(f"emulator: latency {LATENCY_MS} ms, throttle model {MAX_REQUESTS} requests and {MAX_EXEC_S:.0f} s of")
    print(f"execution per {WINDOW_S:.0f} s window (Dataverse's rates), dop hint {h.emulator.throttle.dop_hint}")
    print(f"{'scenario':<46}{'records/s':>11}{'429s':>7}")
    for name, value in rates.items():
        print(f"{name:<46}{value:>11.0f}{refused[name]:>7}")
    names = list(rates)
    a, b, c, c0 = (rates[n] for n in names)
    print(f"(c)/(a) {c / a:.1f}   (c)/(b) {c / b:.1f}   (c)/(c') client ids vs server ids {c / c0:.2f}")
    print(f"throttle model, chunks of {args.chunk}: {cap:,.0f} records per window, {sustained:.0f} records/s sustained")
    if fastest_s > 0:
        ceiling = args.records / fastest_s
        print(f"ceiling for {args.records:,} records: {ceiling:.0f} records/s; (c) reaches {c / ceiling:.0%}")
    else:
        print(f"{args.records:,} records fit in one window: the model sets no ceiling; (c) is bound by the emulator")


if __name__ == "__main__":
    main()
