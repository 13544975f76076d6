"""Connection settings: validation, URL rules, sovereign-cloud authorities, secrets from env and files, masking."""

from __future__ import annotations

import copy
import json
import logging
import pickle
from pathlib import Path
from typing import Any

import certifi
import pytest

from connector.connection import Connection
from connector.connection_config import ConnectionConfig, parse_config
from connector.errors import ConnectionConfigError
from connector.secret import Secret


def _parse(cloud: Any, **overrides: Any) -> ConnectionConfig:
    return parse_config(cloud.config(**overrides))


def test_connection_minimal_config_is_normalised(cloud: Any) -> None:
    config = _parse(cloud)
    assert config.organization_url == "https://contoso.crm.dynamics.com"
    assert config.api_url == "https://contoso.crm.dynamics.com/api/data/v9.2"
    assert config.token_url == f"https://login.microsoftonline.com/{cloud.TENANT}/oauth2/v2.0/token"
    assert config.scopes == ("https://contoso.crm.dynamics.com/.default",)
    assert config.timeout_s == 120.0
    assert config.client_secret == Secret(cloud.SECRET)


@pytest.mark.parametrize(
    ("url", "org", "version"),
    [
        pytest.param("https://contoso.crm.dynamics.com/", "https://contoso.crm.dynamics.com", "v9.2", id="slash"),
        pytest.param("https://Contoso.CRM.dynamics.com/", "https://contoso.crm.dynamics.com", "v9.2", id="case"),
        pytest.param(
            "https://contoso.crm4.dynamics.com/api/data/v9.1/",
            "https://contoso.crm4.dynamics.com",
            "v9.1",
            id="api-suffix",
        ),
        pytest.param(
            "https://contoso.api.crm.dynamics.com/api/data/v9.0",
            "https://contoso.api.crm.dynamics.com",
            "v9.0",
            id="api-host",
        ),
        pytest.param("https://dataverse.example.org:8443", "https://dataverse.example.org:8443", "v9.2", id="port"),
        pytest.param(
            "https://contoso.crm.dynamics.com:443", "https://contoso.crm.dynamics.com", "v9.2", id="default-port"
        ),
    ],
)
def test_connection_organization_url_forms(cloud: Any, url: str, org: str, version: str) -> None:
    config = _parse(cloud, organization_url=url)
    assert (config.organization_url, config.api_version) == (org, version)
    assert config.api_url == f"{org}/api/data/{version}"


def test_connection_api_version_field_and_conflict(cloud: Any) -> None:
    assert _parse(cloud, api_version="v9.1").api_url.endswith("/api/data/v9.1")
    with pytest.raises(ConnectionConfigError) as info:
        _parse(cloud, organization_url="https://contoso.crm.dynamics.com/api/data/v9.2", api_version="v9.1")
    assert info.value.field == "api_version"


@pytest.mark.parametrize(
    ("url", "allow", "needle"),
    [
        pytest.param("http://contoso.crm.dynamics.com", True, "https", id="http-remote"),
        pytest.param("http://127.0.0.1:8080", False, "allow_insecure_loopback", id="loopback-not-allowed"),
        pytest.param("https://contoso.crm.dynamics.com/main.aspx", False, "organization_url", id="path"),
    ],
)
def test_connection_organization_url_refused(cloud: Any, url: str, allow: bool, needle: str) -> None:
    with pytest.raises(ConnectionConfigError) as info:
        _parse(cloud, organization_url=url, allow_insecure_loopback=allow)
    assert info.value.field == "organization_url"
    assert needle in info.value.message


@pytest.mark.parametrize("url", ["http://127.0.0.1:8080", "http://localhost:5555/api/data/v9.2", "http://[::1]:9000"])
def test_connection_loopback_http_allowed_with_flag(cloud: Any, url: str) -> None:
    config = _parse(cloud, organization_url=url, allow_insecure_loopback=True, token_url=f"{url.split('/api')[0]}/t")
    assert config.organization_url.startswith("http://")


