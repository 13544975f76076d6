"""The authorization-code grant from confidential clients (client secret or certificate assertion), beside the public
PKCE client, with Entra's AADSTS refusals."""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from joserfc import jwt
from joserfc.jwk import RSAKey

from dataverse_emulator.testing import EmulatorHandle

from .conftest import FakeClock
from .test_identity import token_error

REDIRECT = "http://localhost:7777/signin-oidc"


def _code(emulator: EmulatorHandle, client_id: str, challenge: str | None = None) -> str:
    cfg = emulator.connection_config("authorization_code")
    params = {
        "client_id": client_id,
        "response_type": "code",
        "redirect_uri": REDIRECT,
        "scope": f"{emulator.base_url}/user_impersonation offline_access",
    }
    if challenge is not None:
        params |= {"code_challenge": challenge, "code_challenge_method": "S256"}
    r = httpx.get(cfg["authorize_url"], params=params)
    assert r.status_code == 302, r.text
    return parse_qs(urlsplit(r.headers["location"]).query)["code"][0]


def _redeem(emulator: EmulatorHandle, client_id: str, code: str, **extra: str) -> httpx.Response:
    cfg = emulator.connection_config("authorization_code")
    form = {
        "grant_type": "authorization_code",
        "client_id": client_id,
        "code": code,
        "redirect_uri": REDIRECT,
        "scope": f"{emulator.base_url}/user_impersonation offline_access",
        **extra,
    }
    return httpx.post(cfg["token_url"], data=form)


def _who(emulator: EmulatorHandle, token: str) -> dict[str, str]:
    r = httpx.get(emulator.api_url + "/WhoAmI", headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 200, r.text
    return dict(r.json())


def _claims(token: str) -> dict[str, object]:
    payload = token.split(".")[1]
    return dict(json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))))


def test_confidential_client_with_secret_redeems_a_code_for_the_signed_in_user(emulator: EmulatorHandle) -> None:
    cfg = emulator.connection_config("client_credentials")
    cid, secret = cfg["client_id"], cfg["client_secret"]
    tok = _redeem(emulator, cid, _code(emulator, cid), client_secret=secret)
    assert tok.status_code == 200, tok.text
    body = tok.json()
    claims = _claims(body["access_token"])
    # a delegated token: the user signed in, the confidential app is the client
    assert claims["appid"] == cid and "scp" in claims and "idtyp" not in claims
    assert body["scope"].split() == [f"{emulator.base_url}/user_impersonation", "offline_access"]
    app_only = httpx.post(
        cfg["token_url"],
        data={
            "grant_type": "client_credentials",
            "client_id": cid,
            "client_secret": secret,
            "scope": f"{emulator.base_url}/.default",
        },
    ).json()["access_token"]
    assert _who(emulator, body["access_token"])["UserId"] != _who(emulator, app_only)["UserId"]
    # the refresh token also needs the client's credential
    no_secret = httpx.post(
        cfg["token_url"],
        data={"grant_type": "refresh_token", "client_id": cid, "refresh_token": body["refresh_token"]},
    )
    assert token_error(no_secret) == (401, "invalid_client", 7000218)
    ok = httpx.post(
        cfg["token_url"],
        data={
            "grant_type": "refresh_token",
            "client_id": cid,
            "client_secret": secret,
            "refresh_token": body["refresh_token"],
        },
    )
    assert ok.status_code == 200, ok.text


def test_confidential_client_with_certificate_assertion_and_pkce(emulator: EmulatorHandle, clock: FakeClock) -> None:
    cfg = emulator.connection_config("certificate")
    cid = cfg["client_id"]
    cert = x509.load_pem_x509_certificate(Path(cfg["certificate_file"]).read_bytes())
    digest = hashlib.sha1(cert.public_bytes(serialization.Encoding.DER)).digest()
    x5t = base64.urlsafe_b64encode(digest).decode().rstrip("=")
    key = RSAKey.import_key(Path(cfg["private_key_file"]).read_bytes())
    now = int(clock())
    claims = {
        "aud": cfg["token_url"],
        "iss": cid,
        "sub": cid,
        "jti": secrets.token_hex(8),
        "nbf": now,
        "exp": now + 600,
    }
    assertion = jwt.encode({"alg": "RS256", "typ": "JWT", "x5t": x5t}, claims, key)
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).decode().rstrip("=")
    creds = {
        "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
        "client_assertion": assertion,
    }
    tok = _redeem(emulator, cid, _code(emulator, cid, challenge), code_verifier=verifier, **creds)
    assert tok.status_code == 200, tok.text
    assert _claims(tok.json()["access_token"])["appid"] == cid
    # PKCE still binds the code for a confidential client
    bad = _redeem(emulator, cid, _code(emulator, cid, challenge), code_verifier="x" * 50, **creds)
    assert token_error(bad) == (400, "invalid_grant", 501481)
    # a forged assertion (signed by another key) is refused before the code is looked at
    other = RSAKey.generate_key(2048)
    forged = jwt.encode({"alg": "RS256", "typ": "JWT", "x5t": x5t}, claims, other)
    r = _redeem(
        emulator,
        cid,
        _code(emulator, cid),
        client_assertion_type=creds["client_assertion_type"],
        client_assertion=forged,
    )
    assert token_error(r) == (401, "invalid_client", 700027)


def test_confidential_code_grant_refusals(emulator: EmulatorHandle) -> None:
    cfg = emulator.connection_config("client_credentials")
    cid, secret = cfg["client_id"], cfg["client_secret"]
    assert token_error(_redeem(emulator, cid, _code(emulator, cid))) == (401, "invalid_client", 7000218)
    assert token_error(_redeem(emulator, cid, _code(emulator, cid), client_secret="wrong")) == (
        401,
        "invalid_client",
        7000215,
    )
    code = _code(emulator, cid)
    assert _redeem(emulator, cid, code, client_secret=secret).status_code == 200
    assert token_error(_redeem(emulator, cid, code, client_secret=secret)) == (400, "invalid_grant", 54005)
    # a code issued to the public client cannot be redeemed by the confidential one
    public = emulator.connection_config("authorization_code")["client_id"]
    assert token_error(_redeem(emulator, cid, _code(emulator, public), client_secret=secret)) == (
        400,
        "invalid_grant",
        70008,
    )


def test_public_client_must_not_present_a_credential(emulator: EmulatorHandle) -> None:
    public = emulator.connection_config("authorization_code")["client_id"]
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).decode().rstrip("=")
    r = _redeem(emulator, public, _code(emulator, public, challenge), code_verifier=verifier, client_secret="s")
    assert token_error(r) == (401, "invalid_client", 700025)
    ok = _redeem(emulator, public, _code(emulator, public, challenge), code_verifier=verifier)
    assert ok.status_code == 200, ok.text
