"""The receiver's counters: what became of each delivery, reported through the progress callback.

In-process through the ASGI app (as ``test_webhook_security``), then ``d365 webhook serve`` as a real process: JSON
lines on stderr with ``--progress=json``, live counters on a terminal (a pseudo-terminal), nothing when piped.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import pty
import re
import select
import signal
import struct
import subprocess
import sys
import termios
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from connector.progress import Progress
from connector.runtime import Runtime
from connector.webhook_server import COUNTS, create_asgi_app
from tests.e2e.test_webhook_e2e import Lines
from tests.webhooks.conftest import KEY, payload
from tests.webhooks.test_webhook_security import BODY, UPDATE, Receiver, post

WAIT_S = 60.0  # bounds a broken run only


@pytest.fixture(autouse=True)
def _quiet_httpx(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="httpx")  # it logs request URLs, which carry ?code=<key>, at INFO


def _last(events: list[Progress]) -> dict[str, int]:
    return dict(events[-1].counts)


def test_the_app_counts_every_delivery_by_what_became_of_it(runtime: Runtime, config: dict[str, Any]) -> None:
    events: list[Progress] = []
    handed: list[dict[str, Any]] = []
    fail = [False]

    def on_event(event: dict[str, Any]) -> None:
        if fail[0]:
            raise RuntimeError("the platform's queue is down")
        handed.append(event)

    client = Receiver(
        create_asgi_app({**config, "max_body_bytes": len(BODY)}, on_event, runtime=runtime, progress=events.append)
    )
    assert post(client, BODY).status_code == 200
    assert _last(events) == {**dict.fromkeys(COUNTS, 0), "delivered": 1} and events[-1].done == 1
    assert post(client, BODY).status_code == 200  # the same delivery again: a redelivery
    assert post(client, BODY, query="code=wrong").status_code == 401
    assert post(client, b"{not json").status_code == 400
    assert post(client, BODY + b" ").status_code == 413
    other = payload(UPDATE)
    other["OperationId"] = "0f8fad5b-d9cb-469f-a165-70867728950e"  # another operation: not a redelivery
    fail[0] = True
    assert post(client, json.dumps(other).encode()).status_code == 500
    assert _last(events) == {
        "delivered": 1,
        "redeliveries_dropped": 1,
        "refused_verification": 1,
        "refused_payload": 1,
        "refused_size": 1,
        "handler_failed": 1,
    }
    assert [e.done for e in events] == [1, 2, 3, 4, 5, 6] and {e.event for e in events} == {"advance"}
    assert {e.operation for e in events} == {"webhook"} and len(handed) == 1


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "webhook.json"
    path.write_text(json.dumps({"table": "contact", "messages": ["Update"], "secret": KEY}), encoding="utf-8")
    return path


def _serve(config_file: Path, *args: str, **popen: Any) -> subprocess.Popen[str]:
    cmd = [sys.executable, "-m", "connector.cli", "webhook", "serve", "--config", str(config_file), *args]
    return subprocess.Popen(cmd, text=True, **popen)


@pytest.fixture
def serving(config_file: Path) -> Iterator[Any]:
    """Starts ``d365 webhook serve`` with stdout and stderr piped, read line by line; killed at the end if alive."""
    started: list[tuple[subprocess.Popen[str], Lines, Lines]] = []

    def start(*args: str) -> tuple[subprocess.Popen[str], Lines, Lines]:
        proc = _serve(config_file, *args, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert proc.stdout is not None and proc.stderr is not None
        started.append((proc, Lines(proc.stdout), Lines(proc.stderr)))
        return started[-1]

    yield start
    for proc, out, err in started:
        if proc.poll() is None:
            proc.kill()
        proc.wait(WAIT_S)
        out.close()
        err.close()


def _deliver(url: str, body: bytes, query: str = f"code={KEY}") -> int:
    response = httpx.post(f"{url}?{query}", content=body, headers={"content-type": "application/json"})
    return response.status_code


def test_serve_with_progress_json_writes_one_line_per_delivery_on_stderr(serving: Any) -> None:
    proc, out, err = serving("--progress=json")
    url = err.next()["listening"]
    start = err.next()
    assert (start["operation"], start["event"], start["done"]) == ("webhook", "start", 0)
    assert start["counts"] == dict.fromkeys(COUNTS, 0)
    assert _deliver(url, BODY) == 200
    assert out.next()["message"] == "Update"  # the event on stdout, its count on stderr
    line = err.next()
    assert (line["event"], line["done"], line["counts"]["delivered"]) == ("advance", 1, 1)
    assert _deliver(url, BODY, "code=wrong") == 401
    line = err.next()
    assert (line["done"], line["counts"]["refused_verification"], line["counts"]["delivered"]) == (2, 1, 1)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(WAIT_S) == 0
    end = err.next()
    assert (end["event"], end["done"]) == ("end", 2)


def test_serve_piped_without_progress_writes_no_counters(serving: Any) -> None:
    proc, out, err = serving()
    url = err.next()["listening"]
    assert _deliver(url, BODY) == 200
    assert out.next()["message"] == "Update"
    proc.send_signal(signal.SIGINT)
    assert proc.wait(WAIT_S) == 0
    err.close()  # the child exited: every line it wrote is queued
    assert [line for line in err.pending() if '"operation"' in line] == []


def _read_until(fd: int, wanted: str, screen: list[str]) -> None:
    deadline = time.monotonic() + WAIT_S
    while wanted not in _plain("".join(screen)):
        assert time.monotonic() < deadline, _plain("".join(screen))[-2000:]
        ready, _, _ = select.select([fd], [], [], 1.0)
        if ready:
            screen.append(os.read(fd, 65536).decode("utf-8", "replace"))


def _plain(text: str) -> str:
    return re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", text)


def test_serve_on_a_terminal_draws_live_counters_and_keeps_events_on_stdout(config_file: Path, tmp_path: Path) -> None:
    primary, secondary = pty.openpty()
    fcntl.ioctl(secondary, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 200, 0, 0))
    with (tmp_path / "out.jsonl").open("w") as stdout:
        proc = _serve(config_file, stdout=stdout, stderr=secondary, env={**os.environ, "TERM": "xterm"})
    os.close(secondary)
    screen: list[str] = []
    try:
        _read_until(primary, "listening", screen)
        url = re.search(r'"listening": "([^"]+)"', _plain("".join(screen)))
        assert url is not None
        assert _deliver(url.group(1), BODY) == 200
        _read_until(primary, "delivered 1", screen)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(WAIT_S) == 0
    finally:
        proc.kill()
        os.close(primary)
    text = _plain("".join(screen))
    assert "webhook" in text and "refused verification 0" in text
    assert [json.loads(line)["message"] for line in (tmp_path / "out.jsonl").read_text().splitlines()] == ["Update"]
