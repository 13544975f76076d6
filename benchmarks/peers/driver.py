"""One timed run of a peer library against the emulator, printed as one JSON line. Runs inside ``.venv-peers`` (never
the project venv), so it imports nothing from this repository:

    .venv-peers/bin/python benchmarks/peers/driver.py RUN --connection FILE --prefix P --n N [--chunk C]

Runs: ``sdk-upsert`` (Microsoft's ``PowerPlatform-Dataverse-Client``: ``records.upsert`` with the whole list, or in
calls of ``--chunk``), ``sdk-create`` (its ``records.create`` with a list, likewise), ``dvapi-upsert``
(``dataverse-api``: ``entity.upsert(mode="batch")``, its ``$batch`` of 500), ``sdk-fetch`` / ``dvapi-fetch`` (every
account row, pages of 5,000) and ``sdk-mixed`` (the mixed batch of ``compare.mixed_operations``, sent with
``continue_on_error``). The rows are the ones ``compare.py`` gives our client:
``accountnumber`` ``{prefix}-{i:06d}``, ``name`` ``{prefix} {i}``. TLS trust comes from ``REQUESTS_CA_BUNDLE``. A
library that raises mid-run is reported with the error and the rows it had confirmed, not retried: what a user of the
library would get.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import requests


def token_for(connection: dict[str, Any], scope: str) -> tuple[str, float]:
    r = requests.post(
        connection["token_url"],
        data={
            "grant_type": "client_credentials",
            "client_id": connection["client_id"],
            "client_secret": connection["client_secret"],
            "scope": scope,
        },
        timeout=30,
    )
    r.raise_for_status()
    body = r.json()
    return body["access_token"], time.time() + int(body.get("expires_in", 3600))


class Credential:
    """A duck-typed azure-core TokenCredential for Microsoft's SDK (it asks before every request; cached here)."""

    def __init__(self, connection: dict[str, Any]) -> None:
        self.connection = connection
        self.cached: Any = None

    def get_token(self, *scopes: str, **kwargs: Any) -> Any:
        from azure.core.credentials import AccessToken

        if self.cached is None or self.cached.expires_on - 60 < time.time():
            token, expires = token_for(self.connection, " ".join(scopes))
            self.cached = AccessToken(token, int(expires))
        return self.cached


def rows(prefix: str, n: int) -> list[tuple[str, str]]:
    return [(f"{prefix}-{i:06d}", f"{prefix} {i}") for i in range(n)]


def peak_rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def sdk_client(base: str, connection: dict[str, Any]) -> Any:
    from PowerPlatform.Dataverse.client import DataverseClient

    return DataverseClient(base, Credential(connection))


def dvapi_entity(base: str, connection: dict[str, Any]) -> Any:
    from dataverse_api import DataverseClient

    session = requests.Session()
    token, _ = token_for(connection, f"{base}/.default")
    session.headers["Authorization"] = f"Bearer {token}"
    return DataverseClient(session, base + "/").entity("account")


def sdk_upsert(client: Any, prefix: str, n: int, chunk: int) -> dict[str, Any]:
    from PowerPlatform.Dataverse.models.upsert import UpsertItem

    items = [UpsertItem(alternate_key={"accountnumber": k}, record={"name": v}) for k, v in rows(prefix, n)]
    step = chunk or n
    done = 0
    for start in range(0, n, step):
        client.records.upsert("account", items[start : start + step])
        done += len(items[start : start + step])
    return {"confirmed": done}


def sdk_create(client: Any, prefix: str, n: int, chunk: int) -> dict[str, Any]:
    """``records.create`` with a list: one ``CreateMultiple`` of the whole list (or calls of ``--chunk``)."""
    data = [{"accountnumber": k, "name": v} for k, v in rows(prefix, n)]
    step = chunk or n
    done = 0
    for start in range(0, n, step):
        done += len(client.records.create("account", data[start : start + step]))
    return {"confirmed": done}