@pytest.mark.parametrize(
    ("host", "authority"),
    [
        ("contoso.crm.dynamics.com", "login.microsoftonline.com"),
        ("contoso.api.crm.dynamics.com", "login.microsoftonline.com"),
        ("contoso.crm4.dynamics.com", "login.microsoftonline.com"),
        ("contoso.crm9.dynamics.com", "login.microsoftonline.com"),  # GCC stays on the public authority
        ("contoso.api.crm22.dynamics.com", "login.microsoftonline.com"),
        ("contoso.crm.microsoftdynamics.us", "login.microsoftonline.us"),  # GCC High
        ("contoso.api.crm.microsoftdynamics.us", "login.microsoftonline.us"),
        ("contoso.crm.appsplatform.us", "login.microsoftonline.us"),  # DoD
        ("contoso.crm.dynamics.cn", "login.chinacloudapi.cn"),
        ("contoso.api.crm.dynamics.cn", "login.chinacloudapi.cn"),
    ],
)
def test_connection_sovereign_cloud_authority(cloud: Any, host: str, authority: str, caplog: Any) -> None:
    with caplog.at_level(logging.WARNING, logger="connector.connection"):
        config = _parse(cloud, organization_url=f"https://{host}")
    assert config.authority_host == authority
    assert config.token_url == f"https://{authority}/{cloud.TENANT}/oauth2/v2.0/token"
    assert config.scopes == (f"https://{host}/.default",)
    assert not caplog.records


def test_connection_unknown_host_warns_and_uses_public_authority(cloud: Any, caplog: Any) -> None:
    with caplog.at_level(logging.WARNING, logger="connector.connection"):
        config = _parse(cloud, organization_url="https://crm.contoso.example")
    assert config.authority_host == "login.microsoftonline.com"
    assert "not a known Dynamics 365 host" in caplog.text
    assert "authority_host" in caplog.text


def test_connection_authority_host_overrides_table(cloud: Any) -> None:
    config = _parse(cloud, authority_host="login.microsoftonline.us")
    assert config.token_url.startswith("https://login.microsoftonline.us/")


def test_connection_token_url_overrides_everything(cloud: Any, caplog: Any) -> None:
    with caplog.at_level(logging.WARNING):
        config = _parse(
            cloud,
            organization_url="http://127.0.0.1:8443",
            allow_insecure_loopback=True,
            tenant_id=None,
            token_url="http://127.0.0.1:8443/tenant/oauth2/v2.0/token",
        )
    assert config.token_url == "http://127.0.0.1:8443/tenant/oauth2/v2.0/token"
    assert config.tenant_id is None
    assert not caplog.records


def test_connection_tenant_required_without_token_url(cloud: Any) -> None:
    with pytest.raises(ConnectionConfigError) as info:
        _parse(cloud, tenant_id=None)
    assert "tenant_id" in info.value.message


def test_connection_unknown_kind_lists_kinds(cloud: Any) -> None:
    with pytest.raises(ConnectionConfigError) as info:
        _parse(cloud, kind="password")
    assert info.value.field == "kind"
    assert "client_credentials" in info.value.message


def test_connection_schema_problem_names_field(cloud: Any) -> None:
    with pytest.raises(ConnectionConfigError) as info:
        _parse(cloud, client_id="my-app")
    assert info.value.field == "client_id"
    assert "client_id" in info.value.message


def test_connection_scopes_template(cloud: Any) -> None:
    config = _parse(cloud, scopes=["{org}/user_impersonation"])
    assert config.scopes == ("https://contoso.crm.dynamics.com/user_impersonation",)


