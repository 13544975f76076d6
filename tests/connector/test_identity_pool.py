"""Identity pools: a connection that signs in as several application users spreads its sends over them, a 429
pauses only the user it was sent to, and the connection's parallelism is the sum of the users'.

A fake identity platform and Dataverse behind one ``httpx.MockTransport``: each token names its app registration
(``appid``), as Microsoft Entra ID's do, and Dataverse answers per application user, so the tests see which identity
every send went out as. Time is a :class:`FakeClock`: a wait shows up in ``clock.sleeps`` and nothing really sleeps.
"""

from __future__ import annotations

import base64
import json
import threading
import urllib.parse
from collections import Counter
from typing import Any

import httpx
import pytest

from connector import RetryPolicy
from connector.clock import FakeClock
from connector.connection import Connection
from connector.errors import ConnectionConfigError
from connector.identity_pool import PoolGovernor
from tests.conftest import SENTINELS, assert_no_secrets

ORG = "https://contoso.crm.dynamics.com"
TENANT = "72f988bf-86f1-41af-91ab-2d7cd011db47"
A = "11111111-2222-3333-4444-555555555555"
B = "22222222-3333-4444-5555-666666666666"
SECRET_A = SENTINELS["client_secret"]
SECRET_B = "SENTINEL-client-secret-pool-b-71c3"  # a second sentinel: searched for below like the suite's
WAIT_S = 10.0


def _jwt(claims: dict[str, Any]) -> str:
    def seg(obj: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).decode().rstrip("=")

    return f"{seg({'typ': 'JWT', 'alg': 'RS256'})}.{seg(claims)}.sig"


def _appid(request: httpx.Request) -> str:
    token = request.headers["Authorization"].removeprefix("Bearer ")
    payload = token.split(".")[1]
    return str(json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))["appid"])


