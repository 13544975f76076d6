"""Peak client memory of ``upload_file`` and ``download_file`` by file size: flat, not growing with the file.

The emulator runs in its own process (``served``), so this process's memory is the client's alone. For each size
(ascending) a file of that many bytes is written to disk, uploaded with chunking forced, downloaded to another file
and compared by sha256. Reported per step: the peak of Python allocations during the step (``tracemalloc``), its
ratio to the file size (the baseline: what reading the file into memory would hold), and the process's RSS
high-water mark after the step (``ru_maxrss``, which only grows: flat across sizes means no step needed more than
the first). Seconds are printed for information, never compared. Never part of the test suite.

    .venv/bin/python benchmarks/files.py [--sizes-mb 8,32,64]
"""

from __future__ import annotations

import argparse
import hashlib
import resource
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

from served import served

from connector.connection import Connection
from connector.runtime import Runtime

MB = 1024 * 1024


def write_file(path: Path, size: int) -> str:
    digest = hashlib.sha256()
    block = (hashlib.sha256(b"bench").digest() * (MB // 32))[:MB]
    with path.open("wb") as handle:
        left = size
        while left:
            piece = block[: min(MB, left)]
            handle.write(piece)
            digest.update(piece)
            left -= len(piece)
    return digest.hexdigest()


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(MB), b""):
            digest.update(block)
    return digest.hexdigest()


def measured(step: Callable[[], Any]) -> tuple[Any, int, float]:
    """The step's result, its peak of Python allocations in bytes, and its seconds."""
    tracemalloc.start()
    tracemalloc.reset_peak()
    started = time.perf_counter()
    try:
        result = step()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return result, peak, time.perf_counter() - started


def rss_mb() -> float:
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kilobytes on Linux
    return kb / 1024 if sys.platform != "darwin" else kb / MB


def row_of(peak: int, size_mb: int) -> str:
    return f"{peak / MB:>8.1f} {peak / (size_mb * MB):>9.3f} {rss_mb():>10.0f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes-mb", default="8,32,64", help="file sizes in MB, ascending")
    args = parser.parse_args()
    sizes = sorted(int(s) for s in args.sizes_mb.split(","))
    runtime = Runtime(load_entrypoints=False)
    folder = Path(tempfile.mkdtemp(prefix="d365-bench-files-"))
    with served() as emu:
        connection = Connection.from_config(emu.config)
        short = {"type": "file", "schema_name": "new_Bench", "label": "Bench", "max_size_kb": 10485760}
        runtime.run_action("create_attribute", {"table": "account", "attribute": short}, connection)
        row = runtime.run_action("create_entity", {"table": "account", "fields": {"name": "bench"}}, connection)["id"]
        print(f"{'size MB':>8} {'step':>9} {'peak MB':>8} {'peak/size':>9} {'RSS max MB':>10} {'s':>6}  same")
        for size_mb in sizes:
            source, target = folder / f"{size_mb}.bin", folder / f"{size_mb}.back"
            digest = write_file(source, size_mb * MB)
            up = {"table": "account", "id": row, "column": "new_bench", "file_path": str(source), "chunked": True}
            _, peak, secs = measured(lambda up=up: runtime.run_action("upload_file", up, connection))
            print(f"{size_mb:>8} {'upload':>9} {row_of(peak, size_mb)} {secs:>6.1f}")
            down = {"table": "account", "id": row, "column": "new_bench", "save_to": str(target), "overwrite": True}
            _, peak, secs = measured(lambda down=down: runtime.run_action("download_file", down, connection))
            same = sha256(target) == digest
            print(f"{size_mb:>8} {'download':>9} {row_of(peak, size_mb)} {secs:>6.1f}  {same}")
            source.unlink()
            target.unlink()
        connection.close()


if __name__ == "__main__":
    main()
