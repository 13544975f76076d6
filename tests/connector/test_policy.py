"""The operator policy: a connection cannot send tokens or secrets to a host of its choosing, nor (hosted) read files
and variables the operator did not list. Refusals happen while the settings are read, before any request or read."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from connector.clock import FakeClock
from connector.connection import Connection
from connector.connection_config import parse_config
from connector.errors import ConnectionConfigError
from connector.policy import OperatorPolicy
from dataverse_emulator.testing import running_emulator

ORG = "https://contoso.crm.dynamics.com"
APP = "11111111-2222-3333-4444-555555555555"
TENANT = "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee"
HOSTED = OperatorPolicy(preset="hosted")
LOCAL = OperatorPolicy(preset="local")


class Listener:
    """A plain socket server on another loopback port that records every connection it accepts."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        self._stop = False
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while True:
            conn, _ = self.sock.accept()
            if self._stop:
                conn.close()
                return
            self.connections += 1
            conn.close()

    def close(self) -> None:
        self._stop = True
        socket.create_connection(("127.0.0.1", self.port)).close()  # wakes accept(), which then returns
        self._thread.join(timeout=5)
        self.sock.close()


@pytest.fixture
def listener() -> Iterator[Listener]:
    server = Listener()
    yield server
    server.close()


def _secrets(tmp_path: Path) -> dict[str, Any]:
    missing = tmp_path / "does-not-exist"
    return {
        "inline": "SENTINEL-client-secret-5b1d9c",
        "file": {"file": str(missing)},
        "env": {"env": "D365_POLICY_TEST_UNSET_VARIABLE"},
    }


@pytest.mark.parametrize("policy", [HOSTED, LOCAL], ids=["hosted", "local"])
@pytest.mark.parametrize("secret", ["inline", "file", "env"])
def test_token_url_on_a_listener_is_refused_before_any_read_or_request(
    listener: Listener, tmp_path: Path, policy: OperatorPolicy, secret: str
) -> None:
    data = {
        "kind": "client_credentials",
        "organization_url": ORG,
        "client_id": APP,
        "client_secret": _secrets(tmp_path)[secret],
        "token_url": f"http://127.0.0.1:{listener.port}/t/oauth2/v2.0/token",
        "allow_insecure_loopback": True,
    }
    with pytest.raises(ConnectionConfigError) as info:
        Connection.from_config(data, clock=FakeClock(), policy=policy).token()
    # the policy's refusal, not "does not exist" or "not set": the secret was never read
    assert info.value.field == "token_url" and "D365_ALLOWED_AUTHORITIES" in info.value.message
    assert listener.connections == 0


@pytest.mark.parametrize("secret", [None, "inline", "file", "env"])
def test_identity_endpoint_on_a_listener_is_refused_before_any_read_or_request(
    listener: Listener, tmp_path: Path, secret: str | None
) -> None:
    data: dict[str, Any] = {
        "kind": "managed_identity",
        "organization_url": ORG,
        "identity_endpoint": f"http://127.0.0.1:{listener.port}/msi/token",
        "identity_style": "app_service",
    }
    if secret:
        data["identity_header"] = _secrets(tmp_path)[secret]
    with pytest.raises(ConnectionConfigError) as info:
        Connection.from_config(data, clock=FakeClock(), policy=HOSTED).token()
    assert info.value.field == "identity_endpoint" and "IDENTITY_ENDPOINT" in info.value.message
    assert listener.connections == 0


@pytest.mark.parametrize("field", ["token_url", "authorize_url", "authority_host"])
def test_a_remote_non_microsoft_host_is_refused_in_both_presets(field: str) -> None:
    value = "evil.example.com" if field == "authority_host" else "https://evil.example.com/t/oauth2/v2.0/token"
    data = {
        "kind": "authorization_code",
        "organization_url": ORG,
        "tenant_id": TENANT,
        "client_id": APP,
        field: value,
    }
    for policy in (HOSTED, LOCAL):
        with pytest.raises(ConnectionConfigError) as info:
            parse_config(data, policy=policy)
        assert info.value.field == field and "evil.example.com" in info.value.message


