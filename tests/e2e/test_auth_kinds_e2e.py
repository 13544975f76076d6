"""``d365 connection test`` for every connection kind against the emulator's identity endpoints, over a socket."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from connector.cli import main
from connector.connection import Connection
from connector.token_store import TokenStore
from dataverse_emulator.testing import EmulatorHandle
from tests.conftest import assert_no_secrets


class _Result:
    def __init__(self, returncode: int, stdout: str, stderr: str) -> None:
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr


def d365(*args: str) -> _Result:
    """Run the CLI in-process (click's runner): the same code path as the console script, without a new interpreter."""
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    return _Result(result.exit_code, result.stdout, result.stderr)


def _signed_in(emulator: EmulatorHandle, config: dict[str, Any], folder: Path) -> None:
    """Sign the emulator's test user in through the library (the CLI login has its own test) into a token store."""
    from urllib.parse import urljoin

    import httpx

    from connector.auth import AuthorizationCodeProvider

    config["token_store"] = str(folder / "token.json")
    with Connection.from_config(config) as conn:
        provider = conn.token_provider
        assert isinstance(provider, AuthorizationCodeProvider)
        login = provider.begin_login("http://127.0.0.1:8400/")
        answer = httpx.get(login.url, follow_redirects=False, timeout=30)
        provider.finish_login(login, urljoin(login.url, answer.headers["location"]))
    assert TokenStore(folder / "token.json").load()


@pytest.mark.parametrize(
    "kind", ["client_credentials", "certificate", "authorization_code", "managed_identity", "app_service"]
)
def test_connection_test_works_for_every_kind(fresh_emulator: EmulatorHandle, tmp_path: Path, kind: str) -> None:
    config = fresh_emulator.connection_config("managed_identity" if kind == "app_service" else kind)
    if kind == "authorization_code":
        _signed_in(fresh_emulator, config, tmp_path)
    if kind == "app_service":
        config.update(identity_endpoint=f"{fresh_emulator.base_url}/msi/token", identity_style="app_service")
    path = tmp_path / "conn.json"
    path.write_text(json.dumps(config))
    result = d365("connection", "test", "--connection", str(path), "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert report["ok"] is True
    assert [c["name"] for c in report["checks"]] == ["token", "audience", "whoami"]
    assert_no_secrets(result.stdout, result.stderr)


def test_certificate_not_registered_is_diagnosed(fresh_emulator: EmulatorHandle, tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    config = fresh_emulator.connection_config("certificate")
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    key_file = tmp_path / "other.key"
    key_file.write_bytes(
        other.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    config["private_key_file"] = str(key_file)  # signed with a key that does not match the registered certificate
    path = tmp_path / "conn.json"
    path.write_text(json.dumps(config))
    result = d365("connection", "test", "--connection", str(path), "--json")
    assert result.returncode == 3
    report = json.loads(result.stdout)
    assert "AADSTS700027" in report["diagnosis"]
    assert "certificate" in report["fix"]


def test_managed_identity_wrong_header_is_diagnosed(fresh_emulator: EmulatorHandle, tmp_path: Path) -> None:
    config = fresh_emulator.connection_config("managed_identity")
    config.update(
        identity_endpoint=f"{fresh_emulator.base_url}/msi/token",
        identity_style="app_service",
        identity_header="SENTINEL-client-secret-5b1d9c",
    )
    path = tmp_path / "conn.json"
    path.write_text(json.dumps(config))
    result = d365("connection", "test", "--connection", str(path), "--json")
    assert result.returncode == 3
    report = json.loads(result.stdout)
    assert "identity" in report["fix"].lower()
    assert_no_secrets(result.stdout, result.stderr)
