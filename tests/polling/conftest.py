"""Fixtures for the polling trigger: one emulator per module with an injected clock (token expiry and "same second"
are set by moving it, never by sleeping), reset before each test, a Runtime, and a client that writes rows."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import httpx
import pytest

from connector.connection import Connection
from connector.runtime import Runtime
from dataverse_emulator.testing import EmulatorHandle, FakeClock, running_emulator


@pytest.fixture(scope="module")
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(scope="module")
def emulator(clock: FakeClock) -> Iterator[EmulatorHandle]:
    with running_emulator(clock=clock, seed=11, token_lifetime_s=30 * 86400) as handle:
        yield handle


@pytest.fixture(scope="module")
def runtime() -> Runtime:
    return Runtime(load_entrypoints=False)


@pytest.fixture
def connect(emulator: EmulatorHandle) -> Iterator[Callable[[], Connection]]:
    """A new Connection per call: a restarted consumer, which keeps nothing but the state it stored."""
    emulator.admin.reset()
    opened: list[Connection] = []

    def make() -> Connection:
        opened.append(Connection.from_config(emulator.connection_config()))
        return opened[-1]

    yield make
    for conn in opened:
        conn.close()


@pytest.fixture
def api(emulator: EmulatorHandle) -> Iterator[httpx.Client]:
    """Writes rows the way another Dataverse user would."""
    headers = {"Authorization": f"Bearer {emulator.token()}", "Accept": "application/json", "OData-Version": "4.0"}
    with httpx.Client(base_url=emulator.api_url + "/", headers=headers, timeout=30) as client:
        yield client


def create(api: httpx.Client, entity_set: str, body: dict[str, object]) -> str:
    r = api.post(entity_set, json=body)
    assert r.status_code == 204, r.text
    return r.headers["OData-EntityId"].rsplit("(", 1)[1].rstrip(")")
