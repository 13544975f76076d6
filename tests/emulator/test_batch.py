"""``$batch`` (reference 6): framing, change sets, ``$n`` references, stop-on-error and continue-on-error."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

import httpx

from dataverse_emulator.testing import EmulatorHandle

from .conftest import error_of

API = "/api/data/v9.2"


@dataclass
class Part:
    status: int
    headers: dict[str, str]
    body: str
    content_id: str | None
    changeset: int | None  # index of the change set response it belongs to


def op(method: str, url: str, body: dict[str, Any] | None = None, cid: str | None = None, **headers: str) -> str:
    lines = ["Content-Type: application/http", "Content-Transfer-Encoding: binary"]
    if cid is not None:
        lines.append(f"Content-ID: {cid}")
    lines += ["", f"{method} {url} HTTP/1.1"]
    if body is not None:
        lines.append("Content-Type: application/json; type=entry")
    lines += [f"{k.replace('_', '-')}: {v}" for k, v in headers.items()]
    lines.append("")
    if body is not None:
        lines.append(json.dumps(body))
    return "\r\n".join(lines) + "\r\n"


def changeset(*ops: str, boundary: str = "changeset_C1") -> str:
    inner = "".join(f"--{boundary}\r\n{o}" for o in ops) + f"--{boundary}--\r\n"
    return f'Content-Type: multipart/mixed; boundary="{boundary}"\r\n\r\n{inner}'


def batch_body(*parts: str, boundary: str = "batch_B1") -> str:
    return "".join(f"--{boundary}\r\n{p}" for p in parts) + f"--{boundary}--\r\n"


def send(api: httpx.Client, body: str | bytes, **headers: str) -> httpx.Response:
    hdrs = {"Content-Type": 'multipart/mixed; boundary="batch_B1"', **headers}
    return api.post("$batch", content=body.encode() if isinstance(body, str) else body, headers=hdrs)


def parse(resp: httpx.Response) -> list[Part]:
    ct = resp.headers["content-type"]
    m = re.fullmatch(r"multipart/mixed; boundary=(batchresponse_[0-9a-f-]{36})", ct)
    assert m, ct
    text = resp.text
    assert "\r\n" in text and "\n" not in text.replace("\r\n", ""), "response lines must end with CRLF"
    out: list[Part] = []
    cs_index = 0
    for chunk in _split(text, m.group(1)):
        head, _, rest = chunk.partition("\r\n\r\n")
        inner = re.search(r"boundary=(changesetresponse_[0-9a-f-]{36})", head)
        if inner:
            for sub in _split(rest, inner.group(1)):
                out.append(_part(sub, cs_index))
            cs_index += 1
        else:
            out.append(_part(chunk, None))
    return out


def _split(text: str, boundary: str) -> list[str]:
    body, closing, _ = text.partition(f"--{boundary}--")
    assert closing, f"no closing delimiter for {boundary}"
    return [p.removeprefix("\r\n") for p in body.split(f"--{boundary}")[1:]]


def _part(chunk: str, cs: int | None) -> Part:
    mime, _, http_part = chunk.partition("\r\n\r\n")
    mime_headers = dict(line.split(": ", 1) for line in mime.split("\r\n") if line)
    assert mime_headers["Content-Type"] == "application/http"
    assert mime_headers["Content-Transfer-Encoding"] == "binary"
    head, _, body = http_part.partition("\r\n\r\n")
    status_line, *header_lines = head.split("\r\n")
    assert re.fullmatch(r"HTTP/1\.1 \d{3} [A-Za-z ]+", status_line), status_line
    headers = dict(line.split(": ", 1) for line in header_lines)
    return Part(int(status_line.split()[1]), headers, body.strip(), mime_headers.get("Content-ID"), cs)


def test_changeset_with_reference_then_get(api: httpx.Client, emulator: EmulatorHandle) -> None:
    body = batch_body(
        changeset(
            op("POST", f"{API}/accounts", {"name": "b-parent"}, cid="1"),
            op(
                "POST",
                f"{emulator.api_url}/contacts",
                {"lastname": "b-child", "parentcustomerid_account@odata.bind": "$1"},
                cid="2",
            ),
            op("PATCH", "$1", {"telephone1": "555"}, cid="3"),
        ),
        op("GET", f"{API}/accounts?$select=name,telephone1&$filter=name eq 'b-parent'"),
    )
    r = send(api, body)
    assert r.status_code == 200
    assert r.headers["OData-Version"] == "4.0"
    parts = parse(r)
    assert [(p.status, p.content_id, p.changeset) for p in parts] == [
        (204, "1", 0),
        (204, "2", 0),
        (204, "3", 0),
        (200, None, None),
    ]
    account_url = parts[0].headers["OData-EntityId"]
    assert re.fullmatch(re.escape(emulator.api_url) + r"/accounts\([0-9a-f-]{36}\)", account_url)
    assert parts[0].headers["Location"] == account_url
    assert parts[1].headers["Location"] == parts[1].headers["OData-EntityId"]
    assert "Location" not in parts[2].headers  # Location accompanies creates only
    rows = json.loads(parts[3].body)["value"]
    assert [(row["name"], row["telephone1"]) for row in rows] == [("b-parent", "555")]
    assert parts[3].headers["Content-Type"].startswith("application/json")
    contact = api.get(parts[1].headers["OData-EntityId"].split("/v9.2/")[1] + "?$select=_parentcustomerid_value").json()
    assert account_url.endswith(f"({contact['_parentcustomerid_value']})")


def test_failed_changeset_rolls_back_and_stops_the_batch(api: httpx.Client) -> None:
    body = batch_body(
        op("POST", f"{API}/accounts", {"name": "rb-before"}),
        changeset(
            op("POST", f"{API}/accounts", {"name": "rb-in-changeset"}, cid="1"),
            op("POST", f"{API}/widgets", {"subject": "x"}, cid="2"),
            op("POST", f"{API}/accounts", {"name": "rb-never"}, cid="3"),
        ),
        op("POST", f"{API}/accounts", {"name": "rb-after"}),
    )
    r = send(api, body)
    assert r.status_code == 404  # the failing request's status (an unknown entity set)
    parts = parse(r)
    assert [(p.status, p.content_id, p.changeset) for p in parts] == [(204, None, None), (404, "2", 0)]
    failed = parts[1]
    assert re.fullmatch(r"[0-9a-f-]{36}", failed.headers["REQ_ID"])
    assert json.loads(failed.body)["error"]["code"] == "0x8006088a"
    names = [a["name"] for a in api.get("accounts?$select=name&$filter=startswith(name,'rb-')").json()["value"]]
    assert names == ["rb-before"]


def test_continue_on_error_answers_every_operation(api: httpx.Client) -> None:
    body = batch_body(
        op("POST", f"{API}/accounts", {"name": "coe-1"}),
        op("POST", f"{API}/accounts", {"name": "x" * 161}),
        changeset(op("POST", f"{API}/accounts", {"name": "coe-cs"}, cid="1")),
        op("GET", f"{API}/accounts(00000000-0000-0000-0000-000000000001)"),
        op("POST", f"{API}/accounts", {"name": "coe-2"}),
    )
    r = send(api, body, Prefer="odata.continue-on-error")
    assert r.status_code == 200
    assert [p.status for p in parse(r)] == [204, 400, 204, 404, 204]
    assert json.loads(parse(r)[1].body)["error"]["code"] == "0x80044331"
    names = [
        a["name"]
        for a in api.get("accounts?$select=name&$filter=startswith(name,'coe-')&$orderby=name").json()["value"]
    ]
    assert names == ["coe-1", "coe-2", "coe-cs"]


def test_unknown_reference_fails_the_operation(api: httpx.Client) -> None:
    r = send(api, batch_body(changeset(op("PATCH", "$7", {"name": "n"}, cid="1"))))
    part = parse(r)[0]
    assert (r.status_code, part.status) == (400, 400)
    assert (
        json.loads(part.body)["error"]["message"] == "Content-ID Reference: '$7' does not exist in the batch context."
    )


def test_refusals_of_the_whole_batch(api: httpx.Client) -> None:
    get_in_changeset = send(api, batch_body(changeset(op("GET", f"{API}/accounts", cid="1"))))
    assert error_of(get_in_changeset)[:2] == (400, "0x80060888")
    assert get_in_changeset.headers["content-type"].startswith("application/json")
    too_many = send(api, batch_body(*[op("GET", f"{API}/WhoAmI")] * 1001))
    status, _, message = error_of(too_many)
    assert status == 400 and "A maximum number of '1000' operations" in message
    no_cid = send(api, batch_body(changeset(op("POST", f"{API}/accounts", {"name": "n"}))))
    assert error_of(no_cid)[:2] == (400, "0x80060888")
    not_multipart = api.post("$batch", content=b"{}", headers={"Content-Type": "application/json"})
    assert error_of(not_multipart)[0] == 400
    exactly_1000 = send(api, batch_body(*[op("GET", f"{API}/WhoAmI")] * 1000))
    assert exactly_1000.status_code == 200 and len(parse(exactly_1000)) == 1000


def test_lf_only_bodies_follow_the_support_article(api: httpx.Client) -> None:
    crlf = batch_body(op("POST", f"{API}/accounts", {"name": "lf-1"}))
    lf = crlf.replace("\r\n", "\n")
    status, code, message = error_of(send(api, lf))
    assert (status, code) == (400, "0x80048d19")
    assert message.endswith("InnerException : System.ArgumentException: Stream was not readable.")
    workaround = send(api, lf + "\n\n")
    assert workaround.status_code == 200 and [p.status for p in parse(workaround)] == [204]


def test_lf_only_body_with_one_extra_line_ending_is_read_as_dataverse_api_sends_it(api: httpx.Client) -> None:
    lf = batch_body(op("POST", f"{API}/accounts", {"name": "lf-2"})).replace("\r\n", "\n")
    assert lf.endswith("--\n")  # the closing delimiter and its own line ending
    assert error_of(send(api, lf))[1] == "0x80048d19"
    answered = send(api, lf + "\n")  # dataverse-api 1.4.3 ends its batches with "--batch_x--\n\n"
    assert answered.status_code == 200 and [p.status for p in parse(answered)] == [204]


def test_inner_get_urls_may_exceed_the_top_level_limit(api: httpx.Client) -> None:
    flt = " or ".join(f"name eq 'n{i:05d}'" for i in range(2500))  # ~45,000 characters
    assert len(flt) > 40000
    top = api.get("accounts", params={"$select": "name", "$filter": flt})
    assert top.status_code == 414
    api.post("accounts", json={"name": "n02499"})
    r = send(api, batch_body(op("GET", f"{API}/accounts?$select=name&$filter={flt}")))
    assert r.status_code == 200 and parse(r)[0].status == 200
    assert [row["name"] for row in json.loads(parse(r)[0].body)["value"]] == ["n02499"]


def test_inner_requests_keep_the_principal_and_impersonation(api: httpx.Client, emulator: EmulatorHandle) -> None:
    who = api.get("WhoAmI").json()["UserId"]
    other = emulator.emulator.identity.user_oid  # the interactive test user's Entra object id
    body = batch_body(
        op("POST", f"{API}/accounts", {"name": "imp-outer"}),
        op("POST", f"{API}/accounts", {"name": "imp-inner"}, CallerObjectId=other),
        op("GET", f"{API}/WhoAmI"),
    )
    r = send(api, body)
    parts = parse(r)
    assert json.loads(parts[2].body)["UserId"] == who
    rows = api.get("accounts?$select=name,_createdby_value&$filter=startswith(name,'imp-')&$orderby=name").json()
    created = {row["name"]: row["_createdby_value"] for row in rows["value"]}
    assert created["imp-outer"] == who
    assert created["imp-inner"] != who
