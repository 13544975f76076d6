"""A worker process for the scale-out tests and benchmark: creates ``N`` accounts through one connection, at the
governor's parallelism, and prints ``{"seconds", "created", "failed"}``.

    python -m tests.scale.writer CONNECTION_FILE PREFIX N

The governor is whatever the operator's environment says (``D365_GOVERNOR_URL`` set: shared on Redis).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from connector.connection import Connection


def main() -> None:
    path, prefix, count = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    with Connection.from_config(json.loads(path.read_text()), base_dir=path.parent) as conn:
        client = conn.client

        def create(i: int) -> None:
            body = {"name": f"{prefix} {i}", "accountnumber": f"{prefix}-{i:06d}"}
            client.request("POST", "accounts", json=body)

        started = time.perf_counter()
        outcomes = conn.governor.map(create, range(count))
        failed = sum(1 for o in outcomes if not o.ok)  # a retry budget spent under throttling: counted, not fatal
        seconds = time.perf_counter() - started
        print(json.dumps({"seconds": seconds, "created": count - failed, "failed": failed}), flush=True)


if __name__ == "__main__":
    main()