def test_connection_secret_from_env(cloud: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("D365_TEST_SECRET", cloud.SECRET)
    config = _parse(cloud, client_secret={"env": "D365_TEST_SECRET"})
    assert config.client_secret is not None and config.client_secret.reveal() == cloud.SECRET


def test_connection_secret_env_missing_names_variable(cloud: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("D365_TEST_MISSING", raising=False)
    with pytest.raises(ConnectionConfigError) as info:
        _parse(cloud, client_secret={"env": "D365_TEST_MISSING"})
    assert info.value.field == "client_secret"
    assert "D365_TEST_MISSING" in info.value.message


def test_connection_secret_from_file_relative_to_base_dir(cloud: Any, tmp_path: Path) -> None:
    (tmp_path / "secret.txt").write_text(cloud.SECRET + "\n", encoding="utf-8")
    config = parse_config(cloud.config(client_secret={"file": "secret.txt"}), base_dir=tmp_path)
    assert config.client_secret is not None and config.client_secret.reveal() == cloud.SECRET


def test_connection_secret_file_missing_names_path(cloud: Any, tmp_path: Path) -> None:
    with pytest.raises(ConnectionConfigError) as info:
        parse_config(cloud.config(client_secret={"file": "nope.txt"}), base_dir=tmp_path)
    assert info.value.field == "client_secret"
    assert str(tmp_path / "nope.txt") in info.value.message


def test_connection_from_file_resolves_relative_paths(cloud: Any, tmp_path: Path) -> None:
    (tmp_path / "secret.txt").write_text(cloud.SECRET, encoding="utf-8")
    (tmp_path / "conn.json").write_text(
        json.dumps(cloud.config(client_secret={"file": "secret.txt"}, ca_file=certifi.where())), encoding="utf-8"
    )
    with Connection.from_file(tmp_path / "conn.json") as conn:
        assert conn.api_url == "https://contoso.crm.dynamics.com/api/data/v9.2"
        assert conn.config.client_secret == Secret(cloud.SECRET)


def test_connection_from_file_bad_json(tmp_path: Path) -> None:
    (tmp_path / "conn.json").write_text("{nope", encoding="utf-8")
    with pytest.raises(ConnectionConfigError, match="not valid JSON"):
        Connection.from_file(tmp_path / "conn.json")


def test_connection_ca_file_missing(cloud: Any, tmp_path: Path) -> None:
    with pytest.raises(ConnectionConfigError) as info:
        parse_config(cloud.config(ca_file="ca.pem"), base_dir=tmp_path)
    assert info.value.field == "ca_file"


def test_connection_secrets_never_shown(cloud: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    conn = cloud.connect()
    secret = conn.config.client_secret
    assert repr(secret) == str(secret) == "Secret('***')"
    for text in (repr(conn.config), str(conn.config), repr(conn), f"{secret}", repr(conn.config.__dict__)):
        assert cloud.SECRET not in text
    with pytest.raises(TypeError):
        pickle.dumps(secret)
    assert copy.deepcopy(conn.config) == conn.config
    monkeypatch.setenv("D365_TEST_SECRET", "")
    with pytest.raises(ConnectionConfigError) as info:
        _parse(cloud, client_secret={"env": "D365_TEST_SECRET"})
    assert cloud.SECRET not in str(info.value)


def test_connection_schema_error_never_echoes_secret(cloud: Any) -> None:
    with pytest.raises(ConnectionConfigError) as info:
        _parse(cloud, client_secret={"value": cloud.SECRET})
    assert cloud.SECRET not in str(info.value)
    assert info.value.field == "client_secret"


def test_connection_fingerprint_stable_and_secret_sensitive(cloud: Any) -> None:
    a = _parse(cloud).fingerprint()
    assert a == _parse(cloud, organization_url="https://CONTOSO.crm.dynamics.com/").fingerprint()
    assert a != _parse(cloud, client_secret="another-secret").fingerprint()
    assert a != _parse(cloud, organization_url="https://fabrikam.crm.dynamics.com").fingerprint()
    assert cloud.SECRET not in a
    assert cloud.connect().fingerprint == a


def test_connection_client_created_once_and_closed(cloud: Any) -> None:
    conn = cloud.connect()
    assert conn.client is conn.client
    conn.close()
    with pytest.raises(ConnectionConfigError, match="closed"):
        _ = conn.client


@pytest.mark.parametrize(
    ("host", "login"),
    [
        ("contoso.crm.microsoftdynamics.us", "login.microsoftonline.us"),
        ("contoso.crm.dynamics.cn", "login.chinacloudapi.cn"),
    ],
)
def test_connection_sovereign_token_request_goes_to_its_cloud(cloud: Any, host: str, login: str) -> None:
    cloud.audience = f"https://{host}"
    conn = cloud.connect(organization_url=f"https://{host}")
    conn.token()
    (request,) = cloud.requests
    assert str(request.url) == f"https://{login}/{cloud.TENANT}/oauth2/v2.0/token"
    assert cloud.token_forms[0]["scope"] == f"https://{host}/.default"


def test_connection_ca_file_becomes_ssl_context(cloud: Any) -> None:
    import ssl

    conn = cloud.connect(ca_file=certifi.where())
    assert isinstance(conn._verify, ssl.SSLContext)
    assert conn._verify.verify_mode == ssl.CERT_REQUIRED
    default = cloud.connect()._verify
    assert isinstance(default, ssl.SSLContext) and default.verify_mode == ssl.CERT_REQUIRED
    assert cloud.connect()._verify is default  # the system trust is loaded once per process, not per connection


def test_the_default_trust_follows_ssl_cert_file(cloud: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    import ssl

    default = cloud.connect()._verify
    monkeypatch.setenv("SSL_CERT_FILE", certifi.where())
    own = cloud.connect()._verify
    assert isinstance(own, ssl.SSLContext) and own is not default
