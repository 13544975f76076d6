"""Token endpoints and bearer checks (Entra-style AADSTS errors; 401 with WWW-Authenticate on the Web API)."""

from __future__ import annotations

import base64
import hashlib
import secrets
import time
import uuid
from urllib.parse import parse_qs, urlsplit

import httpx
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from joserfc import jwt
from joserfc.jwk import RSAKey

from dataverse_emulator.testing import EmulatorHandle

from .conftest import FakeClock, error_of, fetch_token


def token_error(r: httpx.Response) -> tuple[int, str, int]:
    body = r.json()
    assert {"error", "error_description", "error_codes", "timestamp", "trace_id", "correlation_id"} <= set(body)
    assert body["error_description"].startswith(f"AADSTS{body['error_codes'][0]}:")
    return r.status_code, body["error"], body["error_codes"][0]


def post_token(emulator: EmulatorHandle, tenant: str | None = None, **form: str) -> httpx.Response:
    cfg = emulator.connection_config()
    url = cfg["token_url"] if tenant is None else f"{emulator.base_url}/{tenant}/oauth2/v2.0/token"
    return httpx.post(url, data=form)


def test_client_credentials_token_claims(emulator: EmulatorHandle, clock: FakeClock) -> None:
    cfg = emulator.connection_config()
    r = post_token(
        emulator,
        grant_type="client_credentials",
        client_id=cfg["client_id"],
        client_secret=cfg["client_secret"],
        scope=f"{emulator.base_url}/.default",
    )
    assert r.status_code == 200
    body = r.json()
    assert body["token_type"] == "Bearer" and body["expires_in"] == 3600
    claims = jwt.decode(body["access_token"], emulator.emulator.identity.signing_key).claims
    assert claims["aud"] == emulator.base_url
    assert claims["tid"] == cfg["tenant_id"] and claims["appid"] == cfg["client_id"]
    assert claims["exp"] - claims["iat"] == 3600 and claims["nbf"] == int(clock())
    assert {"iss", "oid"} <= set(claims)


def test_client_secret_basic_is_accepted(emulator: EmulatorHandle) -> None:
    cfg = emulator.connection_config()
    r = httpx.post(
        cfg["token_url"],
        data={"grant_type": "client_credentials", "scope": f"{emulator.base_url}/.default"},
        auth=(cfg["client_id"], cfg["client_secret"]),
    )
    assert r.status_code == 200


def test_token_errors(emulator: EmulatorHandle) -> None:
    cfg = emulator.connection_config()
    good = {
        "grant_type": "client_credentials",
        "client_id": cfg["client_id"],
        "client_secret": cfg["client_secret"],
        "scope": f"{emulator.base_url}/.default",
    }
    assert token_error(post_token(emulator, **{**good, "client_secret": "wrong"})) == (401, "invalid_client", 7000215)
    assert token_error(post_token(emulator, **{**good, "client_id": str(uuid.uuid4())})) == (
        400,
        "unauthorized_client",
        700016,
    )
    assert token_error(post_token(emulator, tenant=str(uuid.uuid4()), **good)) == (400, "invalid_request", 90002)
    assert token_error(post_token(emulator, **{**good, "scope": "openid"})) == (400, "invalid_scope", 70011)
    assert token_error(post_token(emulator, **{**good, "scope": "https://other.crm.dynamics.com/.default"})) == (
        400,
        "invalid_resource",
        500011,
    )


