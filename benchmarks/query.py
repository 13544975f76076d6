"""Rows per second and peak memory of ``d365 run query_entities --jsonl`` fetching every row, at 10k and 100k rows.

The emulator runs in this process (rows seeded through its admin surface); the connector runs in a child process that
reports its own peak resident set size (``VmHWM`` of its image, not the pages it shared with this parent before exec,
which ``ru_maxrss`` would count). A second run of the same command
under ``tracemalloc`` gives the peak of the Python heap (what the generator itself holds), which RSS blurs with the
C allocator's own retention. The goal is flat memory: the ratio of the peaks should stay near 1 while the row count
grows tenfold. Never part of the test suite's pass/fail.

    .venv/bin/python benchmarks/query.py [--sizes 10000 100000] [--page-size 5000]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from dataverse_emulator.testing import EmulatorHandle, running_emulator

# Runs ``d365`` as ``python -m connector.cli`` would, then writes its own peak RSS (``VmHWM``) and, when traced, the
# tracemalloc peak as the last stderr lines. ``ru_maxrss`` from ``wait4`` would also count the pages the child shared
# with this parent (the emulator, which grows with the seeded rows) before it exec'd, and so would not be flat.
WRAPPER = (
    "import runpy, sys\n"
    "traced = sys.argv.pop(1) == 'traced'\n"
    "if traced:\n"
    "    import tracemalloc\n"
    "    tracemalloc.start()\n"
    "sys.argv = ['d365', *sys.argv[1:]]\n"
    "try:\n"
    "    runpy.run_module('connector.cli', run_name='__main__')\n"
    "finally:\n"
    "    hwm = next((l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM:')), '0')\n"
    "    sys.stderr.write(f'\\nvmhwm-kib {hwm}\\n')\n"
    "    if traced:\n"
    "        sys.stderr.write(f'traced-peak {tracemalloc.get_traced_memory()[1]}\\n')\n"
)


def run_jsonl(
    connection_file: Path, rows: int, page_size: int, *, traced: bool = False
) -> tuple[int, float, float, float | None]:
    """(lines printed, seconds, peak RSS MiB, traced Python-heap peak MiB or None) of one ``--jsonl`` fetch-all."""
    inputs = {"table": "account", "select": ["name", "accountnumber"], "fetch_all": True, "max_records": rows}
    inputs["page_size"] = page_size
    with tempfile.TemporaryFile() as out:
        started = time.perf_counter()
        proc = subprocess.Popen(
            [sys.executable, "-c", WRAPPER, "traced" if traced else "plain",
             "run", "query_entities", "--jsonl", "--input", "-",
             "--connection", str(connection_file)],
            stdin=subprocess.PIPE, stdout=out, stderr=subprocess.PIPE,
        )  # fmt: skip
        assert proc.stdin is not None and proc.stderr is not None
        proc.stdin.write(json.dumps(inputs).encode())
        proc.stdin.close()
        err = proc.stderr.read()
        _, status, _usage = os.wait4(proc.pid, 0)
        elapsed = time.perf_counter() - started
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0:
            raise SystemExit(f"d365 run failed ({proc.returncode}): {err.decode()[-500:]}")
        out.seek(0)
        lines = sum(1 for _ in out)
    peak_kib = int(err.decode().rsplit("vmhwm-kib ", 1)[1].split()[0])
    traced_mib = None
    if traced:
        traced_mib = int(err.decode().rsplit("traced-peak ", 1)[1].split()[0]) / 2**20
    return lines, elapsed, peak_kib / 1024, traced_mib


def seed(emulator: EmulatorHandle, total: int, already: int) -> None:
    for start in range(already, total, 20_000):
        batch = [{"name": f"Bench {i:06d}", "accountnumber": f"N{i}"} for i in range(start, min(total, start + 20_000))]
        emulator.admin.seed("account", batch)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--page-size", type=int, default=5000)
    args = parser.parse_args()
    sizes = sorted(args.sizes)
    results: list[tuple[int, float, float, float]] = []
    with running_emulator() as emulator, tempfile.TemporaryDirectory() as tmp:
        connection_file = Path(tmp) / "connection.json"
        connection_file.write_text(json.dumps(emulator.connection_config()), encoding="utf-8")
        seeded = 0
        for size in sizes:
            seed(emulator, size, seeded)
            seeded = size
            lines, seconds, peak, _ = run_jsonl(connection_file, size, args.page_size)
            traced_lines, _, _, heap = run_jsonl(connection_file, size, args.page_size, traced=True)
            if lines != size or traced_lines != size:
                raise SystemExit(f"expected {size} records, got {lines} and {traced_lines}")
            results.append((size, seconds, peak, heap or 0.0))
    base_rss, base_heap = results[0][2], results[0][3]
    print(f"page size {args.page_size}; ratios against the {results[0][0]}-row run")
    header = f"{'rows':>8} {'seconds':>8} {'rows/s':>9} {'peak RSS MiB':>13} {'RSS ratio':>10}"
    print(header + f" {'heap peak MiB':>14} {'heap ratio':>11}")
    for size, seconds, peak, heap in results:
        line = f"{size:>8} {seconds:>8.2f} {size / seconds:>9.0f} {peak:>13.1f} {peak / base_rss:>10.2f}"
        print(line + f" {heap:>14.1f} {heap / base_heap:>11.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
