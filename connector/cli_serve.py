"""``d365 serve``: the runtime server (:mod:`connector.serve_app`) with uvicorn, under the operator policy.

Why ``hosted`` by default, unlike the other commands: the server takes connection settings from whoever holds its
token (``PUT /connections/{name}``), so a posted connection may not point tokens at a foreign identity host or read
the runner's files; ``D365_POLICY=local`` lifts the file and variable rules where the person serving is the only
user. The connection files named on the command line go through the same policy.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click

from connector.cli_inputs import load_connection_file
from connector.errors import ConnectorError, InputError, InputProblem
from connector.policy import OperatorPolicy, is_loopback

__all__ = ["DEFAULT_PORT", "build_state", "default_token_dir", "serve"]

DEFAULT_PORT = 8365


def default_token_dir() -> Path:
    """Where the default token store keeps refresh tokens: ``$XDG_STATE_HOME/d365/serve-tokens``."""
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state) / "d365" / "serve-tokens"


def _pairs(values: tuple[str, ...], option: str) -> list[tuple[str, str]]:
    out = []
    for value in values:
        name, sep, file = value.partition("=")
        if not sep or not name or not file:
            raise InputError([InputProblem(option, f"{value!r} is not NAME=FILE")])
        out.append((name, file))
    return out


def build_state(
    connections: tuple[str, ...] = (),
    webhooks: tuple[str, ...] = (),
    *,
    token: str,
    token_dir: Path | None = None,
    policy: OperatorPolicy | None = None,
    runtime: Any = None,
) -> Any:
    """The server's state from command-line style ``NAME=FILE`` pairs (also what tests and platforms call)."""
    from connector.runtime import default_runtime
    from connector.serve_app import ServeState
    from connector.serve_auth import AuthGate
    from connector.serve_connections import Connections, FileTokenStores
    from connector.webhook_server import load_trigger_config

    rules = policy if policy is not None else OperatorPolicy.from_env(default="hosted")
    registry = Connections(rules, FileTokenStores(token_dir or default_token_dir()))
    for name, file in _pairs(connections, "--connection"):
        data, base_dir = load_connection_file(file)
        registry.put(name, data, base_dir=base_dir)
    state = ServeState(runtime=runtime or default_runtime(), connections=registry, gate=AuthGate(token))
    for name, file in _pairs(webhooks, "--webhook"):
        state.webhooks[name] = state.runtime.trigger_config("webhook", load_trigger_config(file))
    return state


@click.command("serve")
@click.option("--connection", "connections", multiple=True, metavar="NAME=FILE", help="A named connection (repeatable)")
@click.option(
    "--webhook", "webhooks", multiple=True, metavar="NAME=FILE", help="Receive the webhook trigger (configuration "
    "FILE) at /triggers/webhook/NAME (repeatable)."
)  # fmt: skip
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to listen on.")
@click.option("--port", default=DEFAULT_PORT, show_default=True, type=int, help="Port (0: a free one).")
@click.option("--token-file", help="File holding the API token (else D365_SERVE_TOKEN, else one is generated).")
@click.option("--token-dir", type=click.Path(path_type=Path), help="Folder of the default refresh-token store.")
def serve(
    connections: tuple[str, ...],
    webhooks: tuple[str, ...],
    host: str,
    port: int,
    token_file: str | None,
    token_dir: Path | None,
) -> None:
    """Serve the actions, data sources, jobs and playground over HTTP (API token required; see /login)."""
    from connector.serve_auth import read_api_token

    try:
        token, generated = read_api_token(token_file)
        state = build_state(connections, webhooks, token=token, token_dir=token_dir)
    except ConnectorError as exc:
        click.echo(f"error: {exc.message}", err=True)
        sys.exit(exc.exit_code)
    if generated:
        click.echo(f"d365 serve: API token for this run (set D365_SERVE_TOKEN to choose one): {token}", err=True)
    if not is_loopback(host):
        click.echo(f"d365 serve: listening on {host} over plain http: put TLS in front of it", err=True)
    run_server(state, host, port)


def run_server(state: Any, host: str, port: int) -> None:
    """Listen first (so the printed URL is live and port 0 is resolved), then serve until interrupted."""
    import uvicorn

    from connector.serve_app import create_app
    from connector.webhook_server import DEFAULT_MAX_CONNECTIONS, KEEP_ALIVE_S, MAX_HEAD_BYTES

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(128)
    shown = f"[{host}]" if ":" in host else host
    click.echo(f"d365 serve: http://{shown}:{sock.getsockname()[1]}/ (sign in at /login)", err=True)

    class _Server(uvicorn.Server):
        """Stops on SIGINT/SIGTERM after the lifespan's shutdown (jobs cancelled), then exits 0 instead of dying
        of the re-raised signal."""

        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            with super().capture_signals():
                yield
                self._captured_signals.clear()

    # the access log stays off: the sign-in callback's query holds an authorization code, a webhook's its key
    config = uvicorn.Config(
        create_app(state),
        log_level="warning",
        access_log=False,
        lifespan="on",
        limit_concurrency=DEFAULT_MAX_CONNECTIONS,
        timeout_keep_alive=KEEP_ALIVE_S,
        h11_max_incomplete_event_size=MAX_HEAD_BYTES,
    )
    try:
        _Server(config).run(sockets=[sock])
    finally:
        sock.close()
