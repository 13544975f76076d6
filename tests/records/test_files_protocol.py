"""upload_file and download_file against a scripted Dataverse: what the emulator does not do (a block size other than
4 MB, ranges refused for files kept in the database, a Range ignored, a block retried after a 503, the 128 MB
switch) and the exact requests sent."""

from __future__ import annotations

import base64
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import httpx
import pytest

from connector import files
from connector.runtime import Runtime
from tests.records.conftest import API, FakeDataverse

ROW = "5f8e2a1c-3b4d-4e6f-8a9b-0c1d2e3f4a5b"
COLUMN_PATH = f"/api/data/v9.2/accounts({ROW})/new_doc"


class FileDataverse(FakeDataverse):
    """The record fake plus one file column ``new_doc`` on account (MaxSizeInKB 64) and a scripted file protocol."""

    def __init__(self, file_answer: Callable[[httpx.Request], httpx.Response]) -> None:
        super().__init__()
        self.file_answer = file_answer

    def handler(self, request: httpx.Request) -> httpx.Response:
        path = unquote(request.url.path)
        if path.endswith("/Attributes(LogicalName='new_doc')"):
            self.requests.append(request)
            return httpx.Response(
                200, json={"@odata.type": "#Microsoft.Dynamics.CRM.FileAttributeMetadata", "MaxSizeInKB": 64}
            )
        if path.startswith(COLUMN_PATH):
            self.requests.append(request)
            return self.file_answer(request)
        return super().handler(request)


def with_column(monkeypatch: pytest.MonkeyPatch) -> None:
    """The fake's account table gains the file column (AttributeType Virtual, as Dataverse reports file columns)."""
    from tests.records import conftest

    cols = {**conftest.TABLES["account"]["cols"], "new_doc": "Virtual"}
    monkeypatch.setitem(conftest.TABLES, "account", {**conftest.TABLES["account"], "cols": cols})


def file_requests(fake: FakeDataverse) -> list[httpx.Request]:
    return [r for r in fake.requests if unquote(r.url.path).startswith(COLUMN_PATH)]


def test_upload_file_uses_the_block_size_dataverse_asks_for_and_resends_a_block_from_disk(
    monkeypatch: pytest.MonkeyPatch, runtime: Runtime, tmp_path: Path
) -> None:
    with_column(monkeypatch)
    source = tmp_path / "a.bin"
    source.write_bytes(bytes(range(250)) * 10)  # 2,500 bytes
    bodies: list[bytes] = []
    failed_once: list[bool] = []

    def answer(request: httpx.Request) -> httpx.Response:
        if request.headers.get("x-ms-transfer-mode") == "chunked":
            location = f"{API}/accounts({ROW})/new_doc?sessiontoken=abc"
            return httpx.Response(200, headers={"Location": location, "x-ms-chunk-size": "1000"})
        body = request.read()
        if request.headers["content-range"].startswith("bytes 1000-") and not failed_once:
            failed_once.append(True)
            return httpx.Response(503)  # no error code: transient, and a PATCH is resent
        bodies.append(body)
        return httpx.Response(204 if request.headers["content-range"].startswith("bytes 2000-") else 206)

    fake = FileDataverse(answer)
    out = runtime.run_action(
        "upload_file",
        {"table": "account", "id": ROW, "column": "new_doc", "file_path": str(source), "chunked": True},
        fake.connect(),
    )
    assert (out["chunks"], out["size"]) == (3, 2500)
    ranges = [r.headers.get("content-range") for r in file_requests(fake)]
    assert ranges == [None, "bytes 0-999/2500", "bytes 1000-1999/2500", "bytes 1000-1999/2500", "bytes 2000-2499/2500"]
    assert b"".join(bodies) == source.read_bytes()
    assert all(r.headers.get("content-length") == "1000" for r in file_requests(fake)[1:3])


def test_upload_file_of_128_mb_or_more_goes_in_chunks(
    monkeypatch: pytest.MonkeyPatch, runtime: Runtime, tmp_path: Path
) -> None:
    with_column(monkeypatch)
    monkeypatch.setattr(files, "SINGLE_REQUEST_LIMIT", 100)  # the documented 128 MB, scaled to a test file
    seen: list[str] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers.get("x-ms-transfer-mode", "single"))
        if request.headers.get("x-ms-transfer-mode") == "chunked":
            return httpx.Response(200, headers={"Location": f"{API}/accounts({ROW})/new_doc?sessiontoken=t"})
        return httpx.Response(204)

    source = tmp_path / "b.bin"
    for size, expected in ((99, ["single"]), (100, ["chunked", "single"])):
        seen.clear()
        source.write_bytes(b"x" * size)
        out = runtime.run_action(
            "upload_file",
            {"table": "account", "id": ROW, "column": "new_doc", "file_path": str(source)},
            FileDataverse(answer).connect(),
        )
        assert seen == expected and out["chunked"] is (size == 100)


