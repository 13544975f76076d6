"""Client CPU of ``write_entities``: N new accounts created against the emulator served from another process (model
off), so ``time.process_time`` here is the client's own work. ``--profile`` prints cProfile's top entries.

    python benchmarks/profile_write.py --records 20000 --latency-ms 0 [--chunk 100] [--runtime] [--profile]

``--runtime`` calls it as users do, through ``Runtime.run_action`` (both validation phases, the hooks, the output):
without it the library function alone is measured.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bulk_write import KEY
from served import served

from connector.bulk import WriteOptions, write_entities
from connector.connection import Connection
from connector.runtime import Runtime


def write(conn: Connection, mode: str, records: list[Any], options: WriteOptions, runtime: Runtime | None) -> Any:
    if runtime is None:
        return write_entities(conn, "account", mode, records, options).summary()
    inputs = {"table": "account", "mode": mode, "records": records, "chunk_size": options.chunk_size}
    return runtime.run_action("write_entities", inputs, conn)["summary"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=20000)
    parser.add_argument("--latency-ms", type=int, default=0)
    parser.add_argument("--chunk", type=int, default=None, help="default: the library's default chunk size")
    parser.add_argument("--mode", default="create", choices=("create", "upsert", "upsert-key"))
    parser.add_argument("--runtime", action="store_true", help="through Runtime.run_action, as users call it")
    parser.add_argument("--profile", action="store_true", help="print cProfile's top 30 by cumulative time")
    args = parser.parse_args()
    n = args.records
    if args.mode == "create":
        records = [{"fields": {"name": f"acct {i}", "accountnumber": f"P-{i:07d}"}} for i in range(n)]
    elif args.mode == "upsert":
        records = [{"id": f"00000000-0000-4000-8000-{i:012d}", "fields": {"name": f"acct {i}"}} for i in range(n)]
    else:  # what benchmarks/compare.py's first scenario writes
        records = [{"key": {"accountnumber": f"P-{i:06d}"}, "fields": {"name": f"P {i}"}} for i in range(n)]
    mode = args.mode.removesuffix("-key")
    options = WriteOptions() if args.chunk is None else WriteOptions(chunk_size=args.chunk)
    runtime = Runtime(load_entrypoints=False) if args.runtime else None
    with served(throttle="off", latency_ms=args.latency_ms) as emu, Connection.from_config(emu.config) as conn:
        if mode != args.mode:
            conn.client.request("POST", "EntityDefinitions(LogicalName='account')/Keys", json=KEY)
        conn.metadata.table("account")
        write(conn, mode, records[:10], options, runtime)  # warm: token, metadata, probe, schemas
        rest = records[10:]
        profiler = cProfile.Profile() if args.profile else None
        wall, cpu = time.perf_counter(), time.process_time()
        if profiler is not None:
            profiler.enable()
        summary = write(conn, mode, rest, options, runtime)
        if profiler is not None:
            profiler.disable()
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    print(
        f"{len(rest):,} {args.mode}s: {len(rest) / wall:,.0f} rows/s, {wall:.2f} s wall, "
        f"{cpu / len(rest) * 10_000:.2f} client CPU s per 10,000 records; {summary}"
    )
    if profiler is not None:
        pstats.Stats(profiler).sort_stats("cumulative").print_stats(30)
        pstats.Stats(profiler).sort_stats("tottime").print_stats(25)


if __name__ == "__main__":
    main()