@pytest.mark.parametrize("host", ["login.microsoftonline.com", "login.microsoftonline.us", "login.chinacloudapi.cn"])
def test_microsoft_identity_hosts_are_accepted(host: str) -> None:
    data = {
        "kind": "client_credentials",
        "organization_url": ORG,
        "client_id": APP,
        "client_secret": "s",
        "token_url": f"https://{host}/t/oauth2/v2.0/token",
    }
    assert parse_config(data, policy=HOSTED).token_url.startswith(f"https://{host}/")
    del data["token_url"]
    config = parse_config({**data, "tenant_id": TENANT, "authority_host": host}, policy=HOSTED)
    assert config.token_url == f"https://{host}/{TENANT}/oauth2/v2.0/token"


def test_operator_listed_hosts_are_accepted(listener: Listener) -> None:
    policy = OperatorPolicy.from_env(environ={"D365_ALLOWED_AUTHORITIES": "sts.example.com, 127.0.0.1"})
    assert policy.preset == "hosted"
    data = {
        "kind": "client_credentials",
        "organization_url": ORG,
        "client_id": APP,
        "client_secret": "s",
        "token_url": "https://sts.example.com/token",
    }
    assert parse_config(data, policy=policy).token_url == "https://sts.example.com/token"
    endpoint = f"http://127.0.0.1:{listener.port}/msi/token"
    mi = {"kind": "managed_identity", "organization_url": ORG, "identity_endpoint": endpoint}
    assert parse_config(mi, policy=policy).identity_endpoint == endpoint
    with pytest.raises(ConnectionConfigError):
        parse_config(mi, policy=HOSTED)


def test_the_listener_sees_a_listed_token_url(listener: Listener) -> None:
    """The refusal tests' listener does record a request that is let through."""
    data = {
        "kind": "client_credentials",
        "organization_url": ORG,
        "client_id": APP,
        "client_secret": "s",
        "token_url": f"http://127.0.0.1:{listener.port}/t/oauth2/v2.0/token",
        "allow_insecure_loopback": True,
    }
    policy = OperatorPolicy(allowed_authorities=frozenset({"127.0.0.1"}))
    conn = Connection.from_config(data, clock=FakeClock(), policy=policy)
    with conn, pytest.raises(Exception):  # noqa: B017
        conn.token()  # the listener hangs up: any error will do, the connection is what counts
    assert listener.connections >= 1


def test_identity_endpoint_imds_and_the_platforms_own_are_accepted(monkeypatch: pytest.MonkeyPatch) -> None:
    mi = {"kind": "managed_identity", "organization_url": ORG}
    imds = "http://169.254.169.254/metadata/identity/oauth2/token"
    assert parse_config({**mi, "identity_endpoint": imds}, policy=HOSTED).identity_endpoint == imds
    platform = "http://localhost:42356/msi/token"
    with pytest.raises(ConnectionConfigError):
        parse_config({**mi, "identity_endpoint": platform}, policy=HOSTED)
    monkeypatch.setenv("IDENTITY_ENDPOINT", platform)
    assert parse_config({**mi, "identity_endpoint": platform}, policy=HOSTED).identity_endpoint == platform


