"""Who am I, and is this connection working: the logic behind the ``get_current_user`` and ``test_connection`` actions.

``test_connection`` never raises for a connection problem: a builder's "Test" button and ``d365 connection test``
need an explanation and a fix, not a stack trace. Each failure the identity platform or Dataverse can produce is
mapped to a ``diagnosis`` (what is wrong) and a ``fix`` (what to change, and where).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from connector.auth import AUDIENCE_MISMATCH, ID_TOKEN_REFUSED, decode_jwt_claims
from connector.errors import (
    AuthenticationError,
    ConnectorError,
    DataverseApiError,
    DataverseAuthError,
    FatalApiError,
    NetworkConfigError,
)
from connector.inputs import GetCurrentUser, TestConnection
from connector.secret import Secret

if TYPE_CHECKING:
    from connector.connection import Connection

__all__ = ["SYSTEMUSER_SELECT", "diagnose", "get_current_user", "test_connection"]

SYSTEMUSER_SELECT = (
    "fullname",
    "domainname",
    "internalemailaddress",
    "azureactivedirectoryobjectid",
    "applicationid",
    "_businessunitid_value",
    "isdisabled",
    "accessmode",
)
_FORMATTED = "OData.Community.Display.V1.FormattedValue"

APP_USER_FIX = (
    "In the Power Platform admin center open the environment, Settings > Users + permissions > Application users, "
    "add the app registration (its client_id) as an application user, and give it a security role"
)

# (diagnosis, fix) per AADSTS code; the token endpoint's own refusal.
_AADSTS: dict[str, tuple[str, str]] = {
    "AADSTS700016": (
        "The application (client_id) was not found in the tenant (tenant_id).",
        "Copy the Application (client) ID and Directory (tenant) ID from the app registration's Overview page; "
        "a multi-tenant app must also be consented to in this tenant.",
    ),
    "AADSTS7000215": (
        "The client secret is invalid.",
        "Use the client secret's Value (shown once, when it was created), not its Secret ID; if it has expired, "
        "create a new one under Certificates & secrets.",
    ),
    "AADSTS7000222": (
        "The client secret has expired.",
        "Create a new client secret under Certificates & secrets in the app registration and update client_secret.",
    ),
    "AADSTS90002": (
        "The tenant (tenant_id) was not found.",
        "Set tenant_id to the Directory (tenant) ID GUID or a verified domain of the tenant; for GCC High, DoD or "
        "China also check authority_host.",
    ),
    "AADSTS650057": (
        "The identity platform does not accept the requested resource for this app.",
        "Request the scope {org}/.default (leave scopes out), and add the Dynamics CRM API permission to the app "
        "registration with admin consent.",
    ),
    "AADSTS70011": (
        "The requested scope is invalid.",
        "For client credentials the scope must be exactly {org}/.default: leave scopes out to get it.",
    ),
    "AADSTS500011": (
        "No resource with this URL exists in the tenant.",
        "Check organization_url (copy it from the Power Platform admin center) and that the environment belongs to "
        "tenant_id.",
    ),
    "AADSTS700027": (
        "The client assertion was refused: its certificate is not registered on the app, or the private key does not "
        "belong to the certificate.",
        "Upload the certificate's public part (.cer or .pem) under Certificates & secrets > Certificates in the app "
        "registration, and check that private_key_file (or pfx_file) holds the key of that very certificate.",
    ),
    "AADSTS700024": (
        "The client assertion is outside its valid time range.",
        "Check this machine's clock (the certificate assertion is stamped with it); enable time synchronisation.",
    ),
    "AADSTS7000218": (
        "The token request carried no client credential.",
        "Give client_secret, or use the certificate kind with certificate_file and private_key_file (or pfx_file).",
    ),
    "AADSTS70008": (
        "The refresh token or authorization code has expired.",
        "Sign in again with `d365 connection login --connection FILE`.",
    ),
    "AADSTS9002313": (
        "The refresh token was refused (revoked, already replaced, or malformed).",
        "Sign in again with `d365 connection login --connection FILE`; a platform that keeps refresh_token must "
        "store every new one it receives.",
    ),
    "AADSTS65001": (
        "The user or an administrator has not consented to the app's Dynamics CRM permission.",
        "Grant admin consent for the Dynamics CRM user_impersonation permission in the app registration's API "
        "permissions, or sign in again and accept the consent prompt.",
    ),
    "LoginRequired": (
        "No user has signed in for this connection yet.",
        "Run `d365 connection login --connection FILE` (add --no-browser on a machine without a browser).",
    ),
    "StateMismatch": (
        "The sign-in answer did not match the request.",
        "Run `d365 connection login` again and finish the sign-in in the browser it opens.",
    ),
    "ManagedIdentityUnavailable": (
        "The managed identity endpoint cannot be reached.",
        "Run the connector on an Azure resource with a managed identity enabled (Identity in the Azure portal); "
        "outside Azure use the client_credentials or certificate kind.",
    ),
    "ManagedIdentity400": (
        "The managed identity endpoint refused the request.",
        "For a user-assigned identity set managed_identity_client_id to its client id, and check that the identity "
        "is assigned to this Azure resource.",
    ),
    "ManagedIdentity401": (
        "The App Service identity endpoint refused the identity header.",
        "Check IDENTITY_HEADER (or identity_header); it changes when the app restarts, so read it from the "
        "environment rather than copying it.",
    ),
    "ManagedIdentity404": (
        "No managed identity is assigned to this Azure resource.",
        "Enable the system-assigned identity (or assign a user-assigned one) under Identity in the Azure portal, and "
        "add it to the environment as an application user.",
    ),
}

_GENERIC_FIX = {
    "client_credentials": "Check client_id, client_secret, tenant_id and token_url.",
    "certificate": "Check client_id, tenant_id, token_url, and that the certificate is registered on the app.",
    "authorization_code": "Check client_id, tenant_id and token_url, and sign in again with `d365 connection login`.",
    "managed_identity": "Check that a managed identity is enabled for this Azure resource and added to the "
    "environment as an application user.",
}

_AUTH_URI = re.compile(r"authorization_uri\s*=\s*\"?([^\",\s]+)", re.IGNORECASE)


def _challenge_tenant(www_authenticate: str | None) -> str | None:
    """The tenant named in a ``WWW-Authenticate: Bearer authorization_uri=...`` challenge, quoted or not."""
    if not www_authenticate:
        return None
    match = _AUTH_URI.search(www_authenticate)
    if not match:
        return None
    parts = [p for p in match.group(1).split("/") if p]
    return parts[2] if len(parts) >= 3 and parts[0].lower().startswith("http") else None


def diagnose(error: ConnectorError, connection: Connection, stage: str = "whoami") -> tuple[str, str]:
    """``(diagnosis, fix)`` for an error met while testing ``connection``; ``stage`` is the check that failed."""
    org = connection.organization_url
    config = connection.config
    if isinstance(error, NetworkConfigError):
        if error.reason == "dns" and error.field == "token_url":
            return (
                "The host name of the token endpoint cannot be resolved.",
                "Check token_url (or authority_host), and this machine's DNS and proxy settings.",
            )
        if error.reason == "dns":
            return (
                "The host name of the environment cannot be resolved.",
                "Check organization_url (copy it from the Power Platform admin center; a deleted or renamed "
                "environment no longer resolves), and this machine's DNS.",
            )
        return (
            "The server's TLS certificate is not trusted.",
            "Behind a TLS-inspecting corporate proxy set ca_file to the proxy's CA bundle; for the local emulator "
            "set ca_file to the CA it generated.",
        )
    if isinstance(error, DataverseAuthError):
        tenant = _challenge_tenant(error.www_authenticate)
        if tenant and config.tenant_id and tenant.lower() != config.tenant_id.lower():
            return (
                f"Dataverse rejected the token (401): the environment belongs to tenant {tenant}, "
                f"but the token was issued by tenant {config.tenant_id}.",
                f"Set tenant_id to {tenant}, and register (or consent) the app in that tenant.",
            )
        credential = {
            "client_credentials": "the client secret is current and not expired",
            "certificate": "the certificate is registered on the app and not expired",
            "authorization_code": "the signed-in user is a user of this environment",
            "managed_identity": "the managed identity is added to the environment as an application user",
        }.get(config.kind, "the credential is current")
        return (
            "Dataverse rejected the access token (401).",
            f"Check that {credential}, that tenant_id is the tenant of the environment, and that the token is "
            f"issued for {org} (scope {org}/.default).",
        )
    if isinstance(error, AuthenticationError):
        if error.code in (AUDIENCE_MISMATCH, ID_TOKEN_REFUSED):
            return (error.message[:1].upper() + error.message[1:] + ".", f"Request the scope {org}/.default.")
        if error.code in _AADSTS:
            diagnosis, fix = _AADSTS[error.code]
            return (f"{diagnosis} ({error.code})", fix.replace("{org}", org))
        return (
            f"The identity platform refused to issue a token: {error.message}.",
            _GENERIC_FIX.get(config.kind, _GENERIC_FIX["client_credentials"]),
        )
    if isinstance(error, FatalApiError) and error.status_code == 403:
        return (
            "Dataverse denied access (403): the app has no application user in this environment, or the "
            "application user has no security role.",
            APP_USER_FIX + ".",
        )
    target = "token_url (or authority_host)" if stage == "token" else "organization_url"
    server = "The token endpoint" if stage == "token" else "Dataverse"
    if isinstance(error, DataverseApiError) and error.code == "Timeout":
        return (
            f"{server} did not answer in time.",
            f"Check the network path to it (proxy, firewall) and {target}, or raise timeout_s.",
        )
    if isinstance(error, DataverseApiError) and error.code == "NetworkError":
        return (
            f"The connection to {server.lower() if stage == 'token' else server} failed.",
            f"Check that {target} is right and reachable from this machine (network, proxy, firewall).",
        )
    if isinstance(error, DataverseApiError):
        return (
            f"Dataverse answered with an error: {error.message}.",
            "Try again later; if it persists, give the request id to your Dataverse administrator.",
        )
    return (error.message, "Check the connection settings.")


def test_connection(connection: Connection, inputs: TestConnection | None = None) -> dict[str, Any]:
    """Fetch a token, check its audience, call WhoAmI; report each step, and on failure the diagnosis and fix.

    An identity pool is tested user by user: a pooled request may leave through any of them, so one user with a
    revoked secret fails the test, named, with its own checks (suffixed with its client id) and ``identities``.
    The action takes no inputs; ``inputs`` is there so every action's library function has one shape.
    """
    members = connection.pool_members()
    if not members:
        return _test_one(connection)
    start = connection.clock.monotonic()
    try:
        results = [(m.config.client_id, _test_one(m)) for m in members]
    finally:
        for member in members:
            member.close()
    result = dict(results[0][1])
    result["checks"] = [
        {**check, "name": check["name"] if i == 0 else f"{check['name']} ({client_id})"}
        for i, (client_id, one) in enumerate(results)
        for check in one["checks"]
    ]
    result["identities"] = [
        {"client_id": client_id, **{k: one[k] for k in ("ok", "user_id", "diagnosis", "fix")}}
        for client_id, one in results
    ]
    failed = [(client_id, one) for client_id, one in results if not one["ok"]]
    result["ok"] = not failed
    if failed:
        client_id, one = failed[0]
        result["diagnosis"] = f"Application user {client_id} of the pool: {one['diagnosis']}"
        result["fix"] = one["fix"]
    result["elapsed_ms"] = round((connection.clock.monotonic() - start) * 1000)
    return result


def _test_one(connection: Connection) -> dict[str, Any]:
    """The test of one application user (the whole test of a connection without a pool)."""
    clock = connection.clock
    start = clock.monotonic()
    checks: list[dict[str, Any]] = []
    result: dict[str, Any] = {
        "ok": False,
        "checks": checks,
        "diagnosis": None,
        "fix": None,
        "user_id": None,
        "organization_id": None,
        "organization_url": connection.organization_url,
        "elapsed_ms": 0,
    }

    def finish(error: ConnectorError | None = None) -> dict[str, Any]:
        if error is not None:
            result["diagnosis"], result["fix"] = diagnose(error, connection, checks[-1]["name"])
        else:
            result["ok"] = True
        result["elapsed_ms"] = round((clock.monotonic() - start) * 1000)
        return result

    try:
        token = Secret(connection.token())  # never a plain str local: the whoami below runs in this frame
    except AuthenticationError as exc:
        if exc.code in (AUDIENCE_MISMATCH, ID_TOKEN_REFUSED):
            checks.append({"name": "token", "ok": True, "detail": "the token endpoint issued a token"})
            checks.append({"name": "audience", "ok": False, "detail": exc.message})
        else:
            checks.append({"name": "token", "ok": False, "detail": exc.message})
        return finish(exc)
    except ConnectorError as exc:
        checks.append({"name": "token", "ok": False, "detail": exc.message})
        return finish(exc)
    checks.append({"name": "token", "ok": True, "detail": "the token endpoint issued a token"})
    aud = (decode_jwt_claims(token.reveal()) or {}).get("aud")
    checks.append(
        {
            "name": "audience",
            "ok": True,
            "detail": f"the token is for {aud}" if aud else "the token is opaque; Dataverse will judge it",
        }
    )
    try:
        who = connection.client.whoami()
    except ConnectorError as exc:
        checks.append({"name": "whoami", "ok": False, "detail": exc.message})
        return finish(exc)
    checks.append({"name": "whoami", "ok": True, "detail": f"Dataverse knows this app as user {who.user_id}"})
    result["user_id"] = who.user_id
    result["organization_id"] = who.organization_id
    return finish()


def get_current_user(connection: Connection, inputs: GetCurrentUser | None = None) -> dict[str, Any]:
    """WhoAmI (as the impersonated user when given), then that user's systemuser row, flattened.

    The row is read as the connection's own identity: the impersonated user may not be allowed to read user rows. A row
    that cannot be read (403) leaves its fields null rather than failing the whole answer.
    """
    client = connection.client
    who = client.whoami(impersonate=inputs.impersonate if inputs else None)
    row: dict[str, Any] = {}
    try:
        body = client.get_json(
            f"systemusers({who.user_id})",
            params={"$select": ",".join(SYSTEMUSER_SELECT)},
            prefer=[f'odata.include-annotations="{_FORMATTED}"'],
        )
        row = body if isinstance(body, dict) else {}
    except FatalApiError as exc:
        if exc.status_code != 403:
            raise
    application_id = row.get("applicationid")
    return {
        "user_id": who.user_id,
        "full_name": row.get("fullname"),
        "domain_name": row.get("domainname"),
        "email": row.get("internalemailaddress"),
        "azure_object_id": row.get("azureactivedirectoryobjectid"),
        "application_id": application_id,
        "is_application_user": (application_id is not None) if row else None,
        "business_unit_id": row.get("_businessunitid_value") or who.business_unit_id,
        "business_unit_name": row.get(f"_businessunitid_value@{_FORMATTED}"),
        "organization_id": who.organization_id,
    }


test_connection.__test__ = False  # type: ignore[attr-defined]  # the action's name, not a test for pytest to collect
