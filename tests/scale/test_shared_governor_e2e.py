"""Four worker processes through one application user against the emulator with the throttle model on: with one
in-process governor each they keep four times the server's hint in flight and are refused (429) again and again; with
the shared governor on Redis they keep the hint between them, so the emulator counts at most a tenth of those 429s."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dataverse_emulator.testing import EmulatorHandle, running_emulator

ROOT = Path(__file__).resolve().parents[2]
WORKERS, ROWS = 4, 250


@pytest.fixture
def throttled(tmp_path: Path) -> Iterator[tuple[EmulatorHandle, Path]]:
    """The emulator with the service protection model at the dop hint's concurrency (4 per user): more at once is
    refused with a 429 (Retry-After 1 s, scaled to 0.1 s), as Dataverse refuses past its concurrency limit."""
    options: dict[str, Any] = {"throttle": "dataverse", "max_concurrency": 4, "dop_hint": 4, "time_scale": 10}
    with running_emulator(latency_ms=20, key_activation_s=0, **options) as emu:
        conn_file = tmp_path / "connection.json"
        conn_file.write_text(json.dumps(emu.connection_config()))
        yield emu, conn_file


def run_workers(conn_file: Path, env: dict[str, str], prefix: str) -> list[dict[str, Any]]:
    args = [sys.executable, "-m", "tests.scale.writer", str(conn_file)]
    procs = [
        subprocess.Popen([*args, f"{prefix}{k}", str(ROWS)], cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True)
        for k in range(WORKERS)
    ]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0] * WORKERS
    return [json.loads(out) for out in outs]


def test_a_shared_governor_takes_a_tenth_of_the_429s_of_four_in_process_ones(
    throttled: tuple[EmulatorHandle, Path], redis_url: str
) -> None:
    emu, conn_file = throttled
    env = {**os.environ, "D365_POLICY": "local"}
    env.pop("D365_GOVERNOR_URL", None)

    def throttled_count() -> int:
        return sum(1 for r in emu.admin.requests() if r.get("status") == 429)

    run_workers(conn_file, env, "local")
    baseline = throttled_count()
    assert baseline >= 40  # the run is sized so the in-process governors are refused often

    emu.admin.clear_requests()
    results = run_workers(conn_file, {**env, "D365_GOVERNOR_URL": redis_url}, "shared")
    shared = throttled_count()
    assert shared <= baseline / 10, (shared, baseline)
    assert sum(r["created"] for r in results) == WORKERS * ROWS
    created = [r for r in emu.admin.requests() if r.get("method") == "POST" and r.get("status") == 204]
    assert len(created) == WORKERS * ROWS
