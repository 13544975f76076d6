"""``d365 webhook serve`` as a real process on 127.0.0.1: a 200 MB body costs it no memory, a slow body is cut at
``--body-timeout``, connections beyond ``--max-connections`` get 503, and a delivery replayed after a restart is
dropped (the SQLite file under ``$XDG_STATE_HOME`` is the default), unless ``--dedupe-memory`` was asked for.

The client is a raw socket, so the test controls exactly what is sent and when: it stops sending once the receiver
answers (or cuts the connection) instead of pushing 200 MB into a closed socket.
"""

from __future__ import annotations

import json
import logging
import os
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from connector.webhook_server import KEEP_ALIVE_S
from tests.e2e.test_webhook_e2e import Lines
from tests.webhooks.conftest import KEY, payload

BODY = json.dumps(payload("use-webhooks-update-contact.json")).encode()
HUGE = 200 * 1024 * 1024
MB = 1024 * 1024
WAIT_S = 30


@pytest.fixture(autouse=True)
def _quiet_httpx(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="httpx")  # the client plays Dataverse: ?code=<key> in its URLs
    caplog.set_level(logging.WARNING, logger="httpcore")


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "webhook.json"
    path.write_text(json.dumps({"table": "contact", "messages": ["Update"], "secret": KEY}), encoding="utf-8")
    return path


class Receiver:
    def __init__(self, proc: subprocess.Popen[str], out: Lines, err: Lines) -> None:
        self.proc, self.out, self.err = proc, out, err
        self.url = str(err.next()["listening"])
        parts = urlsplit(self.url)
        self.address = (str(parts.hostname), int(parts.port or 80))

    def deliver(self, body: bytes = BODY, query: str = f"code={KEY}") -> httpx.Response:
        return httpx.post(f"{self.url}?{query}", content=body, headers={"content-type": "application/json"})

    def peak_kb(self) -> int:
        """VmHWM: the most resident memory the process has held since it started."""
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
        raise AssertionError("no VmHWM in /proc status")

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGINT)
        assert self.proc.wait(WAIT_S) == 0