def dvapi_upsert(entity: Any, prefix: str, n: int) -> dict[str, Any]:
    data = [{"accountnumber": k, "name": v} for k, v in rows(prefix, n)]
    responses = entity.upsert(data, mode="batch", altkey_name="bench_accountnumber")
    failed = [r.status_code for r in responses if r.status_code >= 400]
    # a $batch answered 200 may still carry failed parts: the library returns the raw multipart, count them
    inner = sum(r.text.count("HTTP/1.1 4") + r.text.count("HTTP/1.1 5") for r in responses if r.status_code < 400)
    ok_batches = len(responses) - len(failed)
    return {"confirmed": None, "batches": len(responses), "failed_batches": len(failed), "failed_parts": inner,
            "ok_batches": ok_batches, "statuses": sorted(set(failed))}  # fmt: skip


def sdk_fetch(client: Any) -> dict[str, Any]:
    count = 0
    for page in client.records.list_pages("account", select=["name", "accountnumber"], page_size=5000):
        count += len(page)
    return {"fetched": count}


def dvapi_fetch(entity: Any) -> dict[str, Any]:
    return {"fetched": len(entity.read(select=["name", "accountnumber"], page_size=5000))}


def sdk_mixed(client: Any, plan: list[dict[str, Any]]) -> dict[str, Any]:
    """The mixed operations in one batch with continue-on-error; failures named by their submission index."""
    from PowerPlatform.Dataverse.models.upsert import UpsertItem

    batch = client.batch.new()
    for op in plan:
        if op["action"] == "create":
            batch.records.create("account", op["fields"])
        elif op["action"] == "update":
            batch.records.update("account", op["id"], op["fields"])
        else:
            batch.records.upsert("account", [UpsertItem(alternate_key=op["key"], record=op["fields"])])
    result = batch.execute(continue_on_error=True)
    failed = [i for i, r in enumerate(result.responses) if not r.is_success]
    return {"responses": len(result.responses), "failed_indexes": failed}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("run")
    parser.add_argument("--connection", required=True)
    parser.add_argument("--prefix", default="P")
    parser.add_argument("--n", type=int, default=0)
    parser.add_argument("--chunk", type=int, default=0)
    parser.add_argument("--plan", default=None, help="a JSON file of mixed operations (sdk-mixed)")
    args = parser.parse_args()
    connection = json.loads(Path(args.connection).read_text())
    base = connection["organization_url"].rstrip("/")
    out: dict[str, Any] = {"run": args.run}
    wall, cpu = time.perf_counter(), time.process_time()
    try:
        if args.run == "sdk-upsert":
            out |= sdk_upsert(sdk_client(base, connection), args.prefix, args.n, args.chunk)
        elif args.run == "sdk-create":
            out |= sdk_create(sdk_client(base, connection), args.prefix, args.n, args.chunk)
        elif args.run == "dvapi-upsert":
            out |= dvapi_upsert(dvapi_entity(base, connection), args.prefix, args.n)
        elif args.run == "sdk-fetch":
            out |= sdk_fetch(sdk_client(base, connection))
        elif args.run == "dvapi-fetch":
            out |= dvapi_fetch(dvapi_entity(base, connection))
        elif args.run == "sdk-mixed":
            out |= sdk_mixed(sdk_client(base, connection), json.loads(Path(args.plan).read_text()))
        else:
            raise SystemExit(f"unknown run {args.run!r}")
    except Exception as e:  # what the library's user would see
        status = getattr(e, "status_code", None) or getattr(getattr(e, "response", None), "status_code", None)
        out["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
        out["error_status"] = status
    out["seconds"] = time.perf_counter() - wall
    out["cpu_s"] = time.process_time() - cpu
    out["peak_rss_mib"] = peak_rss_mib()
    sys.stdout.write(json.dumps(out) + "\n")


if __name__ == "__main__":
    main()
