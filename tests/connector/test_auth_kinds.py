"""Token requests of the certificate, authorization_code and managed_identity kinds, on MockTransport and a fake clock.

Secrets are the suite's sentinels (a private key password, a refresh token), so any leak into output fails the test.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import io
import json
import os
import stat
import traceback
import urllib.parse
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import NameOID
from joserfc import jwt
from joserfc.jwk import RSAKey
from rich.console import Console
from rich.traceback import Traceback

from connector import RetryPolicy, cli
from connector.auth import AuthorizationCodeProvider, ManagedIdentityProvider, x5t_thumbprint
from connector.clock import FakeClock
from connector.connection import Connection
from connector.connection_config import parse_config
from connector.errors import AuthenticationError, ConnectionConfigError, ConnectorError
from connector.policy import OperatorPolicy
from connector.runtime import Runtime
from connector.token_store import TokenStore
from tests.conftest import SENTINELS, assert_no_secrets, find_sentinels

PASSWORD = SENTINELS["private_key_password"]
REFRESH = SENTINELS["refresh_token"]


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A self-signed RSA certificate as PEM (key encrypted with the sentinel password) and as PFX."""
    folder = tmp_path_factory.mktemp("cert")
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "d365-test")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=30))
        .sign(key, hashes.SHA256())
    )
    encryption = serialization.BestAvailableEncryption(PASSWORD.encode())
    (folder / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (folder / "key.pem").write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)
    )
    (folder / "cert.pfx").write_bytes(pkcs12.serialize_key_and_certificates(b"d365", key, cert, None, encryption))
    der = cert.public_bytes(serialization.Encoding.DER)
    return {"folder": folder, "cert": cert, "x5t": base64.urlsafe_b64encode(hashlib.sha1(der).digest()).rstrip(b"=")}


def _decode_segment(segment: str) -> dict[str, Any]:
    return dict(json.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))))


@pytest.mark.parametrize("form", ["pem", "pfx"])
def test_certificate_token_request_carries_a_signed_assertion(
    cloud: Any, clock: FakeClock, certificate: dict[str, Any], form: str
) -> None:
    folder = certificate["folder"]
    files = (
        {"certificate_file": "cert.pem", "private_key_file": "key.pem"} if form == "pem" else {"pfx_file": "cert.pfx"}
    )
    config = cloud.config(
        kind="certificate", client_secret=None, private_key_password={"file": "password.txt"}, **files
    )
    (folder / "password.txt").write_text(PASSWORD + "\n")
    conn = Connection.from_config(config, base_dir=folder, transport=httpx.MockTransport(cloud.handler), clock=clock)
    conn.client.whoami()
    sent = cloud.token_forms[-1]
    assert sent["grant_type"] == "client_credentials"
    assert sent["client_id"] == cloud.CLIENT_ID
    assert sent["scope"] == f"{cloud.ORG}/.default"
    assert sent["client_assertion_type"] == "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
    assert "client_secret" not in sent
    assertion = sent["client_assertion"]
    header = _decode_segment(assertion.split(".")[0])
    assert header == {"alg": "RS256", "typ": "JWT", "x5t": certificate["x5t"].decode()}
    public = RSAKey.import_key(certificate["cert"].public_key())
    claims = jwt.decode(assertion, public, algorithms=["RS256"]).claims  # the signature checks out
    now = int(clock.time())
    assert claims["aud"] == cloud.TOKEN_URL
    assert claims["iss"] == claims["sub"] == cloud.CLIENT_ID
    assert claims["iat"] == claims["nbf"] == now and claims["exp"] == now + 600
    assert len(claims["jti"]) >= 32
    conn.token_provider.force_refresh()
    assert _decode_segment(cloud.token_forms[-1]["client_assertion"].split(".")[1])["jti"] != claims["jti"]
    assert_no_secrets(repr(conn.config), repr(conn.token_provider))


def test_x5t_is_the_base64url_sha1_thumbprint() -> None:
    assert x5t_thumbprint(b"abc") == "qZk-NkcGgWq6PiVxeFDCbJzQ2J0"


