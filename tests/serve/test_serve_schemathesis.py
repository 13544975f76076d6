"""Schemathesis against the generated OpenAPI document: no input makes the server fail (5xx), except the documented
502 that maps an error Dataverse or the identity platform answered.

Every generated request names the emulator's connection (``emu``) so the actions really run; the connection itself
is never deleted or replaced by the probe. Derandomized, so a failure reproduces.
"""

from __future__ import annotations

from typing import Any

import hypothesis
import schemathesis

from tests.serve.conftest import API_TOKEN


def _aimed(case: Any) -> None:
    """Name the live connection in bodies; leave the live connection itself alone."""
    if isinstance(case.body, dict) and "connection" in case.body:
        case.body["connection"] = "emu"
    if case.path_parameters and case.path_parameters.get("name") == "emu":
        case.path_parameters["name"] = "emu-probe"


def test_no_input_makes_the_server_fail(server: str) -> None:
    headers = {"Authorization": f"Bearer {API_TOKEN}"}
    schema = schemathesis.openapi.from_url(f"{server}/openapi.json", headers=headers)
    failures: list[str] = []
    operations = [result.ok() for result in schema.get_all_operations()]
    calls = 0

    @hypothesis.settings(
        max_examples=10, deadline=None, derandomize=True, suppress_health_check=list(hypothesis.HealthCheck)
    )
    @hypothesis.given(data=hypothesis.strategies.data())
    def probe(operation: Any, data: Any) -> None:
        nonlocal calls
        case = data.draw(operation.as_strategy())
        _aimed(case)
        response = case.call(headers=headers)
        calls += 1
        if response.status_code >= 500:
            kind = response.json().get("type", "").rsplit("/", 1)[-1]
            if response.status_code != 502 or kind not in ("dataverse", "auth"):
                failures.append(f"{case.method} {case.formatted_path}: {response.status_code} {response.text[:300]}")

    for operation in operations:
        probe(operation)
    assert len(operations) >= 39 and calls > 200
    assert failures == []
