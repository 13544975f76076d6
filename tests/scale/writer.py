"""A worker process for the scale-out tests and benchmark: creates ``N`` accounts through one connection, at the
governor's parallelism, and prints ``{"seconds", "created", "failed"}``.

    python -m tests.scale.writer CONNECTION_FILE PREFIX N [CHUNK]

Without ``CHUNK``, one ``POST`` per row (the test: many small requests, so the in-process governors are refused
often); with it, the bulk writer (``write_entities``: CreateMultiple chunks of ``CHUNK`` rows in parallel through the
governor), so the benchmark's full sizes run in minutes. The governor is whatever the operator's environment says
(``D365_GOVERNOR_URL`` set: shared on Redis).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from connector.bulk import WriteOptions, write_entities
from connector.connection import Connection


def main() -> None:
    path, prefix, count = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    chunk = int(sys.argv[4]) if len(sys.argv) > 4 else 0
    with Connection.from_config(json.loads(path.read_text()), base_dir=path.parent) as conn:
        client = conn.client

        def body(i: int) -> dict[str, str]:
            return {"name": f"{prefix} {i}", "accountnumber": f"{prefix}-{i:06d}"}

        def create(i: int) -> None:
            client.request("POST", "accounts", json=body(i))

        started = time.perf_counter()
        if chunk:
            records = [{"fields": body(i)} for i in range(count)]
            summary = write_entities(conn, "account", "create", records, WriteOptions(chunk_size=chunk)).summary()
            failed = count - summary["created"]
        else:
            outcomes = conn.governor.map(create, range(count))
            failed = sum(1 for o in outcomes if not o.ok)  # a retry budget spent under throttling: counted, not fatal
        seconds = time.perf_counter() - started
        print(json.dumps({"seconds": seconds, "created": count - failed, "failed": failed}), flush=True)


if __name__ == "__main__":
    main()
