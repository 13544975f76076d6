"""``raw_request`` against a scripted Dataverse: paths kept under the Web API root, bodies, answers, extra retries."""

from __future__ import annotations

import base64
import json
from typing import Any

import httpx
import pytest

from connector.clock import FakeClock
from connector.connection import Connection
from connector.errors import FatalApiError, InputError, NotFoundError
from connector.runtime import Runtime
from tests.records.conftest import API, FakeDataverse


def run(runtime: Runtime, conn: Connection, **inputs: Any) -> dict[str, Any]:
    return runtime.run_action("raw_request", inputs, conn)


def test_raw_request_get_with_query_and_json_answer(fake: FakeDataverse, conn: Connection, runtime: Runtime) -> None:
    fake.respond = lambda r: httpx.Response(200, json={"value": [{"name": "A"}]}, headers={"x-ms-dop-hint": "4"})
    out = run(runtime, conn, path="accounts", query={"$select": "name", "$top": 3, "$count": True}, timeout=7)
    (request,) = fake.data
    assert str(request.url) == f"{API}/accounts?%24select=name&%24top=3&%24count=true"
    assert request.headers["Authorization"].startswith("Bearer ")
    assert request.extensions["timeout"] == {"connect": 7.0, "read": 7.0, "write": 7.0, "pool": 7.0}
    assert out["status"] == 200 and out["body"] == {"value": [{"name": "A"}]} and out["headers"]["x-ms-dop-hint"] == "4"


def test_raw_request_post_json_with_headers_and_same_root_absolute_url(
    fake: FakeDataverse, conn: Connection, runtime: Runtime
) -> None:
    fake.respond = lambda r: httpx.Response(201, json={"accountid": "a1", "name": "C"})
    user = "5f8e2a1c-3b4d-4e6f-8a9b-0c1d2e3f4a5b"
    out = run(
        runtime,
        conn,
        path=f"{API}/accounts",
        method="POST",
        data={"name": "C"},
        headers={"Prefer": "return=representation"},
        impersonate=user,
    )
    (request,) = fake.data
    assert (request.method, str(request.url)) == ("POST", f"{API}/accounts")
    assert json.loads(request.content) == {"name": "C"} and request.headers["Content-Type"] == "application/json"
    assert request.headers["Prefer"] == "return=representation" and request.headers["CallerObjectId"] == user
    assert out["status"] == 201 and out["body"]["name"] == "C"


def test_raw_request_file_bodies_and_response_types(fake: FakeDataverse, conn: Connection, runtime: Runtime) -> None:
    pdf = b"%PDF-1.4\n\x00\xff binary"
    fake.respond = lambda r: httpx.Response(204)
    upload = [
        {
            "file_name": "contract.pdf",
            "content_base64": base64.b64encode(pdf).decode(),
            "content_type": "application/pdf",
        }
    ]
    run(runtime, conn, path="accounts(5f8e2a1c-3b4d-4e6f-8a9b-0c1d2e3f4a5b)/new_doc", method="PATCH", file_data=upload)
    single = fake.data[-1]
    assert single.content == pdf and single.headers["x-ms-file-name"] == "contract.pdf"
    assert single.headers["Content-Type"] == "application/pdf"
    files = [
        {"field": "a", "file_name": "a.txt", "content_base64": base64.b64encode(b"AAA").decode()},
        {
            "field": "b",
            "file_name": "b.csv",
            "content_base64": base64.b64encode(b"x,y").decode(),
            "content_type": "text/csv",
        },
    ]
    run(runtime, conn, path="somefunction", method="POST", file_data=files, form_data={"note": "hi"})
    multipart = fake.data[-1]
    assert multipart.headers["Content-Type"].startswith("multipart/form-data; boundary=")
    assert b'name="a"; filename="a.txt"' in multipart.content and b"Content-Type: text/csv" in multipart.content
    assert b'name="note"\r\n\r\nhi' in multipart.content
    run(runtime, conn, path="somefunction", method="POST", form_data={"grant": "x y"})
    assert fake.data[-1].content == b"grant=x+y"
    assert fake.data[-1].headers["Content-Type"] == "application/x-www-form-urlencoded"
    fake.respond = lambda r: httpx.Response(200, content=pdf, headers={"Content-Type": "application/pdf"})
    out = run(
        runtime, conn, path="accounts(5f8e2a1c-3b4d-4e6f-8a9b-0c1d2e3f4a5b)/new_doc/$value", response_type="binary"
    )
    assert base64.b64decode(out["body"]) == pdf
    fake.respond = lambda r: httpx.Response(200, text="plain")
    assert run(runtime, conn, path="x", response_type="text")["body"] == "plain"
    with pytest.raises(FatalApiError, match="response_type text or binary"):
        run(runtime, conn, path="x")


