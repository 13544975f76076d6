"""The calibrated execution-time model (``execution.py``, BEHAVIOURS rows ``exec-*``): what a single request, a
``$batch`` and a bulk message cost, the ceilings of the three write paths and their ratios under Dataverse's limits,
the wait a request takes (recorded on the injected clock, never slept), the 2-minute timeout and the message-size
limit. Costs and ratios are pinned; no wall-clock time is measured."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from dataverse_emulator import throttle as throttle_module
from dataverse_emulator.execution import Costs, fastest_run_s, request_kind, sustained_rate
from dataverse_emulator.testing import EmulatorHandle, running_emulator
from dataverse_emulator.throttle import Throttle, limits_for

from .conftest import FakeClock

DATAVERSE = {"window_s": 300.0, "max_requests": 6000, "max_exec_s": 1200.0, "concurrency": 52}


def targets(n: int, prefix: str = "t") -> dict[str, list[dict[str, str]]]:
    return {"Targets": [{"@odata.type": "Microsoft.Dynamics.CRM.account", "name": f"{prefix}{i}"} for i in range(n)]}


def batch_body(n: int) -> tuple[str, str]:
    boundary = "batch_model"
    parts = [
        f"--{boundary}\r\nContent-Type: application/http\r\nContent-Transfer-Encoding: binary\r\n\r\n"
        f"POST accounts HTTP/1.1\r\nContent-Type: application/json\r\n\r\n{json.dumps({'name': f'b{i}'})}\r\n"
        for i in range(n)
    ]
    return "".join(parts) + f"--{boundary}--\r\n", f"multipart/mixed; boundary={boundary}"


@pytest.fixture
def modelled() -> Iterator[EmulatorHandle]:
    with running_emulator(throttle="dataverse", time_scale=4, clock=FakeClock(), seed=3) as h:
        yield h


def client(h: EmulatorHandle) -> httpx.Client:
    return httpx.Client(
        base_url=h.api_url + "/", headers={"Authorization": f"Bearer {h.token()}"}, timeout=60, trust_env=False
    )


def test_costs_per_request_kind() -> None:
    costs = Costs()
    assert costs.of("single", 1) == pytest.approx(0.0072)
    assert costs.of("batch", 1000) == pytest.approx(7.2)  # its operations one after another, no gain per operation
    assert costs.of("bulk", 100) == pytest.approx(0.0072 * 21)  # one pass + 100 records at a fifth of an operation
    assert Costs(bulk_record_ratio=1.0).of("bulk", 100) == pytest.approx(0.0072 * 101)
    assert [request_kind(p) for p in ("/api/data/v9.2/$batch", "/api/data/v9.2/accounts")] == ["batch", "single"]
    assert request_kind("/api/data/v9.2/accounts/Microsoft.Dynamics.CRM.UpsertMultiple") == "bulk"
    with pytest.raises(ValueError, match="positive"):
        Costs(bulk_record_ratio=0)


def test_ceilings_of_the_three_paths_keep_their_documented_ratios() -> None:
    costs = Costs()
    single = sustained_rate(costs, "single", 1, **DATAVERSE)
    batch = sustained_rate(costs, "batch", 1000, **DATAVERSE)
    bulk = sustained_rate(costs, "bulk", 100, **DATAVERSE)
    assert single == pytest.approx(20.0)  # the request limit alone: 6,000 per 300 s
    assert batch == pytest.approx(1200 / 300 / 0.0072)  # the execution limit: 2,000,000 rows an hour
    assert bulk == pytest.approx(2000.0)  # chunks of 100: the request limit again, 100 records each
    assert (bulk / single, round(bulk / batch, 2)) == (pytest.approx(100.0), 3.6)
    bulk_1000 = sustained_rate(costs, "bulk", 1000, **DATAVERSE)
    assert bulk_1000 / batch == pytest.approx(1 / (0.2 + 1 / 1000))  # the GUESS ratio sets what bulk gains
    # the sensitivity the option shows: at a ratio of 1 a bulk record costs an operation, no better than $batch
    assert sustained_rate(Costs(bulk_record_ratio=1.0), "bulk", 1000, **DATAVERSE) < batch


def test_fastest_run_lets_one_window_through_then_one_per_window() -> None:
    costs = Costs()
    limits = {"window_s": 10.0, "max_requests": 20, "max_exec_s": 1000.0, "concurrency": 52}
    # 100 single requests: 20 at once, then 20 per window: the last is admitted after 4 windows
    assert fastest_run_s(costs, "single", 100, 1, **limits) == pytest.approx(40 + 0.0072)
    # one bulk request of 20,000 records runs its records one after another
    assert fastest_run_s(costs, "bulk", 20_000, 20_000, **limits) == pytest.approx(0.0072 * 4001)


def test_the_ceiling_is_what_a_client_honouring_the_dop_hint_reaches() -> None:
    """BEHAVIOURS ``exec-ceiling-dop-hint``: at most the hint in flight, each request its cost plus its round trip."""
    costs, cost = Costs(), 0.0072 * 201  # one chunk of 1,000
    limits = {"window_s": 300.0, "max_requests": 6000, "max_exec_s": 1200.0}
    # 20 chunks, 4 in flight (the emulator's default hint): 5 rounds
    hinted = fastest_run_s(costs, "bulk", 20_000, 1000, **limits, concurrency=4, round_trip_s=0.02)
    assert hinted == pytest.approx(5 * (cost + 0.02))
    # at the limit of 52 all 20 run at once: one chunk's time, which no client honouring a hint of 4 reaches
    assert fastest_run_s(costs, "bulk", 20_000, 1000, **limits, concurrency=52) == pytest.approx(cost)


def test_the_ceiling_follows_the_emulators_own_admission_rule() -> None:
    """The emulator charges a request one operation when it is admitted and the rest when it finishes, so chunks
    longer than the window's share of the budget need not wait for the next window, as a whole-cost-at-admission
    closed form would make them: the bound is what a perfect client reaches under the emulator's rule."""
    costs, cost = Costs(), 0.0072 * 201  # one chunk of 1,000
    limits = {"window_s": 3.0, "max_requests": 60, "max_exec_s": 12.0, "concurrency": 4, "round_trip_s": 0.02}
    # 4 chunks in flight charge one operation each at admission: every round is admitted at once, 5 rounds in all
    assert fastest_run_s(costs, "bulk", 20_000, 1000, **limits) == pytest.approx(5 * (cost + 0.02))
    # a budget of 5 whole chunks per window: the closed form holds the sixth for the next window, the emulator admits
    # all six at once (each is charged one operation until it finishes)
    tight = {**limits, "max_exec_s": 5 * cost, "concurrency": 52}
    assert fastest_run_s(costs, "bulk", 6000, 1000, **tight) == pytest.approx(cost + 0.02)


