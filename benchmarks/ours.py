"""One timed run of this project's connector against the emulator, printed as one JSON line: the same runs and the same
output as ``peers/driver.py``, so ``compare.py`` measures every library the same way (its own process: CPU time and
peak memory are the library's alone).

    .venv/bin/python benchmarks/ours.py RUN --connection FILE --prefix P --n N

Runs: ``upsert`` (``write_entities``, mode upsert by the ``accountnumber`` key), ``create`` (``write_entities``, mode
create, the same rows as new ones), ``loop`` (``upsert_entity`` per
record), ``fetch`` (``query_entities`` with ``fetch_all``, pages of 5,000) and ``mixed`` (``run_batch_operations``
with ``continue_on_error``; failures named by their input index).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from connector.connection import Connection
from connector.runtime import Runtime


def records(prefix: str, n: int) -> list[dict[str, Any]]:
    return [{"key": {"accountnumber": f"{prefix}-{i:06d}"}, "fields": {"name": f"{prefix} {i}"}} for i in range(n)]


def peak_rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def run(name: str, runtime: Runtime, conn: Connection, args: argparse.Namespace) -> dict[str, Any]:
    if name == "upsert":
        inputs = {"table": "account", "mode": "upsert", "records": records(args.prefix, args.n)}
        out = runtime.run_action("write_entities", inputs, conn)
        return {"confirmed": out["summary"]["created"] + out["summary"]["updated"], "summary": out["summary"]}
    if name == "create":  # new rows with the same fields as the peers' creates
        rows = [
            {"fields": {"accountnumber": r["key"]["accountnumber"], **r["fields"]}}
            for r in records(args.prefix, args.n)
        ]
        out = runtime.run_action("write_entities", {"table": "account", "mode": "create", "records": rows}, conn)
        return {"confirmed": out["summary"]["created"], "summary": out["summary"]}
    if name == "loop":
        for r in records(args.prefix, args.n):
            runtime.run_action("upsert_entity", {"table": "account", **r}, conn)
        return {"confirmed": args.n}
    if name == "fetch":
        inputs = {"table": "account", "select": ["name", "accountnumber"], "fetch_all": True, "page_size": 5000}
        inputs["max_records"] = args.n
        out = runtime.run_action("query_entities", inputs, conn)
        return {"fetched": len(out["records"])}
    if name == "mixed":
        plan = json.loads(Path(args.plan).read_text())
        ops = []
        for op in plan:
            one: dict[str, Any] = {"table": "account", "action": op["action"], "fields": op["fields"]}
            if op["action"] == "update":
                one["id"] = op["id"]
            elif op["action"] == "upsert":
                one["key"] = op["key"]
            ops.append(one)
        out = runtime.run_action("run_batch_operations", {"operations": ops, "continue_on_error": True}, conn)
        failed = [r["index"] for r in out["results"] if r["status"] not in ("succeeded", "created", "updated")]
        return {"responses": len(out["results"]), "failed_indexes": failed}
    raise SystemExit(f"unknown run {name!r}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("run")
    parser.add_argument("--connection", required=True)
    parser.add_argument("--prefix", default="P")
    parser.add_argument("--n", type=int, default=0)
    parser.add_argument("--plan", default=None)
    args = parser.parse_args()
    os.environ.setdefault("D365_POLICY", "local")  # the person running the benchmark is the operator
    runtime = Runtime(load_entrypoints=False)
    out: dict[str, Any] = {"run": args.run}
    with Connection.from_config(json.loads(Path(args.connection).read_text())) as conn:
        wall, cpu = time.perf_counter(), time.process_time()
        try:
            out |= run(args.run, runtime, conn, args)
        except Exception as e:  # what the library's user would see
            out["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
        out["seconds"] = time.perf_counter() - wall
        out["cpu_s"] = time.process_time() - cpu
    out["peak_rss_mib"] = peak_rss_mib()
    sys.stdout.write(json.dumps(out) + "\n")


if __name__ == "__main__":
    main()
