"""``d365 trigger poll``: run a polling trigger from the shell, one event per line on stdout.

Why the state file is written only after the batch is printed (and atomically, through a temporary file and a
rename): a consumer reading stdout that stops halfway sees the unprinted changes again on the next run, and a crash
while writing never leaves half a state. Delivery is at-least-once; each event's ``key`` drops repeats.
"""

from __future__ import annotations

import json
import os
import re
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from connector import strict_json
from connector.cli_inputs import CONNECTION_ENV, cli_policy, load_connection_file
from connector.cli_progress import EXIT_INTERRUPTED
from connector.errors import ConnectorError, InputError, InputProblem

_INTERVAL = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m|h)?$")
_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


def parse_interval(text: str) -> float:
    """``30s``, ``2m``, ``1h``, ``500ms`` or plain seconds; at least one second between polls."""
    m = _INTERVAL.match(text.strip())
    seconds = float(m.group(1)) * _UNIT_S[m.group(2)] if m else 0.0
    if seconds < 1:
        raise InputError([InputProblem("--every", f"{text!r} is not an interval of 1s or more (30s, 2m, 1h)")])
    return seconds


def read_json_file(path: Path, what: str) -> Any:
    """A config or state file through the strict reader; a missing state file is a first poll (None)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        if what == "state":
            return None
        raise InputError(f"{what} file {str(path)!r} does not exist") from None
    except OSError as exc:
        raise InputError(f"{what} file {str(path)!r} is not readable ({type(exc).__name__})") from None
    try:
        return strict_json.loads(text)
    except ValueError as exc:
        raise InputError(f"{what} file {str(path)!r} is not valid JSON: {exc}") from None


def write_state(path: Path, state: dict[str, Any]) -> None:
    """Write the state through a temporary file in the same folder and a rename, so it is old or new, never half."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(state, handle, sort_keys=True)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def run_polls(
    poll: Callable[[Any], tuple[list[dict[str, Any]], dict[str, Any]]],
    state: Any,
    state_path: Path | None,
    *,
    every_s: float,
    once: bool,
    emit: Callable[[dict[str, Any]], None],
    sleep: Callable[[float], None],
) -> dict[str, Any]:
    """Poll, print the batch, store the state; again after ``every_s`` unless ``once``. Returns the last state."""
    while True:
        events, state = poll(state)
        for event in events:
            emit(event)
        if state_path is not None:
            write_state(state_path, state)
        if once:
            return dict(state)
        sleep(every_s)


@click.group()
def trigger() -> None:
    """Run polling triggers (``records_changed``) from the shell."""


@trigger.command("poll")
@click.option("--connection", "connection_file", envvar=CONNECTION_ENV, help="Connection file.")
@click.option("--config", "config_file", required=True, help="Trigger configuration (JSON).")
@click.option("--state", "state_file", help="State file: read before the first poll, written after each batch.")
@click.option("--trigger", "trigger_id", default="records_changed", show_default=True, help="Polling trigger id.")
@click.option("--every", default="30s", show_default=True, help="Interval between polls (30s, 2m, 1h).")
@click.option("--once", is_flag=True, help="Poll once and exit.")
def trigger_poll(
    connection_file: str | None, config_file: str, state_file: str | None, trigger_id: str, every: str, once: bool
) -> None:
    """Print each change as one JSON line on stdout; the state file is written after each printed batch. Without
    --state the state lives in memory only (the first poll of each run reports nothing). Ctrl-C stops cleanly."""
    from connector.runtime import default_runtime

    def emit(event: dict[str, Any]) -> None:
        click.echo(json.dumps(event, default=str))
        sys.stdout.flush()

    try:
        every_s = parse_interval(every)
        config = read_json_file(Path(config_file).expanduser(), "config")
        state_path = Path(state_file).expanduser() if state_file else None
        state = read_json_file(state_path, "state") if state_path else None
        runtime = default_runtime()
        data, base_dir = load_connection_file(connection_file)
        conn = runtime.connection(data, base_dir=base_dir, policy=cli_policy())
        try:
            run_polls(
                lambda s: runtime.poll_trigger(trigger_id, config, s, conn),
                state,
                state_path,
                every_s=every_s,
                once=once,
                emit=emit,
                sleep=conn.clock.sleep,
            )
        finally:
            runtime.close()
    except KeyboardInterrupt:
        click.echo(json.dumps({"status": "interrupted"}), err=True)
        sys.exit(EXIT_INTERRUPTED)
    except ConnectorError as exc:
        click.echo(f"error: {exc.message}", err=True)
        sys.exit(exc.exit_code)
