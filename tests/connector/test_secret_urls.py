"""URLs with user info are refused without echo, and refusals quote at most a short prefix of an oversize value."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from connector.connection import Connection
from connector.connection_config import parse_config
from connector.errors import ConnectionConfigError, ConnectorError, InputError
from connector.policy import OperatorPolicy

USER, PASSWORD = "SENTINEL-url-user-8d1c", "SENTINEL-url-password-2e7a"
LOCAL = OperatorPolicy(preset="local")
HUGE = 10_000_000


def _userinfo_urls(url: str) -> list[str]:
    scheme, rest = url.split("://", 1)
    return [f"{scheme}://{USER}:{PASSWORD}@{rest}", f"{scheme}://{USER}@{rest}", f"ftp://{USER}:{PASSWORD}@{rest}"]


CASES = [
    ("client_credentials", "organization_url", "https://contoso.crm.dynamics.com"),
    ("client_credentials", "organization_url", "http://127.0.0.1:8080"),
    ("client_credentials", "token_url", "https://login.microsoftonline.com/t/oauth2/v2.0/token"),
    ("authorization_code", "authorize_url", "https://login.microsoftonline.com/t/oauth2/v2.0/authorize"),
    ("managed_identity", "identity_endpoint", "http://169.254.169.254/metadata/identity/oauth2/token"),
]


def _settings(cloud: Any, kind: str) -> dict[str, Any]:
    if kind == "managed_identity":
        return {"kind": kind, "organization_url": cloud.ORG}
    if kind == "authorization_code":
        return cloud.config(kind=kind, client_secret=None, refresh_token="r")
    return cloud.config()


@pytest.mark.parametrize(("kind", "field", "url"), CASES)
def test_url_with_user_info_refused_without_echo(cloud: Any, kind: str, field: str, url: str) -> None:
    for bad in _userinfo_urls(url):
        with pytest.raises(ConnectionConfigError) as info:
            parse_config({**_settings(cloud, kind), field: bad, "allow_insecure_loopback": True}, policy=LOCAL)
        text = json.dumps(info.value.to_dict()) + str(info.value)
        assert info.value.field == field
        assert "remove the user name and password from the URL" in info.value.message
        assert USER not in text and PASSWORD not in text


def test_authority_host_with_user_info_refused_without_echo(cloud: Any) -> None:
    with pytest.raises(ConnectionConfigError) as info:
        parse_config(cloud.config(authority_host=f"{USER}:{PASSWORD}@login.microsoftonline.com"), policy=LOCAL)
    assert info.value.field == "authority_host"
    assert USER not in str(info.value) and PASSWORD not in str(info.value)


def test_user_info_refused_before_any_secret_is_read(cloud: Any, tmp_path: Path) -> None:
    """The refusal comes first: a {"file"} secret that does not exist is never looked at."""
    data = cloud.config(
        organization_url=f"https://{USER}:{PASSWORD}@contoso.crm.dynamics.com",
        client_secret={"file": str(tmp_path / "missing")},
    )
    with pytest.raises(ConnectionConfigError, match="organization_url contains a user name") as info:
        parse_config(data, policy=LOCAL)
    assert "missing" not in str(info.value)


def test_absolute_request_url_with_user_info_refused_without_echo(cloud: Any) -> None:
    conn = cloud.connect()
    with pytest.raises(InputError) as info:
        conn.client.request("GET", f"https://{USER}:{PASSWORD}@contoso.crm.dynamics.com/api/data/v9.2/WhoAmI")
    assert USER not in str(info.value) and PASSWORD not in str(info.value)
    assert cloud.api_requests == []


def test_foreign_host_refusal_quotes_a_prefix_only(cloud: Any) -> None:
    conn = cloud.connect()
    with pytest.raises(InputError) as info:
        conn.client.request("GET", "https://" + "a" * 100_000 + ".example/x")
    assert len(str(info.value)) < 400


def _oversize_settings(cloud: Any, tmp_path: Path) -> list[tuple[str, dict[str, Any]]]:
    big = "x" * HUGE
    return [
        ("kind", {**cloud.config(), "kind": big}),
        ("organization_url", cloud.config(organization_url="https://" + big)),
        ("token_url", cloud.config(token_url="https://" + big + ".example/token")),
        ("token_url-host", cloud.config(token_url="https://a" + "b" * 5000 + ".example/token")),
        ("client_secret-env", cloud.config(client_secret={"env": "D365_" + big})),
        ("client_secret-file", cloud.config(client_secret={"file": str(tmp_path / ("d" * 200)) + "/" + big})),
        ("tenant_id", cloud.config(tenant_id=big)),
        ("api_version", cloud.config(api_version=big)),
    ]


def test_oversize_settings_are_never_echoed_whole(cloud: Any, tmp_path: Path) -> None:
    for name, data in _oversize_settings(cloud, tmp_path):
        with pytest.raises(ConnectionConfigError) as info:
            parse_config(data, base_dir=tmp_path, policy=LOCAL)
        text = json.dumps(info.value.to_dict())
        assert len(text) < 2_000, (name, len(text))


def _answer(status: int, body: dict[str, Any]) -> httpx.Response:
    return httpx.Response(status, json=body)


@pytest.mark.parametrize(
    "answer",
    [
        _answer(400, {"error": "x" * HUGE, "error_description": "AADSTS1: " + "y" * HUGE}),
        _answer(400, {"error": "invalid_client", "error_description": "z" * HUGE}),
        _answer(200, {"token_type": "t" * HUGE, "access_token": "a", "expires_in": 60}),
    ],
    ids=["huge-error-code", "huge-description", "huge-token-type"],
)
def test_oversize_token_endpoint_answers_are_never_echoed_whole(cloud: Any, answer: httpx.Response) -> None:
    cloud.token_queue.append(answer)
    with pytest.raises(ConnectorError) as info:
        cloud.connect().token()
    assert len(json.dumps(info.value.to_dict())) < 2_000


def test_oversize_audience_is_never_echoed_whole(cloud: Any) -> None:
    cloud.audience = "https://" + "q" * 1_000_000 + ".crm.dynamics.com"
    with pytest.raises(ConnectorError) as info:
        cloud.connect().token()
    assert len(info.value.message) < 2_000


def test_oversize_managed_identity_answer_is_never_echoed_whole(cloud: Any) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(400, json={"error": "invalid_request", "error_description": "w" * HUGE})

    conn = Connection.from_config(
        {"kind": "managed_identity", "organization_url": cloud.ORG, "identity_endpoint": "http://169.254.169.254/x"},
        transport=httpx.MockTransport(handler),
        clock=cloud.clock,
        policy=LOCAL,
    )
    with pytest.raises(ConnectorError) as info:
        conn.token()
    assert len(info.value.message) < 2_000
