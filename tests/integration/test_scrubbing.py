"""The cassette scrubbers really remove secrets: record a token request and WhoAmI from a local server, then read
the YAML. A stdlib HTTP server on 127.0.0.1 stands in for both the identity platform and Dataverse, because vcrpy
also patches ``httpx.MockTransport`` and would record nothing from it."""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import pytest
import vcr

from connector.connection import Connection

TENANT = "72f988bf-86f1-41af-91ab-2d7cd011db47"
CLIENT_ID = "11111111-2222-3333-4444-555555555555"
SECRET = "SENTINEL-client-secret-5b1d9c"
TOKEN_SIGNATURE = "SENTINEL-access-token-77e2f0"
REFRESH = "SENTINEL-refresh-token-c41a88"
USER_ID = "8b9ad4f0-2b2c-4c0e-9f51-6c0d2a7ad001"


def _jwt(claims: dict[str, Any]) -> str:
    def seg(obj: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).decode().rstrip("=")

    return f"{seg({'typ': 'JWT', 'alg': 'RS256'})}.{seg(claims)}.{TOKEN_SIGNATURE}"


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # keep the test output clean
        pass

    def _send(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json; odata.metadata=minimal")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self) -> None:
        form = parse_qs(self.rfile.read(int(self.headers["Content-Length"])).decode())
        if self.path != f"/{TENANT}/oauth2/v2.0/token" or form.get("client_secret") != [SECRET]:
            self._send(401, {"error": "invalid_client", "error_description": "AADSTS7000215: Invalid secret."})
            return
        self._send(
            200,
            {
                "token_type": "Bearer",
                "expires_in": 3599,
                "access_token": self.server.token,
                "refresh_token": REFRESH,
                "id_token": _jwt({"aud": CLIENT_ID}),
            },
        )

    def do_GET(self) -> None:
        if self.headers.get("Authorization") != f"Bearer {self.server.token}":
            self._send(401, {"error": {"code": "0x80044302", "message": "Request is not authenticated."}})
            return
        self._send(
            200,
            {
                "@odata.context": f"{self.server.org}/api/data/v9.2/$metadata#Microsoft.Dynamics.CRM.WhoAmIResponse",
                "BusinessUnitId": "2c4a5e6f-0000-0000-0000-00000000b001",
                "UserId": USER_ID,
                "OrganizationId": "0e3a1d2c-0000-0000-0000-00000000a001",
            },
        )


class _Server(ThreadingHTTPServer):
    token = ""
    org = ""


@pytest.fixture
def local_server() -> Iterator[_Server]:
    server = _Server(("127.0.0.1", 0), _Handler)
    server.org = f"http://127.0.0.1:{server.server_address[1]}"
    server.token = _jwt({"aud": server.org, "tid": TENANT, "appid": CLIENT_ID})
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join(5)


def _connection(org: str) -> Connection:
    return Connection.from_config(
        {
            "kind": "client_credentials",
            "organization_url": org,
            "allow_insecure_loopback": True,
            "token_url": f"{org}/{TENANT}/oauth2/v2.0/token",
            "client_id": CLIENT_ID,
            "client_secret": SECRET,
        }
    )


def test_scrubbing_removes_every_secret(local_server: _Server, vcr_config: dict[str, Any], tmp_path: Path) -> None:
    cassette = tmp_path / "recorded.yaml"
    recorder = vcr.VCR(**{**vcr_config, "record_mode": "all"})
    with recorder.use_cassette(str(cassette)), _connection(local_server.org) as conn:
        assert conn.client.whoami().user_id == USER_ID

    text = cassette.read_text(encoding="utf-8")
    for secret in (SECRET, TOKEN_SIGNATURE, REFRESH, local_server.token, TENANT, "127.0.0.1", "Bearer eyJ"):
        assert secret not in text, f"{secret[:24]}... was recorded"
    assert text.count("<scrubbed>") == 3  # access_token, refresh_token, id_token
    assert "https://contoso.crm.dynamics.com/00000000-0000-0000-0000-000000000000/oauth2/v2.0/token" in text
    assert "https://contoso.crm.dynamics.com/api/data/v9.2/WhoAmI" in text
    assert "grant_type=client_credentials" in text and "client_id=" in text
    assert "authorization:" not in text.lower()

    # The scrubbed recording still replays through a Connection, with the server gone.
    local_server.shutdown()
    replayer = vcr.VCR(**{**vcr_config, "record_mode": "none"})
    with replayer.use_cassette(str(cassette)) as tape, _connection(local_server.org) as conn:
        assert conn.client.whoami().user_id == USER_ID
        assert tape.play_count == 2
