"""Run the emulator on a real socket in a background thread, for tests (ours and other people's).

Why a thread with uvicorn rather than an in-process transport: Microsoft's SDK uses ``requests`` and needs a socket,
streaming must behave as over the network, and the connector's retry paths must see real connections. Startup is
awaited with an Event, never with sleeps.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import uvicorn

from .app import create_app


class FakeClock:
    """A clock a test sets: starts at a whole second of the real time (so datetimes look plausible) and moves only
    by ``advance``, so token expiry, key activation and "the same second" are driven, never slept for."""

    def __init__(self) -> None:
        self.now = float(int(time.time()))

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class AdminClient:
    """Helpers for the test-only ``/_emulator/`` surface."""

    def __init__(self, base_url: str, verify: Any) -> None:
        self._client = httpx.Client(base_url=base_url, verify=verify, timeout=60)

    def seed(self, table: str, rows: list[dict[str, Any]]) -> list[str]:
        """Insert rows in bulk (one request, one transaction); returns their ids."""
        r = self._client.post("/_emulator/seed", json={"table": table, "rows": rows})
        r.raise_for_status()
        return list(r.json()["ids"])

    def seed_metadata(self, tables: list[dict[str, Any]]) -> list[str]:
        """Preload table and column definitions in bulk (one request for all tables; returns logical names).

        Each table: ``{"schema_name": "new_T1", "columns": [{"schema_name": "new_C1", "type": "string"}, ...]}``
        with optional ``entity_set``, ``primary_name``, ``display_name``, ``ownership``; column types are the SDK's
        short names (string, memo, int, bigint, decimal, money, float, bool, datetime, picklist + ``options``, file,
        image) and ``max_length``."""
        r = self._client.post("/_emulator/metadata/seed", json={"tables": tables})
        r.raise_for_status()
        return list(r.json()["tables"])

    def requests(self) -> list[dict[str, Any]]:
        """The request log entries."""
        r = self._client.get("/_emulator/requests")
        r.raise_for_status()
        return list(r.json()["requests"])

    def clear_requests(self) -> None:
        """Empty the request log."""
        self._client.delete("/_emulator/requests").raise_for_status()

    def drain_webhooks(self) -> list[dict[str, Any]]:
        """Wait until every asynchronous webhook delivery has finished; every delivery made since the last reset."""
        r = self._client.post("/_emulator/webhooks/drain")
        r.raise_for_status()
        return list(r.json()["deliveries"])

    def advance_clock(self, seconds: float) -> float:
        """Move the emulator's clock forward (throttle windows, Retry-After, key activation, token expiry), so a
        test of a wait never sleeps; returns the emulated now."""
        r = self._client.post("/_emulator/clock", json={"advance_s": seconds})
        r.raise_for_status()
        return float(r.json()["now"])

    def add_app(self) -> dict[str, str]:
        """One more application user with its own service protection budget: ``{"client_id", "client_secret"}``, an
        identity for a pool's ``additional_identities``."""
        r = self._client.post("/_emulator/apps")
        r.raise_for_status()
        return {"client_id": str(r.json()["client_id"]), "client_secret": str(r.json()["client_secret"])}

    def reset(self) -> None:
        """Drop all rows, keys and the log."""
        self._client.post("/_emulator/reset").raise_for_status()

    def close(self) -> None:
        """Close the admin HTTP client."""
        self._client.close()


@dataclass
class EmulatorHandle:
    """What ``running_emulator`` yields."""

    base_url: str
    ca_file: str | None
    app: Any
    admin: AdminClient
    data_dir: str

    @property
    def api_url(self) -> str:
        """The Web API root (v9.2)."""
        return f"{self.base_url}/api/data/v9.2"

    @property
    def emulator(self) -> Any:
        """The in-process Emulator object (for tests that need its identity or store)."""
        return self.app.state.emulator

    def connection_config(self, kind: str = "client_credentials") -> dict[str, Any]:
        """A connection file body for this server (same shape as ``--connection-out``)."""
        return dict(self.emulator.connection_config(self.base_url, kind, self.ca_file, self.data_dir))

    def token(self, kind: str = "client_credentials") -> str:
        """An access token for this organization (client credentials unless another kind is asked for)."""
        emu = self.emulator
        app = emu.apps_by_kind[kind]
        return str(emu.identity.issue(self.base_url, app, app.object_id, None))


class _Server(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, started: threading.Event) -> None:
        super().__init__(config)
        self._started = started

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        self._started.set()

    def install_signal_handlers(self) -> None:  # a background thread cannot install signal handlers
        pass


def uvicorn_config(
    app: Any, sock: socket.socket, certfile: str | None = None, keyfile: str | None = None
) -> uvicorn.Config:
    """uvicorn settings shared with the CLI: h11 with room for 32 KB URLs, no access log."""
    return uvicorn.Config(
        app,
        fd=None,
        log_level="warning",
        access_log=False,
        http="h11",
        h11_max_incomplete_event_size=256 * 1024,
        ssl_certfile=certfile,
        ssl_keyfile=keyfile,
        lifespan="off",
        timeout_keep_alive=30,
    )


@contextmanager
def serve_asgi(app: Any, certfile: str | None = None, keyfile: str | None = None) -> Iterator[str]:
    """Serve any ASGI app on 127.0.0.1:0 in a daemon thread; yields the base URL (also used for benchmark baselines)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # accepted sockets inherit TCP_NODELAY on Linux; without it small responses wait for delayed ACKs (~40 ms)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    started = threading.Event()
    server = _Server(uvicorn_config(app, sock, certfile, keyfile), started)

    def run() -> None:
        asyncio.run(server.serve(sockets=[sock]))

    thread = threading.Thread(target=run, name="dataverse-emulator", daemon=True)
    thread.start()
    if not started.wait(30):
        raise RuntimeError("the server did not start within 30 s")
    try:
        yield f"{'https' if certfile else 'http'}://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


@contextmanager
def running_emulator(
    *, tls: bool = False, data_dir: str | None = None, **create_app_options: Any
) -> Iterator[EmulatorHandle]:
    """Serve ``create_app(**create_app_options)`` on 127.0.0.1, a free port, in a daemon thread (admin on)."""
    create_app_options.setdefault("admin", True)
    app = create_app(**create_app_options)
    ddir = data_dir or tempfile.mkdtemp(prefix="d365-emulator-")
    certfile = keyfile = ca = None
    if tls:
        from .tls import issue_server_cert

        cert_p, key_p, ca_p = issue_server_cert(Path(ddir))
        certfile, keyfile, ca = str(cert_p), str(key_p), str(ca_p)
    with serve_asgi(app, certfile, keyfile) as base:
        admin = AdminClient(base, ssl.create_default_context(cafile=ca) if ca else True)
        try:
            yield EmulatorHandle(base, ca, app, admin, ddir)
        finally:
            admin.close()
