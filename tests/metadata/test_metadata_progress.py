"""Progress and cancellation of the metadata listings on large organizations: table by table, page by page."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner

from connector import cli
from connector.connection import Connection
from connector.progress import CancellationToken, Progress, current
from connector.runtime import Runtime
from tests.metadata.test_metadata_actions import _tables


def _custom(n: int) -> dict[str, Any]:
    return {"value": [{"LogicalName": f"new_t{i}", "IsCustomEntity": True} for i in range(n)]}


def _columns(fake: Any, on_read: Any = None) -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        if on_read is not None:
            on_read()
        return httpx.Response(200, json={"value": [{"LogicalName": "name", "AttributeType": "String"}]})

    fake.route("GET", "EntityDefinitions(LogicalName=", answer)


def test_get_entities_metadata_reports_each_table_read(runtime: Runtime, fake: Any, conn: Connection) -> None:
    _columns(fake)  # routed first: the first route whose prefix matches answers
    fake.route("GET", "EntityDefinitions", _custom(3))
    events: list[Progress] = []
    out = runtime.run_action("get_entities_metadata", {}, conn, progress=events.append)
    assert out["count"] == 3 and "not_read" not in out
    assert [(e.event, e.done, e.total) for e in events] == [
        ("start", 0, 3),
        ("advance", 1, 3),
        ("advance", 2, 3),
        ("advance", 3, 3),
        ("end", 3, 3),
    ]
    assert {e.operation for e in events} == {"get_entities_metadata"} and dict(events[-1].counts) == {"tables": 3}


def test_a_cancelled_get_entities_metadata_returns_the_tables_read_and_how_many_were_not(
    runtime: Runtime, fake: Any, conn: Connection
) -> None:
    token = CancellationToken()
    reads: list[int] = []

    def second_read_cancels() -> None:
        reads.append(1)
        if len(reads) == 2:
            token.cancel("SIGINT")

    _columns(fake, second_read_cancels)
    fake.route("GET", "EntityDefinitions", _custom(5))
    out = runtime.run_action("get_entities_metadata", {}, conn, cancel=token)
    assert [t["logical_name"] for t in out["tables"]] == ["new_t0", "new_t1"]
    assert (out["count"], out["not_read"]) == (2, 3)
    assert len(reads) == 2  # no table read after the cancel (the runtime validated the output against its schema)


def test_a_second_ctrl_c_mid_read_keeps_the_tables_read(runtime: Runtime, fake: Any, conn: Connection) -> None:
    token = CancellationToken()
    reads: list[int] = []

    def second_read_is_cut_short() -> None:  # what the CLI's handlers do on two Ctrl-C while a request is out
        reads.append(1)
        if len(reads) == 2:
            token.cancel("SIGINT")
            token.abort("SIGINT")
            raise KeyboardInterrupt

    _columns(fake, second_read_is_cut_short)
    fake.route("GET", "EntityDefinitions", _custom(5))
    out = runtime.run_action("get_entities_metadata", {}, conn, cancel=token)
    assert [t["logical_name"] for t in out["tables"]] == ["new_t0"] and out["not_read"] == 4


def test_list_entity_types_fetch_all_reports_its_one_read_as_a_page(
    runtime: Runtime, fake: Any, conn: Connection
) -> None:
    fake.route("GET", "EntityDefinitions", _tables(5))
    events: list[Progress] = []
    out = runtime.run_action("list_entity_types", {"fetch_all": True}, conn, progress=events.append)
    assert out["returned"] == 5
    assert [(e.event, e.done, e.total) for e in events] == [("start", 0, None), ("advance", 5, 5), ("end", 5, 5)]
    assert dict(events[-1].counts) == {"pages": 1}


def test_d365_run_get_entities_metadata_interrupted_prints_the_tables_read_and_exits_130(
    runtime: Runtime, fake: Any, conn: Connection, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(cli, "_runtime", lambda: runtime)
    monkeypatch.setattr(Runtime, "connection", lambda self, config, **_: conn)
    reads: list[int] = []

    def second_read_is_interrupted() -> None:  # as the SIGINT handler does: the token the CLI made is cancelled
        reads.append(1)
        if len(reads) == 2:
            token = current().cancel
            assert token is not None
            token.cancel("SIGINT")

    _columns(fake, second_read_is_interrupted)
    fake.route("GET", "EntityDefinitions", _custom(5))
    path = tmp_path / "conn.json"
    path.write_text("{}", encoding="utf-8")
    result = CliRunner().invoke(cli.main, ["run", "get_entities_metadata", "--connection", str(path), "--json"])
    assert result.exit_code == 130, result.output
    out = json.loads(result.stdout)
    assert (out["count"], out["not_read"]) == (2, 3)
    summary = json.loads(result.stderr)
    assert summary["summary"] == {"tables": 2, "not_read": 3} and summary["exit_code"] == 130