def test_hosted_reads_files_and_variables_only_where_the_operator_allows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    (allowed / "secret.txt").write_text("from-file")
    (tmp_path / "outside.txt").write_text("outside-value")
    monkeypatch.setenv("APP_SECRET", "from-env")
    monkeypatch.setenv("OTHER_SECRET", "other-value")
    policy = OperatorPolicy.from_env(
        environ={"D365_POLICY": "hosted", "D365_ALLOWED_PATHS": str(allowed), "D365_ALLOWED_ENV_PREFIXES": "APP_"}
    )
    base = {"kind": "client_credentials", "organization_url": ORG, "client_id": APP, "tenant_id": TENANT}

    def secret_of(value: Any, policy: OperatorPolicy) -> str:
        config = parse_config({**base, "client_secret": value}, base_dir=tmp_path, policy=policy)
        assert config.client_secret is not None
        return config.client_secret.reveal()

    assert secret_of({"file": "allowed/secret.txt"}, policy) == "from-file"
    assert secret_of({"env": "APP_SECRET"}, policy) == "from-env"
    for refused in ({"file": "outside.txt"}, {"file": "allowed/../outside.txt"}, {"env": "OTHER_SECRET"}):
        with pytest.raises(ConnectionConfigError) as info:
            secret_of(refused, policy)
        assert info.value.field == "client_secret" and "D365_ALLOWED_" in info.value.message
        assert "outside-value" not in info.value.message and "other-value" not in info.value.message
    with pytest.raises(ConnectionConfigError) as info:
        parse_config({**base, "client_secret": "s", "ca_file": "outside.txt"}, base_dir=tmp_path, policy=policy)
    assert info.value.field == "ca_file"
    # local: the person running the connector is the operator
    assert secret_of({"file": "outside.txt"}, LOCAL) == "outside-value"
    assert secret_of({"env": "OTHER_SECRET"}, LOCAL) == "other-value"


def test_the_default_preset_is_hosted_for_the_library_and_an_unknown_one_is_refused() -> None:
    assert OperatorPolicy.from_env(environ={}).preset == "hosted"
    assert OperatorPolicy.from_env(default="local", environ={}).preset == "local"
    assert OperatorPolicy.from_env(default="local", environ={"D365_POLICY": "hosted"}).preset == "hosted"
    with pytest.raises(ConnectionConfigError, match="D365_POLICY"):
        OperatorPolicy.from_env(environ={"D365_POLICY": "open"})


@pytest.mark.parametrize("policy", [HOSTED, LOCAL], ids=["hosted", "local"])
@pytest.mark.parametrize("kind", ["client_credentials", "managed_identity"])
def test_emulator_connections_work_under_both_presets(policy: OperatorPolicy, kind: str) -> None:
    with (
        running_emulator() as emulator,
        Connection.from_config(emulator.connection_config(kind), policy=policy) as conn,
    ):
        assert conn.token()


def test_emulator_with_tls_works_hosted_once_its_folder_is_listed(tmp_path: Path) -> None:
    with running_emulator(tls=True, data_dir=str(tmp_path)) as emulator:
        config = emulator.connection_config()
        with pytest.raises(ConnectionConfigError) as info:
            Connection.from_config(config, policy=HOSTED)
        assert info.value.field == "ca_file"
        with Connection.from_config(config, policy=OperatorPolicy(allowed_paths=(tmp_path.resolve(),))) as conn:
            assert conn.token()
        with Connection.from_config(config, policy=LOCAL) as conn:
            assert conn.token()


def test_the_cli_is_local_unless_the_operator_says_hosted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from click.testing import CliRunner

    from connector import cli

    with running_emulator() as emulator:
        config = emulator.connection_config()
        (tmp_path / "secret.txt").write_text(config["client_secret"], encoding="utf-8")
        path = tmp_path / "conn.json"
        path.write_text(json.dumps({**config, "client_secret": {"file": "secret.txt"}}), encoding="utf-8")
        args = ["run", "get_current_user", "--connection", str(path), "--json"]
        monkeypatch.delenv("D365_POLICY")
        result = CliRunner().invoke(cli.main, args)
        assert result.exit_code == 0, result.output
        monkeypatch.setenv("D365_POLICY", "hosted")
        result = CliRunner().invoke(cli.main, args)
        assert result.exit_code == 3 and json.loads(result.stderr)["field"] == "client_secret"
        monkeypatch.setenv("D365_ALLOWED_PATHS", str(tmp_path))
        assert CliRunner().invoke(cli.main, args).exit_code == 0
