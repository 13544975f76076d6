"""``d365 emulator serve`` / ``python -m dataverse_emulator``: serve the emulator with uvicorn.

The first line of stdout is the base URL (flushed) so scripts can read it; ``--port 0`` picks a free port.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import sys
from pathlib import Path

import click

from .app import create_app
from .execution import BULK_RECORD_RATIO
from .tls import default_data_dir, issue_server_cert


@click.command(name="serve")
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to listen on.")
@click.option("--port", default=8080, show_default=True, type=int, help="Port; 0 picks a free one.")
@click.option("--tls", is_flag=True, help="Serve HTTPS with a certificate signed by a local CA (ca.pem in --data-dir).")
@click.option("--db", "db_path", default=None, type=click.Path(dir_okay=False), help="SQLite file; in memory if unset.")
@click.option("--data-dir", default=None, type=click.Path(file_okay=False), help="Where the CA and certificates live.")
@click.option("--connection-out", default=None, type=click.Path(dir_okay=False), help="Write a connection file here.")
@click.option(
    "--connection-kind",
    default="client_credentials",
    show_default=True,
    type=click.Choice(["client_credentials", "certificate", "authorization_code", "managed_identity"]),
)
@click.option("--latency-ms", default=0, show_default=True, type=int, help="Added latency per Web API request.")
@click.option("--seed", default=None, type=int, help="Random seed for ids and secrets (stable output).")
@click.option("--key-activation-s", default=2.0, show_default=True, type=float, help="Seconds a new key stays Pending.")
@click.option("--token-lifetime-s", default=3600, show_default=True, type=int, help="Access token lifetime.")
@click.option("--admin", is_flag=True, help="Enable the test-only /_emulator/ surface.")
@click.option(
    "--throttle",
    default="off",
    show_default=True,
    type=click.Choice(["off", "dataverse", "strict"]),
    help="Service protection model: dataverse = 300 s / 6,000 requests / 1,200 s / 52; strict = 10 s / 200 / 2 s / 8.",
)
@click.option("--window-s", default=None, type=float, help="Sliding window of the throttle model (seconds).")
@click.option("--max-requests", default=None, type=int, help="Requests per user per window.")
@click.option("--max-exec-s", default=None, type=float, help="Combined execution seconds per user per window.")
@click.option("--max-concurrency", default=None, type=int, help="Concurrent requests per user.")
@click.option("--dop-hint", default=4, show_default=True, type=int, help="Value of x-ms-dop-hint.")
@click.option("--time-scale", default=1.0, show_default=True, type=float, help="Divides every emulated duration.")
@click.option(
    "--bulk-record-cost-ratio",
    default=BULK_RECORD_RATIO,
    show_default=True,
    type=float,
    help="Execution cost of one bulk-message record against a single operation (GUESS, from the quoted 'up to 5x').",
)
@click.option("--fault-rate", default=0.0, show_default=True, type=float, help="Share of Web API requests faulted.")
@click.option(
    "--sample-data",
    is_flag=True,
    help="Start with a small organization in use (accounts, contacts, leads, opportunities, activities, a marketing "
    "list, alternate keys, the README examples' table and rows); the same rows for the same --seed.",
)
def serve(
    host: str,
    port: int,
    tls: bool,
    db_path: str | None,
    data_dir: str | None,
    connection_out: str | None,
    connection_kind: str,
    latency_ms: int,
    seed: int | None,
    key_activation_s: float,
    token_lifetime_s: int,
    admin: bool,
    throttle: str,
    window_s: float | None,
    max_requests: int | None,
    max_exec_s: float | None,
    max_concurrency: int | None,
    dop_hint: int,
    time_scale: float,
    fault_rate: float,
    sample_data: bool,
    bulk_record_cost_ratio: float,
) -> None:
    """Serve a local Dataverse Web API emulator."""
    from .testing import uvicorn_config

    app = create_app(
        seed=seed,
        db_path=db_path,
        key_activation_s=key_activation_s,
        latency_ms=latency_ms,
        token_lifetime_s=token_lifetime_s,
        admin=admin,
        throttle=throttle,
        window_s=window_s,
        max_requests=max_requests,
        max_exec_s=max_exec_s,
        max_concurrency=max_concurrency,
        dop_hint=dop_hint,
        time_scale=time_scale,
        fault_rate=fault_rate,
        sample_data=sample_data,
        bulk_record_cost_ratio=bulk_record_cost_ratio,
    )
    ddir = Path(data_dir) if data_dir else default_data_dir()
    certfile = keyfile = ca = None
    if tls:
        cert_p, key_p, ca_p = issue_server_cert(ddir)
        certfile, keyfile, ca = str(cert_p), str(key_p), str(ca_p)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.bind((host, port))
    # Listen before printing the URL: a client that connects as soon as it reads the first line waits in the
    # backlog until uvicorn accepts, instead of being refused.
    sock.listen(2048)
    real_port = sock.getsockname()[1]
    shown_host = "127.0.0.1" if host in ("0.0.0.0", "") else host
    if ":" in shown_host:
        shown_host = f"[{shown_host}]"
    base = f"{'https' if tls else 'http'}://{shown_host}:{real_port}"
    print(base, flush=True)
    print(f"data dir: {ddir}", flush=True)
    if connection_out:
        cfg = app.state.emulator.connection_config(base, connection_kind, ca, str(ddir))
        if connection_kind == "authorization_code":  # where `d365 connection login` keeps the refresh token
            cfg["token_store"] = str(Path(connection_out).resolve().with_suffix(".token.json"))
        Path(connection_out).write_text(json.dumps(cfg, indent=2) + "\n")
        Path(connection_out).chmod(0o600)
        print(f"connection file: {connection_out}", flush=True)
    import uvicorn

    server = uvicorn.Server(uvicorn_config(app, sock, certfile, keyfile))
    try:
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(server.serve(sockets=[sock]))
    finally:
        for path in (certfile, keyfile):  # per-process server certificates; the CA stays
            if path:
                Path(path).unlink(missing_ok=True)
    sys.stdout.flush()
