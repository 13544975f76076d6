"""File and image columns against the emulator on a real socket: create the column with the short form, upload
(single request, chunked, forced chunked for 50 MB), download in ranges, and refusals before anything is sent."""

from __future__ import annotations

import base64
import hashlib
import itertools
from pathlib import Path
from typing import Any

import pytest

from connector.connection import Connection
from connector.errors import InputError
from connector.progress import Progress
from connector.runtime import Runtime
from dataverse_emulator.testing import EmulatorHandle
from tests.e2e.conftest import web_api_requests

MB = 1024 * 1024


_COLUMNS = itertools.count(1)


def file_column(runtime: Runtime, connection: Connection, **extra: Any) -> str:
    """A new file column of account (columns outlive the emulator's reset, so each test makes its own)."""
    short = {"type": "file", "schema_name": f"new_Document{next(_COLUMNS)}", "label": "Document", **extra}
    out = runtime.run_action("create_attribute", {"table": "account", "attribute": short}, connection)
    return str(out["logical_name"])


def account(runtime: Runtime, connection: Connection, name: str = "Contoso") -> str:
    return str(runtime.run_action("create_entity", {"table": "account", "fields": {"name": name}}, connection)["id"])


def write_random(path: Path, size: int, seed: int = 7) -> str:
    """A file of ``size`` pseudo-random bytes written in blocks; its sha256."""
    digest = hashlib.sha256()
    block = hashlib.sha256(str(seed).encode()).digest() * (MB // 32)
    with path.open("wb") as handle:
        left, n = size, 0
        while left:
            piece = (block[n % 32 :] + block[: n % 32])[: min(MB, left)]
            handle.write(piece)
            digest.update(piece)
            left -= len(piece)
            n += 1
    return digest.hexdigest()


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(MB), b""):
            digest.update(block)
    return digest.hexdigest()


def file_requests(emulator: EmulatorHandle, column: str) -> list[dict[str, Any]]:
    return [r for r in web_api_requests(emulator) if f"/{column}" in r["path"] and "EntityDefinitions" not in r["path"]]


