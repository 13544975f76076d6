"""The peak Python heap of a first sync and of an incremental one of N generated rows, in a process of its own so that
the emulator serving it (in the test's process) is not counted: ``python -m tests.sync.memory_worker CONNECTION_JSON
STATE_URL PREFIX N``. Prints ``{"first": BYTES, "incremental": BYTES}``.

Each run is traced from its start (``tracemalloc``), so a peak is what the run itself held at its fullest: a few groups
of rows when nothing accumulates, more with every row when something does. Two things that fill up to a bound are
kept equal between sizes, so that they do not read as growth: ``urllib.parse``'s cache of the last 128 URLs split (the
first sync's small chunks send that many distinct reads within 1,000 rows) and the incremental sync's changed rows
(the first 10, whatever the size: what grows there is the rows that need no write)."""

from __future__ import annotations

import json
import sys
import tracemalloc
from collections.abc import Iterator
from functools import partial
from typing import Any

from connector.connection import Connection
from connector.sync.engine import SyncJob, run_sync
from connector.sync.planner import MatchRule
from connector.sync.state import StateStore
from tests.sync.conftest import AccountMapper

BATCH = 250  # source rows per batch: well under the smaller size, so a batch is not the whole source
RENAMED = 10


def rows(prefix: str, n: int, renamed: int = 0) -> Iterator[list[dict[str, Any]]]:
    for start in range(0, n, BATCH):
        indices = range(start, min(n, start + BATCH))
        yield [{"num": f"{prefix}-{i:05}", "name": f"Company {i}" + "*" * (i < renamed)} for i in indices]


def main() -> None:
    config, state, prefix, n = json.loads(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4])
    rule = MatchRule(kind="key")
    # small chunks in the first sync (its distinct reads fill the URL cache early); an incremental unit gathers up to
    # 50 groups of 100 rows
    phases = [("first", 10, 0), ("incremental", 50, RENAMED)]
    peaks: dict[str, int] = {}
    with Connection.from_config(config) as connection:
        connection.metadata.table("account")  # read once, before any run is traced
        store = StateStore(state, "accounts")
        for phase, batch_size, renamed in phases:
            job = SyncJob("accounts", "account", rule, batch_size=batch_size, parallelism=2)
            tracemalloc.start()
            result = run_sync(connection, job, AccountMapper(), partial(rows, prefix, n, renamed), store)
            peaks[phase] = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
            assert result.exit_code == 0, result.to_dict()
            assert result.counts.get("unchanged", 0) == (n - RENAMED if renamed else 0), result.counts
        store.close()
    print(json.dumps(peaks))


if __name__ == "__main__":
    main()
