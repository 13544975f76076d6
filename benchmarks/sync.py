"""Rows per second of ``d365 sync`` (a first full sync, then an incremental sync with 1% of the rows changed) and its
peak memory at two sizes, on the emulator (its own process) with ``--latency-ms 20`` and the calibrated throttle model
on (``dataverse_emulator/execution.py``, as ``benchmarks/bulk_write.py``).

Each size runs in a child process of its own (this script with ``--child``; the parent writes its source files), so its
peak resident set is the sync's alone: the definition, the Parquet reader, the mapper, the planner, the engine and the
SQLite state store, exactly as ``connector.sync.runner.run_definition`` runs them for ``d365 sync run``. The peak is
the child's ``VmHWM`` (``/proc/self/status``), not ``ru_maxrss``: Linux carries the parent's high-water mark into a
child's ``ru_maxrss`` at ``exec``, so a parent that peaked higher (building the larger source) would be counted.
The source is a Parquet file of companies (account number, name, employees, e-mail) matched by the ``accountnumber``
alternate key; every row of the first sync is a create; the incremental sync changes the name of 1% of the rows, spread
over the file. Then ``write_entities_stream`` upserts the first sync's rows by the same key (under another prefix, so
every row is a create), in the same process after the syncs' memory is noted: the first sync's rate as a share of it.
The sync's ``parallelism`` is the connection's ``max_parallelism`` (8), the requests in flight ``write_entities`` has.

Printed per size and sync: rows/s (source rows over wall seconds), the rows written, the requests the emulator logged
(reads, writes, 429s), the model's ceiling for the rows written through bulk messages of ``--batch`` records
(``execution.fastest_run_s``) and the share reached, the same ceiling with the run's reads counted against the
request limit (``+reads``) and the share of that, then the peak RSS of each size and the
ratio (target <= 1.2x). The model keeps Dataverse's rates (6,000 requests and 1,200 s of execution per 300 s) on a
``--window-s`` window; ``--time-scale`` divides the window and each request's duration, as in bulk_write.py. Waits
are real. Never part of the test suite.

    .venv/bin/python benchmarks/sync.py [--rows 100000] [--small 10000] [--batch 100] [--window-s 3] [--time-scale 1]
        [--throttle dataverse|off] [--latency-ms 20]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from served import served

from connector.bulk import write_entities_stream
from connector.connection import Connection
from connector.governor import DEFAULT_MAX_PARALLELISM
from connector.policy import OperatorPolicy
from connector.sync.definition import load_definition
from connector.sync.runner import run_definition
from dataverse_emulator.execution import Costs, fastest_run_s

LATENCY_MS = 20
KEY = {
    "@odata.type": "Microsoft.Dynamics.CRM.EntityKeyMetadata",
    "SchemaName": "bench_accountnumber",
    "DisplayName": {"LocalizedLabels": [{"Label": "Account number", "LanguageCode": 1033}]},
    "KeyAttributes": ["accountnumber"],
}


def write_source(path: Path, prefix: str, n: int, changed_every: int = 0) -> None:
    """``n`` companies; with ``changed_every``, every ``changed_every``-th row renamed (the incremental sync's 1%)."""
    nums = [f"{prefix}-{i:07d}" for i in range(n)]
    names = [f"Company {i}" + ("*" if changed_every and i % changed_every == 0 else "") for i in range(n)]
    table = pa.table(
        {
            "num": nums,
            "name": names,
            "employees": [i % 5000 for i in range(n)],
            "email": [f"c{i}@example.com" for i in range(n)],
        }
    )
    pq.write_table(table, path, row_group_size=10_000)


def child(config_path: Path, folder: Path, prefix: str, n: int, batch: int) -> dict[str, Any]:
    """One size: a first full sync, then (the parent having changed 1% of the rows) an incremental sync; timings,
    counts and the peak RSS. The parent writes the source files, so building them is not in this process's peak."""
    source = folder / f"{prefix}.parquet"
    data = {
        "name": f"bench-{prefix}",
        "source": {"path": str(source)},
        "target": "account",
        "match": {"key": "accountnumber"},
        "mapping": [
            {"source": "num", "target": "accountnumber"},
            {"source": "name", "target": "name"},
            {"source": "employees", "target": "numberofemployees"},
            {"source": "email", "target": "emailaddress1"},
        ],
        "batch_size": batch,
        "parallelism": DEFAULT_MAX_PARALLELISM,  # the requests in flight write_entities has on this connection
    }
    policy = OperatorPolicy.from_env()
    definition = load_definition(data, policy=policy, base_dir=folder)
    config = json.loads(config_path.read_text(encoding="utf-8"))
    out: dict[str, Any] = {}
    with Connection.from_config(config) as conn:
        conn.metadata.table("account")  # the metadata read is the same for every run: not timed
        for name in ("first", "incremental"):
            wall, cpu = time.perf_counter(), time.process_time()
            result = run_definition(definition, conn, policy=policy, base_dir=folder)
            out[name] = {
                "seconds": time.perf_counter() - wall,
                "cpu_s": time.process_time() - cpu,
                "counts": result.counts,
            }
            print("READY", flush=True)  # the parent notes the requests of this sync (and changes the source)
            sys.stdin.readline()
        out["peak_rss_mb"] = peak_rss_mb()  # the syncs' alone
        wall, cpu = time.perf_counter(), time.process_time()
        summary = write_entities_stream(conn, "account", "upsert", _records(f"W{prefix}", n), on_chunk=lambda _: None)
        out["write_entities"] = {
            "seconds": time.perf_counter() - wall,
            "cpu_s": time.process_time() - cpu,
            "counts": {k: v for k, v in summary.counts.items() if k in ("created", "updated") and v},
        }
    return out


def peak_rss_mb() -> float:
    """This process's own peak resident set (its ``VmHWM``); ``ru_maxrss`` where there is no ``/proc`` (it may
    include the parent's peak: see the module docstring)."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:")) / 1024
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _records(prefix: str, n: int) -> Iterator[dict[str, Any]]:
    """The first sync's rows as ``write_entities`` records (upsert by the same key), under another prefix."""
    for i in range(n):
        fields = {"name": f"Company {i}", "numberofemployees": i % 5000, "emailaddress1": f"c{i}@example.com"}
        yield {"key": {"accountnumber": f"{prefix}-{i:07d}"}, "fields": fields}


def run_size(
    emu: Any, folder: Path, prefix: str, n: int, batch: int, pause_s: float
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The child for ``n`` rows; returns its report and, per phase, the requests the emulator logged. Each phase
    starts ``pause_s`` after the last (the previous requests leave the model's window)."""
    emu.admin.clear_requests()
    source = folder / f"{prefix}.parquet"
    write_source(source, prefix, n)
    args = [sys.executable, __file__, "--child", str(emu.connection_file), str(folder), prefix, str(n), str(batch)]
    proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdin is not None and proc.stdout is not None
    logs = []
    for line in proc.stdout:
        if line.startswith("READY"):
            logs.append(emu.admin.requests())
            emu.admin.clear_requests()
            if len(logs) == 1:
                write_source(source, prefix, n, changed_every=100)  # 1% of the rows renamed
            time.sleep(pause_s)
            proc.stdin.write("\n")
            proc.stdin.flush()
        elif line.startswith("{"):
            report = json.loads(line)
    if proc.wait() != 0:
        raise RuntimeError(f"the {n:,}-row child failed")
    logs.append(emu.admin.requests())
    return report, logs


def requests_of(log: list[dict[str, Any]]) -> tuple[int, int, int]:
    """(reads, writes, 429s) among the Web API requests of a log."""
    api = [r for r in log if "/api/data/" in r["path"]]
    reads = sum(1 for r in api if r["method"] == "GET")
    return reads, len(api) - reads, sum(1 for r in api if r.get("status") == 429)


def main() -> None:
    if sys.argv[1:2] == ["--child"]:
        config, folder, prefix, n, batch = sys.argv[2:7]
        print(json.dumps(child(Path(config), Path(folder), prefix, int(n), int(batch))), flush=True)
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=100_000, help="the large size")
    parser.add_argument("--small", type=int, default=10_000, help="the small size (peak memory baseline)")
    parser.add_argument("--batch", type=int, default=100, help="the definition's batch_size")
    parser.add_argument("--window-s", type=float, default=3.0, help="the model's window at Dataverse's rates")
    parser.add_argument("--time-scale", type=float, default=1.0)
    parser.add_argument("--throttle", choices=["dataverse", "off"], default="dataverse", help="off: memory only, fast")
    parser.add_argument("--latency-ms", type=int, default=LATENCY_MS)
    args = parser.parse_args()
    w, ts = args.window_s, args.time_scale
    max_requests, max_exec_s = round(6000 * w / 300), 1200 * w / 300
    model = {"throttle": args.throttle, "latency_ms": args.latency_ms, "window_s": w, "max_requests": max_requests}
    model |= {"max_exec_s": max_exec_s, "time_scale": ts}
    costs = Costs()
    reports = {}
    print(f"emulator in its own process, latency {args.latency_ms} ms; model {args.throttle}: Dataverse's rates on a "
          f"{w:g} s window")  # fmt: skip
    print(f"({max_requests} requests, {max_exec_s:g} s of execution, 52 concurrent), time scale {ts:g}")
    print(f"{'size':>8} {'sync':<12}{'rows/s':>9}{'written':>9}{'reads':>7}{'writes':>7}{'429s':>6}"
          f"{'ceiling':>9}{'share':>7}{'+reads':>10}{'share':>7}{'s':>7}{'CPU s':>7}")  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="d365-bench-sync-") as tmp, served(**model) as emu:
        with Connection.from_config(emu.config) as conn:
            conn.client.request("POST", "EntityDefinitions(LogicalName='account')/Keys", json=KEY)
        for n, prefix in ((args.small, "S"), (args.rows, "L")):
            time.sleep(w / ts + 0.5)  # the previous requests leave the window
            report, logs = run_size(emu, Path(tmp), prefix, n, args.batch, w / ts + 0.5)
            reports[n] = report
            for name, log in zip(("first", "incremental", "write_entities"), logs, strict=True):
                r = report[name]
                counts = r["counts"]
                written = counts.get("created", 0) + counts.get("updated", 0)
                reads, writes, throttled = requests_of(log)
                fastest = fastest_run_s(costs, "bulk", written, args.batch, w, max_requests, max_exec_s, 52) / ts
                # the run's reads count against the same request limit: one window's worth, then one per window
                with_reads = max(fastest, (reads + writes - 1) // max_requests * w / ts)
                ceiling, run_ceiling = n / fastest, n / with_reads
                rate = n / r["seconds"]
                shares = f"{ceiling:>9,.0f}{rate / ceiling:>7.0%}{run_ceiling:>10,.0f}{rate / run_ceiling:>7.0%}"
                if args.throttle == "off":
                    shares = f"{'-':>9}{'-':>7}{'-':>10}{'-':>7}"  # no model, no ceiling
                print(f"{n:>8,} {name:<12}{rate:>9,.0f}{written:>9,}{reads:>7}{writes:>7}{throttled:>6}{shares}"
                      f"{r['seconds']:>7.1f}{r['cpu_s']:>7.1f}")  # fmt: skip
                if set(counts) - {"created", "updated", "unchanged"}:
                    print(f"    counts {counts}")
            first, plain = report["first"]["seconds"], report["write_entities"]["seconds"]
            print(f"{'':>9}first sync / write_entities upsert of the same rows: {plain / first:.0%} of its rate")
    small, large = reports[args.small]["peak_rss_mb"], reports[args.rows]["peak_rss_mb"]
    print(f"peak RSS of the sync process: {small:,.0f} MB at {args.small:,} rows, {large:,.0f} MB at {args.rows:,} "
          f"rows: {large / small:.2f}x (target <= 1.2x)")  # fmt: skip


if __name__ == "__main__":
    main()
