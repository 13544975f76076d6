"""Replay the hand-written cassettes (token request, WhoAmI) through Connection and DataverseClient.

The cassettes are what a real exchange looks like after the scrubbers: if the client's requests drift (method, path
or query), vcrpy cannot match them and the test fails with CannotOverwriteExistingCassetteException.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from actions import users
from connector.connection import Connection

CONFIG = {
    "kind": "client_credentials",
    "organization_url": "https://contoso.crm.dynamics.com",
    "tenant_id": "00000000-0000-0000-0000-000000000000",
    "client_id": "11111111-2222-3333-4444-555555555555",
    "client_secret": "SENTINEL-client-secret-5b1d9c",
}


@pytest.fixture
def connection() -> Iterator[Connection]:
    with Connection.from_config(CONFIG) as conn:
        yield conn


@pytest.mark.vcr
def test_token_request_client_credentials(connection: Connection, vcr: Any) -> None:
    assert connection.token() == "<scrubbed>"
    assert connection.token() == "<scrubbed>"  # cached: the cassette holds one exchange
    assert vcr.play_count == 1
    request = vcr.requests[0]
    assert request.method == "POST"
    assert request.uri == "https://login.microsoftonline.com/00000000-0000-0000-0000-000000000000/oauth2/v2.0/token"


@pytest.mark.vcr
def test_whoami(connection: Connection, vcr: Any) -> None:
    who = connection.client.whoami()
    assert who.user_id == "8b9ad4f0-2b2c-4c0e-9f51-6c0d2a7ad001"
    assert who.business_unit_id == "2c4a5e6f-0000-0000-0000-00000000b001"
    assert who.organization_id == "0e3a1d2c-0000-0000-0000-00000000a001"
    assert vcr.play_count == 2
    assert vcr.all_played


@pytest.mark.vcr
@pytest.mark.default_cassette("test_whoami.yaml")
def test_test_connection_replay(connection: Connection, vcr: Any) -> None:
    result = users.test_connection({}, connection)
    assert result["ok"] is True, result
    assert [c["name"] for c in result["checks"]] == ["token", "audience", "whoami"]
    assert result["user_id"] == "8b9ad4f0-2b2c-4c0e-9f51-6c0d2a7ad001"
    assert vcr.all_played
