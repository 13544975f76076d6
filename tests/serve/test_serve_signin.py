"""The sign-in hosted by the server, against the emulator's identity endpoints: a confidential client (secret or
certificate) with the redirect at /oauth/callback/{connection}, state and PKCE checked, the refresh token kept in the
token store and replaced by each rotated one."""

from __future__ import annotations

import stat
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from connector.policy import OperatorPolicy
from connector.serve_app import ServeState
from connector.serve_connections import Connections
from dataverse_emulator.testing import EmulatorHandle
from tests.conftest import assert_no_secrets
from tests.serve.conftest import BEARER, run


def _confidential(emulator: EmulatorHandle, credential: str) -> dict[str, Any]:
    """An authorization_code connection as a confidential client: the emulator's app with a secret or a certificate."""
    settings = emulator.connection_config("authorization_code")
    settings.pop("redirect_port")
    if credential == "secret":
        app = emulator.connection_config("client_credentials")
        settings.update(client_id=app["client_id"], client_secret=app["client_secret"])
    else:
        app = emulator.connection_config("certificate")
        settings.update(
            client_id=app["client_id"],
            certificate_file=app["certificate_file"],
            private_key_file=app["private_key_file"],
        )
    return settings


def _sign_in_url(client: httpx.Client, name: str) -> str:
    answer = client.post(f"/connections/{name}/connect", headers=BEARER)
    assert answer.status_code == 200, answer.text
    return str(answer.json()["authorize_url"])


def _redirect(authorize_url: str) -> str:
    """What the identity provider sends the browser back to (the emulator consents at once)."""
    answer = httpx.get(authorize_url, follow_redirects=False)
    assert answer.status_code == 302, answer.text
    return answer.headers["location"]


def _local(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.path}?{parts.query}"


def _connected(client: httpx.Client, name: str) -> bool:
    listed = client.get("/connections", headers=BEARER).json()["connections"]
    return bool(next(c for c in listed if c["name"] == name)["connected"])


@pytest.mark.parametrize("credential", ["secret", "certificate"])
def test_connect_signs_in_a_confidential_client_and_keeps_the_rotating_refresh_token(
    client: httpx.Client, server: str, state: ServeState, emulator: EmulatorHandle, credential: str, tmp_path: Path
) -> None:
    state.connections.policy = OperatorPolicy(preset="hosted", allowed_paths=(Path(emulator.data_dir).resolve(),))
    settings = _confidential(emulator, credential)
    assert client.put("/connections/user", json=settings, headers=BEARER).status_code == 200
    assert not _connected(client, "user")
    before = run(client, "get_current_user", {}, connection="user")
    assert before.status_code == 409 and before.json()["auth_code"] == "LoginRequired"

    authorize_url = _sign_in_url(client, "user")
    query = parse_qs(urlsplit(authorize_url).query)
    assert query["code_challenge_method"] == ["S256"] and query["code_challenge"] and query["state"]
    assert query["redirect_uri"] == [f"{server}/oauth/callback/user"]
    callback = _redirect(authorize_url)
    assert callback.startswith(f"{server}/oauth/callback/user?")
    done = client.get(_local(callback))
    assert done.status_code == 303 and done.headers["location"] == "/playground/?connected=user"
    assert _connected(client, "user")

    store = state.connections.token_store
    first = store.load("user")
    path = tmp_path / "tokens" / "user.token.json"
    assert first and stat.S_IMODE(path.stat().st_mode) == 0o600
    ran = run(client, "get_current_user", {}, connection="user")
    assert ran.status_code == 200, ran.text
    assert_no_secrets(done.text, ran.text)
    replay = client.get(_local(callback))  # the same answer again: its state was used
    assert replay.status_code == 400 and replay.json()["auth_code"] == "StateMismatch"

    # a restart: the connection is put again, its refresh token comes from the store and rotates on first use
    restarted = Connections(state.connections.policy, store)
    restarted.put("user", settings)
    assert restarted.get("user").connected
    restarted.get("user").connection.token()
    assert store.load("user") not in (None, first)
    restarted.close()


def test_the_callback_checks_state_and_pkce(client: httpx.Client, emulator: EmulatorHandle) -> None:
    assert client.put("/connections/user", json=_confidential(emulator, "secret"), headers=BEARER).status_code == 200
    first = _redirect(_sign_in_url(client, "user"))
    forged = client.get("/oauth/callback/user?code=abc&state=forged-state")
    assert forged.status_code == 400 and forged.json()["auth_code"] == "StateMismatch"
    # the code of sign-in 1 delivered with the state of sign-in 2: the verifier sent is 2's, the challenge was 1's
    second_state = parse_qs(urlsplit(_sign_in_url(client, "user")).query)["state"][0]
    code = parse_qs(urlsplit(first).query)["code"][0]
    crossed = client.get(f"/oauth/callback/user?code={code}&state={second_state}")
    assert crossed.status_code == 502 and crossed.json()["auth_code"] == "AADSTS501481"
    assert not _connected(client, "user")
    refused = client.get("/oauth/callback/user?error=access_denied&error_description=no&state=" + second_state)
    assert refused.status_code == 400 and refused.json()["auth_code"] == "StateMismatch"  # that state was used


def test_a_pluggable_token_store_receives_the_tokens(
    client: httpx.Client, state: ServeState, emulator: EmulatorHandle
) -> None:
    class Vault:
        def __init__(self) -> None:
            self.saved: dict[str, list[str]] = {}

        def load(self, name: str) -> str | None:
            return (self.saved.get(name) or [None])[-1]

        def save(self, name: str, refresh_token: str) -> None:
            self.saved.setdefault(name, []).append(refresh_token)

        def delete(self, name: str) -> None:
            self.saved.pop(name, None)

    vault = Vault()
    state.connections.token_store = vault
    assert client.put("/connections/user", json=_confidential(emulator, "secret"), headers=BEARER).status_code == 200
    assert client.get(_local(_redirect(_sign_in_url(client, "user")))).status_code == 303
    assert len(vault.saved["user"]) == 1
    assert client.delete("/connections/user", headers=BEARER).status_code == 204
    assert "user" not in vault.saved


def test_a_client_secret_and_a_certificate_together_are_refused(client: httpx.Client, emulator: EmulatorHandle) -> None:
    both = {**_confidential(emulator, "certificate"), "client_secret": "a-secret-and-a-certificate"}
    answer = client.put("/connections/both", json=both, headers=BEARER)
    assert answer.status_code == 422, answer.text
    assert "a client secret or a certificate, not both" in answer.json()["detail"]
