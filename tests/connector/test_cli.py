"""``d365``: every exit code of ``d365 run`` (5 and 130 of long runs also in ``tests/e2e/test_cli_*``), input sources,
and the manifest commands."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner

from connector import cli
from connector.connection import Connection
from connector.runtime import Runtime
from tests.conftest import assert_no_secrets


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


@pytest.fixture
def wired(cloud: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """A connection file, and a runtime whose connections talk to the fake cloud instead of the network."""
    runtime = Runtime(load_entrypoints=False, validate_output=True)

    def connection(self: Runtime, config: dict[str, Any], *, base_dir: Path | None = None, **_: Any) -> Connection:
        return Connection.from_config(
            config, base_dir=base_dir, transport=httpx.MockTransport(cloud.handler), clock=cloud.clock
        )

    monkeypatch.setattr(Runtime, "connection", connection)
    monkeypatch.setattr(cli, "_runtime", lambda: runtime)
    path = tmp_path / "conn.json"
    path.write_text(json.dumps(cloud.config()), encoding="utf-8")
    return path


def test_get_current_user_exit_0_prints_json(runner: CliRunner, wired: Path, cloud: Any) -> None:
    result = runner.invoke(cli.main, ["run", "get_current_user", "--connection", str(wired), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["user_id"] == cloud.USER_ID
    assert_no_secrets(result.output)


def test_get_current_user_exit_2_on_bad_input_without_request(runner: CliRunner, wired: Path, cloud: Any) -> None:
    result = runner.invoke(
        cli.main, ["run", "get_current_user", "--connection", str(wired), "--set", "impersonate=nope", "--json"]
    )
    assert result.exit_code == 2
    error = json.loads(result.stderr)
    assert error["problems"][0]["path"] == "$.impersonate"
    assert cloud.requests == []


def test_get_current_user_exit_3_on_bad_connection_file_without_request(
    runner: CliRunner, wired: Path, cloud: Any
) -> None:
    config = json.loads(wired.read_text())
    config["organization_url"] = "ftp://contoso"
    wired.write_text(json.dumps(config))
    result = runner.invoke(cli.main, ["run", "get_current_user", "--connection", str(wired)])
    assert result.exit_code == 3
    assert "organization_url" in result.stderr
    assert cloud.requests == []
    assert_no_secrets(result.output)


def test_run_exit_3_when_connection_missing(runner: CliRunner, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("D365_CONNECTION", raising=False)
    result = runner.invoke(cli.main, ["run", "get_current_user"])
    assert result.exit_code == 3
    assert "--connection FILE or set D365_CONNECTION" in result.stderr


def test_run_exit_3_on_auth_refusal(runner: CliRunner, wired: Path, cloud: Any) -> None:
    cloud.token_queue.append(cloud.aad_error(7000215, "invalid_client", "Invalid client secret provided."))
    result = runner.invoke(cli.main, ["run", "get_current_user", "--connection", str(wired), "--json"])
    assert result.exit_code == 3
    assert json.loads(result.stderr)["code"] == "AADSTS7000215"
    assert_no_secrets(result.output)


def test_run_exit_4_on_dataverse_error(runner: CliRunner, wired: Path, cloud: Any) -> None:
    body = cloud.error_body("0x80040220", "The user does not hold the necessary privileges.")
    cloud.api_queue.append(httpx.Response(403, json=body, headers={"REQ_ID": "r-1"}))
    result = runner.invoke(cli.main, ["run", "get_current_user", "--connection", str(wired), "--json"])
    assert result.exit_code == 4
    error = json.loads(result.stderr)
    assert (error["status_code"], error["code"], error["request_id"]) == (403, "0x80040220", "r-1")


def test_run_exit_1_on_internal_error(
    runner: CliRunner, wired: Path, cloud: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(inputs: Any, connection: Any) -> Any:
        raise RuntimeError("bug")

    monkeypatch.setattr("connector.diagnostics.get_current_user", lambda *a, **k: broken(a, k))
    result = runner.invoke(cli.main, ["run", "get_current_user", "--connection", str(wired)])
    assert result.exit_code == 1


def test_run_exit_130_when_interrupted_outside_a_long_action(
    runner: CliRunner, wired: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def interrupted(*args: Any, **kwargs: Any) -> Any:
        raise KeyboardInterrupt

    monkeypatch.setattr("connector.diagnostics.get_current_user", interrupted)
    result = runner.invoke(cli.main, ["run", "get_current_user", "--connection", str(wired)])
    assert result.exit_code == cli.EXIT_INTERRUPTED == 130
    assert "get_current_user: interrupted; no result is known" in result.stderr
    assert result.stdout == ""


def test_run_progress_takes_four_modes(runner: CliRunner, wired: Path) -> None:
    result = runner.invoke(cli.main, ["run", "get_current_user", "--connection", str(wired), "--progress=bars"])
    assert result.exit_code == 2
    assert "'auto', 'none', 'rich', 'json'" in result.stderr
    quiet = runner.invoke(cli.main, ["run", "get_current_user", "--connection", str(wired), "--progress=json"])
    assert quiet.exit_code == 0 and quiet.stderr == ""  # an action without long work reports nothing


def test_run_unknown_action_is_exit_2(runner: CliRunner, wired: Path) -> None:
    result = runner.invoke(cli.main, ["run", "get_entityy", "--connection", str(wired)])
    assert result.exit_code == 2
    assert "unknown action 'get_entityy'" in result.stderr


def test_run_reads_inputs_from_stdin_file_and_set(runner: CliRunner, wired: Path, cloud: Any, tmp_path: Path) -> None:
    oid = "5f8e2a1c-3b4d-4e6f-8a9b-0c1d2e3f4a5b"
    result = runner.invoke(
        cli.main,
        ["run", "get_current_user", "--connection", str(wired), "--input", "-"],
        input=json.dumps({"impersonate": oid}),
    )
    assert result.exit_code == 0, result.output
    inputs = tmp_path / "in.json"
    inputs.write_text("[1]")
    result = runner.invoke(cli.main, ["run", "get_current_user", "--connection", str(wired), "--input", str(inputs)])
    assert result.exit_code == 2
    assert "inputs must be a JSON object" in result.stderr


def test_connection_env_var_is_read(runner: CliRunner, wired: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("D365_CONNECTION", str(wired))
    result = runner.invoke(cli.main, ["connection", "test", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["ok"] is True


def test_connection_test_exit_3_with_fix(runner: CliRunner, wired: Path, cloud: Any) -> None:
    cloud.token_queue.append(cloud.aad_error(700016, "unauthorized_client", "Application not found in the directory."))
    result = runner.invoke(cli.main, ["connection", "test", "--connection", str(wired), "--json"])
    assert result.exit_code == 3
    report = json.loads(result.stdout)
    assert report["ok"] is False and report["fix"]


def test_connection_login_refuses_other_kinds_as_text_or_json(runner: CliRunner, wired: Path, cloud: Any) -> None:
    text = runner.invoke(cli.main, ["connection", "login", "--connection", str(wired), "--no-browser"])
    assert text.exit_code == 3 and text.stderr.startswith("error: login is for kind authorization_code")
    as_json = runner.invoke(cli.main, ["connection", "login", "--connection", str(wired), "--no-browser", "--json"])
    assert as_json.exit_code == 3 and json.loads(as_json.stderr)["field"] == "kind"
    assert cloud.requests == []


def test_set_options_key_equals_is_text_and_colon_equals_is_json() -> None:
    pairs = (
        "key.accountnumber=A1",
        "fields.telephone1=5550100",
        "fields.numberofemployees:=42",
        "flag:=true",
        "nothing:=null",
        'select:=["name"]',
        "name=Contoso Ltd",
        "top=5",
        "empty=",
        "fetch_xml=<fetch top='5'>",
        "url=a:=b",
    )
    assert cli.parse_set_options(pairs) == {
        "key": {"accountnumber": "A1"},
        "fields": {"telephone1": "5550100", "numberofemployees": 42},
        "flag": True,
        "nothing": None,
        "select": ["name"],
        "name": "Contoso Ltd",
        "top": "5",
        "empty": "",
        "fetch_xml": "<fetch top='5'>",
        "url": "a:=b",
    }
    assert cli.parse_set_options(('attribute:={"type": "money"}', "attribute.label=B")) == {
        "attribute": {"type": "money", "label": "B"}
    }


@pytest.mark.parametrize(
    ("pair", "path", "words"),
    [
        ("novalue", "--set novalue", "KEY=TEXT or KEY:=JSON"),
        ("=x", "--set (no key)", "KEY=TEXT or KEY:=JSON"),
        ("fields..name=x", "--set fields..name", "KEY=TEXT or KEY:=JSON"),
        ("top:=five", "--set top", "not valid JSON"),
        ("fields.name:=Contoso", "--set fields.name", "write fields.name=... instead"),
        ("headers.Authorization:Bearer SENTINEL-tok", "--set headers.Authorization", "KEY=TEXT or KEY:=JSON"),
    ],
)
def test_set_options_refuse_with_the_key_named(pair: str, path: str, words: str) -> None:
    with pytest.raises(cli.InputError) as err:
        cli.parse_set_options((pair,))
    assert [p.path for p in err.value.problems] == [path]
    assert words in err.value.problems[0].message


def test_set_options_refuse_a_value_that_is_also_an_object() -> None:
    with pytest.raises(cli.InputError) as err:
        cli.parse_set_options(("key=1", "key.accountnumber=A1"))
    assert err.value.problems[0].path == "$.key.accountnumber"


def test_bad_json_after_colon_equals_is_exit_2_naming_the_key_without_request(
    runner: CliRunner, wired: Path, cloud: Any
) -> None:
    result = runner.invoke(
        cli.main, ["run", "get_current_user", "--connection", str(wired), "--set", "impersonate:=nope", "--json"]
    )
    assert result.exit_code == 2
    problem = json.loads(result.stderr)["problems"][0]
    assert problem["path"] == "--set impersonate" and "not valid JSON" in problem["message"]
    assert "nope" not in result.stderr
    assert cloud.requests == []
    param = runner.invoke(cli.main, ["datasource", "columns", "--connection", str(wired), "--param", "table:=x"])
    assert param.exit_code == 2 and "--param table" in param.stderr


def test_set_text_is_never_taken_for_a_number(runner: CliRunner, wired: Path, cloud: Any) -> None:
    """``impersonate=5`` used to arrive as the integer 5; it is the string "5" now, refused as not a GUID."""
    result = runner.invoke(
        cli.main, ["run", "get_current_user", "--connection", str(wired), "--set", "impersonate=5", "--json"]
    )
    assert result.exit_code == 2
    assert json.loads(result.stderr)["problems"][0]["message"].startswith('"5" is not valid here')
    typed = runner.invoke(
        cli.main, ["run", "get_current_user", "--connection", str(wired), "--set", "impersonate:=5", "--json"]
    )
    assert typed.exit_code == 2
    assert json.loads(typed.stderr)["problems"][0]["message"].startswith("expected string, got integer")


def test_actions_list_and_describe(runner: CliRunner) -> None:
    listed = runner.invoke(cli.main, ["actions", "list", "--json"])
    assert listed.exit_code == 0
    rows = {r["id"]: r for r in json.loads(listed.stdout)}
    assert rows["get_current_user"]["provider"] == "builtin"
    described = runner.invoke(cli.main, ["actions", "describe", "test_connection"])
    assert json.loads(described.stdout)["output"]["title"] == "Test connection: output"
    assert runner.invoke(cli.main, ["actions", "describe", "nope"]).exit_code == 2


def test_manifest_commands(runner: CliRunner) -> None:
    assert runner.invoke(cli.main, ["manifest", "validate"]).stdout.startswith("manifest ok:")
    shown = json.loads(runner.invoke(cli.main, ["manifest", "show"]).stdout)
    assert {a["id"] for a in shown["actions"]} >= {"get_current_user", "test_connection"}
    schema = json.loads(runner.invoke(cli.main, ["manifest", "schema", "get_current_user", "--output"]).stdout)
    assert "user_id" in schema["properties"]
    assert runner.invoke(cli.main, ["--version"]).stdout.startswith("d365, version ")
