"""Identity pools against the emulator with the service protection model on: the limits hold per application user
(Microsoft: "limits are evaluated per user"), so a pool of two users is admitted twice what one user is.

The ceiling is measured in emulator time, by the emulator's own per-user count of admitted requests within one
window of its request limit (40 per user per 300 s here), not by the wall clock: every test sends more than the
ceiling, and the client's clock is a :class:`FakeClock`, so its Retry-After waits pass at once while the emulator's
window does not move.
"""

from __future__ import annotations

import time
import uuid
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest

from connector import RetryPolicy
from connector.clock import FakeClock, SystemClock
from connector.connection import Connection
from connector.diagnostics import test_connection
from connector.governor_shared import SharedGovernor
from connector.identity_pool import Identity, PoolGovernor
from dataverse_emulator.testing import EmulatorHandle, running_emulator

LIMIT, LOAD = 40, 120  # requests per user per window; requests sent, three times one user's ceiling


@pytest.fixture
def emu() -> Iterator[EmulatorHandle]:
    with running_emulator(throttle="dataverse", window_s=300, max_requests=LIMIT, key_activation_s=0) as handle:
        yield handle


def connect(config: dict[str, Any]) -> Connection:
    retry = RetryPolicy(max_attempts=3, jitter=lambda: 0.0)
    return Connection.from_config(config, clock=FakeClock(start=time.time()), retry=retry)


def admitted(emu: EmulatorHandle) -> Counter[str]:
    """Requests each application user (by app id) was let through: answered, and not with a 429."""
    log = emu.admin.requests()
    return Counter(str(r["application_id"]) for r in log if r.get("application_id") and r["status"] != 429)


def load(conn: Connection) -> int:
    """Send LOAD reads at the connection's parallelism; how many succeeded."""
    outcomes = conn.governor.map(lambda _: conn.client.request("GET", "WhoAmI"), range(LOAD))
    return sum(1 for o in outcomes if o.ok)


def test_two_application_users_are_admitted_twice_what_one_is(emu: EmulatorHandle) -> None:
    single = emu.connection_config()
    with connect(single) as conn:
        one_ok = load(conn)
    one = admitted(emu)
    assert one == {single["client_id"]: LIMIT}
    assert one_ok == LIMIT

    emu.admin.reset()  # a fresh window for every user
    second = emu.admin.add_app()
    with connect({**single, "additional_identities": [second]}) as conn:
        assert isinstance(conn.governor, PoolGovernor)
        two_ok = load(conn)
    two = admitted(emu)
    assert two == {single["client_id"]: LIMIT, second["client_id"]: LIMIT}  # each user reached its own ceiling
    assert two_ok == 2 * LIMIT
    assert sum(two.values()) / sum(one.values()) == 2.0


def test_whoami_answers_for_the_identity_that_served_it(emu: EmulatorHandle) -> None:
    second = emu.admin.add_app()
    with connect({**emu.connection_config(), "additional_identities": [second]}) as conn:
        users = {conn.client.whoami().user_id for _ in range(2)}
    assert len(users) == 2  # round robin: one call per application user, each answered as itself


def test_each_identity_of_a_pool_has_its_own_shared_budget_on_redis(
    emu: EmulatorHandle, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("D365_GOVERNOR_URL", redis_url)
    second = emu.admin.add_app()
    with connect({**emu.connection_config(), "additional_identities": [second]}) as conn:
        for _ in range(6):
            conn.client.request("GET", "WhoAmI")
        assert isinstance(conn.governor, PoolGovernor)
        members = [identity.governor for identity in conn.governor.identities]
        assert all(isinstance(g, SharedGovernor) for g in members)
        before = [g.stats()["requests"] for g in members if isinstance(g, SharedGovernor)]
    assert before == [3, 3]  # one Redis budget per application user, each counted apart
    assert sum(admitted(emu).values()) == 6


class WouldWait(Exception):
    """Raised where a governor would sleep, so the test sees which identity a send waited on without waiting."""


class RefusingClock(SystemClock):
    def sleep(self, seconds: float) -> None:
        raise WouldWait


class NoTokens:
    def token(self) -> str:
        return "unused"

    def force_refresh(self, rejected: object = None) -> str:
        return "unused"

    def close(self) -> None:
        pass


def test_a_pause_another_process_set_on_redis_steers_the_pool_to_its_other_user(redis_url: str) -> None:
    scopes = uuid.uuid4().hex, uuid.uuid4().hex
    clock = RefusingClock()
    members = [SharedGovernor(redis_url=redis_url, scope=scope, clock=clock, max_parallelism=4) for scope in scopes]
    other_process = SharedGovernor(redis_url=redis_url, scope=scopes[0], clock=SystemClock())
    pool = PoolGovernor([Identity(f"user-{n}", NoTokens(), g) for n, g in enumerate(members)], clock=clock)
    try:
        other_process.throttle(30.0)  # a 429 in another process paused user 0 for everyone, in Redis
        with pytest.raises(WouldWait), pool.slot():
            pass  # pragma: no cover - this process had not heard of the pause: its send meets it in Redis
        for _ in range(3):
            with pool.slot():  # user 0's pause is known now: every send leaves through user 1 without waiting
                pass
        assert pool.sends == {"user-0": 1, "user-1": 3}
        assert members[0].paused_until > clock.monotonic() + 25
        assert members[0].not_before == float("-inf")  # its own 429s are still only its own
    finally:
        for governor in (*members, other_process):
            governor.close()


def test_test_connection_checks_every_user_of_a_pool(emu: EmulatorHandle) -> None:
    """A pooled request may leave through any user, so test_connection tries each, and names the one that fails."""
    second = emu.admin.add_app()
    with connect({**emu.connection_config(), "additional_identities": [second]}) as conn:
        good = test_connection(conn)
    assert good["ok"] is True
    assert [i["client_id"] for i in good["identities"]] == [emu.connection_config()["client_id"], second["client_id"]]
    assert all(i["ok"] for i in good["identities"]) and len({i["user_id"] for i in good["identities"]}) == 2
    assert f"whoami ({second['client_id']})" in [c["name"] for c in good["checks"]]

    revoked = {**second, "client_secret": "not-the-secret"}
    with connect({**emu.connection_config(), "additional_identities": [revoked]}) as conn:
        bad = test_connection(conn)
    assert bad["ok"] is False
    assert [i["ok"] for i in bad["identities"]] == [True, False]
    assert bad["diagnosis"].startswith(f"Application user {second['client_id']} of the pool: ")
    assert bad["fix"] and "not-the-secret" not in str(bad)
