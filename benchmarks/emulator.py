"""Requests per second of the emulator for a GET by id and a create, against a bare Starlette endpoint served the
same way (uvicorn thread, keep-alive httpx client) in the same process; then rows per second of a 1,000-row
UpsertMultiple by alternate key (all creates, then all updates) with the throttle model off. Prints tables; never
asserted in tests.

    .venv/bin/python benchmarks/emulator.py [--n 2000]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from dataverse_emulator.testing import running_emulator, serve_asgi


def rate(n: int, fn: Callable[[int], None]) -> float:
    for i in range(min(50, n)):  # warm-up
        fn(i)
    start = time.perf_counter()
    for i in range(n):
        fn(i)
    return n / (time.perf_counter() - start)


def baseline_app() -> Starlette:
    async def get(request: Request) -> Response:
        return Response(b'{"accountid":"x","name":"n"}', media_type="application/json")

    async def post(request: Request) -> Response:
        await request.body()
        return Response(status_code=204, headers={"OData-EntityId": "x"})

    return Starlette(routes=[Route("/get", get), Route("/post", post, methods=["POST"])])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=2000)
    args = parser.parse_args()
    n = args.n
    with serve_asgi(baseline_app()) as base, httpx.Client(base_url=base) as c:
        base_get = rate(n, lambda i: c.get("/get").raise_for_status())
        base_post = rate(n, lambda i: c.post("/post", json={"name": f"a{i}"}).raise_for_status())
    with running_emulator() as h:
        ids = h.admin.seed("account", [{"name": f"seed {i}"} for i in range(1000)])
        headers = {"Authorization": f"Bearer {h.token()}", "Accept": "application/json"}
        with httpx.Client(base_url=h.api_url + "/", headers=headers) as c:
            emu_get = rate(n, lambda i: c.get(f"accounts({ids[i % len(ids)]})?$select=name").raise_for_status())
            emu_post = rate(n, lambda i: c.post("accounts", json={"name": f"bench {i}"}).raise_for_status())
    print(f"{'operation':<22}{'emulator req/s':>16}{'baseline req/s':>16}{'ratio':>8}")
    for name, emu, bl in (("GET by id", emu_get, base_get), ("create (POST)", emu_post, base_post)):
        print(f"{name:<22}{emu:>16.0f}{bl:>16.0f}{emu / bl:>8.2f}")
    main_upsert()


def upsert_multiple_rows_per_s(rounds: int = 3, rows: int = 1000) -> tuple[float, float]:
    """Median rows/s of ``UpsertMultiple`` with ``rows`` targets keyed by ``accounts(accountnumber='...')``: a round of
    creates (new keys) and a round of updates (the same keys) per measurement."""
    with running_emulator(key_activation_s=0, throttle="off") as h:
        headers = {"Authorization": f"Bearer {h.token()}", "Accept": "application/json"}
        with httpx.Client(base_url=h.api_url + "/", headers=headers, timeout=300) as c:
            key = {"SchemaName": "bench_accountnumber", "KeyAttributes": ["accountnumber"]}
            c.post("EntityDefinitions(LogicalName='account')/Keys", json=key).raise_for_status()
            creates, updates = [], []
            for r in range(rounds):
                for phase, out in (("create", creates), ("update", updates)):
                    body = {
                        "Targets": [
                            {
                                "@odata.type": "Microsoft.Dynamics.CRM.account",
                                "@odata.id": f"accounts(accountnumber='B{r}-{i:05d}')",
                                "name": f"bench {phase} {i}",
                                "numberofemployees": i,
                            }
                            for i in range(rows)
                        ]
                    }
                    start = time.perf_counter()
                    c.post("accounts/Microsoft.Dynamics.CRM.UpsertMultiple", json=body).raise_for_status()
                    out.append(rows / (time.perf_counter() - start))
    return sorted(creates)[rounds // 2], sorted(updates)[rounds // 2]


def main_upsert() -> None:
    created, updated = upsert_multiple_rows_per_s()
    print()
    print(f"{'UpsertMultiple (1,000 rows, throttle off)':<44}{'rows/s':>10}")
    print(f"{'  all targets created':<44}{created:>10.0f}")
    print(f"{'  all targets updated':<44}{updated:>10.0f}")


if __name__ == "__main__":
    main()
