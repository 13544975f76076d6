"""A small Entra ID (Microsoft identity platform) stand-in: token and authorize endpoints, managed identity.

Why: clients must exercise their real auth code paths (client secret, certificate assertion, authorization code with
PKCE, refresh, managed identity) against something that refuses the way Entra refuses (AADSTS codes), and the Web API
must check the audience of the token it receives. Tokens are RS256 JWTs signed with a key generated per process.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import random
import secrets
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import RSAKey
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"


def normalise_resource(url: str) -> str:
    """Scheme + host + port, lower case, no path or trailing slash: how audiences are compared."""
    parts = urlsplit(url.strip())
    return f"{parts.scheme.lower()}://{parts.netloc.lower()}"


@dataclass
class App:
    """An app registration bound to an application user (a systemuser row)."""

    client_id: str
    object_id: str
    kind: str  # client_credentials | certificate | authorization_code | managed_identity
    secret: str | None = None
    cert_thumbprint_x5t: str | None = None
    cert_public_pem: bytes | None = None
    public: bool = False


@dataclass
class Grant:
    """A pending authorization code or a live refresh token."""

    client_id: str
    scopes: list[str]
    subject_oid: str
    redirect_uri: str = ""
    code_challenge: str | None = None
    expires_at: float = 0.0


@dataclass
class Identity:
    """Tenant, apps, users, signing key and outstanding grants."""

    tenant_id: str
    clock: Callable[[], float]
    token_lifetime_s: int
    rng: random.Random
    seeded: bool = False
    apps: dict[str, App] = field(default_factory=dict)
    user_oid: str = ""
    codes: dict[str, Grant] = field(default_factory=dict)
    redeemed: dict[str, float] = field(default_factory=dict)  # code -> when it was redeemed (AADSTS54005 after)
    refresh_tokens: dict[str, Grant] = field(default_factory=dict)
    identity_header: str = ""
    cert_pem: bytes = b""
    key_pem: bytes = b""
    signing_key: RSAKey = field(default_factory=lambda: RSAKey.generate_key(2048))
    _verified: dict[str, dict[str, Any]] = field(default_factory=dict)

    def guid(self) -> str:
        return str(uuid.UUID(int=self.rng.getrandbits(128), version=4))

    def secret(self) -> str:
        """A client secret: reproducible under ``--seed`` (tests), from ``secrets`` otherwise."""
        if not self.seeded:
            return secrets.token_urlsafe(32)
        return base64.urlsafe_b64encode(self.rng.getrandbits(256).to_bytes(32, "big")).decode().rstrip("=")

    # -- issuing ----------------------------------------------------------------------------------------------------

    def issue(self, resource: str, app: App, subject_oid: str, scopes: list[str] | None) -> str:
        now = int(self.clock())
        claims: dict[str, Any] = {
            "aud": resource,
            "iss": f"https://sts.windows.net/{self.tenant_id}/",
            "iat": now,
            "nbf": now,
            "exp": now + self.token_lifetime_s,
            "tid": self.tenant_id,
            "oid": subject_oid,
            "sub": subject_oid,
            "appid": app.client_id,
            "ver": "1.0",
            "uti": secrets.token_urlsafe(16),
        }
        if scopes is None:
            claims["idtyp"] = "app"
        else:
            claims["scp"] = " ".join(s.rsplit("/", 1)[-1] for s in scopes if "/" in s)
            claims["name"] = "Emulator Test User"
            claims["upn"] = "testuser@emulator.local"
        return jwt.encode({"alg": "RS256", "typ": "JWT", "kid": "emulator"}, claims, self.signing_key)

    # -- verifying --------------------------------------------------------------------------------------------------

    def verify(self, token: str, org: str) -> dict[str, Any] | None:
        """Claims of a valid, unexpired token for this organization, else None."""
        claims = self._verified.get(token)
        if claims is None:
            try:
                claims = dict(jwt.decode(token, self.signing_key).claims)
            except (JoseError, ValueError, TypeError):
                return None
            if len(self._verified) > 10000:
                self._verified.clear()
            self._verified[token] = claims
        now = self.clock()
        if not (claims.get("nbf", 0) - 300 <= now < claims.get("exp", 0)):
            return None
        if normalise_resource(str(claims.get("aud", ""))) != normalise_resource(org):
            return None
        return claims


def aad_error(status: int, error: str, code: int, description: str) -> JSONResponse:
    """Entra's error body: error, error_description (prefixed AADSTSnnn), error_codes, timestamp, ids."""
    trace, corr = str(uuid.uuid4()), str(uuid.uuid4())
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M:%SZ")
    desc = f"AADSTS{code}: {description} Trace ID: {trace} Correlation ID: {corr} Timestamp: {now}"
    body = {
        "error": error,
        "error_description": desc,
        "error_codes": [code],
        "timestamp": now,
        "trace_id": trace,
        "correlation_id": corr,
        "error_uri": "https://login.microsoftonline.com/error?code=" + str(code),
    }
    return JSONResponse(body, status_code=status, headers={"Cache-Control": "no-store, no-cache"})


