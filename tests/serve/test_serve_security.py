"""The server's guards: the token, the CSRF check on cookie writes, write-only secrets, the hosted policy."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from connector.serve_app import ServeState
from tests.conftest import SENTINELS, assert_no_secrets
from tests.serve.conftest import API_TOKEN, BEARER, signed_in

pytestmark = pytest.mark.usefixtures("server")


@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", "/actions"), ("POST", "/actions/get_current_user"), ("GET", "/connections"), ("POST", "/jobs"),
     ("PUT", "/connections/x"), ("GET", "/openapi.json"), ("GET", "/events"), ("POST", "/data-sources/tables")],
)  # fmt: skip
def test_requests_without_the_token_are_refused(client: httpx.Client, method: str, path: str) -> None:
    answer = client.request(method, path, json={"connection": "emu", "inputs": {}})
    assert answer.status_code == 401
    assert answer.headers["content-type"] == "application/problem+json"
    assert answer.headers["www-authenticate"].startswith("Bearer")
    wrong = client.request(method, path, json={}, headers={"Authorization": "Bearer not-the-token-at-all"})
    assert wrong.status_code == 401


def test_open_paths_need_no_token(client: httpx.Client) -> None:
    assert client.get("/healthz").json() == {"ok": True}
    assert client.get("/").headers["location"] == "/playground/"
    login = client.get("/login")
    assert login.status_code == 200 and "<form method=post action=/login>" in login.text


def test_login_sets_an_httponly_strict_session_and_a_readable_csrf_cookie(client: httpx.Client) -> None:
    refused = client.post("/login", data={"token": "wrong-token-wrong-token"})
    assert refused.status_code == 401 and "d365_session" not in refused.headers.get("set-cookie", "")
    answer = client.post("/login", data={"token": API_TOKEN})
    assert answer.status_code == 303 and answer.headers["location"] == "/playground/"
    cookies = answer.headers.get_list("set-cookie")
    session = next(c for c in cookies if c.startswith("d365_session="))
    csrf = next(c for c in cookies if c.startswith("d365_csrf="))
    assert "HttpOnly" in session and "SameSite=strict" in session and "Path=/" in session
    assert "HttpOnly" not in csrf and "SameSite=strict" in csrf
    assert client.get("/connections").status_code == 200  # reads need the session only


def test_cookie_writes_need_the_csrf_token(client: httpx.Client) -> None:
    csrf = signed_in(client)
    body = {"connection": "emu", "inputs": {}}
    assert client.post("/actions/get_current_user", json=body).status_code == 403  # a cross-site form post
    wrong = client.post("/actions/get_current_user", json=body, headers={"X-CSRF-Token": "forged-value"})
    assert wrong.status_code == 403
    ok = client.post("/actions/get_current_user", json=body, headers={"X-CSRF-Token": csrf})
    assert ok.status_code == 200, ok.text
    assert client.delete("/connections/emu").status_code == 403
    # a cookie planted with a matching header but not issued to this session does not pass either
    client.cookies.set("d365_csrf", "planted-planted-planted")
    planted = client.post("/actions/get_current_user", json=body, headers={"X-CSRF-Token": "planted-planted-planted"})
    assert planted.status_code == 403
    client.cookies.set("d365_csrf", csrf)
    assert client.post("/logout", headers={"X-CSRF-Token": csrf}).status_code == 204
    assert client.get("/connections").status_code == 401


def _every_operation(document: dict[str, Any]) -> list[tuple[str, str]]:
    return [(method.upper(), path) for path, item in document["paths"].items() for method in item]


def test_a_secret_put_into_a_connection_is_never_returned(client: httpx.Client, state: ServeState) -> None:
    leaky = {
        "kind": "client_credentials",
        "organization_url": state.connections.get("emu").connection.config.organization_url,
        "token_url": state.connections.get("emu").connection.config.token_url,
        "client_id": "00000000-0000-0000-0000-00000000abcd",
        "client_secret": SENTINELS["client_secret"],
        "allow_insecure_loopback": True,
        # an identity pool: the second application user's secret is as write-only as the first's
        "additional_identities": [
            {"client_id": "00000000-0000-0000-0000-00000000abce", "client_secret": SENTINELS["client_secret"] + "-2"}
        ],
    }
    put = client.put("/connections/leaky", json=leaky, headers=BEARER)
    assert put.status_code == 200, put.text
    user = {**leaky, "kind": "authorization_code", "refresh_token": SENTINELS["refresh_token"]}
    del user["client_secret"], user["additional_identities"]
    user["authorize_url"] = user["token_url"].replace("/token", "/authorize")
    assert client.put("/connections/user", json=user, headers=BEARER).status_code == 200
    answers = [put.text]
    document = client.get("/openapi.json", headers=BEARER).json()
    for method, template in _every_operation(document):
        for name in ("leaky", "user"):
            path = template.replace("{id}", "tables" if "data-sources" in template else "x").replace("{name}", name)
            body = {"connection": name, "inputs": {}, "params": {}, "action": "get_current_user"}
            if method == "DELETE" and "connections" in path:
                continue  # deleting would end the probe; its answer carries no settings either way
            answer = client.request(method, path, json=body if method != "GET" else None, headers=BEARER)
            assert answer.status_code < 500 or answer.status_code == 502, (method, path, answer.text)
            answers.append(answer.text)
    jobs = client.get("/jobs", headers=BEARER)
    answers.append(jobs.text)
    assert len(answers) > 40
    assert_no_secrets(*answers)
    listed = client.get("/connections", headers=BEARER).json()["connections"]
    assert {tuple(sorted(c)) for c in listed} == {("connected", "environment_url", "name", "type")}


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"token_url": "https://login.evil.example/t/oauth2/v2.0/token"}, "/token_url"),
        ({"client_secret": {"file": "/etc/hostname"}}, "/client_secret"),
        ({"client_secret": {"env": "HOME"}}, "/client_secret"),
        (
            {
                "additional_identities": [
                    {"client_id": "00000000-0000-0000-0000-00000000abce", "client_secret": {"env": "HOME"}}
                ]
            },
            "/additional_identities",
        ),
        ({"ca_file": "/etc/ssl/certs/ca-certificates.crt"}, "/ca_file"),
    ],
)
def test_a_posted_connection_naming_a_foreign_token_url_or_a_local_file_is_refused(
    client: httpx.Client, state: ServeState, change: dict[str, Any], field: str
) -> None:
    config = state.connections.get("emu").connection.config
    settings = {
        "kind": "client_credentials",
        "organization_url": config.organization_url,
        "token_url": config.token_url,
        "client_id": config.client_id,
        "client_secret": "s3cret-value-for-the-test",
        "allow_insecure_loopback": True,
        **change,
    }
    answer = client.put("/connections/bad", json=settings, headers=BEARER)
    assert answer.status_code == 422, answer.text
    problem = answer.json()
    assert [e["path"] for e in problem["errors"]] == [field]
    assert "bad" not in {c["name"] for c in client.get("/connections", headers=BEARER).json()["connections"]}
