"""Requests per second of the emulator for a GET by id and a create, against a bare Starlette endpoint served the
same way (uvicorn thread, keep-alive httpx client) in the same process. Prints a table; never asserted in tests.

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


if __name__ == "__main__":
    main()
