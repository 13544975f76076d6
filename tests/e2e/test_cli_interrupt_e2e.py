"""``d365 run write_entities`` as a person runs it: Ctrl-C mid-write, and the Rich bar on a terminal.

The CLI runs as a subprocess against an emulator whose Web API answers after 100 ms, so a write of a few hundred rows
in small chunks takes seconds. No sleep decides anything: the test reads the ``--progress=json`` lines on stderr and
sends SIGINT once the first chunk is reported, then checks that every record has a result and that the rows in the
emulator are exactly the ones reported created (nothing written that is not reported).
"""

from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import signal
import struct
import subprocess
import sys
import termios
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import pytest

from connector.connection import Connection
from connector.paging import iter_pages
from dataverse_emulator.testing import EmulatorHandle, running_emulator

RECORDS = 600
BOUND_S = 30.0  # exit after SIGINT within this: in-flight chunks take ~100 ms each, the interpreter ~2 s to start


@pytest.fixture(scope="module")
def emulator() -> Iterator[EmulatorHandle]:
    with running_emulator(latency_ms=100) as handle:
        yield handle


def _inputs(path: Path, n: int, chunk_size: int) -> Path:
    records = [{"fields": {"name": f"Row {i}"}} for i in range(n)]
    path.write_text(json.dumps({"table": "account", "mode": "create", "records": records, "chunk_size": chunk_size}))
    return path


def _start(connection_file: Path, inputs: Path, *args: str, **popen: Any) -> subprocess.Popen[str]:
    argv = [sys.executable, "-m", "connector.cli", "run", "write_entities", "--connection", str(connection_file)]
    popen.setdefault("env", dict(os.environ))
    return subprocess.Popen([*argv, "--input", str(inputs), *args], text=True, **popen)


def _wait_for(stderr: IO[str], wanted: Any) -> list[str]:
    """Progress lines up to the first one ``wanted`` accepts (fails if stderr ends first)."""
    seen = []
    for line in stderr:
        seen.append(line)
        if line.startswith("{") and wanted(json.loads(line)):
            return seen
    raise AssertionError(f"the run ended before the awaited progress line: {''.join(seen)[-2000:]}")


def _rows(connection: Connection) -> set[str]:
    pages = iter_pages(connection.client, "accounts?$select=accountid", page_size=5000)
    return {str(r["accountid"]) for page in pages for r in page.records}


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_mid_write_exits_130_with_every_result_and_nothing_unreported(
    connection: Connection, connection_file: Path, tmp_path: Path, sig: signal.Signals
) -> None:
    inputs = _inputs(tmp_path / "in.json", RECORDS, 5)
    proc = _start(connection_file, inputs, "--progress=json", stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert proc.stderr is not None
        _wait_for(proc.stderr, lambda line: line["event"] == "advance")
        proc.send_signal(sig)
        sent = time.monotonic()
        stdout, stderr = proc.communicate(timeout=BOUND_S)
        elapsed = time.monotonic() - sent
    finally:
        proc.kill()
    assert proc.returncode == 130, stderr
    assert elapsed < BOUND_S
    out = json.loads(stdout)
    results = out["results"]
    assert [r["index"] for r in results] == list(range(RECORDS))
    statuses = {r["status"] for r in results}
    assert statuses == {"created", "not_sent"}, statuses  # the chunks in flight finished: nothing unknown
    created = {r["id"] for r in results if r["status"] == "created"}
    assert out["summary"]["not_sent"] == RECORDS - len(created) > 0
    assert _rows(connection) == created
    assert f"interrupted ({sig.name}): exit 130" in stderr


@pytest.fixture(scope="module")
def slow_emulator() -> Iterator[EmulatorHandle]:
    """Answers after 4 s: a chunk is still in flight when the second SIGINT arrives (with room to spare on a loaded
    machine), so the abort is what is tested."""
    with running_emulator(latency_ms=4000) as handle:
        yield handle


def test_a_second_sigint_aborts_and_still_reports_every_record(slow_emulator: EmulatorHandle, tmp_path: Path) -> None:
    slow_emulator.admin.reset()
    connection_file = tmp_path / "connection.json"
    connection_file.write_text(json.dumps(slow_emulator.connection_config()), encoding="utf-8")
    inputs = _inputs(tmp_path / "in.json", 40, 5)
    proc = _start(connection_file, inputs, "--progress=json", stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert proc.stderr is not None
        _wait_for(proc.stderr, lambda line: line["event"] == "advance")
        proc.send_signal(signal.SIGINT)
        _wait_for(proc.stderr, lambda line: line["cancelled"])  # the run heard the first one
        assert proc.poll() is None  # the chunks sent with the first one are still in flight (4 s each)
        started = time.monotonic()
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=BOUND_S)
        stopped_waiting_s = time.monotonic() - started
    finally:
        proc.kill()
    assert proc.returncode == 130, stderr
    assert stopped_waiting_s < 4.0  # it stopped waiting for the requests in flight instead of sitting out the grace
    results = json.loads(stdout)["results"]
    assert len(results) == 40
    assert {r["status"] for r in results} <= {"created", "not_sent", "unknown"}
    assert any(r["status"] == "unknown" for r in results)  # the rows in flight: their answers never came
    created = {r["id"] for r in results if r["status"] == "created"}
    unknown = {r["id"] for r in results if r["status"] == "unknown"}
    with Connection.from_config(slow_emulator.connection_config()) as connection:
        assert created <= _rows(connection) <= created | unknown  # an unknown row may still land: its id was reported


def test_on_a_terminal_the_default_progress_is_a_rich_bar_on_stderr(
    connection: Connection, connection_file: Path, tmp_path: Path
) -> None:
    inputs = _inputs(tmp_path / "in.json", 60, 5)
    primary, secondary = pty.openpty()
    fcntl.ioctl(secondary, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 160, 0, 0))
    with (tmp_path / "out.json").open("w") as stdout:
        proc = _start(connection_file, inputs, stdout=stdout, stderr=secondary, env={**os.environ, "TERM": "xterm"})
    os.close(secondary)
    screen = b""
    try:
        while True:
            try:
                chunk = os.read(primary, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            screen += chunk
        assert proc.wait(timeout=BOUND_S) == 0
    finally:
        proc.kill()
        os.close(primary)
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", screen.decode("utf-8", "replace"))
    assert "write_entities" in text
    assert "60/60" in text and "created 60" in text and "rows/s" in text
    assert "━" in text  # the bar itself
    assert json.loads((tmp_path / "out.json").read_text())["summary"]["created"] == 60
