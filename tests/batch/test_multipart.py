"""The ``$batch`` codec: Microsoft's documented bytes decode, CRLF is required, and encode/decode round-trip."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from connector.errors import MultipartError
from connector.multipart import (
    BatchOperation,
    ChangeSet,
    ChangeSetResponse,
    OperationResponse,
    boundary_of,
    decode_batch,
    decode_batch_response,
    encode_batch,
    encode_batch_response,
)

# execute-batch-operations-using-web-api.md, "Change sets" response example (reference 6.3), CRLF lines
DOC_RESPONSE = "\r\n".join(
    [
        "--batchresponse_f27ef42d-51b0-4685-bac9-f468f844de2a",
        "Content-Type: multipart/mixed; boundary=changesetresponse_64cc3fff-023a-45b0-b29d-df21583ffa15",
        "",
        "--changesetresponse_64cc3fff-023a-45b0-b29d-df21583ffa15",
        "Content-Type: application/http",
        "Content-Transfer-Encoding: binary",
        "Content-ID: 1",
        "",
        "HTTP/1.1 204 No Content",
        "OData-Version: 4.0",
        "Location: [Organization URI]/api/data/v9.2/tasks(a59c24c2-02e6-ec11-bb3d-000d3a3f0f8b)",
        "OData-EntityId: [Organization URI]/api/data/v9.2/tasks(a59c24c2-02e6-ec11-bb3d-000d3a3f0f8b)",
        "",
        "",
        "--changesetresponse_64cc3fff-023a-45b0-b29d-df21583ffa15",
        "Content-Type: application/http",
        "Content-Transfer-Encoding: binary",
        "Content-ID: 2",
        "",
        "HTTP/1.1 204 No Content",
        "OData-Version: 4.0",
        "Location: [Organization URI]/api/data/v9.2/tasks(a69c24c2-02e6-ec11-bb3d-000d3a3f0f8b)",
        "OData-EntityId: [Organization URI]/api/data/v9.2/tasks(a69c24c2-02e6-ec11-bb3d-000d3a3f0f8b)",
        "",
        "",
        "--changesetresponse_64cc3fff-023a-45b0-b29d-df21583ffa15--",
        "--batchresponse_f27ef42d-51b0-4685-bac9-f468f844de2a",
        "Content-Type: application/http",
        "Content-Transfer-Encoding: binary",
        "",
        "HTTP/1.1 200 OK",
        "Content-Type: application/json; odata.metadata=minimal; odata.streaming=true",
        "OData-Version: 4.0",
        "",
        '{"@odata.context":"[Organization URI]/api/data/v9.2/$metadata#tasks(subject)","value":[{"subject":"Task 1"}]}',
        "--batchresponse_f27ef42d-51b0-4685-bac9-f468f844de2a--",
        "",
    ]
).encode()
DOC_CT = "multipart/mixed; boundary=batchresponse_f27ef42d-51b0-4685-bac9-f468f844de2a"

# reference 6.4: stop-on-error answer for a task subject longer than 200
DOC_ERROR = "\r\n".join(
    [
        "--batchresponse_156da4b8-cd2b-4bb6-a4e3-5b8e8ff1aa4c",
        "Content-Type: application/http",
        "Content-Transfer-Encoding: binary",
        "",
        "HTTP/1.1 400 Bad Request",
        "REQ_ID: 5ecd1cb3-1730-4ffc-909c-d44c22270026",
        "Content-Type: application/json; odata.metadata=minimal",
        "OData-Version: 4.0",
        "",
        '{"error":{"code":"0x80044331","message":"A validation error occurred.  The length of the \'subject\' '
        "attribute of the 'task' entity exceeded the maximum allowed length of '200'.\"}}",
        "--batchresponse_156da4b8-cd2b-4bb6-a4e3-5b8e8ff1aa4c--",
        "",
    ]
).encode()


def test_run_batch_operations_codec_reads_the_documented_change_set_response() -> None:
    items = decode_batch_response(DOC_CT, DOC_RESPONSE)
    assert len(items) == 2
    changeset, get = items
    assert isinstance(changeset, ChangeSetResponse) and isinstance(get, OperationResponse)
    assert [(r.status, r.content_id) for r in changeset.responses] == [(204, "1"), (204, "2")]
    assert (
        changeset.responses[1]
        .header(
            "odata-entityid",
        )
        .endswith("tasks(a69c24c2-02e6-ec11-bb3d-000d3a3f0f8b)")
    )
    assert get.status == 200 and get.json()["value"] == [{"subject": "Task 1"}]


def test_run_batch_operations_codec_reads_the_documented_error_part() -> None:
    (part,) = decode_batch_response(
        "multipart/mixed; boundary=batchresponse_156da4b8-cd2b-4bb6-a4e3-5b8e8ff1aa4c", DOC_ERROR
    )
    assert isinstance(part, OperationResponse)
    assert part.status == 400 and part.header("REQ_ID") == "5ecd1cb3-1730-4ffc-909c-d44c22270026"
    assert part.json()["error"]["code"] == "0x80044331"


@pytest.mark.parametrize(
    "mangle",
    [
        pytest.param(lambda b: b.replace(b"\r\n", b"\n"), id="all-lf"),
        pytest.param(lambda b: b.replace(b"Content-ID: 2\r\n", b"Content-ID: 2\n", 1), id="one-header-line"),
        pytest.param(lambda b: b.replace(b"HTTP/1.1 200 OK\r\n", b"HTTP/1.1 200 OK\n", 1), id="status-line"),
        pytest.param(
            lambda b: b.replace(
                b"--changesetresponse_64cc3fff-023a-45b0-b29d-df21583ffa15\r\nC",
                b"--changesetresponse_64cc3fff-023a-45b0-b29d-df21583ffa15\nC",
                1,
            ),
            id="delimiter-line",
        ),
    ],
)
def test_run_batch_operations_codec_rejects_bare_lf(mangle: object) -> None:
    with pytest.raises(MultipartError, match="LF"):
        decode_batch_response(DOC_CT, mangle(DOC_RESPONSE))  # type: ignore[operator]


def test_run_batch_operations_codec_needs_the_closing_delimiter() -> None:
    truncated = DOC_RESPONSE[: DOC_RESPONSE.rindex(b"--batchresponse")]
    with pytest.raises(MultipartError, match="closing delimiter"):
        decode_batch_response(DOC_CT, truncated)


def test_run_batch_operations_encoder_writes_crlf_only_and_the_documented_layout() -> None:
    ops = [
        ChangeSet(
            (
                BatchOperation("POST", "/api/data/v9.2/accounts", (("Content-Type", "application/json; type=entry"),),
                               b'{"name":"A"}', "1"),
                BatchOperation("POST", "/api/data/v9.2/tasks", (("Content-Type", "application/json; type=entry"),),
                               b'{"subject":"T","regardingobjectid_account_task@odata.bind":"$1"}', "2"),
            )
        ),
        BatchOperation("GET", "/api/data/v9.2/accounts?$select=name&$top=1"),
    ]  # fmt: skip
    content_type, body = encode_batch(ops, boundary="batch_B1")
    assert content_type == 'multipart/mixed; boundary="batch_B1"'
    assert b"\n" not in body.replace(b"\r\n", b"")
    text = body.decode()
    assert text.startswith('--batch_B1\r\nContent-Type: multipart/mixed; boundary="changeset_')
    assert (
        "Content-ID: 1\r\n\r\nPOST /api/data/v9.2/accounts HTTP/1.1\r\nContent-Type: application/json; type=entry"
        in text
    )
    assert text.endswith("GET /api/data/v9.2/accounts?$select=name&$top=1 HTTP/1.1\r\n\r\n\r\n--batch_B1--\r\n")
    assert boundary_of(content_type) == "batch_B1"


def test_run_batch_operations_encoder_refuses_header_injection_and_a_boundary_inside_a_body() -> None:
    with pytest.raises(MultipartError, match="line break"):
        encode_batch([BatchOperation("GET", "/x", (("If-Match", "*\r\nX-Evil: 1"),))])
    with pytest.raises(MultipartError, match="occurs inside a body"):
        encode_batch([BatchOperation("POST", "/x", (), b'{"a":"--batch_B1"}')], boundary="batch_B1")
    with pytest.raises(MultipartError, match="invalid request URL"):
        encode_batch([BatchOperation("GET", "/x HTTP/1.1\r\nHost: evil")])


def test_run_batch_operations_encoder_skips_a_fresh_boundary_that_a_body_contains() -> None:
    names = iter(["batch_taken", "batch_free"])
    content_type, body = encode_batch(
        [BatchOperation("POST", "/x", (), b'{"note":"--batch_taken"}')], new_boundary=lambda prefix: next(names)
    )
    assert boundary_of(content_type) == "batch_free"
    assert decode_batch(content_type, body)[0].body == b'{"note":"--batch_taken"}'  # type: ignore[union-attr]


# -- properties -----------------------------------------------------------------------------------------------------
_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3),
    max_leaves=8,
)
# text that looks like framing: boundaries, delimiters and line breaks, inside JSON strings
_tricky = st.sampled_from(
    ["--batch_B1", "--batch_B1--", "\r\n--batch_B1\r\n", "--changeset_", "\n", "\r\n\r\n", "HTTP/1.1 200 OK"]
)
_json_body = st.builds(
    lambda v, t: json.dumps({"value": v, "text": t}, separators=(",", ":")).encode(),
    _json_values,
    st.lists(_tricky, max_size=4).map("".join),
)
_ALNUM = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
_header = st.tuples(
    st.text(_ALNUM + "-", min_size=1, max_size=12).map(lambda n: "X" + n),
    st.text(_ALNUM + " ;=,\"'*/()-", max_size=20).map(str.strip),
)
_op = st.builds(
    BatchOperation,
    method=st.sampled_from(["GET", "POST", "PATCH", "DELETE", "PUT"]),
    url=st.text(_ALNUM + "_()'$=?&,%-", min_size=1, max_size=30).map(lambda p: "/api/data/v9.2/" + p),
    headers=st.lists(_header, max_size=3).map(tuple),
    body=st.one_of(st.just(b""), _json_body),
)


@st.composite
def _items(draw: st.DrawFn) -> list[BatchOperation | ChangeSet]:
    out: list[BatchOperation | ChangeSet] = []
    counter = 0
    for kind in draw(st.lists(st.sampled_from(["op", "cs"]), min_size=1, max_size=5)):
        if kind == "op":
            out.append(draw(_op))
            continue
        ops = []
        for op in draw(st.lists(_op, min_size=1, max_size=3)):
            counter += 1
            ops.append(BatchOperation(op.method, op.url, op.headers, op.body, str(counter)))
        out.append(ChangeSet(tuple(ops)))
    return out


@settings(max_examples=60, deadline=None)
@given(_items())
def test_run_batch_operations_request_round_trip(items: list[BatchOperation | ChangeSet]) -> None:
    content_type, body = encode_batch(items)
    assert b"\n" not in body.replace(b"\r\n", b"")  # JSON escapes its own line breaks; framing is all CRLF
    assert decode_batch(content_type, body) == items


_response = st.builds(
    OperationResponse,
    status=st.sampled_from([200, 201, 204, 400, 404, 412, 429, 500]),
    reason=st.sampled_from(["OK", "Created", "No Content", "Bad Request", ""]),
    headers=st.lists(_header, max_size=3).map(tuple),
    body=st.one_of(st.just(b""), _json_body),
    content_id=st.none() | st.integers(1, 1000).map(str),
)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        _response | st.lists(_response, min_size=1, max_size=3).map(lambda r: ChangeSetResponse(tuple(r))),
        min_size=1,
        max_size=5,
    )
)
def test_run_batch_operations_response_round_trip(items: list[OperationResponse | ChangeSetResponse]) -> None:
    content_type, body = encode_batch_response(items)
    assert decode_batch_response(content_type, body) == items


@settings(max_examples=60, deadline=None)
@given(_json_body)
def test_run_batch_operations_boundary_text_inside_a_json_body_is_content(body: bytes) -> None:
    """A server picks its boundary without looking at our data: its text inside a JSON body must not split parts."""
    text = body.decode()
    ct = "multipart/mixed; boundary=batch_B1"
    framed = (
        "--batch_B1\r\nContent-Type: application/http\r\n\r\nHTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n"
        + text
        + "\r\n--batch_B1--\r\n"
    ).encode()
    if b"\r\n--batch_B1" in body:
        return  # JSON text never holds a raw CRLF: json.dumps escapes it, so this cannot come from a JSON body
    (part,) = decode_batch_response(ct, framed)
    assert isinstance(part, OperationResponse) and part.body == body
