"""vcrpy configuration for the cassette tests: replay only in CI, and scrub every secret before anything is recorded.

Cassettes live in ``tests/cassettes/<module>/<test>.yaml``. They replay with record mode ``none`` (pytest-recording's
default); re-record against a sandbox environment with ``pytest tests/integration --record-mode=once`` after deleting
the cassette. Whatever is recorded passes through the scrubbers below first:

* request: the ``Authorization`` header and the ``client_secret`` / ``client_assertion`` / ``refresh_token`` / ``code``
  form fields are dropped; the environment host becomes ``contoso.crm.dynamics.com`` and the tenant in the token URL
  becomes the zero GUID;
* response: ``access_token``, ``refresh_token`` and ``id_token`` in JSON bodies become ``<scrubbed>``.

vcrpy also patches ``httpx.MockTransport``, so these tests never use the in-process fakes of ``tests/connector``;
matching is on method, path and query (not host or port), so a recording against any host replays here.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import pytest

CASSETTES = Path(__file__).resolve().parents[1] / "cassettes"
PLACEHOLDER_HOST = "contoso.crm.dynamics.com"
ZERO_TENANT = "00000000-0000-0000-0000-000000000000"
SCRUBBED = "<scrubbed>"
IDENTITY_HOSTS = frozenset(
    {"login.microsoftonline.com", "login.microsoftonline.us", "login.chinacloudapi.cn", "login.windows.net"}
)
TOKEN_FIELDS = ("access_token", "refresh_token", "id_token")
_TENANT_SEGMENT = re.compile(r"^/[^/]+(?=/oauth2/)")


class Scrubber:
    """Rewrites what identifies a customer, and blanks tokens, before vcrpy writes anything.

    The environment host and the tenant are learnt from each request's URL, then replaced wherever they recur: in
    the URL, the ``Host`` header, the form body (the scope names the environment, URL-encoded) and response bodies
    (``@odata.context`` links). Identity-platform hosts are kept, so a cassette still shows which cloud it came from.
    """

    def __init__(self) -> None:
        self.replacements: dict[str, str] = {}

    def _learn(self, old: str, new: str) -> None:
        if old and old != new:
            self.replacements[old] = new
            self.replacements[quote(old, safe="")] = quote(new, safe="")

    def _apply(self, text: str) -> str:
        for old in sorted(self.replacements, key=len, reverse=True):
            text = text.replace(old, self.replacements[old])
        return text

    def _apply_body(self, raw: Any) -> Any:
        if isinstance(raw, bytes):
            return self._apply(raw.decode("utf-8", "surrogateescape")).encode("utf-8", "surrogateescape")
        return self._apply(raw) if isinstance(raw, str) else raw

    def request(self, request: Any) -> Any:
        parts = urlsplit(request.uri)
        host = (parts.hostname or "").lower()
        match = _TENANT_SEGMENT.match(parts.path)
        if match:
            self._learn(match.group(0).lstrip("/"), ZERO_TENANT)
        if host not in IDENTITY_HOSTS:
            self._learn(f"{parts.scheme}://{parts.netloc}", f"https://{PLACEHOLDER_HOST}")
            self._learn(parts.netloc, PLACEHOLDER_HOST)
        request.uri = self._apply(request.uri)
        for name, value in list(request.headers.items()):
            if isinstance(value, str):
                request.headers[name] = self._apply(value)
        if request.body:
            request.body = self._apply_body(request.body)
        return request

    def response(self, response: dict[str, Any]) -> dict[str, Any]:
        body = response.get("body", {})
        raw = body.get("string")
        if not raw:
            return response
        text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
        try:
            data = json.loads(text)
        except ValueError:
            data = None
        if isinstance(data, dict) and any(k in data for k in TOKEN_FIELDS):
            for key in TOKEN_FIELDS:
                if key in data:
                    data[key] = SCRUBBED
            text = json.dumps(data)
        text = self._apply(text)
        body["string"] = text.encode() if isinstance(raw, bytes) else text
        for name in list(response.get("headers", {})):
            if name.lower() == "content-length":
                response["headers"][name] = [str(len(text.encode()))]
        return response


def make_vcr_config(record_mode: str = "none") -> dict[str, Any]:
    """The configuration every cassette test uses; the scrubbing test records through exactly this."""
    scrubber = Scrubber()
    return {
        "record_mode": record_mode,
        "match_on": ["method", "path", "query"],
        "filter_headers": ["authorization", "cookie", "set-cookie"],
        "filter_post_data_parameters": ["client_secret", "client_assertion", "refresh_token", "code"],
        "before_record_request": scrubber.request,
        "before_record_response": scrubber.response,
        "decode_compressed_response": True,
    }


@pytest.fixture(autouse=True)
def _quiet_vcr_logger() -> Iterator[None]:
    """vcrpy logs each recorded response at INFO *before* ``before_record_response`` scrubs it, tokens included."""
    logger = logging.getLogger("vcr")
    level = logger.level
    logger.setLevel(logging.WARNING)
    yield
    logger.setLevel(level)


@pytest.fixture
def vcr_config(record_mode: str) -> dict[str, Any]:
    return make_vcr_config(record_mode)


@pytest.fixture(scope="module")
def vcr_cassette_dir(request: pytest.FixtureRequest) -> str:
    return str(CASSETTES / Path(str(request.node.fspath)).stem)
