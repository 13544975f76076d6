"""File and image columns: single PATCH upload, chunked upload (Location, 206 then 204), download with ranges,
size limits, conditional upload and delete."""

from __future__ import annotations

import httpx
import pytest

from .conftest import created_id, error_of


@pytest.fixture
def file_column(api: httpx.Client) -> str:
    """A small file column on account (MaxSizeInKB 64), created once per module through the metadata API."""
    have = api.get("EntityDefinitions(LogicalName='account')/Attributes?$select=LogicalName")
    if "new_doc" not in {a["LogicalName"] for a in have.json()["value"]}:
        body = {
            "@odata.type": "Microsoft.Dynamics.CRM.FileAttributeMetadata",
            "SchemaName": "new_Doc",
            "MaxSizeInKB": 64,
        }
        assert api.post("EntityDefinitions(LogicalName='account')/Attributes", json=body).status_code == 204
        image = {"@odata.type": "Microsoft.Dynamics.CRM.ImageAttributeMetadata", "SchemaName": "new_Logo"}
        assert api.post("EntityDefinitions(LogicalName='account')/Attributes", json=image).status_code == 204
    return "new_doc"


def test_metadata_of_file_column(api: httpx.Client, file_column: str) -> None:
    attr = api.get(f"EntityDefinitions(LogicalName='account')/Attributes(LogicalName='{file_column}')").json()
    assert attr["@odata.type"] == "#Microsoft.Dynamics.CRM.FileAttributeMetadata"
    assert attr["AttributeTypeName"] == {"Value": "FileType"} and attr["MaxSizeInKB"] == 64


def test_single_upload_download_and_delete(api: httpx.Client, file_column: str) -> None:
    rid = created_id(api.post("accounts", json={"name": "F"}))
    empty = api.get(f"accounts({rid})/{file_column}/$value")
    assert error_of(empty)[:2] == (404, "0x80040217")
    up = api.patch(
        f"accounts({rid})/{file_column}",
        content=b"hello file",
        headers={"Content-Type": "text/plain", "x-ms-file-name": "a.txt", "If-None-Match": "null"},
    )
    assert up.status_code == 204, up.text
    row = api.get(f"accounts({rid})?$select=name,{file_column},{file_column}_name").json()
    assert row[f"{file_column}_name"] == "a.txt" and len(row[file_column]) == 36
    down = api.get(f"accounts({rid})/{file_column}/$value")
    assert down.status_code == 200 and down.content == b"hello file"
    assert down.headers["x-ms-file-name"] == "a.txt" and down.headers["x-ms-file-size"] == "10"
    assert down.headers["mimetype"] == "text/plain"
    part = api.get(f"accounts({rid})/{file_column}/$value", headers={"Range": "bytes=0-4"})
    assert part.status_code == 206 and part.content == b"hello"
    again = api.patch(
        f"accounts({rid})/{file_column}", content=b"x", headers={"x-ms-file-name": "b.txt", "If-None-Match": "null"}
    )
    assert again.status_code == 412
    assert api.delete(f"accounts({rid})/{file_column}").status_code == 204
    assert api.get(f"accounts({rid})/{file_column}/$value").status_code == 404
    ignored = api.patch(f"accounts({rid})", json={file_column: "00000000-0000-0000-0000-000000000001"})
    assert ignored.status_code == 204  # file data can't be set by update
    assert api.get(f"accounts({rid})?$select={file_column}").json()[file_column] is None


def test_chunked_upload(api: httpx.Client, file_column: str) -> None:
    rid = created_id(api.post("accounts", json={"name": "C"}))
    init = api.patch(f"accounts({rid})/{file_column}?x-ms-file-name=big.bin", headers={"x-ms-transfer-mode": "chunked"})
    assert init.status_code == 200, init.text
    assert init.headers["x-ms-chunk-size"] == "4194304" and init.headers["Accept-Ranges"] == "bytes"
    location = init.headers["Location"]
    assert "sessiontoken=" in location
    data = bytes(range(256)) * 100  # 25,600 bytes in three chunks
    statuses = []
    for start in range(0, len(data), 10000):
        chunk = data[start : start + 10000]
        r = api.patch(
            location,
            content=chunk,
            headers={
                "x-ms-file-name": "big.bin",
                "Content-Type": "application/octet-stream",
                "Content-Range": f"bytes {start}-{start + len(chunk) - 1}/{len(data)}",
            },
        )
        statuses.append(r.status_code)
    assert statuses == [206, 206, 204]
    down = api.get(f"accounts({rid})/{file_column}/$value")
    assert down.content == data and down.headers["x-ms-file-name"] == "big.bin"
    gone = api.patch(location, content=b"x", headers={"Content-Range": "bytes 0-0/1"})
    assert error_of(gone)[0] == 404


def test_size_limit(api: httpx.Client, file_column: str) -> None:
    rid = created_id(api.post("accounts", json={"name": "L"}))
    big = api.patch(f"accounts({rid})/{file_column}", content=b"x" * (64 * 1024 + 1), headers={"x-ms-file-name": "z"})
    assert error_of(big) == (400, "0x80044a02", "Attachment file size is too big.")
    init = api.patch(f"accounts({rid})/{file_column}?x-ms-file-name=z", headers={"x-ms-transfer-mode": "chunked"})
    r = api.patch(init.headers["Location"], content=b"x", headers={"Content-Range": f"bytes 0-0/{10**6}"})
    assert error_of(r)[:2] == (400, "0x80044a02")


def test_empty_image_answers_204(api: httpx.Client, file_column: str) -> None:
    rid = created_id(api.post("accounts", json={"name": "I"}))
    assert api.get(f"accounts({rid})/new_logo/$value").status_code == 204