def test_raw_request_errors_are_mapped_and_extra_retries_wait_on_the_clock(
    fake: FakeDataverse, runtime: Runtime
) -> None:
    clock = FakeClock()
    conn = fake.connect(clock)
    error = {"error": {"code": "0x80040217", "message": "account With Id = 1 Does Not Exist"}}
    fake.respond = lambda r: httpx.Response(404, json=error)
    with pytest.raises(NotFoundError) as info:
        run(runtime, conn, path="accounts(00000000-0000-0000-0000-000000000001)", max_retries=3)
    assert info.value.code == "0x80040217" and len(fake.data) == 1  # fatal: not retried by default
    answers = [httpx.Response(400, json=error), httpx.Response(400, json=error), httpx.Response(200, json={})]
    fake.respond = lambda r: answers.pop(0)
    out = run(
        runtime, conn, path="x", max_retries=2, retry_on_all_errors=True, retry_delay_ms=100, exponential_backoff=True
    )
    assert out["retries"] == 2 and clock.sleeps[-2:] == [0.1, 0.2]


@pytest.mark.parametrize(
    "path",
    [
        pytest.param("https://evil.example.com/api/data/v9.2/accounts", id="other-host"),
        pytest.param("https://contoso.crm.dynamics.com/api/data/v9.1/accounts", id="same-host-outside-root"),
        pytest.param("../../oauth2/token", id="dotdot"),
        pytest.param("accounts/../../x", id="inner-dotdot"),
        pytest.param("%2e%2e/%2e%2e/x", id="encoded-dotdot"),
        pytest.param("%252e%252e%252fx", id="double-encoded"),
        pytest.param("..%2f..%2fx", id="encoded-slash"),
        pytest.param("accounts%5c..%5cx", id="encoded-backslash"),
        pytest.param("//evil.example.com/x", id="protocol-relative"),
        pytest.param("https:evil.example.com", id="scheme-no-slashes"),
        pytest.param("javascript:alert(1)", id="javascript"),
        pytest.param("accounts%0d%0aHost:%20evil", id="crlf"),
        pytest.param("accounts#frag", id="fragment"),
    ],
)
def test_raw_request_refuses_paths_that_could_leave_the_web_api_root(
    fake: FakeDataverse, conn: Connection, runtime: Runtime, path: str
) -> None:
    with pytest.raises(InputError) as info:
        run(runtime, conn, path=path)
    assert info.value.exit_code == 2 and info.value.problems[0].path == "$.path"
    assert fake.requests == []


def test_raw_request_refuses_authorization_and_incoherent_bodies(
    fake: FakeDataverse, conn: Connection, runtime: Runtime
) -> None:
    with pytest.raises(InputError, match="Authorization cannot be set"):
        run(runtime, conn, path="WhoAmI", headers={"Authorization": "Bearer stolen"})
    with pytest.raises(
        InputError, match="Content-Length cannot be set: the HTTP client sets it from the URL and the body"
    ):
        run(runtime, conn, path="WhoAmI", headers={"Content-Length": "5"})
    for hop in ("Transfer-Encoding", "Connection", "TE", "Upgrade"):  # no request smuggling through raw headers
        with pytest.raises(InputError, match=f"{hop} cannot be set: it describes the connection"):
            run(runtime, conn, path="accounts", method="POST", data={"name": "x"}, headers={hop: "chunked"})
    with pytest.raises(InputError, match="a GET sends no body"):
        run(runtime, conn, path="accounts", data={"name": "x"})
    with pytest.raises(InputError, match="not valid base64"):
        run(runtime, conn, path="x", method="POST", file_data=[{"file_name": "a", "content_base64": "%%%"}])
    assert fake.requests == []


def test_raw_request_throttling_goes_through_the_connection_governor(fake: FakeDataverse, runtime: Runtime) -> None:
    """A 429 holds the connection for Retry-After (the governor), then the same request is sent again."""
    clock = FakeClock()
    conn = fake.connect(clock)
    busy = {"error": {"code": "0x80072322", "message": "Number of requests exceeded the limit of 6000."}}
    answers = [httpx.Response(429, json=busy, headers={"Retry-After": "7"}), httpx.Response(200, json={"ok": 1})]
    fake.respond = lambda r: answers.pop(0)
    started = clock.monotonic()
    out = run(runtime, conn, path="WhoAmI")
    assert out["body"] == {"ok": 1} and out["retries"] == 0 and len(fake.data) == 2
    assert clock.monotonic() - started >= 7
    assert conn.governor.not_before >= started + 7