def org_of(request: Request) -> str:
    """The organization URL of this request: scheme and Host header (the emulator is every org it is called as)."""
    host = request.headers.get("host") or f"{request.url.hostname}:{request.url.port}"
    return f"{request.url.scheme}://{host}"


def _x5t(cert_der: bytes) -> str:
    return base64.urlsafe_b64encode(hashlib.sha1(cert_der).digest()).decode().rstrip("=")


class IdentityEndpoints:
    """Starlette handlers for the token, authorize and managed-identity endpoints."""

    def __init__(self, identity: Identity, ensure_user: Callable[[App | None, str], None]) -> None:
        self.idp = identity
        self.ensure_user = ensure_user

    def _tenant_ok(self, tenant: str) -> bool:
        return tenant.lower() in (self.idp.tenant_id, "organizations", "common", "emulator.onmicrosoft.com")

    def _resource_from_scopes(self, scopes: list[str]) -> tuple[str | None, str | None]:
        """(resource, error) for a scope list: exactly one resource; ``offline_access``/``openid``/... are ignored."""
        resources = {s.rsplit("/", 1)[0] for s in scopes if "/" in s}
        if len(resources) != 1:
            return None, "bad"
        return resources.pop(), None

    async def token(self, request: Request) -> Response:
        tenant = request.path_params["tenant"]
        # urlencoded form parsed with the stdlib: Starlette's form parser needs python-multipart
        form = dict(parse_qsl((await request.body()).decode("utf-8", "replace"), keep_blank_values=True))
        if not self._tenant_ok(tenant):
            return aad_error(
                400,
                "invalid_request",
                90002,
                f"Tenant '{tenant}' not found. Check to make sure you have the correct tenant ID and are signing into "
                "the correct cloud.",
            )
        client_id, client_secret = form.get("client_id"), form.get("client_secret")
        auth = request.headers.get("authorization", "")
        if auth.lower().startswith("basic "):
            try:
                raw = base64.b64decode(auth[6:]).decode()
                from urllib.parse import unquote_plus

                cid, _, sec = raw.partition(":")
                client_id, client_secret = unquote_plus(cid), unquote_plus(sec)
            except (ValueError, UnicodeDecodeError):
                return aad_error(401, "invalid_client", 7000215, "Invalid client secret provided.")
        grant_type = form.get("grant_type", "")
        app = self.idp.apps.get((client_id or "").lower())
        if not client_id:
            return aad_error(
                400, "invalid_request", 900144, "The request body must contain the following parameter: 'client_id'."
            )
        if app is None:
            return aad_error(
                400,
                "unauthorized_client",
                700016,
                f"Application with identifier '{client_id}' was not found in the directory '{tenant}'. This can happen "
                "if the application has not been installed by the administrator of the tenant or consented to by any "
                "user in the tenant. You may have sent your authentication request to the wrong tenant.",
            )
        # client authentication: confidential clients (secret or certificate assertion) must prove themselves, and a
        # public client must not present a credential (AADSTS700025), whatever the grant
        if app.public and (client_secret is not None or form.get("client_assertion")):
            return aad_error(
                401,
                "invalid_client",
                700025,
                "Client is public so neither 'client_assertion' nor 'client_secret' should be presented.",
            )
        if not app.public:
            err = self._authenticate_client(app, client_secret, form, str(request.url).split("?")[0])
            if err is not None:
                return err
        scopes = form.get("scope", "").split()
        if grant_type == "client_credentials":
            if app.public:
                return aad_error(
                    401,
                    "invalid_client",
                    7000218,
                    "The request body must contain the following parameter: 'client_assertion' or 'client_secret'.",
                )
            if len(scopes) != 1 or not scopes[0].endswith("/.default"):
                return aad_error(
                    400,
                    "invalid_scope",
                    70011,
                    f"The provided request must include a 'scope' input parameter. The provided value for the input "
                    f"parameter 'scope' is not valid. The scope {form.get('scope', '')} is not valid.",
                )
            resource = scopes[0][: -len("/.default")]
            bad = self._check_resource(resource, request, tenant)
            if bad is not None:
                return bad
            self.ensure_user(app, app.object_id)
            return self._token_response(self.idp.issue(resource, app, app.object_id, None), None, None)
        if grant_type == "authorization_code":
            return self._redeem_code(app, form, request, tenant)
        if grant_type == "refresh_token":
            rt = self.idp.refresh_tokens.pop(form.get("refresh_token", ""), None)
            if rt is None or rt.client_id != app.client_id:
                return aad_error(400, "invalid_grant", 9002313, "Invalid request. Request is malformed or invalid.")
            return self._user_tokens(app, scopes or rt.scopes, rt.subject_oid, request, tenant)
        return aad_error(
            400,
            "unsupported_grant_type",
            70003,
            f"The app requested an unsupported grant type '{grant_type}'.",
        )

    def _redeem_code(self, app: App, form: dict[str, str], request: Request, tenant: str) -> Response:
        """The authorization-code grant, for the public PKCE client and for confidential clients alike (the client
        was authenticated before: secret or certificate assertion). A code works once; redeemed again it gets
        AADSTS54005, as Entra answers."""
        raw = form.get("code", "")
        if raw in self.idp.redeemed:
            return aad_error(
                400,
                "invalid_grant",
                54005,
                "OAuth2 Authorization code was already redeemed, please retry with a new valid code or use an "
                "existing refresh token.",
            )
        code = self.idp.codes.pop(raw, None)
        if code is None or code.client_id != app.client_id or code.expires_at < self.idp.clock():
            return aad_error(
                400,
                "invalid_grant",
                70008,
                "The provided authorization code or refresh token has "
                "expired due to inactivity. Send a new interactive authorization request.",
            )
        if code.redirect_uri and form.get("redirect_uri") != code.redirect_uri:
            return aad_error(
                400,
                "invalid_grant",
                50148,
                "The redirect_uri does not match the one used in the authorization request.",
            )
        if code.code_challenge is not None:
            verifier = form.get("code_verifier", "")
            digest = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).decode().rstrip("=")
            if digest != code.code_challenge:
                return aad_error(
                    400,
                    "invalid_grant",
                    501481,
                    "The Code_Verifier does not match the code_challenge supplied in the authorization request.",
                )
        now = self.idp.clock()
        self.idp.redeemed = {c: t for c, t in self.idp.redeemed.items() if t > now - 600}
        self.idp.redeemed[raw] = now
        return self._user_tokens(app, code.scopes, code.subject_oid, request, tenant)

    def _authenticate_client(
        self, app: App, secret: str | None, form: dict[str, str], token_url: str
    ) -> Response | None:
        if form.get("client_assertion_type") == ASSERTION_TYPE and form.get("client_assertion"):
            return self._check_assertion(app, form["client_assertion"], token_url)
        if secret is None:
            return aad_error(
                401,
                "invalid_client",
                7000218,
                "The request body must contain the following parameter: 'client_assertion' or 'client_secret'.",
            )
        if app.secret is None or not secrets.compare_digest(secret, app.secret):
            return aad_error(
                401,
                "invalid_client",
                7000215,
                "Invalid client secret provided. Ensure the secret being sent in the request is the client secret "
                f"value, not the client secret ID, for a secret added to app '{app.client_id}'.",
            )
        return None

    def _check_assertion(self, app: App, assertion: str, token_url: str) -> Response | None:
        from cryptography import x509
        from joserfc.jwk import RSAKey as _RSAKey

        def fail(code: int, msg: str) -> Response:
            return aad_error(401, "invalid_client", code, msg)

        if app.cert_public_pem is None:
            return fail(700027, "Client assertion failed signature validation.")
        try:
            header_b64 = assertion.split(".")[0]
            header = json.loads(base64.urlsafe_b64decode(header_b64 + "=" * (-len(header_b64) % 4)))
        except (ValueError, IndexError):
            return fail(50027, "JWT token is invalid or malformed.")
        if header.get("x5t") != app.cert_thumbprint_x5t and header.get("kid") != app.cert_thumbprint_x5t:
            return fail(
                700027,
                "The certificate with identifier used to sign the client assertion is not registered on application.",
            )
        cert = x509.load_pem_x509_certificate(app.cert_public_pem)
        key = _RSAKey.import_key(cert.public_key())  # type: ignore[arg-type]
        try:
            claims = jwt.decode(assertion, key, algorithms=["RS256", "PS256"]).claims
        except (JoseError, ValueError):
            return fail(700027, "Client assertion failed signature validation.")
        now = self.idp.clock()
        if claims.get("iss") != app.client_id or claims.get("sub") != app.client_id:
            return fail(700021, "Client assertion application identifier doesn't match 'client_id' parameter.")
        if not claims.get("exp") or float(claims["exp"]) < now:
            return fail(700024, "Client assertion is not within its valid time range.")
        aud = str(claims.get("aud", ""))
        if aud.rstrip("/").lower() != token_url.rstrip("/").lower():
            return fail(
                700212, f"No matching federated identity record found for presented assertion audience '{aud}'."
            )
        return None

    def _check_resource(self, resource: str, request: Request, tenant: str) -> Response | None:
        if normalise_resource(resource) != normalise_resource(org_of(request)):
            return aad_error(
                400,
                "invalid_resource",
                500011,
                f"The resource principal named {resource} was not found in the tenant named {tenant}. This can happen "
                "if the application has not been installed by the administrator of the tenant or consented to by any "
                "user in the tenant. You might have sent your authentication request to the wrong tenant.",
            )
        return None

    def _user_tokens(self, app: App, scopes: list[str], oid: str, request: Request, tenant: str) -> Response:
        resource, err = self._resource_from_scopes(scopes)
        if err or resource is None:
            return aad_error(
                400,
                "invalid_scope",
                70011,
                "The provided value for the input parameter 'scope' is not "
                "valid. Scopes must be for a single resource.",
            )
        bad = self._check_resource(resource, request, tenant)
        if bad is not None:
            return bad
        self.ensure_user(None, oid)
        access = self.idp.issue(resource, app, oid, scopes)
        refresh = None
        if "offline_access" in scopes:
            refresh = secrets.token_urlsafe(32)
            self.idp.refresh_tokens[refresh] = Grant(app.client_id, scopes, oid)
        return self._token_response(access, refresh, " ".join(s for s in scopes))

    def _token_response(self, access: str, refresh: str | None, scope: str | None) -> Response:
        body: dict[str, Any] = {
            "token_type": "Bearer",
            "expires_in": self.idp.token_lifetime_s,
            "ext_expires_in": self.idp.token_lifetime_s,
            "access_token": access,
        }
        if scope is not None:
            body["scope"] = scope
        if refresh is not None:
            body["refresh_token"] = refresh
        return JSONResponse(body, headers={"Cache-Control": "no-store, no-cache", "Pragma": "no-cache"})

    async def authorize(self, request: Request) -> Response:
        """Consent is automatic: redirect straight back with a code (the test user always says yes)."""
        tenant = request.path_params["tenant"]
        p = request.query_params
        if not self._tenant_ok(tenant):
            return aad_error(400, "invalid_request", 90002, f"Tenant '{tenant}' not found.")
        app = self.idp.apps.get(p.get("client_id", "").lower())
        if app is None:
            return aad_error(
                400,
                "unauthorized_client",
                700016,
                f"Application with identifier '{p.get('client_id')}' was not found in the directory '{tenant}'.",
            )
        redirect_uri = p.get("redirect_uri", "")
        host = urlsplit(redirect_uri).hostname or ""
        if host not in ("localhost", "127.0.0.1", "::1"):
            return aad_error(
                400,
                "invalid_request",
                50011,
                f"The redirect URI '{redirect_uri}' specified in the "
                f"request does not match the redirect URIs configured for the application '{app.client_id}'.",
            )
        if p.get("response_type") != "code":
            return aad_error(
                400,
                "unsupported_response_type",
                900144,
                "The provided value for the input parameter "
                "'response_type' is not allowed for this request. Expected value: code.",
            )
        challenge = p.get("code_challenge")
        if challenge is not None and p.get("code_challenge_method", "plain") != "S256":
            return aad_error(400, "invalid_request", 501491, "Invalid code_challenge_method: only S256 is supported.")
        code = secrets.token_urlsafe(24)
        self.idp.codes[code] = Grant(
            app.client_id,
            p.get("scope", "").split(),
            self.idp.user_oid,
            redirect_uri,
            challenge,
            self.idp.clock() + 600,
        )
        params = {"code": code}
        if "state" in p:
            params["state"] = p["state"]
        sep = "&" if "?" in redirect_uri else "?"
        return RedirectResponse(redirect_uri + sep + urlencode(params), status_code=302)

    def _mi_app(self, client_id: str | None) -> App | None:
        mi = [a for a in self.idp.apps.values() if a.kind == "managed_identity"]
        if client_id:
            return self.idp.apps.get(client_id.lower())
        return mi[0] if mi else None

    async def imds(self, request: Request) -> Response:
        """Instance metadata style: ``GET /metadata/identity/oauth2/token?resource=...`` with ``Metadata: true``."""
        if request.headers.get("metadata", "").lower() != "true":
            return JSONResponse(
                {"error": "invalid_request", "error_description": "Required metadata header not specified"}, 400
            )
        return self._mi_token(request, "2018-02-01", imds=True)

    async def app_service(self, request: Request) -> Response:
        """App Service style: ``IDENTITY_ENDPOINT`` with ``X-IDENTITY-HEADER`` and ``api-version=2019-08-01``."""
        if not secrets.compare_digest(request.headers.get("x-identity-header", ""), self.idp.identity_header):
            return JSONResponse({"statusCode": 401, "message": "Unauthorized"}, 401)
        if request.query_params.get("api-version") != "2019-08-01":
            return JSONResponse(
                {"error": "invalid_request", "error_description": "api-version 2019-08-01 required"}, 400
            )
        return self._mi_token(request, "2019-08-01", imds=False)

    def _mi_token(self, request: Request, version: str, imds: bool) -> Response:
        p = request.query_params
        resource = p.get("resource", "")
        if not resource:
            return JSONResponse(
                {"error": "invalid_request", "error_description": "Required query variable 'resource' is missing"}, 400
            )
        app = self._mi_app(p.get("client_id"))
        if app is None or app.kind != "managed_identity":
            return JSONResponse({"error": "invalid_request", "error_description": "Identity not found"}, 400)
        if normalise_resource(resource) != normalise_resource(org_of(request)):
            return JSONResponse(
                {
                    "error": "invalid_resource",
                    "error_description": f"AADSTS500011: The resource "
                    f"principal named {resource} was not found in the tenant.",
                },
                400,
            )
        self.ensure_user(app, app.object_id)
        token = self.idp.issue(resource.rstrip("/"), app, app.object_id, None)
        now = int(self.idp.clock())
        exp = now + self.idp.token_lifetime_s
        body: dict[str, Any] = {
            "access_token": token,
            "client_id": app.client_id,
            "expires_on": str(exp),
            "resource": resource,
            "token_type": "Bearer",
        }
        if imds:
            body.update(
                expires_in=str(self.idp.token_lifetime_s),
                ext_expires_in=str(self.idp.token_lifetime_s),
                not_before=str(now),
            )
        return JSONResponse(body)
