"""``await runtime.arun_action(...)``: concurrent runs on one connection share its governor and token provider."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator

import httpx
import pytest

from connector.connection import Connection
from connector.errors import InputError
from connector.progress import CancellationToken
from connector.runtime_async import AsyncRuntime
from dataverse_emulator.testing import EmulatorHandle


class Counting(httpx.BaseTransport):
    """The real network, counting token requests and the Dataverse requests in flight at once.

    Each Dataverse request waits (at most 10 s) until a second one is in flight, so the runs provably overlap."""

    def __init__(self) -> None:
        self._inner = httpx.HTTPTransport()
        self._lock = threading.Lock()
        self.in_flight = 0
        self.peak = 0
        self.token_requests = 0
        self.overlap = threading.Event()

    def close(self) -> None:
        self._inner.close()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/oauth2/v2.0/token"):
            with self._lock:
                self.token_requests += 1
            return self._inner.handle_request(request)
        with self._lock:
            self.in_flight += 1
            self.peak = max(self.peak, self.in_flight)
            if self.in_flight >= 2:
                self.overlap.set()
        try:
            self.overlap.wait(10)
            return self._inner.handle_request(request)
        finally:
            with self._lock:
                self.in_flight -= 1


@pytest.fixture(scope="module")
def async_runtime() -> Iterator[AsyncRuntime]:
    runtime = AsyncRuntime(load_entrypoints=False, validate_output=True)
    yield runtime
    runtime.close()


def test_concurrent_runs_share_one_governor_and_one_token(
    emulator: EmulatorHandle, async_runtime: AsyncRuntime
) -> None:
    counting = Counting()
    config = {**emulator.connection_config(), "max_parallelism": 2}
    connection = Connection.from_config(config, transport=counting)

    async def main() -> list[dict[str, object]]:
        counting.overlap.set()  # the first answer opens the governor's window (one request until it comes)
        await async_runtime.arun_action("get_current_user", {}, connection)
        counting.overlap.clear()
        runs = [async_runtime.arun_action("get_current_user", {}, connection) for _ in range(8)]
        return list(await asyncio.gather(*runs))

    try:
        outputs = asyncio.run(main())
    finally:
        connection.close()
    assert len({str(o["user_id"]) for o in outputs}) == 1 and len(outputs) == 8
    assert counting.overlap.is_set()  # the runs really ran at once
    assert counting.peak == 2 == connection.governor.peak  # never more than the connection's one limit
    assert counting.token_requests == 1  # one token provider, one token, for every run


def test_arun_action_validates_like_run_action(emulator: EmulatorHandle, async_runtime: AsyncRuntime) -> None:
    connection = Connection.from_config(emulator.connection_config())
    try:
        with pytest.raises(InputError) as caught:
            asyncio.run(async_runtime.arun_action("create_entity", {"table": "account"}, connection))
    finally:
        connection.close()
    assert caught.value.problems[0].path == "$"
    assert "fields" in caught.value.problems[0].message


def test_cancelling_the_task_cancels_the_run(emulator: EmulatorHandle, async_runtime: AsyncRuntime) -> None:
    emulator.admin.reset()
    connection = Connection.from_config(emulator.connection_config())
    token = CancellationToken()
    started = threading.Event()
    records = [{"fields": {"name": f"Row {n}"}} for n in range(2000)]
    inputs = {"table": "account", "mode": "create", "records": records, "chunk_size": 100}

    def progress(event: object) -> None:
        started.set()

    async def main() -> None:
        task = asyncio.create_task(
            async_runtime.arun_action("write_entities", inputs, connection, progress=progress, cancel=token)
        )
        while not started.is_set():  # the run reports its start from the worker thread
            await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    try:
        asyncio.run(main())
    finally:
        connection.close()
    assert token.cancelled and token.reason == "the awaiting task was cancelled"
    # the run had ended when CancelledError came: what it wrote is final, and it stopped early
    created = emulator.admin.requests()
    chunks = [r for r in created if r.get("path", "").endswith("CreateMultiple")]
    assert len(chunks) < len(records) // 100  # cancelled at its start: at most the chunks already in flight
