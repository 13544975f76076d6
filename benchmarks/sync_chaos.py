"""A sync under chaos, at scale: the suite's scenario (``tests/sync/test_sync_chaos_e2e.py``) with 50,000 source rows
by default.

A CSV of companies (a fifth already in the table under other names, one in 500 with a name too long, one in 500
repeating an earlier account number) synced into ``account`` by the real definition, reader, mapper, engine and state
store, against the emulator with its throttle model on and seeded faults on 5% of Web API requests (commit-then-drop
included), with one retry per request, rerun until a run has nothing left to retry. Prints each run's outcome
counts, the crashes (runs an error stopped), the faults injected by kind, the 429s, and the problems the read back
found (must be none). Waits are on a shared fake clock, so the time is the connector's and the emulator's work.
Never part of the test suite.

    .venv/bin/python benchmarks/sync_chaos.py [--rows 50000] [--seed 18] [--fault-rate 0.05] [--max-runs 30]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the scenario lives with the suite's test

from tests.sync.test_sync_chaos_e2e import FAULT_RATE, OUTCOMES, SEED, run_sync_chaos


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=50_000)
    parser.add_argument("--seed", type=int, default=SEED)
    parser.add_argument("--fault-rate", type=float, default=FAULT_RATE)
    parser.add_argument("--max-runs", type=int, default=30)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="d365-sync-chaos-") as folder:
        out = run_sync_chaos(
            args.rows, seed=args.seed, fault_rate=args.fault_rate, folder=Path(folder), max_runs=args.max_runs
        )
    print(f"{args.rows:,} rows, faults on {args.fault_rate:.0%} of Web API requests, seed {args.seed}, one retry")
    columns = [o for o in sorted(OUTCOMES) if any(o in r for r in out.runs)]
    print(f"{'run':<6}" + "".join(f"{c:>14}" for c in columns))
    for i, counts in enumerate(out.runs, 1):
        print(f"{i:<6}" + "".join(f"{counts.get(c, 0):>14,}" for c in columns))
    print(f"crashes (runs an error stopped, resumed by the next): {len(out.crashes)}")
    for line in out.crashes[:3]:
        print(f"    {line[:140]}")
    faults = ", ".join(f"{k} {v}" for k, v in sorted(out.faults.items()))
    print(f"faults injected: {faults}; 429s {out.throttled}")
    print(f"problems found by the read back: {len(out.problems)}")
    for line in out.problems[:5]:
        print(f"    {line}")
    print(f"total {out.seconds:.1f} s")
    return 1 if out.problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
