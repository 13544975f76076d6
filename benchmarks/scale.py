"""Scale-out, printed not asserted: four worker processes through one application user with and without the shared
governor (total time and 429s the emulator counted), one worker (one POST a row) through an identity pool of 1 and of 2
application users (rows/s and 429s: the limits are per user, so a second user raises the ceiling), then a 4-partition
sync with its state in PostgreSQL.

The emulator runs in its own process (``served.py``) with the service protection model on at the dop hint's
concurrency (``--max-concurrency 4 --dop-hint 4``, ``--time-scale`` dividing Retry-After and the window) and
``--latency-ms 20``; Redis and PostgreSQL are started from Debian's packages as the tests start them
(``tests/services.py``). Each worker is ``python -m tests.scale.writer`` (the bulk writer: CreateMultiple chunks of
``--chunk`` rows through the governor; ``--chunk 0``: one POST per row); each partition is ``d365 sync run
--partition K/4`` (the sync's streaming bulk writer), all four started at once on an empty PostgreSQL database. Waits
are real. Never part of the test suite.

    .venv/bin/python benchmarks/scale.py [--rows 20000] [--chunk 1000] [--pool-rows 10000] [--sync-rows 200000]
        [--time-scale 10]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from served import Served, served

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.services import postgres_server, redis_server  # noqa: E402

D365 = str(Path(sys.executable).parent / "d365")
KEY = {
    "@odata.type": "Microsoft.Dynamics.CRM.EntityKeyMetadata",
    "SchemaName": "bench_accountnumber",
    "DisplayName": {"LocalizedLabels": [{"Label": "Account number", "LanguageCode": 1033}]},
    "KeyAttributes": ["accountnumber"],
}


def throttled(emu: Served) -> int:
    return sum(1 for r in emu.admin.requests() if r.get("status") == 429)


def writers(emu: Served, rows: int, chunk: int, env: dict[str, str], prefix: str) -> tuple[float, int, int]:
    """(seconds, 429s, rows not created) of four writer processes of ``rows`` each."""
    emu.admin.clear_requests()
    started = time.perf_counter()
    args = [sys.executable, "-m", "tests.scale.writer", str(emu.connection_file)]
    procs = [
        subprocess.Popen(
            [*args, f"{prefix}{k}", str(rows), str(chunk)], cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True
        )
        for k in range(4)
    ]
    results = [json.loads(p.communicate()[0]) for p in procs]
    return time.perf_counter() - started, throttled(emu), sum(r["failed"] for r in results)


def pooled(emu: Served, rows: int, env: dict[str, str]) -> list[tuple[str, float, int, int]]:
    """(scenario, seconds, 429s, rows not created) of one writer process through a pool of 1, then 2, application
    users: the second user is one more app registration the emulator adds (``POST /_emulator/apps``)."""
    second = emu.admin.add_app()
    results = []
    for users, identities in ((1, []), (2, [second])):
        config = {**emu.config, **({"additional_identities": identities} if identities else {})}
        conn_file = emu.connection_file.with_name(f"pool-{users}.json")
        conn_file.write_text(json.dumps(config), encoding="utf-8")
        emu.admin.clear_requests()
        started = time.perf_counter()
        args = [sys.executable, "-m", "tests.scale.writer", str(conn_file), f"pool{users}", str(rows)]
        out = subprocess.run(args, cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True, check=True).stdout
        seconds = time.perf_counter() - started
        label = f"1 process, pool of {users} application user{'s' if users > 1 else ''}"
        results.append((label, seconds, throttled(emu), int(json.loads(out)["failed"])))
    return results


def partitioned_sync(emu: Served, rows: int, state_url: str, env: dict[str, str]) -> tuple[float, int]:
    """(seconds, rows created) of four partition workers started together."""
    folder = Path(tempfile.mkdtemp(prefix="d365-scale-"))
    with (folder / "companies.csv").open("w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(["num", "name"])
        w.writerows((f"S-{i:07}", f"Company {i}") for i in range(rows))
    definition = {
        "name": "scale",
        "source": {"path": "companies.csv"},
        "target": "account",
        "match": {"key": ["accountnumber"]},
        "mapping": [{"source": "num", "target": "accountnumber"}, {"source": "name", "target": "name"}],
        "state": state_url,
    }
    (folder / "sync.json").write_text(json.dumps(definition), encoding="utf-8")
    env = {**env, "D365_CONNECTION": str(emu.connection_file)}
    started = time.perf_counter()
    procs = [
        subprocess.Popen(
            [D365, "sync", "run", str(folder / "sync.json"), "--partition", f"{k}/4", "--json", "--progress", "none"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        for k in range(4)
    ]
    created = sum(json.loads(p.communicate()[0] or "{}").get("counts", {}).get("created", 0) for p in procs)
    return time.perf_counter() - started, created


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=20_000, help="rows per writer process (4 processes)")
    parser.add_argument("--chunk", type=int, default=1000, help="the writers' CreateMultiple chunk (0: one POST a row)")
    parser.add_argument("--pool-rows", type=int, default=10_000, help="rows of the identity pool scenarios")
    parser.add_argument("--sync-rows", type=int, default=200_000, help="rows of the 4-partition sync")
    parser.add_argument("--time-scale", type=float, default=10.0)
    args = parser.parse_args()
    options = {"throttle": "dataverse", "max_concurrency": 4, "dop_hint": 4, "time_scale": args.time_scale}
    env = {k: v for k, v in os.environ.items() if k != "D365_GOVERNOR_URL"} | {"D365_POLICY": "local"}
    with redis_server() as redis_url, served(latency_ms=20, **options) as emu:
        print(f"{'scenario':<40}{'seconds':>9}{'rows/s':>9}{'429s':>7}{'not created':>13}")
        for name, run_env in (
            ("4 processes, in-process governors", env),
            (
                "4 processes, shared governor (Redis)",
                {
                    **env,
                    "D365_GOVERNOR_URL": redis_url,
                },
            ),
        ):
            seconds, t429, failed = writers(emu, args.rows, args.chunk, run_env, "in" if run_env is env else "sh")
            rate = 4 * args.rows / seconds
            print(f"{name:<40}{seconds:>9.1f}{rate:>9.0f}{t429:>7}{failed:>13}", flush=True)
    with served(latency_ms=20, **options) as emu:
        for name, seconds, t429, failed in pooled(emu, args.pool_rows, env):
            print(f"{name:<40}{seconds:>9.1f}{args.pool_rows / seconds:>9.0f}{t429:>7}{failed:>13}", flush=True)
    with postgres_server() as pg_url, served(latency_ms=20) as emu:
        from connector.connection import Connection

        with Connection.from_config(emu.config, base_dir=emu.connection_file.parent) as conn:
            conn.client.request("POST", "EntityDefinitions(LogicalName='account')/Keys", json=KEY)
        seconds, created = partitioned_sync(emu, args.sync_rows, pg_url, env)
        rate = args.sync_rows / seconds
        missing = args.sync_rows - created
        print(f"{'4-partition sync, PostgreSQL state':<40}{seconds:>9.1f}{rate:>9.0f}{'-':>7}{missing:>13}")


if __name__ == "__main__":
    main()