def ranged(content: bytes, *, refuse_ranges: bool = False, ignore_ranges: bool = False) -> Callable[..., Any]:
    def answer(request: httpx.Request) -> httpx.Response:
        headers = {"x-ms-file-name": "r.txt", "x-ms-file-size": str(len(content)), "mimetype": "text/plain"}
        rng = request.headers.get("range")
        if rng and refuse_ranges:
            message = "Downloading in multiple chunks is not supported for the files stored in the database."
            return httpx.Response(400, json={"error": {"code": "0x80090017", "message": message}})
        if not rng or ignore_ranges:
            return httpx.Response(200, content=content, headers=headers)
        start, end = (int(x) for x in rng.removeprefix("bytes=").split("-"))
        return httpx.Response(206, content=content[start : end + 1], headers={**headers, "x-ms-chunk-size": "4"})

    return answer


@pytest.mark.parametrize(
    ("options", "requests", "sent"),
    [
        pytest.param({}, 3, 3, id="ranges of the size Dataverse recommends"),
        pytest.param({"refuse_ranges": True}, 1, 2, id="stored in the database: one whole GET"),
        pytest.param({"ignore_ranges": True}, 1, 1, id="a Range ignored: the 200 is the file"),
    ],
)
def test_download_file_in_ranges_or_whole(
    monkeypatch: pytest.MonkeyPatch,
    runtime: Runtime,
    tmp_path: Path,
    options: dict[str, bool],
    requests: int,
    sent: int,
) -> None:
    with_column(monkeypatch)
    content = b"0123456789"
    monkeypatch.setattr(files, "DEFAULT_CHUNK", 2)  # first Range bytes=0-1, then the answer's x-ms-chunk-size (4)
    fake = FileDataverse(ranged(content, **options))
    target = tmp_path / "r.txt"
    out = runtime.run_action(
        "download_file", {"table": "account", "id": ROW, "column": "new_doc", "save_to": str(target)}, fake.connect()
    )
    assert target.read_bytes() == content and out["size"] == 10 and out["chunks"] == requests
    assert (out["file_name"], out["mime_type"]) == ("r.txt", "text/plain") and len(file_requests(fake)) == sent
    if not options:
        assert [r.headers["range"] for r in file_requests(fake)] == ["bytes=0-1", "bytes=2-5", "bytes=6-9"]


def test_download_file_inline_is_capped_and_leaves_no_partial_file(
    monkeypatch: pytest.MonkeyPatch, runtime: Runtime, tmp_path: Path
) -> None:
    from connector.errors import InputError

    with_column(monkeypatch)
    monkeypatch.setattr(files, "INLINE_LIMIT", 5)
    fake = FileDataverse(ranged(b"0123456789"))
    with pytest.raises(InputError, match=r"\$\.save_to"):
        runtime.run_action("download_file", {"table": "account", "id": ROW, "column": "new_doc"}, fake.connect())
    out = runtime.run_action(
        "download_file",
        {"table": "account", "id": ROW, "column": "new_doc", "save_to": str(tmp_path / "r.txt")},
        FileDataverse(ranged(b"0123")).connect(),
    )
    assert out["saved_to"] == str(tmp_path / "r.txt") and list(tmp_path.iterdir()) == [tmp_path / "r.txt"]


def test_upload_file_inline_base64_too_big_for_the_column_is_refused(
    monkeypatch: pytest.MonkeyPatch, runtime: Runtime
) -> None:
    from connector.errors import InputError

    with_column(monkeypatch)
    fake = FileDataverse(lambda request: httpx.Response(204))
    content = base64.b64encode(b"x" * (64 * 1024 + 1)).decode()
    with pytest.raises(InputError, match=r"\$\.content_base64: the file has 65,537 bytes"):
        runtime.run_action(
            "upload_file",
            {"table": "account", "id": ROW, "column": "new_doc", "content_base64": content, "file_name": "x.bin"},
            fake.connect(),
        )
    assert file_requests(fake) == []


def test_upload_file_and_download_file_cancelled_mid_way_store_and_save_nothing(
    monkeypatch: pytest.MonkeyPatch, runtime: Runtime, tmp_path: Path
) -> None:
    from connector.progress import CancellationToken, Progress

    with_column(monkeypatch)
    source = tmp_path / "a.bin"
    source.write_bytes(b"y" * 2500)

    def answer(request: httpx.Request) -> httpx.Response:
        if request.headers.get("x-ms-transfer-mode") == "chunked":
            location = f"{API}/accounts({ROW})/new_doc?sessiontoken=abc"
            return httpx.Response(200, headers={"Location": location, "x-ms-chunk-size": "1000"})
        return httpx.Response(206)

    token = CancellationToken()

    def cancel_after_first_block(event: Progress) -> None:
        if event.event == "advance":
            token.cancel()

    fake = FileDataverse(answer)
    up = runtime.run_action(
        "upload_file",
        {"table": "account", "id": ROW, "column": "new_doc", "file_path": str(source), "chunked": True},
        fake.connect(),
        progress=cancel_after_first_block,
        cancel=token,
    )
    assert (up["cancelled"], up["size"], up["chunks"]) == (True, 1000, 1) and len(file_requests(fake)) == 2
    monkeypatch.setattr(files, "DEFAULT_CHUNK", 2)
    token = CancellationToken()
    down = runtime.run_action(
        "download_file",
        {"table": "account", "id": ROW, "column": "new_doc", "save_to": str(tmp_path / "back.bin")},
        FileDataverse(ranged(b"0123456789")).connect(),
        progress=cancel_after_first_block,
        cancel=token,
    )
    assert down["cancelled"] is True and "saved_to" not in down and down["size"] < 10
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.bin"]
