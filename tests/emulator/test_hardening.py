"""Refusals that must never be a 500: a client that goes away mid-request or mid-response, and queries with more joins
than Dataverse allows (FetchXML link-entities, lookup paths, ``any`` nesting, ``$expand`` chains)."""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote, urlsplit

import httpx
import pytest

from dataverse_emulator.testing import EmulatorHandle

from .conftest import error_of, fetch_token

LINK_LIMIT = (400, "0x8004430D", "Number of link entities in query exceeded maximum limit.")


@pytest.fixture
def server_errors(caplog: pytest.LogCaptureFixture) -> Iterator[list[logging.LogRecord]]:
    """Records at WARNING or above from the emulator and from uvicorn (whose loggers do not propagate to root)."""
    loggers = [logging.getLogger(name) for name in ("uvicorn.error", "uvicorn")]
    for lg in loggers:
        lg.addHandler(caplog.handler)
    caplog.set_level(logging.INFO)
    try:
        yield caplog.records
    finally:
        for lg in loggers:
            lg.removeHandler(caplog.handler)


def _connect(emulator: EmulatorHandle) -> tuple[socket.socket, str]:
    """A raw connection to the emulator and the Host header its tokens are issued for."""
    url = urlsplit(emulator.base_url)
    return socket.create_connection((url.hostname or "127.0.0.1", url.port or 80), timeout=10), url.netloc


def _entry_for(emulator: EmulatorHandle, path: str) -> dict[str, Any]:
    """The request log entry of ``path`` once the server has finished with it (the log is appended at the end)."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        found = [e for e in emulator.admin.requests() if e["path"] == path]
        if found:
            return found[-1]
        time.sleep(0.02)  # polling for a condition, bounded; the server thread appends the entry when done
    raise AssertionError(f"no request log entry for {path}")


def test_client_gone_mid_request_is_logged_not_an_error(
    emulator: EmulatorHandle, server_errors: list[logging.LogRecord]
) -> None:
    token = fetch_token(emulator)
    path = "/api/data/v9.2/accounts"
    sock, host = _connect(emulator)
    with sock:
        head = (
            f"POST {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\n"
            "Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n"
        )
        sock.sendall(head.encode() + b'{"name": "half')
    entry = _entry_for(emulator, path)
    assert entry["client_disconnected"] is True
    assert entry["status"] is None and entry["error_code"] is None
    assert [r for r in server_errors if r.levelno >= logging.WARNING or r.exc_info] == []


def test_client_gone_mid_response_is_not_an_error(
    emulator: EmulatorHandle, server_errors: list[logging.LogRecord]
) -> None:
    token = fetch_token(emulator)
    path = "/api/data/v9.2/$metadata"
    sock, host = _connect(emulator)
    with sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\n\r\n".encode())
        assert sock.recv(64).startswith(b"HTTP/1.1 200")  # the response has started; leave before its end
    entry = _entry_for(emulator, path)
    assert entry["status"] == 200
    assert [r for r in server_errors if r.levelno >= logging.WARNING or r.exc_info] == []


def _links(n: int, nested: bool) -> str:
    link = "<link-entity name='account' from='accountid' to='parentaccountid' link-type='outer'>"
    if nested:
        return link * n + "</link-entity>" * n
    return "".join(f"{link}</link-entity>" for _ in range(n))


@pytest.mark.parametrize("nested", [False, True])
def test_fetchxml_with_15_link_entities_runs_and_16_are_refused(api: httpx.Client, nested: bool) -> None:
    def fetch(n: int) -> httpx.Response:
        xml = f"<fetch><entity name='account'><attribute name='name'/>{_links(n, nested)}</entity></fetch>"
        return api.get("accounts?fetchXml=" + quote(xml, safe=""))

    assert fetch(15).status_code == 200
    assert error_of(fetch(16)) == LINK_LIMIT


def test_300_nested_link_entities_in_a_batch_are_refused_not_a_500(api: httpx.Client) -> None:
    """300 nested links no longer fit a URL; inside ``$batch`` they used to reach SQLite ("too many FROM clause")."""
    xml = f"<fetch><entity name='account'>{_links(300, nested=True)}</entity></fetch>"
    body = (
        "--batch_b\r\nContent-Type: application/http\r\nContent-Transfer-Encoding: binary\r\n\r\n"
        f"GET accounts?fetchXml={quote(xml, safe='')} HTTP/1.1\r\nAccept: application/json\r\n\r\n"
        "--batch_b--\r\n"
    )
    r = api.post("$batch", content=body, headers={"Content-Type": "multipart/mixed; boundary=batch_b"})
    assert r.status_code == 400, r.text  # a failed operation without continue-on-error fails the batch
    assert "HTTP/1.1 400 Bad Request" in r.text and "0x8004430D" in r.text


def test_lookup_path_and_any_nesting_deeper_than_15_joins_are_refused(api: httpx.Client) -> None:
    ok = "/".join(["parentaccountid"] * 15) + "/name eq 'a'"
    assert api.get("accounts", params={"$filter": ok}).status_code == 200
    deep = "/".join(["parentaccountid"] * 200) + "/name eq 'a'"
    assert error_of(api.get("accounts", params={"$filter": deep})) == LINK_LIMIT
    nested = "".join(f"contact_customer_accounts/any(c{i}:c{i}/" for i in range(16))
    nested = nested.rsplit("/", 1)[0] + "/name eq 'x'" + ")" * 16
    nested = nested.replace("/contact_customer_accounts", "/primarycontactid/contact_customer_accounts")
    status, code, _ = error_of(api.get("accounts", params={"$filter": nested}))
    assert status == 400 and code in ("0x8004430D", "0x0")


def test_deep_parentheses_are_a_400_not_a_500(api: httpx.Client) -> None:
    text = "(" * 3000 + "name eq 'a'" + ")" * 3000
    assert error_of(api.get("accounts", params={"$filter": text})) == (
        400,
        "0x0",
        "The recursion limit has been exceeded.",
    )


def test_expand_options_are_counted_nested_and_a_long_chain_is_refused_while_parsing(api: httpx.Client) -> None:
    chain15 = "parentaccountid"
    for _ in range(14):
        chain15 = f"parentaccountid($expand={chain15})"
    assert api.get("accounts", params={"$expand": chain15}).status_code == 200
    limit = (400, "0x80060888", "The number of $expand options exceeds the limit of 15.")
    assert error_of(api.get("accounts", params={"$expand": f"parentaccountid($expand={chain15})"})) == limit
    chain = "parentaccountid"
    for _ in range(1000):
        chain = f"p($expand={chain})"
    assert error_of(api.get("accounts", params={"$expand": chain})) == limit