def test_upload_file_50_mb_chunked_and_download_file_identical(
    runtime: Runtime, connection: Connection, fresh_emulator: EmulatorHandle, tmp_path: Path
) -> None:
    column = file_column(runtime, connection, max_size_kb=65536)
    row = account(runtime, connection)
    source = tmp_path / "big.bin"
    digest = write_random(source, 50 * MB + 12345)
    fresh_emulator.admin.clear_requests()
    events: list[Progress] = []
    up = runtime.run_action(
        "upload_file",
        {"table": "account", "id": row, "column": column, "file_path": str(source), "chunked": True},
        connection,
        progress=events.append,
    )
    assert up == {
        "table": "account",
        "id": row,
        "column": column,
        "file_name": "big.bin",
        "size": 50 * MB + 12345,
        "chunked": True,
        "chunks": 13,
    }
    sent = file_requests(fresh_emulator, column)
    opening, blocks = sent[0], sent[1:]
    assert opening["method"] == "PATCH" and opening["headers"]["x-ms-transfer-mode"] == "chunked"
    assert opening["query"] == "x-ms-file-name=big.bin"
    assert [b["status"] for b in blocks] == [206] * 12 + [204]
    assert blocks[0]["headers"]["content-range"] == f"bytes 0-{4 * MB - 1}/{50 * MB + 12345}"
    assert blocks[-1]["headers"]["content-range"] == f"bytes {48 * MB}-{50 * MB + 12344}/{50 * MB + 12345}"
    assert all(b["query"].startswith("sessiontoken=") for b in blocks)
    assert events[-1].event == "end" and events[-1].counts == {"bytes": 50 * MB + 12345}
    fresh_emulator.admin.clear_requests()
    down = runtime.run_action(
        "download_file",
        {"table": "account", "id": row, "column": column, "save_to": str(tmp_path / "back.bin")},
        connection,
    )
    assert down["size"] == 50 * MB + 12345 and down["chunks"] == 13 and down["file_name"] == "big.bin"
    assert sha256(tmp_path / "back.bin") == digest
    ranges = [r["headers"]["range"] for r in file_requests(fresh_emulator, column)]
    assert ranges[:2] == [f"bytes=0-{4 * MB - 1}", f"bytes={4 * MB}-{8 * MB - 1}"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["back.bin", "big.bin"]  # no partial file left behind


def test_upload_file_single_request_and_download_file_inline(
    runtime: Runtime, connection: Connection, fresh_emulator: EmulatorHandle
) -> None:
    column = file_column(runtime, connection)
    row = account(runtime, connection)
    fresh_emulator.admin.clear_requests()
    content = base64.b64encode(b"hello, file column").decode()
    up = runtime.run_action(
        "upload_file",
        {"table": "account", "id": row, "column": column, "content_base64": content, "file_name": "hello.txt"},
        connection,
    )
    assert (up["chunked"], up["chunks"], up["size"]) == (False, 1, 18)
    [patch] = file_requests(fresh_emulator, column)
    assert patch["headers"]["x-ms-file-name"] == "hello.txt"
    assert patch["headers"]["content-type"] == "application/octet-stream"
    assert patch["headers"]["content-length"] == "18" and "transfer-encoding" not in patch["headers"]
    got = runtime.run_action("get_entity", {"table": "account", "id": row, "select": [f"{column}_name"]}, connection)
    assert got["record"][f"{column}_name"] == "hello.txt"
    down = runtime.run_action("download_file", {"table": "account", "id": row, "column": column}, connection)
    assert base64.b64decode(down["content_base64"]) == b"hello, file column"
    assert (down["mime_type"], down["file_name"], down["chunks"]) == ("text/plain", "hello.txt", 1)


def test_upload_file_non_ascii_name_goes_chunked_with_the_name_in_the_query(
    runtime: Runtime, connection: Connection, fresh_emulator: EmulatorHandle, tmp_path: Path
) -> None:
    column = file_column(runtime, connection)
    row = account(runtime, connection)
    source = tmp_path / "测试.txt"
    source.write_bytes(b"x" * 1000)
    fresh_emulator.admin.clear_requests()
    up = runtime.run_action(
        "upload_file", {"table": "account", "id": row, "column": column, "file_path": str(source)}, connection
    )
    assert up["chunked"] is True and up["file_name"] == "测试.txt"
    opening = file_requests(fresh_emulator, column)[0]
    assert "x-ms-file-name" not in opening["headers"]
    assert opening["query"] == "x-ms-file-name=%E6%B5%8B%E8%AF%95.txt"
    down = runtime.run_action("download_file", {"table": "account", "id": row, "column": column}, connection)
    assert base64.b64decode(down["content_base64"]) == b"x" * 1000


BAD_FILE_INPUTS = [
    pytest.param(
        "upload_file", {"column": "name", "content_base64": "aGk=", "file_name": "a.txt"}, "$.column", id="nf"
    ),
    pytest.param("upload_file", {"column": "<file>", "file_path": "/nonexistent/x.pdf"}, "$.file_path", id="nx"),
    pytest.param("upload_file", {"column": "new_documnt", "file_path": "/etc/hostname"}, "$.column", id="typo"),
    pytest.param(
        "upload_file",
        {"column": "<file>", "file_path": "/etc/hostname", "file_name": "a/b"},
        "$.file_name",
        id="dir-in-name",
    ),
    pytest.param("download_file", {"column": "name"}, "$.column", id="download-not-a-file-column"),
]


@pytest.mark.parametrize(("action", "inputs", "field"), BAD_FILE_INPUTS)
def test_upload_file_and_download_file_refuse_bad_input_before_sending(
    runtime: Runtime,
    connection: Connection,
    fresh_emulator: EmulatorHandle,
    action: str,
    inputs: dict[str, Any],
    field: str,
) -> None:
    column = file_column(runtime, connection)
    row = account(runtime, connection)
    inputs = {k: column if v == "<file>" else v for k, v in inputs.items()}
    fresh_emulator.admin.clear_requests()
    with pytest.raises(InputError) as caught:
        runtime.run_action(action, {"table": "account", "id": row, **inputs}, connection)
    assert field in str(caught.value)
    assert all(r["method"] == "GET" for r in web_api_requests(fresh_emulator))


def test_upload_file_over_max_size_in_kb_is_refused_before_sending(
    runtime: Runtime, connection: Connection, fresh_emulator: EmulatorHandle, tmp_path: Path
) -> None:
    column = file_column(runtime, connection, max_size_kb=1)
    row = account(runtime, connection)
    source = tmp_path / "two-kb.bin"
    source.write_bytes(b"\0" * 2048)
    fresh_emulator.admin.clear_requests()
    with pytest.raises(InputError) as caught:
        runtime.run_action(
            "upload_file", {"table": "account", "id": row, "column": column, "file_path": str(source)}, connection
        )
    assert "$.file_path" in str(caught.value) and "2,048 bytes" in str(caught.value) and "1,024" in str(caught.value)
    assert all(r["method"] == "GET" for r in web_api_requests(fresh_emulator))


def test_download_file_will_not_replace_a_file_unless_told(
    runtime: Runtime, connection: Connection, fresh_emulator: EmulatorHandle, tmp_path: Path
) -> None:
    column = file_column(runtime, connection)
    row = account(runtime, connection)
    content = base64.b64encode(b"new").decode()
    runtime.run_action(
        "upload_file",
        {"table": "account", "id": row, "column": column, "content_base64": content, "file_name": "a.txt"},
        connection,
    )
    target = tmp_path / "a.txt"
    target.write_bytes(b"old")
    inputs = {"table": "account", "id": row, "column": column, "save_to": str(target)}
    with pytest.raises(InputError, match=r"\$\.save_to"):
        runtime.run_action("download_file", inputs, connection)
    assert target.read_bytes() == b"old"
    runtime.run_action("download_file", {**inputs, "overwrite": True}, connection)
    assert target.read_bytes() == b"new" and sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"]


def test_download_file_of_an_empty_column_says_so(
    runtime: Runtime, connection: Connection, fresh_emulator: EmulatorHandle
) -> None:
    from connector.errors import NotFoundError

    column = file_column(runtime, connection)
    row = account(runtime, connection)
    with pytest.raises(NotFoundError, match="holds no file"):
        runtime.run_action("download_file", {"table": "account", "id": row, "column": column}, connection)


def test_create_attribute_file_and_image_short_forms(
    runtime: Runtime, connection: Connection, fresh_emulator: EmulatorHandle
) -> None:
    column = file_column(runtime, connection, max_size_kb=20480)
    runtime.run_action(
        "create_attribute",
        {
            "table": "account",
            "attribute": {"type": "image", "schema_name": "new_Logo", "label": "Logo", "store_full_image": True},
        },
        connection,
    )
    base = "EntityDefinitions(LogicalName='account')/Attributes"
    doc = connection.client.get_json(f"{base}(LogicalName='{column}')")
    logo = connection.client.get_json(f"{base}(LogicalName='new_logo')")
    assert doc["@odata.type"] == "#Microsoft.Dynamics.CRM.FileAttributeMetadata" and doc["MaxSizeInKB"] == 20480
    assert logo["@odata.type"] == "#Microsoft.Dynamics.CRM.ImageAttributeMetadata"
    assert (logo["MaxSizeInKB"], logo["CanStoreFullImage"]) == (10240, True)


def test_upload_file_to_an_image_column_and_download_file_full_size(
    runtime: Runtime, connection: Connection, fresh_emulator: EmulatorHandle
) -> None:
    short = {"type": "image", "schema_name": f"new_Logo{next(_COLUMNS)}", "label": "Logo", "store_full_image": True}
    column = runtime.run_action("create_attribute", {"table": "account", "attribute": short}, connection)[
        "logical_name"
    ]
    row = account(runtime, connection)
    empty = runtime.run_action("download_file", {"table": "account", "id": row, "column": column}, connection)
    assert (empty["size"], empty["file_name"], empty["content_base64"]) == (0, None, "")  # 204: no image yet
    png = b"\x89PNG\r\n\x1a\n" + b"\0" * 64
    content = base64.b64encode(png).decode()
    runtime.run_action(
        "upload_file",
        {"table": "account", "id": row, "column": column, "content_base64": content, "file_name": "logo.png"},
        connection,
    )
    fresh_emulator.admin.clear_requests()
    down = runtime.run_action(
        "download_file", {"table": "account", "id": row, "column": column, "full_size": True}, connection
    )
    assert base64.b64decode(down["content_base64"]) == png and down["mime_type"] == "image/png"
    assert all(r["query"] == "size=full" for r in file_requests(fresh_emulator, column))


def test_upload_file_and_download_file_through_the_cli_stream_from_and_to_disk_with_progress(
    runtime: Runtime,
    connection: Connection,
    connection_file: Path,
    fresh_emulator: EmulatorHandle,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import json

    from click.testing import CliRunner

    from connector import cli

    monkeypatch.setattr(cli, "_runtime", lambda: runtime)
    column = file_column(runtime, connection)
    row = account(runtime, connection)
    source = tmp_path / "nine.bin"
    digest = write_random(source, 9 * MB)

    def d365(action: str, *sets: str) -> Any:
        argv = ["run", action, "--connection", str(connection_file), "--progress=json"]
        argv += [a for s in ("table=account", f"id={row}", f"column={column}", *sets) for a in ("--set", s)]
        return CliRunner().invoke(cli.main, argv)

    up = d365("upload_file", f"file_path={source}", "chunked:=true")
    assert up.exit_code == 0, up.output
    assert json.loads(up.stdout)["chunks"] == 3
    lines = [json.loads(line) for line in up.stderr.splitlines()]
    assert [line["event"] for line in lines] == ["start", "advance", "advance", "advance", "end"]
    assert [line["done"] for line in lines[1:4]] == [4 * MB, 8 * MB, 9 * MB] and lines[0]["total"] == 9 * MB
    down = d365("download_file", f"save_to={tmp_path / 'back.bin'}")
    assert down.exit_code == 0, down.output
    assert sha256(tmp_path / "back.bin") == digest