def test_a_bulk_chunk_of_100_costs_and_takes_what_the_model_says(modelled: EmulatorHandle) -> None:
    with client(modelled) as api:
        r = api.post("accounts/Microsoft.Dynamics.CRM.CreateMultiple", json=targets(100))
        assert r.status_code == 200
        assert list(modelled.emulator.throttle.held) == [pytest.approx(0.1512 / 4)]  # divided by --time-scale 4
        after = api.get("WhoAmI")
    # the budget lost the chunk's 151.2 ms and the WhoAmI's first operation (7.2 ms)
    assert after.headers["x-ms-ratelimit-time-remaining-xrm-requests"] == f"{1200 - 0.1512 - 0.0072:,.2f}"
    assert int(after.headers["x-ms-ratelimit-burst-remaining-xrm-requests"]) == 6000 - 2  # one request each


def test_a_batch_costs_the_sum_of_its_operations(modelled: EmulatorHandle) -> None:
    body, content_type = batch_body(10)
    with client(modelled) as api:
        r = api.post("$batch", content=body, headers={"Content-Type": content_type})
        assert r.status_code == 200
        assert list(modelled.emulator.throttle.held) == [pytest.approx(0.072 / 4)]
        after = api.get("WhoAmI")
    assert after.headers["x-ms-ratelimit-time-remaining-xrm-requests"] == f"{1200 - 0.072 - 0.0072:,.2f}"


def test_the_ratio_option_changes_the_bulk_cost() -> None:
    with running_emulator(throttle="dataverse", bulk_record_cost_ratio=0.5, clock=FakeClock()) as h, client(h) as api:
        assert api.post("accounts/Microsoft.Dynamics.CRM.CreateMultiple", json=targets(100)).status_code == 200
        assert list(h.emulator.throttle.held) == [pytest.approx(0.0072 * 51)]


def test_model_off_holds_nothing() -> None:
    with running_emulator(throttle="off", clock=FakeClock()) as h, client(h) as api:
        assert api.post("accounts/Microsoft.Dynamics.CRM.CreateMultiple", json=targets(100)).status_code == 200
        assert list(h.emulator.throttle.held) == []


