"""Time and peak memory of schema discovery on large organisations: table by table against one expanded read.

The emulator runs in this process, preloaded through its admin surface with 250 and then 500 custom tables of 50
columns each (one request per size, no per-column HTTP). The connector runs in a child process, so its peak resident
set size (``VmHWM``, its own image only) is its own; a second run of the same child under ``tracemalloc`` gives the peak
of the Python heap. Three ways of reading every custom table with its columns:

* ``iter``: :func:`connector.metadata_reads.iter_entities_metadata`, one table's columns held at a time;
* ``action``: the ``get_entities_metadata`` action, which also has to hold its whole answer (a platform output is one
  JSON document), but never one giant response;
* ``expand``: one ``EntityDefinitions?$expand=Attributes`` read, what discovery in other connectors does (peers run
  out of memory there; ``../shared/peers.md`` pain point 8).

The goal is flat memory for ``iter`` as the table count doubles. Never part of the test suite's pass/fail.

    .venv/bin/python benchmarks/metadata.py [--sizes 250 500] [--columns 50]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from dataverse_emulator.testing import EmulatorHandle, running_emulator

# The child: connect (token and WhoAmI outside the measurement), read in one of the three ways, print one JSON line.
CHILD = r"""
import json, sys, time, tracemalloc
from connector.connection import Connection
from connector import metadata_reads as md
from connector.inputs import GetEntitiesMetadata

config_file, mode, traced = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
from pathlib import Path
conn = Connection.from_config(json.loads(Path(config_file).read_text()), base_dir=Path(config_file).parent)
conn.client.whoami()
inputs = GetEntitiesMetadata(include_all_custom=True)
if traced:
    tracemalloc.start()
started = time.perf_counter()
if mode == "iter":
    tables = columns = 0
    for table in md.iter_entities_metadata(conn, inputs):
        tables += 1
        columns += len(table["attributes"])
elif mode == "action":
    out = md.get_entities_metadata(conn, inputs)
    tables, columns = out["count"], sum(len(t["attributes"]) for t in out["tables"])
else:
    body = conn.client.get_json("EntityDefinitions", params={"$expand": "Attributes"})
    custom = [e for e in body["value"] if e.get("IsCustomEntity")]
    tables, columns = len(custom), sum(len(e["Attributes"]) for e in custom)
elapsed = time.perf_counter() - started
peak = tracemalloc.get_traced_memory()[1] if traced else 0
# VmHWM belongs to this process image only: ru_maxrss would also count the pages shared with the forked parent
# (the emulator, which grows with every seeded table) before exec
hwm_kib = 0.0
try:
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            hwm_kib = float(line.split()[1])
except OSError:
    import resource
    hwm_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (1024 if sys.platform == "darwin" else 1)
print(json.dumps({"tables": tables, "columns": columns, "seconds": elapsed, "heap_peak": peak, "rss_kib": hwm_kib}))
"""

MODES = ("iter", "action", "expand")


def run_traced(connection_file: Path, mode: str) -> dict[str, float]:
    """The child's JSON line from a run under tracemalloc (slower; only its heap peak is used)."""
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, str(connection_file), mode, "1"], capture_output=True, check=False
    )
    if proc.returncode != 0:
        raise SystemExit(f"{mode} failed ({proc.returncode}): {proc.stderr.decode()[-800:]}")
    result: dict[str, float] = json.loads(proc.stdout.decode().strip().splitlines()[-1])
    return result


def run_measured(connection_file: Path, mode: str) -> tuple[dict[str, float], float, float]:
    """(result, peak RSS MiB, traced heap peak MiB): an untraced run for time and RSS, a traced one for the heap."""
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, str(connection_file), mode, "0"], capture_output=True, check=False
    )
    if proc.returncode != 0:
        raise SystemExit(f"{mode} failed ({proc.returncode}): {proc.stderr.decode()[-800:]}")
    result = json.loads(proc.stdout.decode().strip().splitlines()[-1])
    return result, result["rss_kib"] / 1024, run_traced(connection_file, mode)["heap_peak"] / 2**20


def seed(emulator: EmulatorHandle, first: int, last: int, columns: int) -> None:
    """Custom tables ``new_bench0000``... with ``columns`` columns of mixed types, in one admin request."""
    kinds = ("string", "int", "decimal", "money", "bool", "datetime", "memo")
    tables = [
        {
            "schema_name": f"new_Bench{t:04d}",
            "display_name": f"Bench {t}",
            "columns": [
                {"schema_name": f"new_Col{c:03d}", "type": kinds[c % len(kinds)], "max_length": 200}
                for c in range(columns - 1)  # the primary name column makes it ``columns``
            ],
        }
        for t in range(first, last)
    ]
    emulator.admin.seed_metadata(tables)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[250, 500])
    parser.add_argument("--columns", type=int, default=50)
    args = parser.parse_args()
    sizes = sorted(args.sizes)
    rows: list[tuple[int, str, dict[str, float], float, float]] = []
    with running_emulator() as emulator, tempfile.TemporaryDirectory() as tmp:
        connection_file = Path(tmp) / "connection.json"
        connection_file.write_text(json.dumps(emulator.connection_config()), encoding="utf-8")
        seeded = 0
        for size in sizes:
            started = time.perf_counter()
            seed(emulator, seeded, size, args.columns)
            seeded = size
            print(f"seeded {size} custom tables of {args.columns} columns in {time.perf_counter() - started:.1f} s")
            for mode in MODES:
                result, rss, heap = run_measured(connection_file, mode)
                if result["tables"] != size:
                    raise SystemExit(f"{mode}: expected {size} custom tables, read {result['tables']}")
                rows.append((size, mode, result, rss, heap))
    base = {mode: (rss, heap) for size, mode, _, rss, heap in rows if size == sizes[0]}
    print(
        f"\nratios against the {sizes[0]}-table run of the same mode; heap = traced Python heap peak of the connector"
    )
    head = f"{'tables':>6} {'mode':>7} {'columns':>8} {'seconds':>8} {'RSS MiB':>8} {'ratio':>6}"
    print(head + f" {'heap MiB':>9} {'ratio':>6}")
    for size, mode, result, rss, heap in rows:
        b_rss, b_heap = base[mode]
        print(
            f"{size:>6} {mode:>7} {int(result['columns']):>8} {result['seconds']:>8.2f} {rss:>8.1f} {rss / b_rss:>6.2f}"
            f" {heap:>9.1f} {heap / b_heap:>6.2f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
