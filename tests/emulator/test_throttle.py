"""The service protection model (reference 8, 15.6): each of the three 429s at its limit under ``--throttle strict``,
Retry-After and error codes as the request log recorded them, batches and bulk requests counted as one request,
per-user buckets, ``--time-scale``, and the headers on every response. Waits are emulated with the admin clock."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from dataverse_emulator.testing import EmulatorHandle, running_emulator

from .conftest import FakeClock

REQUESTS_MSG = "Number of requests exceeded the limit of 200 over time window of 10 seconds."
EXEC_MSG = (
    "Combined execution time of incoming requests exceeded limit of 2,000  milliseconds over time window of 10 "
    "seconds. Decrease number of concurrent requests or reduce the duration of requests and try again later."
)
CONCURRENCY_MSG = "Number of concurrent requests exceeded the limit of 8."


@pytest.fixture
def strict() -> Iterator[EmulatorHandle]:
    with running_emulator(throttle="strict", clock=FakeClock(), seed=11) as h:
        yield h


def client(h: EmulatorHandle, kind: str = "client_credentials") -> httpx.Client:
    return httpx.Client(
        base_url=h.api_url + "/", headers={"Authorization": f"Bearer {h.token(kind)}"}, timeout=60, trust_env=False
    )


def throttled(h: EmulatorHandle) -> list[dict[str, Any]]:
    return [e for e in h.admin.requests() if e["status"] == 429]


def test_request_limit_429_with_retry_after_then_recovers(strict: EmulatorHandle) -> None:
    with client(strict) as api:
        statuses = [api.get("WhoAmI").status_code for _ in range(200)]
        assert statuses == [200] * 200
        r = api.get("WhoAmI")
        assert r.status_code == 429
        assert r.json() == {"error": {"code": "0x80072322", "message": REQUESTS_MSG}}
        retry = int(r.headers["Retry-After"])
        assert 1 <= retry <= 10
        with client(strict, "certificate") as other:  # limits are per user: another application is not refused
            assert other.get("WhoAmI").status_code == 200
        [entry] = throttled(strict)
        assert (entry["error_code"], entry["retry_after"], entry["path"]) == (
            "0x80072322",
            str(retry),
            r.request.url.path,
        )
        strict.admin.advance_clock(retry)
        assert api.get("WhoAmI").status_code == 200


def test_execution_time_limit_counts_records_of_bulk_requests(strict: EmulatorHandle) -> None:
    targets = {"Targets": [{"@odata.type": "Microsoft.Dynamics.CRM.account", "name": f"t{i}"} for i in range(1000)]}
    with client(strict) as api:
        first = api.post("accounts/Microsoft.Dynamics.CRM.CreateMultiple", json=targets)
        assert first.status_code == 200
        # a bulk request is one request: the burst count drops by one, execution time by its 1,000 records
        before = int(first.headers["x-ms-ratelimit-burst-remaining-xrm-requests"])
        second = api.post("accounts/Microsoft.Dynamics.CRM.CreateMultiple", json=targets)
        assert second.status_code == 200
        assert int(second.headers["x-ms-ratelimit-burst-remaining-xrm-requests"]) == before - 1
        third = api.get("WhoAmI")
        assert third.status_code == 429
        assert third.json() == {"error": {"code": "0x80072321", "message": EXEC_MSG}}
        retry = int(third.headers["Retry-After"])
        assert retry >= 1
        [entry] = throttled(strict)
        assert (entry["error_code"], entry["retry_after"]) == ("0x80072321", str(retry))
        strict.admin.advance_clock(retry)
        assert api.get("WhoAmI").status_code == 200


def test_concurrency_limit_is_immediate() -> None:
    with running_emulator(throttle="strict", latency_ms=800, dop_hint=6) as h:
        token = h.token()
        results: list[httpx.Response] = []
        lock = threading.Lock()
        barrier = threading.Barrier(12)

        def call() -> None:
            with httpx.Client(timeout=60, trust_env=False) as c:
                barrier.wait()
                r = c.get(f"{h.api_url}/WhoAmI", headers={"Authorization": f"Bearer {token}"})
            with lock:
                results.append(r)

        threads = [threading.Thread(target=call) for _ in range(12)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        refused = [r for r in results if r.status_code == 429]
        assert sorted(r.status_code for r in results) == [200] * 8 + [429] * 4
        for r in refused:
            assert r.json() == {"error": {"code": "0x80072326", "message": CONCURRENCY_MSG}}
            assert int(r.headers["Retry-After"]) >= 1
        assert all(r.headers["x-ms-dop-hint"] == "6" for r in results)
        logged = throttled(h)
        assert [e["error_code"] for e in logged] == ["0x80072326"] * 4
        assert all(int(e["retry_after"]) >= 1 for e in logged)


def test_time_scale_divides_the_window_and_retry_after() -> None:
    with running_emulator(throttle="strict", max_requests=3, time_scale=10, clock=FakeClock()) as h, client(h) as api:
        assert [api.get("WhoAmI").status_code for _ in range(3)] == [200] * 3
        r = api.get("WhoAmI")
        assert (
            r.json()["error"]["message"] == "Number of requests exceeded the limit of 3 over time window of 10 seconds."
        )
        assert r.headers["Retry-After"] == "1"  # a 10 s window scaled by 10
        h.admin.reset()  # an admin reset forgets the windows too
        assert api.get("WhoAmI").status_code == 200
        h.admin.advance_clock(1)
        assert api.get("WhoAmI").status_code == 200


def test_headers_on_every_response_with_throttle_off(api: httpx.Client) -> None:
    for r in (api.get("WhoAmI"), api.get("accounts(00000000-0000-0000-0000-000000000001)"), api.post("nope", json={})):
        assert r.headers["x-ms-dop-hint"] == "4"
        assert int(r.headers["x-ms-ratelimit-burst-remaining-xrm-requests"]) <= 6000
        assert r.headers["x-ms-ratelimit-time-remaining-xrm-requests"].startswith("1,19")