def test_a_bulk_request_that_would_outlast_the_timeout_fails_before_writing(modelled: EmulatorHandle) -> None:
    throttle = modelled.emulator.throttle
    throttle.costs = Costs(timeout_s=0.1)  # 0.1 s instead of 120 s, so 100 records (151.2 ms) are too many
    with client(modelled) as api:
        r = api.post("accounts/Microsoft.Dynamics.CRM.CreateMultiple", json=targets(100, "late"))
        assert r.status_code == 500
        assert r.json()["error"]["code"] == "0x80044151"
        assert r.json()["error"]["message"].startswith("Sql error: SQL timeout expired.")
        assert list(throttle.held) == [pytest.approx(0.1 / 4)]  # the request ran until the timeout
        assert api.get("accounts?$filter=startswith(name,'late')").json()["value"] == []  # nothing written
        assert api.post("accounts/Microsoft.Dynamics.CRM.CreateMultiple", json=targets(10)).status_code == 200


def test_message_size_limit_applies_only_when_a_step_is_registered(modelled: EmulatorHandle) -> None:
    modelled.emulator.throttle.max_message_bytes = 2000  # 116.85 MB in Dataverse
    big = targets(100)
    with client(modelled) as api:
        assert api.post("accounts/Microsoft.Dynamics.CRM.CreateMultiple", json=big).status_code == 200
        modelled.admin.seed("sdkmessageprocessingstep", [{"name": "a plug-in step"}])
        r = api.post("accounts/Microsoft.Dynamics.CRM.CreateMultiple", json=big)
        assert r.status_code == 500
        assert r.json()["error"]["code"] == "0x80040216"
        assert r.json()["error"]["message"].startswith("Message size exceeded when sending context to Sandbox.")
        bypass = {"MSCRM.BypassCustomPluginExecution": "true"}
        assert api.post("accounts/Microsoft.Dynamics.CRM.CreateMultiple", json=big, headers=bypass).status_code == 200
        assert api.post("accounts/Microsoft.Dynamics.CRM.CreateMultiple", json=targets(5)).status_code == 200


def _bulk_body(n: int) -> bytes:
    targets = [{"@odata.type": "Microsoft.Dynamics.CRM.account", "name": f"a{i}"} for i in range(n)]
    return json.dumps({"Targets": targets}).encode()


def _run_midway(body_parts: list[bytes], elapsed_s: float, monkeypatch: pytest.MonkeyPatch) -> tuple[list[float], Any]:
    """``throttle._midway`` on a body sent in ``body_parts``, ``elapsed_s`` after the request started: the waits it
    asked for (recorded, never slept) and the messages its replay hands the handler."""
    th = Throttle("dataverse", limits_for("dataverse"), time.time, time_scale=2.0, dop_hint=4)
    waits: list[float] = []

    async def no_sleep(seconds: float) -> None:
        waits.append(seconds)

    monkeypatch.setattr(throttle_module.asyncio, "sleep", no_sleep)
    messages = [
        {"type": "http.request", "body": p, "more_body": i < len(body_parts) - 1} for i, p in enumerate(body_parts)
    ]

    async def receive() -> dict[str, Any]:
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def scenario() -> list[Any]:
        replay = await throttle_module._midway(th, receive, time.perf_counter() - elapsed_s)
        return [await replay(), await replay()]

    return waits, asyncio.run(scenario())


def test_a_bulk_message_runs_midway_through_its_execution_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """1,000 targets cost 7.2 ms x 201 = 1.447 s, 0.7236 s at time scale 2: the handler starts at half of it, the time
    already spent counted, and gets the whole body, sent in two parts, back in one."""
    body = _bulk_body(1000)
    waits, (first, second) = _run_midway([body[:500], body[500:]], 0.1, monkeypatch)
    assert len(waits) == 1 and waits[0] == pytest.approx(Costs().of("bulk", 1000) / 2 / 2 - 0.1, abs=0.01)
    assert first == {"type": "http.request", "body": body, "more_body": False}
    assert second == {"type": "http.disconnect"}


def test_a_bulk_body_that_is_not_targets_or_a_client_gone_runs_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    waits, (first, _) = _run_midway([b"{not json"], 0.0, monkeypatch)
    assert waits == [] and first["body"] == b"{not json"  # the handler answers the error
    waits, (first, _) = _run_midway([_bulk_body(10)], 10.0, monkeypatch)
    assert waits == []  # half of its time has passed already
    waits, (first, second) = _run_midway([], 0.0, monkeypatch)
    assert waits == [] and first == second == {"type": "http.disconnect"}
