"""The shared governor on a real Redis: one pause, one concurrency limit and one count per (organization, user)
across governors (processes), leases that outlive their expiry while renewed and expire when their worker dies."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from connector.clock import SystemClock
from connector.governor import Governor
from connector.governor_shared import SharedGovernor, governor_for, scope_of

ROOT = Path(__file__).resolve().parents[2]


class WouldWait(Exception):
    """Raised by :class:`RecordingClock` where the governor would sleep, so a test sees the wait without taking it."""


class RecordingClock(SystemClock):
    def __init__(self) -> None:
        self.sleeps: list[float] = []

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        raise WouldWait


def governor(url: str, scope: str, clock: SystemClock | None = None, hint: int = 2, **kw: float) -> SharedGovernor:
    gov = SharedGovernor(redis_url=url, scope=scope, clock=clock or SystemClock(), max_parallelism=8, **kw)
    gov.observe({"x-ms-dop-hint": str(hint)})
    return gov


def test_the_limit_is_shared_by_every_governor_of_the_user(redis_url: str) -> None:
    scope = uuid.uuid4().hex
    a, b, other_user = governor(redis_url, scope), governor(redis_url, scope), governor(redis_url, uuid.uuid4().hex)
    clock = RecordingClock()
    c = governor(redis_url, scope, clock)
    with a.slot(), b.slot():  # the hint's two places, one per process
        with pytest.raises(WouldWait), c.slot():
            pass  # pragma: no cover - a third place is never given
        assert clock.sleeps == [pytest.approx(0.02)]  # waits for a place (polls), not for a pause
        with other_user.slot():  # another application user has its own budget
            assert other_user.stats()["leases"] == 1
        assert a.stats()["leases"] == 2
    with c.slot():  # the places were given back
        assert c.stats() == {"requests": 3, "throttled": 0, "leases": 1}


def test_a_process_with_no_answer_yet_follows_the_limit_the_others_learnt(redis_url: str) -> None:
    scope = uuid.uuid4().hex
    clock = RecordingClock()
    a, fresh = governor(redis_url, scope, clock), SharedGovernor(redis_url=redis_url, scope=scope, clock=clock)
    with a.slot(), fresh.slot():  # a learnt the hint 2: fresh takes the second place, not waiting for a to finish
        assert fresh.stats()["leases"] == 2
        with pytest.raises(WouldWait), a.slot():
            pass  # pragma: no cover - the user's two places are taken
    lone = SharedGovernor(redis_url=redis_url, scope=uuid.uuid4().hex, clock=clock, max_parallelism=8)
    with lone.slot():  # nobody learnt a limit for this user: one place until an answer
        assert lone.stats()["leases"] == 1


def test_a_429_in_one_process_pauses_the_others(redis_url: str) -> None:
    scope = uuid.uuid4().hex
    a, clock = governor(redis_url, scope), RecordingClock()
    b = governor(redis_url, scope, clock)
    a.throttle(5.0)
    a.throttle(1.0)  # a shorter Retry-After never ends the pause earlier
    with pytest.raises(WouldWait), b.slot():
        pass  # pragma: no cover
    assert 4.0 < clock.sleeps[0] <= 5.0
    assert b.not_before == float("-inf")  # b's own state: only the shared one paused it
    assert b.stats()["throttled"] == 2


def test_heartbeats_keep_a_live_workers_leases_and_a_killed_workers_expire(redis_url: str) -> None:
    scope, lease_s = uuid.uuid4().hex, 1.0
    args = [sys.executable, "-m", "tests.scale.holder", redis_url, scope, "3", str(lease_s)]
    worker = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE)
    probe = governor(redis_url, scope)
    try:
        assert worker.stdout is not None and worker.stdout.readline().strip() == b"held"
        time.sleep(2.5 * lease_s)  # past two lease periods: only the heartbeats keep them
        assert probe.stats()["leases"] == 3
    finally:
        os.kill(worker.pid, signal.SIGKILL)
        worker.wait()
        worker.stdout.close()  # type: ignore[union-attr]
    killed = time.monotonic()
    while probe.stats()["leases"] and time.monotonic() - killed < 5 * lease_s:
        time.sleep(0.05)
    assert probe.stats()["leases"] == 0
    assert time.monotonic() - killed <= lease_s + 0.5  # within one lease period (plus this loop's polling)


def test_the_operator_chooses_the_governor_never_the_connection(redis_url: str) -> None:
    common = {"organization_url": "https://x.crm.dynamics.com", "user": "app", "clock": SystemClock()}
    local = governor_for(max_parallelism=4, policy=None, environ={}, **common)  # type: ignore[arg-type]
    assert type(local) is Governor
    env = {"D365_GOVERNOR_URL": redis_url, "D365_GOVERNOR_LEASE_S": "3"}
    shared = governor_for(max_parallelism=4, policy=None, environ=env, **common)  # type: ignore[arg-type]
    assert isinstance(shared, SharedGovernor) and shared.lease_s == 3.0
    assert scope_of("https://X.crm.dynamics.com", "APP") == scope_of("https://x.crm.dynamics.com", "app")
    with pytest.raises(ValueError, match="D365_GOVERNOR_LEASE_S"):
        governor_for(max_parallelism=4, policy=None, environ={**env, "D365_GOVERNOR_LEASE_S": "soon"}, **common)  # type: ignore[arg-type]
