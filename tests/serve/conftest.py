"""Runtime-server fixtures: one emulator per module on a real socket, and the server's app over it in a httpx.Client.

The server runs under the ``hosted`` policy (its default), given explicitly: the suite's own default is ``local``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from connector.policy import OperatorPolicy
from connector.runtime import Runtime
from connector.serve_app import ServeState, create_app
from connector.serve_auth import AuthGate
from connector.serve_connections import Connections, FileTokenStores
from dataverse_emulator.testing import EmulatorHandle, running_emulator, serve_asgi

API_TOKEN = "test-api-token-0123456789abcdef"
BEARER = {"Authorization": f"Bearer {API_TOKEN}"}


@pytest.fixture(scope="module")
def emulator() -> Iterator[EmulatorHandle]:
    with running_emulator() as handle:
        yield handle


@pytest.fixture(scope="module")
def runtime() -> Runtime:
    return Runtime(load_entrypoints=False, validate_output=True)


@pytest.fixture
def state(emulator: EmulatorHandle, runtime: Runtime, tmp_path: Path) -> ServeState:
    emulator.admin.reset()
    registry = Connections(OperatorPolicy(preset="hosted"), FileTokenStores(tmp_path / "tokens"))
    registry.put("emu", emulator.connection_config())
    return ServeState(runtime=runtime, connections=registry, gate=AuthGate(API_TOKEN))


@pytest.fixture
def server(state: ServeState) -> Iterator[str]:
    """The server on a real socket (127.0.0.1, a free port); jobs are cancelled and connections closed after."""
    try:
        with serve_asgi(create_app(state)) as url:
            yield url
    finally:
        state.jobs.shutdown()
        state.connections.close()


@pytest.fixture
def client(server: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server, follow_redirects=False, timeout=60) as http:
        yield http


def signed_in(client: httpx.Client) -> str:
    """Sign the client in through POST /login; returns the CSRF value the page would read from its cookie."""
    answer = client.post("/login", data={"token": API_TOKEN})
    assert answer.status_code == 303, answer.text
    csrf = client.cookies.get("d365_csrf")
    assert csrf
    return str(csrf)


def run(client: httpx.Client, action: str, inputs: dict[str, Any], connection: str = "emu") -> Any:
    return client.post(f"/actions/{action}", json={"connection": connection, "inputs": inputs}, headers=BEARER)