@pytest.fixture
def serving(config_file: Path) -> Iterator[Any]:
    """Starts ``d365 webhook serve`` (no progress output) with the given options; killed at the end if alive."""
    started: list[Receiver] = []

    def start(*args: str) -> Receiver:
        cmd = [sys.executable, "-m", "connector.cli", "webhook", "serve", "--config", str(config_file)]
        proc = subprocess.Popen(
            [*cmd, "--progress=none", *args], text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        assert proc.stdout is not None and proc.stderr is not None
        started.append(Receiver(proc, Lines(proc.stdout), Lines(proc.stderr)))
        return started[-1]

    yield start
    for receiver in started:
        if receiver.proc.poll() is None:
            receiver.proc.kill()
        receiver.proc.wait(WAIT_S)
        receiver.out.close()
        receiver.err.close()


def _head(query: str, length: int | None, extra: str = "") -> bytes:
    framing = f"Content-Length: {length}" if length is not None else "Transfer-Encoding: chunked"
    return (
        f"POST /?{query} HTTP/1.1\r\nHost: receiver\r\nContent-Type: application/json\r\n{framing}\r\n{extra}\r\n"
    ).encode()


def _status(sock: socket.socket) -> int:
    answer = sock.recv(4096)
    assert answer.startswith(b"HTTP/1.1 "), answer[:80]
    return int(answer.split(b" ", 2)[1])


def _flood(address: tuple[str, int], query: str, *, chunked: bool, stubborn: bool) -> tuple[int | None, int]:
    """Send a 200 MB body a megabyte at a time; returns (status, bytes sent). A polite sender stops once the answer
    is in; a ``stubborn`` one keeps sending until the connection is cut (its answer may then be lost: ``None``)."""
    sent = 0
    with socket.create_connection(address, timeout=WAIT_S) as sock:
        sock.sendall(_head(query, None if chunked else HUGE))
        block = b"x" * MB
        frame = f"{MB:x}\r\n".encode() + block + b"\r\n" if chunked else block
        while sent < HUGE:
            if not stubborn and select.select([sock], [], [], 0)[0]:
                break
            try:
                sock.sendall(frame)
            except (BrokenPipeError, ConnectionResetError):
                break
            sent += MB
        try:
            return _status(sock), sent
        except ConnectionResetError:
            return None, sent


FLOODS = [  # (sender, key, framing, expected status)
    ("polite", "code=wrong", "declared", 401),
    ("polite", "", "chunked", 401),
    ("polite", f"code={KEY}", "declared", 413),
    ("polite", f"code={KEY}", "chunked", 413),
    ("stubborn", "", "declared", 401),
    ("stubborn", f"code={KEY}", "chunked", 413),
]


def test_webhook_serve_200mb_bodies_cost_no_memory(serving: Any) -> None:
    receiver = serving("--dedupe-memory")
    assert receiver.deliver().status_code == 200  # warm: every code path of a delivery has run once
    assert receiver.deliver(query="code=wrong").status_code == 401
    idle = receiver.peak_kb()
    print(f"\nreceiver idle peak RSS (VmHWM): {idle} kB")
    for sender, query, framing, status in FLOODS:
        answer, sent = _flood(receiver.address, query, chunked=framing == "chunked", stubborn=sender == "stubborn")
        peak = receiver.peak_kb()
        shown = "with key" if query.startswith("code=SENTINEL") else "without key"
        print(f"{sender} 200 MB {framing} {shown}: answer {answer}, {sent // MB} MB sent, peak RSS {peak} kB")
        assert answer in ((status,) if sender == "polite" else (status, None))
        assert sent < 64 * MB, "the receiver answered (and cut the connection) long before 200 MB"
        assert peak - idle < 16 * 1024, f"peak RSS grew by {(peak - idle) // 1024} MB for a refused body"
    assert receiver.deliver(BODY.replace(b'"Depth": 1', b'"Depth": 2')).status_code == 200, "still serving"


def test_webhook_serve_cuts_slow_bodies_and_caps_connections(serving: Any) -> None:
    receiver = serving("--dedupe-memory", "--body-timeout", "0.5", "--max-connections", "2")
    slow = socket.create_connection(receiver.address, timeout=WAIT_S)
    try:
        # uvicorn answers "100 Continue" when the app first asks for the body: the slow request is then in the app,
        # past the connection cap and the key check, so the next connection is the one over the cap
        slow.sendall(_head(f"code={KEY}", len(BODY), "Expect: 100-continue\r\n"))
        assert slow.recv(4096) == b"HTTP/1.1 100 Continue\r\n\r\n"
        slow.sendall(BODY[:10])  # ten bytes, then nothing
        assert receiver.deliver().status_code == 503, "beyond --max-connections: 503, which Dataverse retries"
        assert _status(slow) == 408
        while slow.recv(4096):  # the rest of the answer, then b"": closed (a connection kept open times out here)
            pass
    finally:
        slow.close()
    assert receiver.deliver().status_code == 200, "the slot is free again"


def test_webhook_serve_closes_connections_that_send_no_head(serving: Any) -> None:
    receiver = serving("--dedupe-memory", "--body-timeout", "0.3")
    sends = {
        "nothing": b"",
        "half a head": b"POST /?code=x HTTP/1.1\r\nHost: receiver\r\n",
        "idle after a delivery": _head(f"code={KEY}", len(BODY)) + BODY,
    }
    started = time.monotonic()
    sockets = {name: socket.create_connection(receiver.address, timeout=WAIT_S) for name in sends}
    for name, sock in sockets.items():
        sock.sendall(sends[name])
    answers = {}
    for name, sock in sockets.items():
        with sock:
            answers[name] = b""
            while chunk := sock.recv(4096):  # b"" once the receiver closes the connection
                answers[name] += chunk
    elapsed = time.monotonic() - started
    assert answers["nothing"] == answers["half a head"] == b""
    assert answers["idle after a delivery"].startswith(b"HTTP/1.1 200 ")
    assert elapsed < KEEP_ALIVE_S, f"closed after {elapsed:.2f} s: by the head deadline, not the keep-alive timeout"


def test_webhook_serve_replay_after_restart_dropped(serving: Any) -> None:
    first = serving()
    assert first.deliver().json() == {"accepted": True, "duplicate": False}
    assert first.out.next()["message"] == "Update"
    first.stop()
    state = Path(os.environ["XDG_STATE_HOME"]) / "d365" / "webhook-dedupe.sqlite"
    assert state.is_file(), "the default deduplication file"
    second = serving()
    assert second.deliver().json() == {"accepted": True, "duplicate": True}, "a replay after a restart is dropped"
    second.stop()
    assert second.out.pending() == []
    in_memory = serving("--dedupe-memory")
    assert in_memory.deliver().json() == {"accepted": True, "duplicate": False}, "memory only: a restart forgets"
    assert in_memory.out.next()["message"] == "Update"


def test_webhook_serve_dedupe_memory_conflicts_with_a_configured_file(config_file: Path, tmp_path: Path) -> None:
    config = json.loads(config_file.read_text(encoding="utf-8"))
    config_file.write_text(json.dumps({**config, "dedupe_sqlite_path": str(tmp_path / "d.sqlite")}), encoding="utf-8")
    cmd = [sys.executable, "-m", "connector.cli", "webhook", "serve", "--config", str(config_file), "--dedupe-memory"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=WAIT_S)
    assert done.returncode == 2 and "$.dedupe_sqlite_path" in done.stderr and "--dedupe-memory" in done.stderr