@pytest.mark.parametrize(
    ("password", "expected"),
    [(None, "is encrypted: set private_key_password"), ("wrong-password", "private_key_password is wrong")],
)
def test_certificate_key_password_problems_name_the_field(
    cloud: Any, certificate: dict[str, Any], password: str | None, expected: str
) -> None:
    config = cloud.config(
        kind="certificate", client_secret=None, certificate_file="cert.pem", private_key_file="key.pem"
    )
    if password:
        config["private_key_password"] = password
    with pytest.raises(ConnectionConfigError) as info:
        Connection.from_config(config, base_dir=certificate["folder"])
    assert expected in info.value.message
    assert info.value.field == "private_key_password"


def test_certificate_needs_pem_pair_or_pfx(cloud: Any) -> None:
    with pytest.raises(ConnectionConfigError):
        parse_config(cloud.config(kind="certificate", client_secret=None, certificate_file="cert.pem"))


def _user_token(cloud: Any, refresh_token: str) -> httpx.Response:
    """A delegated token answer: FakeCloud's access token plus a new refresh token and the scopes."""
    body = json.loads(cloud.token_response().content)
    body.update(refresh_token=refresh_token, scope=f"{cloud.ORG}/user_impersonation offline_access")
    return httpx.Response(200, json=body)


def _auth_code_config(cloud: Any, **fields: Any) -> dict[str, Any]:
    return cloud.config(kind="authorization_code", client_secret=None, **fields)


def test_refresh_tokens_rotate_and_reach_the_callback(cloud: Any, clock: FakeClock) -> None:
    cloud.token_lifetime = 600
    cloud.token_queue += [lambda r: _user_token(cloud, REFRESH + "-2"), lambda r: _user_token(cloud, REFRESH + "-3")]
    seen: list[str] = []
    conn = Connection.from_config(
        _auth_code_config(cloud, refresh_token=REFRESH),
        transport=httpx.MockTransport(cloud.handler),
        clock=clock,
        on_token=seen.append,
    )
    conn.client.whoami()
    first = cloud.token_forms[-1]
    assert first["grant_type"] == "refresh_token" and first["refresh_token"] == REFRESH
    assert first["scope"] == f"{cloud.ORG}/user_impersonation offline_access"
    assert first["client_id"] == cloud.CLIENT_ID and "client_secret" not in first
    clock.advance(600)  # expired: the next call refreshes with the rotated token
    conn.client.whoami()
    assert cloud.token_forms[-1]["refresh_token"] == REFRESH + "-2"
    assert seen == [REFRESH + "-2", REFRESH + "-3"]


def test_rotated_refresh_token_is_persisted_in_a_private_token_store(
    cloud: Any, clock: FakeClock, tmp_path: Path
) -> None:
    store = tmp_path / "state" / "token.json"
    TokenStore(store).save(REFRESH)
    assert stat.S_IMODE(os.stat(store).st_mode) == 0o600
    cloud.token_queue.append(lambda r: _user_token(cloud, REFRESH + "-next"))
    conn = Connection.from_config(
        _auth_code_config(cloud, token_store="state/token.json"),
        base_dir=tmp_path,
        transport=httpx.MockTransport(cloud.handler),
        clock=clock,
    )
    conn.token()
    assert cloud.token_forms[-1]["refresh_token"] == REFRESH
    assert TokenStore(store).load() == REFRESH + "-next"
    assert stat.S_IMODE(os.stat(store).st_mode) == 0o600
    assert [p.name for p in store.parent.iterdir()] == ["token.json"]  # no temporary file left behind


def test_token_store_readable_by_others_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "token.json"
    TokenStore(path).save(REFRESH)
    path.chmod(0o644)
    with pytest.raises(ConnectionConfigError) as info:
        TokenStore(path).load()
    assert "0644" in info.value.message and info.value.field == "token_store"
    assert_no_secrets(info.value.message, repr(TokenStore(path)))