def test_missing_expired_and_foreign_tokens_get_401(emulator: EmulatorHandle, clock: FakeClock) -> None:
    url = emulator.api_url + "/WhoAmI"
    expected_www = (
        f"Bearer authorization_uri={emulator.base_url}/{emulator.connection_config()['tenant_id']}"
        f"/oauth2/authorize, resource_id={emulator.base_url}/"
    )
    r = httpx.get(url)
    assert error_of(r)[:2] == (401, "0x80044302")
    assert r.headers["WWW-Authenticate"] == expected_www
    token = fetch_token(emulator)
    assert httpx.get(url, headers={"Authorization": f"Bearer {token}"}).status_code == 200
    clock.advance(3601)
    r = httpx.get(url, headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 401 and r.headers["WWW-Authenticate"] == expected_www
    # a token for another audience (same signing key) and a token with a bad signature
    emu = emulator.emulator
    app = emu.apps_by_kind["client_credentials"]
    foreign = emu.identity.issue("https://contoso.crm.dynamics.com", app, app.object_id, None)
    assert httpx.get(url, headers={"Authorization": f"Bearer {foreign}"}).status_code == 401
    forged = jwt.encode({"alg": "RS256"}, {"aud": emulator.base_url, "exp": clock() + 100}, RSAKey.generate_key(2048))
    assert httpx.get(url, headers={"Authorization": f"Bearer {forged}"}).status_code == 401


def test_certificate_assertion(emulator: EmulatorHandle, clock: FakeClock) -> None:
    cfg = emulator.connection_config("certificate")
    from pathlib import Path

    cert = x509.load_pem_x509_certificate(Path(cfg["certificate_file"]).read_bytes())
    x5t = base64.urlsafe_b64encode(hashlib.sha1(cert.public_bytes(serialization.Encoding.DER)).digest()).decode()
    key = RSAKey.import_key(Path(cfg["private_key_file"]).read_bytes())

    def assertion(aud: str, kid: str) -> str:
        now = int(clock())
        claims = {
            "aud": aud,
            "iss": cfg["client_id"],
            "sub": cfg["client_id"],
            "jti": secrets.token_hex(8),
            "nbf": now,
            "exp": now + 600,
            "iat": now,
        }
        return jwt.encode({"alg": "RS256", "typ": "JWT", "x5t": kid}, claims, key)

    form = {
        "grant_type": "client_credentials",
        "client_id": cfg["client_id"],
        "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
        "scope": f"{emulator.base_url}/.default",
    }
    ok = httpx.post(cfg["token_url"], data={**form, "client_assertion": assertion(cfg["token_url"], x5t.rstrip("="))})
    assert ok.status_code == 200, ok.text
    bad_aud = httpx.post(cfg["token_url"], data={**form, "client_assertion": assertion("https://x/", x5t.rstrip("="))})
    assert bad_aud.status_code == 401 and bad_aud.json()["error"] == "invalid_client"
    bad_kid = httpx.post(cfg["token_url"], data={**form, "client_assertion": assertion(cfg["token_url"], "AAAA")})
    assert bad_kid.status_code == 401


def test_authorization_code_pkce_and_rotating_refresh(emulator: EmulatorHandle) -> None:
    cfg = emulator.connection_config("authorization_code")
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).decode().rstrip("=")
    redirect = "http://127.0.0.1:5555/callback"
    r = httpx.get(
        cfg["authorize_url"],
        params={
            "client_id": cfg["client_id"],
            "response_type": "code",
            "redirect_uri": redirect,
            "scope": " ".join(cfg["scopes"]),
            "state": "s1",
            "code_challenge": challenge,
            "code_challenge_method": "S256",
        },
    )
    assert r.status_code == 302
    qs = parse_qs(urlsplit(r.headers["location"]).query)
    assert qs["state"] == ["s1"]
    base = {
        "grant_type": "authorization_code",
        "client_id": cfg["client_id"],
        "redirect_uri": redirect,
        "scope": " ".join(cfg["scopes"]),
    }
    wrong = httpx.post(cfg["token_url"], data={**base, "code": qs["code"][0], "code_verifier": "nope" * 12})
    assert wrong.status_code == 400 and wrong.json()["error"] == "invalid_grant"
    # the code was consumed by the failed attempt; start again
    r = httpx.get(
        cfg["authorize_url"],
        params={
            "client_id": cfg["client_id"],
            "response_type": "code",
            "redirect_uri": redirect,
            "scope": " ".join(cfg["scopes"]),
            "code_challenge": challenge,
            "code_challenge_method": "S256",
        },
    )
    code = parse_qs(urlsplit(r.headers["location"]).query)["code"][0]
    tok = httpx.post(cfg["token_url"], data={**base, "code": code, "code_verifier": verifier})
    assert tok.status_code == 200, tok.text
    rt1 = tok.json()["refresh_token"]
    who = httpx.get(emulator.api_url + "/WhoAmI", headers={"Authorization": f"Bearer {tok.json()['access_token']}"})
    assert who.status_code == 200
    ref = httpx.post(
        cfg["token_url"], data={"grant_type": "refresh_token", "client_id": cfg["client_id"], "refresh_token": rt1}
    )
    assert ref.status_code == 200 and ref.json()["refresh_token"] != rt1


def test_managed_identity_both_styles(emulator: EmulatorHandle, clock: FakeClock) -> None:
    cfg = emulator.connection_config("managed_identity")
    url = cfg["identity_endpoint"]
    assert httpx.get(url, params={"resource": emulator.base_url}).status_code == 400
    r = httpx.get(
        url, params={"resource": emulator.base_url, "api-version": "2018-02-01"}, headers={"Metadata": "true"}
    )
    assert r.status_code == 200 and r.json()["token_type"] == "Bearer"
    assert int(r.json()["expires_on"]) == int(clock()) + 3600
    who = httpx.get(emulator.api_url + "/WhoAmI", headers={"Authorization": f"Bearer {r.json()['access_token']}"})
    assert who.status_code == 200
    svc = f"{emulator.base_url}/msi/token"  # App Service style: identity_style "app_service" points here
    assert httpx.get(svc, params={"resource": emulator.base_url, "api-version": "2019-08-01"}).status_code == 401
    r2 = httpx.get(
        svc,
        params={"resource": emulator.base_url, "api-version": "2019-08-01"},
        headers={"X-IDENTITY-HEADER": cfg["identity_header"]},
    )
    assert r2.status_code == 200 and r2.json()["expires_on"].isdigit()
    assert time.time() > 0