class PoolCloud:
    """Tokens per app registration; Dataverse answers 204 with ``x-ms-dop-hint: 4``, or what ``refuse[appid]``
    queues for that application user (a 429 with its Retry-After)."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.sends: list[str] = []  # the application user of every Dataverse request, in order
        self.refuse: dict[str, list[httpx.Response]] = {A: [], B: []}
        self.gate: threading.Barrier | None = None
        self.secrets: dict[str, str] = {}
        self._lock = threading.Lock()

    def handler(self, request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/oauth2/v2.0/token"):
            form = dict(urllib.parse.parse_qsl(request.content.decode()))
            self.secrets[form["client_id"]] = form["client_secret"]
            claims = {"aud": ORG, "appid": form["client_id"], "exp": int(self.clock.time()) + 3600, "tid": TENANT}
            return httpx.Response(200, json={"token_type": "Bearer", "expires_in": 3600, "access_token": _jwt(claims)})
        user = _appid(request)
        with self._lock:
            self.sends.append(user)
            refused = self.refuse[user].pop(0) if self.refuse[user] else None
        if refused is not None:
            return refused
        if self.gate is not None:
            self.gate.wait(WAIT_S)  # passes only once as many requests as the barrier's parties are in flight
        return httpx.Response(204, headers={"x-ms-dop-hint": "4"})

    def connect(self, **overrides: Any) -> Connection:
        config: dict[str, Any] = {
            "kind": "client_credentials",
            "organization_url": ORG,
            "tenant_id": TENANT,
            "client_id": A,
            "client_secret": SECRET_A,
            "additional_identities": [{"client_id": B, "client_secret": SECRET_B}],
            **overrides,
        }
        return Connection.from_config(
            config,
            transport=httpx.MockTransport(self.handler),
            clock=self.clock,
            retry=RetryPolicy(jitter=lambda: 1.0),
        )


def too_many(retry_after: int) -> httpx.Response:
    body = {"error": {"code": "0x80072322", "message": "Number of requests exceeded the limit of 6000."}}
    return httpx.Response(429, json=body, headers={"Retry-After": str(retry_after)})


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def pool(clock: FakeClock) -> PoolCloud:
    return PoolCloud(clock)


def test_sends_are_spread_evenly_over_the_identities(pool: PoolCloud) -> None:
    with pool.connect() as conn:
        for _ in range(20):
            conn.client.request("GET", "accounts")
        assert isinstance(conn.governor, PoolGovernor)
        assert conn.governor.sends == {A: 10, B: 10}
    assert pool.sends[:4] == [A, B, A, B]
    assert Counter(pool.sends) == {A: 10, B: 10}
    assert pool.secrets == {A: SECRET_A, B: SECRET_B}  # each identity signs in with its own secret


def test_a_429_on_one_identity_leaves_the_other_sending(pool: PoolCloud, clock: FakeClock) -> None:
    pool.refuse[A].append(too_many(30))
    with pool.connect() as conn:
        conn.client.request("GET", "accounts")  # A is refused; the resend leaves at once through B
        assert pool.sends == [A, B]
        for _ in range(5):
            conn.client.request("GET", "accounts")
        assert pool.sends[2:] == [B] * 5  # A is paused for 30 s: nothing waits, B carries the load
        assert clock.sleeps == []
        clock.advance(30)
        conn.client.request("GET", "accounts")
        conn.client.request("GET", "accounts")
    assert sorted(pool.sends[7:]) == [A, B]  # A is back once its Retry-After has passed


def test_when_every_identity_is_paused_the_send_waits_for_the_earliest(pool: PoolCloud, clock: FakeClock) -> None:
    pool.refuse[A].append(too_many(30))
    pool.refuse[B].append(too_many(10))
    with pool.connect() as conn:
        conn.client.request("GET", "accounts")
        assert pool.sends == [A, B, B]  # B's pause ends first: the third send waited for it, and went through B
        assert clock.sleeps == [10.0]
        assert isinstance(conn.governor, PoolGovernor)
        first, second = conn.governor.identities
        assert first.governor.not_before == clock.monotonic() + 20  # A is still paused for 20 s
        assert conn.governor.not_before == second.governor.not_before == clock.monotonic()


def test_the_connection_runs_at_the_sum_of_the_identities_parallelism(pool: PoolCloud) -> None:
    with pool.connect(max_parallelism=4) as conn:
        governor = conn.governor
        assert governor.max_parallelism == 8
        for _ in range(2):
            conn.client.request("GET", "accounts")  # one answer per identity: each learns its hint
        assert governor.limit == 8
        pool.gate = threading.Barrier(8)  # a request is answered only while 8 are in flight: 4 per identity
        outcomes = governor.map(lambda _: conn.client.request("GET", "accounts"), range(16))
        assert all(o.ok for o in outcomes), [o.error for o in outcomes if not o.ok]
        assert governor.peak == 8
        assert Counter(pool.sends[2:]) == {A: 8, B: 8}


def test_a_throttled_identity_is_reported_to_the_connections_progress(pool: PoolCloud) -> None:
    pool.refuse[B].append(too_many(7))
    heard: list[float] = []
    with pool.connect() as conn:
        conn.governor.watch_throttle(heard.append)
        conn.client.request("GET", "accounts")
        conn.client.request("GET", "accounts")
    assert heard == [7.0]
    assert pool.sends == [A, B, A]


def test_a_pool_never_shows_a_secret(pool: PoolCloud, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("DEBUG")
    with pool.connect() as conn:
        conn.client.request("GET", "accounts")
        shown = [repr(conn), repr(conn.config), str(conn.config), repr(conn.config.identities()), conn.fingerprint]
        shown += [repr(conn.governor), repr(conn.token_provider), repr(conn.config.model_dump())]
    for text in [*shown, caplog.text]:
        assert SECRET_B not in text
    assert_no_secrets(*shown, caplog.text)


def test_a_changed_secret_of_any_identity_is_a_new_connection(pool: PoolCloud) -> None:
    with pool.connect() as one, pool.connect() as same:
        assert one.fingerprint == same.fingerprint
        pooled = [{"client_id": B, "client_secret": "another secret"}]
        with pool.connect(additional_identities=pooled) as other:
            assert other.fingerprint != one.fingerprint


def test_bad_pool_settings_name_the_field_and_never_echo_a_secret(pool: PoolCloud) -> None:
    again = {"client_id": B.upper(), "client_secret": SECRET_B}
    cases: list[Any] = [
        [{"client_id": A, "client_secret": SECRET_B}],  # the connection's own application user again
        [{"client_id": B, "client_secret": SECRET_B}, again],  # one user twice
        [{"client_id": B}],
        [{"client_id": "not-a-guid", "client_secret": SECRET_B}],
        [{"client_id": B, "client_secret": SECRET_B, "tenant_id": TENANT}],  # only the sign-in is an identity's own
        [],
        [{"client_id": B, "client_secret": 7}],
        "not a list",
    ]
    for identities in cases:
        with pytest.raises(ConnectionConfigError) as info:
            pool.connect(additional_identities=identities)
        assert info.value.field == "additional_identities", info.value.message
        assert "additional_identities" in info.value.message
        assert SECRET_B not in info.value.message
        assert_no_secrets(info.value.message)


def test_a_pooled_secret_from_the_environment_follows_the_operator_policy(
    pool: PoolCloud, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("D365_SECRET_B", SECRET_B)
    with pool.connect(additional_identities=[{"client_id": B, "client_secret": {"env": "D365_SECRET_B"}}]) as conn:
        conn.client.request("GET", "accounts")
        conn.client.request("GET", "accounts")
    assert pool.secrets[B] == SECRET_B
    monkeypatch.setenv("D365_POLICY", "hosted")
    with pytest.raises(ConnectionConfigError) as info:
        pool.connect(additional_identities=[{"client_id": B, "client_secret": {"env": "D365_SECRET_B"}}])
    assert info.value.field == "additional_identities"
    assert info.value.message.startswith("additional_identities[0].client_secret names an environment variable")
    assert_no_secrets(info.value.message)