def test_no_refresh_token_asks_for_login(cloud: Any, clock: FakeClock, tmp_path: Path) -> None:
    conn = Connection.from_config(
        _auth_code_config(cloud, token_store=str(tmp_path / "missing.json")),
        transport=httpx.MockTransport(cloud.handler),
        clock=clock,
    )
    with pytest.raises(AuthenticationError) as info:
        conn.token()
    assert info.value.code == "LoginRequired"
    assert "d365 connection login" in info.value.message
    assert cloud.token_forms == []


def test_login_uses_pkce_s256_and_checks_state(cloud: Any, clock: FakeClock) -> None:
    cloud.token_queue.append(lambda r: _user_token(cloud, REFRESH))
    seen: list[str] = []
    conn = Connection.from_config(
        _auth_code_config(cloud), transport=httpx.MockTransport(cloud.handler), clock=clock, on_token=seen.append
    )
    provider = conn.token_provider
    assert isinstance(provider, AuthorizationCodeProvider)
    login = provider.begin_login("http://127.0.0.1:8400/")
    query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(login.url).query))
    assert login.url.startswith(f"https://login.microsoftonline.com/{cloud.TENANT}/oauth2/v2.0/authorize?")
    assert query["code_challenge_method"] == "S256"
    challenge = base64.urlsafe_b64encode(hashlib.sha256(login.code_verifier.encode()).digest()).rstrip(b"=")
    assert query["code_challenge"] == challenge.decode()
    assert query["scope"] == f"{cloud.ORG}/user_impersonation offline_access"
    assert query["redirect_uri"] == "http://127.0.0.1:8400/" and query["response_type"] == "code"
    with pytest.raises(AuthenticationError) as info:
        provider.finish_login(login, "http://127.0.0.1:8400/?code=abc&state=forged")
    assert info.value.code == "StateMismatch"
    assert cloud.token_forms == []
    provider.finish_login(login, f"http://127.0.0.1:8400/?code=abc&state={login.state}")
    sent = cloud.token_forms[-1]
    assert sent["grant_type"] == "authorization_code" and sent["code"] == "abc"
    assert sent["code_verifier"] == login.code_verifier and sent["redirect_uri"] == "http://127.0.0.1:8400/"
    assert seen == [REFRESH]
    assert conn.token() == cloud.issued[-1]
    assert_no_secrets(repr(login))


def _mi_handler(cloud: Any, seen: list[httpx.Request], expires: str) -> Any:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.host in ("169.254.169.254", "localhost"):
            seen.append(request)
            body = json.loads(cloud.token_response().content)
            if expires == "expires_on":
                return httpx.Response(
                    200,
                    json={
                        "access_token": body["access_token"],
                        "expires_on": str(int(cloud.clock.time()) + 1800),
                        "resource": cloud.ORG,
                        "token_type": "Bearer",
                        "client_id": cloud.CLIENT_ID,
                    },
                )
            return httpx.Response(200, json={**body, "expires_in": "3599", "resource": cloud.ORG})
        return cloud.handler(request)

    return handler


