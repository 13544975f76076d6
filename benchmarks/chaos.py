"""Honest outcomes at 60% injected faults, at scale: the suite's chaos scenario (``tests/e2e/test_chaos_e2e.py``) with
50,000 rows per run by default.

Four ``write_entities`` runs (create with own ids, the same input again, upsert by key with half the keys new, update
by id) against the emulator with seeded faults on 60% of Web API requests; after each run the table is read back and
every record's outcome checked against it. Prints, per run: the outcome counts, how many of each the read back
verified, the mismatches (must be 0) and the time; then the faults injected by kind. Waits are on a shared fake clock,
so the time is the connector's and the emulator's work, not ``Retry-After``. Never part of the test suite.

    .venv/bin/python benchmarks/chaos.py [--rows 50000] [--seed 60] [--fault-rate 0.6]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the scenario lives with the suite's test

from tests.e2e.test_chaos_e2e import FAULT_RATE, SEED, run_chaos

STATUSES = ("created", "updated", "already_present", "failed", "unknown")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=50_000)
    parser.add_argument("--seed", type=int, default=SEED)
    parser.add_argument("--fault-rate", type=float, default=FAULT_RATE)
    args = parser.parse_args()
    started = time.perf_counter()
    steps, faults = run_chaos(args.rows, seed=args.seed, fault_rate=args.fault_rate)
    print(f"{args.rows:,} rows, faults on {args.fault_rate:.0%} of Web API requests, seed {args.seed}")
    header = f"{'run':<16}{'records':>9}" + "".join(f"{s:>18}" for s in STATUSES) + f"{'mismatches':>12}{'s':>8}"
    print(header)
    for step in steps:
        summary = step.out["summary"]
        cells = "".join(f"{f'{summary[s]} ({step.verified[s]} ok)':>18}" for s in STATUSES)
        print(f"{step.name:<16}{summary['total']:>9}{cells}{len(step.mismatches):>12}{step.seconds:>8.1f}")
        for line in step.mismatches[:3]:
            print(f"    {line}")
    print("faults injected: " + ", ".join(f"{k} {v}" for k, v in sorted(faults.items())))
    print(f"total {time.perf_counter() - started:.1f} s")
    return 1 if any(step.mismatches for step in steps) else 0


if __name__ == "__main__":
    raise SystemExit(main())
