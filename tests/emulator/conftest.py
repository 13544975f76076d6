"""Fixtures for the emulator suite: one real uvicorn server per module on 127.0.0.1, reset before each test, with an
injected clock (key activation and token expiry are driven by advancing it, never by sleeping)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from dataverse_emulator.testing import EmulatorHandle, FakeClock, running_emulator


@pytest.fixture(scope="module")
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(scope="module")
def emulator(clock: FakeClock) -> Iterator[EmulatorHandle]:
    with running_emulator(clock=clock, key_activation_s=2.0, seed=7, token_lifetime_s=3600) as handle:
        yield handle


@pytest.fixture(autouse=True)
def _reset(request: pytest.FixtureRequest) -> None:
    if "emulator" in request.fixturenames:
        request.getfixturevalue("emulator").admin.reset()


def fetch_token(emulator: EmulatorHandle, **extra: str) -> str:
    cfg = emulator.connection_config()
    form = {
        "grant_type": "client_credentials",
        "client_id": cfg["client_id"],
        "client_secret": cfg["client_secret"],
        "scope": f"{emulator.base_url}/.default",
        **extra,
    }
    r = httpx.post(cfg["token_url"], data=form)
    assert r.status_code == 200, r.text
    return str(r.json()["access_token"])


@pytest.fixture
def api(emulator: EmulatorHandle) -> Iterator[httpx.Client]:
    """An httpx client on the Web API root with a client-credentials token and the usual OData headers."""
    token = fetch_token(emulator)
    headers = {
        "Authorization": f"Bearer {token}",
        "Accept": "application/json",
        "OData-MaxVersion": "4.0",
        "OData-Version": "4.0",
    }
    with httpx.Client(base_url=emulator.api_url + "/", headers=headers, timeout=30) as client:
        yield client


def error_of(response: httpx.Response) -> tuple[int, str, str]:
    body: dict[str, Any] = response.json()
    assert set(body) == {"error"}, body
    assert set(body["error"]) == {"code", "message"}, body
    return response.status_code, body["error"]["code"], body["error"]["message"]


def created_id(response: httpx.Response) -> str:
    assert response.status_code == 204, response.text
    return response.headers["OData-EntityId"].rsplit("(", 1)[1].rstrip(")")