def test_managed_identity_imds(cloud: Any, clock: FakeClock, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("IDENTITY_ENDPOINT", raising=False)
    monkeypatch.delenv("IDENTITY_HEADER", raising=False)
    seen: list[httpx.Request] = []
    conn = Connection.from_config(
        {"kind": "managed_identity", "organization_url": cloud.ORG, "managed_identity_client_id": cloud.CLIENT_ID},
        transport=httpx.MockTransport(_mi_handler(cloud, seen, "expires_in")),
        clock=clock,
    )
    assert conn.client.whoami().user_id == cloud.USER_ID
    (request,) = seen
    assert request.method == "GET"
    assert str(request.url.copy_with(query=None)) == "http://169.254.169.254/metadata/identity/oauth2/token"
    assert dict(request.url.params) == {
        "resource": cloud.ORG,
        "api-version": "2018-02-01",
        "client_id": cloud.CLIENT_ID,
    }
    assert request.headers["Metadata"] == "true"
    clock.advance(3000)  # within the 3599 s lifetime minus leeway: no new request
    conn.token()
    assert len(seen) == 1


def test_managed_identity_app_service(cloud: Any, clock: FakeClock, monkeypatch: pytest.MonkeyPatch) -> None:
    header = SENTINELS["client_secret"]  # the App Service identity header is a secret too
    monkeypatch.setenv("IDENTITY_ENDPOINT", "http://localhost:42356/msi/token")
    monkeypatch.setenv("IDENTITY_HEADER", header)
    seen: list[httpx.Request] = []
    conn = Connection.from_config(
        {"kind": "managed_identity", "organization_url": cloud.ORG},
        transport=httpx.MockTransport(_mi_handler(cloud, seen, "expires_on")),
        clock=clock,
    )
    assert isinstance(conn.token_provider, ManagedIdentityProvider)
    assert conn.token_provider.style == "app_service"
    conn.client.whoami()
    (request,) = seen
    assert str(request.url.copy_with(query=None)) == "http://localhost:42356/msi/token"
    assert dict(request.url.params) == {"resource": cloud.ORG, "api-version": "2019-08-01"}
    assert request.headers["X-IDENTITY-HEADER"] == header
    assert "Metadata" not in request.headers
    clock.advance(1800 - 100)  # expires_on was 1800 s ahead; leeway 180 s: refreshed now
    conn.token()
    assert len(seen) == 2


def test_managed_identity_unreachable_says_where_it_must_run(cloud: Any, clock: FakeClock) -> None:
    sends = []

    def handler(request: httpx.Request) -> httpx.Response:
        sends.append(request)
        raise httpx.ConnectTimeout("timed out")

    conn = Connection.from_config(
        {"kind": "managed_identity", "organization_url": cloud.ORG},
        transport=httpx.MockTransport(handler),
        clock=clock,
    )
    with pytest.raises(AuthenticationError) as info:
        conn.token()
    assert info.value.code == "ManagedIdentityUnavailable"
    assert "managed identity" in info.value.message
    assert len(sends) == 1 and clock.sleeps == []  # off Azure: said at once, not after five timeouts


def test_managed_identity_refusal_is_explained(cloud: Any, clock: FakeClock) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(400, json={"error": "invalid_request", "error_description": "Identity not found"})

    conn = Connection.from_config(
        {"kind": "managed_identity", "organization_url": cloud.ORG, "identity_endpoint": "http://localhost:1/t"},
        transport=httpx.MockTransport(handler),
        clock=clock,
        policy=OperatorPolicy(allowed_authorities=frozenset({"localhost"})),  # a remote org with a local endpoint
    )
    with pytest.raises(AuthenticationError) as info:
        conn.token()
    assert "Identity not found" in info.value.message and "managed_identity_client_id" in info.value.message


def test_managed_identity_needs_no_tenant_or_client(cloud: Any) -> None:
    config = parse_config({"kind": "managed_identity", "organization_url": cloud.ORG})
    assert config.token_url == "" and config.client_id == "" and config.scopes == (f"{cloud.ORG}/.default",)


def test_authorize_url_derived_from_the_token_url(cloud: Any) -> None:
    config = parse_config(_auth_code_config(cloud))
    assert config.authorize_url == cloud.TOKEN_URL.removesuffix("/token") + "/authorize"
    assert config.scopes == (f"{cloud.ORG}/user_impersonation", "offline_access")
    assert config.redirect_port == 0


def test_refused_refresh_token_is_explained(cloud: Any, clock: FakeClock) -> None:
    cloud.token_queue.append(cloud.aad_error(9002313, "invalid_grant", "Invalid request. Request is malformed."))
    conn = Connection.from_config(
        _auth_code_config(cloud, refresh_token=REFRESH), transport=httpx.MockTransport(cloud.handler), clock=clock
    )
    with pytest.raises(AuthenticationError) as info:
        conn.token()
    assert info.value.code == "AADSTS9002313"
    assert_no_secrets(info.value.message)


def test_connection_test_asks_for_login_when_nobody_signed_in(cloud: Any, clock: FakeClock, tmp_path: Path) -> None:
    from connector import diagnostics

    conn = Connection.from_config(
        _auth_code_config(cloud, token_store=str(tmp_path / "none.json")),
        transport=httpx.MockTransport(cloud.handler),
        clock=clock,
    )
    report = diagnostics.test_connection(conn)
    assert report["ok"] is False
    assert "signed in" in report["diagnosis"] and "d365 connection login" in report["fix"]


def test_managed_identity_retries_a_throttled_endpoint(cloud: Any, clock: FakeClock) -> None:
    answers = [httpx.Response(429, headers={"Retry-After": "3"}), httpx.Response(503)]
    seen: list[httpx.Request] = []
    ok = _mi_handler(cloud, seen, "expires_in")

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.host == "169.254.169.254" and answers:
            seen.append(request)
            return answers.pop(0)
        return ok(request)

    conn = Connection.from_config(
        {"kind": "managed_identity", "organization_url": cloud.ORG, "identity_endpoint": "http://169.254.169.254/t"},
        transport=httpx.MockTransport(handler),
        clock=clock,
        retry=RetryPolicy(jitter=lambda: 1.0),
    )
    assert conn.token() == cloud.issued[-1]
    assert len(seen) == 3
    assert clock.sleeps == [3.0, 0.5]  # the connection's one retry policy: Retry-After, then backoff 0.5 * 2**0


# -- the secret-leak probe: every kind, every cheap failure, every output ---------------------------------------------
def _probe_settings(kind: str, cloud: Any, certificate: dict[str, Any], folder: Path) -> dict[str, Any]:
    """A connection of ``kind`` whose secrets are the suite's sentinels, each given the way that kind usually is."""
    if kind == "client_credentials":
        (folder / "secret.txt").write_text(SENTINELS["client_secret"] + "\n", encoding="utf-8")
        return cloud.config(client_secret={"file": "secret.txt"})
    if kind == "certificate":
        pfx = str(certificate["folder"] / "cert.pfx")
        return cloud.config(kind="certificate", client_secret=None, pfx_file=pfx, private_key_password=PASSWORD)
    if kind == "authorization_code":
        TokenStore(folder / "token.json").save(REFRESH)
        return _auth_code_config(cloud, token_store="token.json")
    return {
        "kind": "managed_identity",
        "organization_url": cloud.ORG,
        "identity_endpoint": "http://169.254.169.254/msi/token",
        "identity_style": "app_service",
        "identity_header": SENTINELS["webhook_key"],  # the App Service identity header: a shared key, like a webhook's
    }


_IDENTITY_HOSTS = ("login.microsoftonline.com", "169.254.169.254")
_FAULTS: dict[str, Any] = {
    "token-not-json": lambda cloud: httpx.Response(200, text="<html>SENTINEL-free gateway page</html>"),
    "token-refused": lambda cloud: cloud.aad_error(7000215, "invalid_client", "Invalid client secret provided."),
    "token-without-access-token": lambda cloud: httpx.Response(200, json={"token_type": "Bearer"}),
    "token-unreachable": lambda cloud: httpx.ConnectError("connection refused"),
    "api-401": lambda cloud: httpx.Response(401, json=cloud.error_body("0x80044302", "Request is not authenticated.")),
    "api-unreachable": lambda cloud: httpx.ConnectError("connection refused"),
}


def _probe_transport(cloud: Any, fault: str) -> httpx.MockTransport:
    def handler(request: httpx.Request) -> httpx.Response:
        cloud.requests.append(request)
        on_identity = request.url.host in _IDENTITY_HOSTS
        if fault.startswith("token-" if on_identity else "api-"):
            answer = _FAULTS[fault](cloud)
            if isinstance(answer, Exception):
                raise answer
            return answer  # type: ignore[no-any-return]
        if on_identity:
            return cloud.token_response()  # type: ignore[no-any-return]
        return cloud.handler(request)  # type: ignore[no-any-return]

    return httpx.MockTransport(handler)


@pytest.mark.parametrize("fault", [*_FAULTS, "validation"])
@pytest.mark.parametrize("kind", ["client_credentials", "certificate", "authorization_code", "managed_identity"])
def test_secret_leak_probe(
    cloud: Any,
    clock: FakeClock,
    certificate: dict[str, Any],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
    kind: str,
    fault: str,
) -> None:
    """No secret in the error (message, to_dict, repr), the connection's reprs, the logs, or the CLI's output."""
    settings = _probe_settings(kind, cloud, certificate, tmp_path)
    if fault == "validation":
        settings["organization_url"] = "ftp://contoso.crm.dynamics.com"
    local = OperatorPolicy(preset="local")
    retry = RetryPolicy(max_attempts=2, jitter=lambda: 1.0)
    outputs: list[Any] = []
    with caplog.at_level("DEBUG"), pytest.raises(ConnectorError) as info:
        conn = Connection.from_config(
            settings,
            base_dir=tmp_path,
            transport=_probe_transport(cloud, fault),
            clock=clock,
            retry=retry,
            policy=local,
        )
        outputs += [repr(conn), repr(conn.config), str(conn.config), repr(conn.token_provider)]
        conn.client.whoami()
    error = info.value
    outputs += [error.message, str(error), repr(error), json.dumps(error.to_dict()), caplog.text]
    if fault != "validation" and kind != "certificate":  # the secret really was in play: it went to the identity host
        sent = " ".join(f"{r.url} {r.headers} {r.content.decode()}" for r in cloud.requests)
        assert find_sentinels(sent), sent
    assert_no_secrets(*outputs)

    # the same connection through `d365 run`: stdout and stderr
    runtime = Runtime(load_entrypoints=False)

    def connection(self: Runtime, config: dict[str, Any], *, base_dir: Path | None = None, **_: Any) -> Connection:
        return Connection.from_config(
            config, base_dir=base_dir, transport=_probe_transport(cloud, fault), clock=clock, retry=retry, policy=local
        )

    monkeypatch.setattr(Runtime, "connection", connection)
    monkeypatch.setattr(cli, "_runtime", lambda: runtime)
    (tmp_path / "conn.json").write_text(json.dumps(settings), encoding="utf-8")
    for flags in ([], ["--json"]):
        result = CliRunner().invoke(
            cli.main, ["run", "get_current_user", "--connection", str(tmp_path / "conn.json"), *flags]
        )
        assert result.exit_code in (3, 4), result.output
        assert_no_secrets(result.stdout, result.stderr)


@pytest.mark.parametrize(
    "files", [{"pfx_file": "cert.pfx"}, {"certificate_file": "cert.pem", "private_key_file": "key.pem"}]
)
def test_wrong_key_password_absent_from_traceback_locals(
    cloud: Any, clock: FakeClock, certificate: dict[str, Any], files: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The refusal is raised inside the key loader, whose frame held the password in clear before it was a Secret.

    The password comes from the environment: an inline one would sit in the caller's own settings dict, in its frame.
    """
    monkeypatch.setenv("D365_TEST_KEY_PASSWORD", PASSWORD + "-wrong")
    password = {"env": "D365_TEST_KEY_PASSWORD"}
    with pytest.raises(ConnectionConfigError) as info:
        Connection.from_config(
            cloud.config(kind="certificate", client_secret=None, private_key_password=password, **files),
            base_dir=certificate["folder"],
            transport=httpx.MockTransport(cloud.handler),
            clock=clock,
        ).token()
    assert info.value.field == "private_key_password"
    exc = info.value
    plain = "".join(traceback.TracebackException.from_exception(exc, capture_locals=True).format())
    out = io.StringIO()
    Console(file=out, width=200, color_system=None).print(
        Traceback.from_exception(type(exc), exc, exc.__traceback__, show_locals=True)
    )
    assert "Secret('***')" in plain
    assert_no_secrets(plain, out.getvalue())
