"""``d365 trigger poll``: one event per line, the state file written atomically after each printed batch, a restart
from the state file repeating nothing, Ctrl-C ending cleanly, and bad arguments refused before any request."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner

from connector import cli_trigger
from connector.cli import main
from connector.connection import Connection
from connector.errors import InputError
from dataverse_emulator.testing import EmulatorHandle

from .conftest import FakeClock, create


def _files(tmp_path: Path, emulator: EmulatorHandle) -> tuple[Path, Path, Path]:
    conn, config, state = tmp_path / "connection.json", tmp_path / "config.json", tmp_path / "state.json"
    conn.write_text(json.dumps(emulator.connection_config()), encoding="utf-8")
    config.write_text(json.dumps({"table": "account", "columns": ["name"]}), encoding="utf-8")
    return conn, config, state


def test_records_changed_cli_prints_each_change_once_across_runs(
    tmp_path: Path,
    emulator: EmulatorHandle,
    connect: Callable[[], Connection],
    api: httpx.Client,
    clock: FakeClock,
) -> None:
    conn, config, state = _files(tmp_path, emulator)
    args = ["trigger", "poll", "--connection", str(conn), "--config", str(config), "--state", str(state), "--once"]
    first = CliRunner().invoke(main, args)
    assert first.exit_code == 0, first.output
    assert first.stdout == "" and json.loads(state.read_text(encoding="utf-8"))["mode"] == "change_tracking"
    clock.advance(1)
    one, two = create(api, "accounts", {"name": "one"}), create(api, "accounts", {"name": "two"})
    second = CliRunner().invoke(main, args)
    assert second.exit_code == 0, second.output
    lines = [json.loads(line) for line in second.stdout.splitlines()]
    assert [(e["change"], e["id"]) for e in lines] == [("created", one), ("created", two)]
    third = CliRunner().invoke(main, args)
    assert third.exit_code == 0 and third.stdout == ""
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_records_changed_run_polls_stores_the_state_after_each_printed_batch(tmp_path: Path) -> None:
    state_path = tmp_path / "state.json"
    seen: list[str] = []
    batches = iter([([{"key": "a"}], {"mode": "watermark", "n": 1}), ([{"key": "b"}], {"mode": "watermark", "n": 2})])

    def poll(state: Any) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        seen.append(f"poll with {state}")
        return next(batches)

    def emit(event: dict[str, Any]) -> None:
        stored = json.loads(state_path.read_text(encoding="utf-8")) if state_path.exists() else None
        seen.append(f"emit {event['key']} (stored: {stored})")

    def sleep(seconds: float) -> None:
        seen.append(f"sleep {seconds}")
        if len(seen) > 4:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        cli_trigger.run_polls(poll, None, state_path, every_s=30, once=False, emit=emit, sleep=sleep)
    assert seen == [
        "poll with None",
        "emit a (stored: None)",
        "sleep 30",
        "poll with {'mode': 'watermark', 'n': 1}",
        "emit b (stored: {'mode': 'watermark', 'n': 1})",
        "sleep 30",
    ]
    assert json.loads(state_path.read_text(encoding="utf-8")) == {"mode": "watermark", "n": 2}


def test_records_changed_cli_ctrl_c_exits_130(
    tmp_path: Path, emulator: EmulatorHandle, monkeypatch: pytest.MonkeyPatch
) -> None:
    conn, config, _ = _files(tmp_path, emulator)

    def interrupted(*args: Any, **kwargs: Any) -> dict[str, Any]:
        raise KeyboardInterrupt

    monkeypatch.setattr(cli_trigger, "run_polls", interrupted)
    result = CliRunner().invoke(main, ["trigger", "poll", "--connection", str(conn), "--config", str(config)])
    assert result.exit_code == 130 and '"interrupted"' in result.stderr and result.stdout == ""


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--every", "0.5s"], "is not an interval of 1s or more"),
        (["--every", "soon"], "is not an interval of 1s or more"),
        (["--config", "missing.json"], "does not exist"),
    ],
)
def test_records_changed_cli_refuses_bad_arguments(
    tmp_path: Path, emulator: EmulatorHandle, extra: list[str], message: str
) -> None:
    conn, config, _ = _files(tmp_path, emulator)
    emulator.admin.clear_requests()
    args = ["trigger", "poll", "--connection", str(conn), "--config", str(config), "--once", *extra]
    result = CliRunner().invoke(main, [a.replace("missing.json", str(tmp_path / "missing.json")) for a in args])
    assert result.exit_code == InputError("x").exit_code and message in result.stderr
    assert not [r for r in emulator.admin.requests() if "/api/data/" in r.get("path", "")]


def test_records_changed_cli_intervals() -> None:
    assert [cli_trigger.parse_interval(t) for t in ("30s", "2m", "1h", "1500ms", "45")] == [30, 120, 3600, 1.5, 45]


def test_records_changed_cli_state_file_must_be_strict_json(tmp_path: Path) -> None:
    bad = tmp_path / "state.json"
    bad.write_text('{"mode": NaN}', encoding="utf-8")
    with pytest.raises(InputError, match="not valid JSON"):
        cli_trigger.read_json_file(bad, "state")
    assert cli_trigger.read_json_file(tmp_path / "absent.json", "state") is None
