"""A sync's memory is bounded by its groups, not its rows: the peak Python heap of a first and of an incremental run
of 6,000 rows stays within 1.5x of the same runs on 1,000 rows.

Why this measure: a regression holds something per row, and the Python heap is what it grows; ``tracemalloc`` counts
that heap whatever the allocator and the caches of DuckDB and SQLite do with the resident set (``benchmarks/sync.py``
reports that one). Measured with a dict of every match key and an incremental unit holding its unchanged rows' ledger
(until its changed rows filled a chunk): 1.8x (first) and 5x (incremental). Without them: 1.15x and 1.2-1.35x, the
rest being bounded caches and in-flight chunks that vary with timing. The runs are in a process of their own
(``tests/sync/memory_worker.py``), away from the emulator's allocations in this one.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from connector.connection import Connection
from dataverse_emulator.testing import EmulatorHandle

ROOT = Path(__file__).resolve().parents[2]


def peaks(emulator: EmulatorHandle, tmp_path: Path, prefix: str, n: int) -> dict[str, int]:
    url = f"sqlite:///{tmp_path / f'{prefix}.sqlite'}"
    args = [sys.executable, "-m", "tests.sync.memory_worker", json.dumps(emulator.connection_config()), url, prefix]
    out = subprocess.run([*args, str(n)], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    return dict(json.loads(out.stdout))


def test_a_runs_peak_memory_does_not_grow_with_its_rows(
    connection: Connection, emulator: EmulatorHandle, tmp_path: Path
) -> None:
    small = peaks(emulator, tmp_path, "S", 1_000)
    large = peaks(emulator, tmp_path, "L", 6_000)
    for phase in ("first", "incremental"):
        assert large[phase] <= small[phase] * 1.5, (phase, small, large)
