"""A sync of N generated rows in a process of its own, for the SIGKILL test: ``python -m tests.sync.sync_worker
CONNECTION_JSON STATE_URL N``. Exit code: the run's.

Each progress snapshot is a line ``{"done": ROWS}`` on stderr, written once the rows are ledgered (the engine reports
a unit after committing it), so the test kills the process at a known point by reading its output, not by polling."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from typing import Any

from connector.connection import Connection
from connector.progress import Progress
from connector.sync.engine import SyncJob, run_sync
from connector.sync.planner import MatchRule
from connector.sync.state import StateStore
from tests.sync.conftest import AccountMapper


def rows(n: int) -> Iterator[list[dict[str, Any]]]:
    for start in range(0, n, 1000):
        yield [{"num": f"K-{i:05}", "name": f"Company {i}"} for i in range(start, min(n, start + 1000))]


def report(progress: Progress) -> None:
    print(json.dumps({"done": progress.done}), file=sys.stderr, flush=True)


def main() -> int:
    config, state, n = json.loads(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    connection = Connection.from_config(config)
    store = StateStore(state, "accounts")
    job = SyncJob("accounts", "account", MatchRule(kind="key"), batch_size=50, parallelism=4)
    result = run_sync(connection, job, AccountMapper(), lambda: rows(n), store, progress=report)
    print(json.dumps(result.to_dict()))
    return result.exit_code


if __name__ == "__main__":
    sys.exit(main())
