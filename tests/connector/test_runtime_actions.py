"""The built-in actions through ``run_action`` (validation, dispatch, output schema) against the fake cloud."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from connector.errors import InputError
from connector.runtime import Runtime


@pytest.fixture(scope="module")
def runtime() -> Runtime:
    return Runtime(load_entrypoints=False, validate_output=True)


def test_get_current_user_runs_through_the_runtime(runtime: Runtime, cloud: Any) -> None:
    result = runtime.run_action("get_current_user", {}, cloud.connect())
    assert result["user_id"] == cloud.USER_ID
    assert result["business_unit_id"] == cloud.BU_ID
    assert result["business_unit_name"] == "contoso"
    assert result["organization_id"] == cloud.ORG_ID
    assert result["is_application_user"] is True


def test_get_current_user_bad_input_is_refused_before_any_request(runtime: Runtime, cloud: Any) -> None:
    with pytest.raises(InputError) as err:
        runtime.run_action("get_current_user", {"impersonate": "not-a-guid", "extra": 1}, cloud.connect())
    assert [p.path for p in err.value.problems] == ["$", "$.impersonate"]
    assert "unexpected property 'extra'" in err.value.problems[0].message
    assert cloud.requests == []


def test_get_current_user_impersonation_header(runtime: Runtime, cloud: Any) -> None:
    oid = "5f8e2a1c-3b4d-4e6f-8a9b-0c1d2e3f4a5b"
    runtime.run_action("get_current_user", {"impersonate": oid}, cloud.connect())
    whoami = [r for r in cloud.api_requests if r.url.path.endswith("/WhoAmI")]
    assert [r.headers.get("CallerObjectId") for r in whoami] == [oid]


def test_test_connection_runs_through_the_runtime(runtime: Runtime, cloud: Any) -> None:
    result = runtime.run_action("test_connection", {}, cloud.connect())
    assert result["ok"] is True
    assert [c["name"] for c in result["checks"] if c["ok"]] == [c["name"] for c in result["checks"]]
    assert result["user_id"] == cloud.USER_ID


def test_test_connection_refuses_inputs(runtime: Runtime, cloud: Any) -> None:
    with pytest.raises(InputError) as err:
        runtime.run_action("test_connection", {"verbose": True}, cloud.connect())
    assert err.value.problems[0].path == "$"


def test_test_connection_explains_missing_application_user(runtime: Runtime, cloud: Any) -> None:
    body = cloud.error_body("0x80072560", "The user is not a member of the organization.")
    cloud.api_queue.append(httpx.Response(403, json=body))
    result = runtime.run_action("test_connection", {}, cloud.connect())
    assert result["ok"] is False
    assert "application user" in (result["fix"] or "")


def test_runtime_reuses_one_connection_per_configuration(cloud: Any) -> None:
    runtime = Runtime(load_entrypoints=False)
    transport = httpx.MockTransport(cloud.handler)
    first = runtime.connection(cloud.config(), transport=transport, clock=cloud.clock)
    again = runtime.connection(cloud.config(), transport=transport, clock=cloud.clock)
    other = runtime.connection(cloud.config(client_secret="another-secret"), transport=transport, clock=cloud.clock)
    assert first is again
    assert other is not first
    runtime.close()


class _BrokenRun:
    """A run that yields one record, then fails as a lost connection would."""

    returned, more_records, next_page_token = 1, False, None

    def __iter__(self) -> Any:
        yield {"name": "first"}
        raise httpx.ReadError("connection lost")


def test_record_stream_reports_its_end_once_with_the_failure() -> None:
    from connector.runtime import RecordStream

    ends: list[Exception | None] = []
    stream = RecordStream(_BrokenRun(), ends.append)  # type: ignore[arg-type]
    seen = []
    with pytest.raises(httpx.ReadError):
        for record in stream:
            seen.append(record)
    assert seen == [{"name": "first"}]
    assert [type(e).__name__ for e in ends] == ["ReadError"]
    assert stream.summary() == {"returned": 1, "more_records": False, "next_page_token": None}


def test_stream_records_refuses_an_action_that_does_not_stream(runtime: Runtime, cloud: Any) -> None:
    with pytest.raises(InputError) as err:
        runtime.stream_records("get_current_user", {}, cloud.connect())
    assert err.value.problems[0].path == "$action"
    assert cloud.requests == []
