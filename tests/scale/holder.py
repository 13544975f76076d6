"""A worker that takes N shared places and holds them until killed: ``python -m tests.scale.holder URL SCOPE N S``.

Prints ``held`` once the places are taken, so the test kills it while it holds them.
"""

from __future__ import annotations

import sys
import threading
from contextlib import ExitStack

from connector.clock import SystemClock
from connector.governor_shared import SharedGovernor


def main() -> None:
    url, scope, count, lease_s = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
    gov = SharedGovernor(redis_url=url, scope=scope, clock=SystemClock(), max_parallelism=count, lease_s=lease_s)
    gov.observe({"x-ms-dop-hint": str(count)})
    with ExitStack() as stack:
        for _ in range(count):
            stack.enter_context(gov.slot())
        print("held", flush=True)
        threading.Event().wait()


if __name__ == "__main__":
    main()
