"""The throttle governor and the failure classes: shared Retry-After, dop-hint parallelism, caps, retry-safe creates.

Nothing here sleeps. Single-thread tests use ``FakeClock`` (its ``sleep`` moves time). The many-thread Retry-After test
uses :class:`ManualClock`, whose ``sleep`` blocks until the test moves time past the sleeper's deadline, so the test
decides exactly when the 7 seconds have passed and can check that nothing left before.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
import uuid
import warnings
from typing import Any

import httpx
import pytest

from connector import RetryPolicy
from connector.client import DUPLICATE_RECORD
from connector.clock import FakeClock
from connector.connection import Connection
from connector.errors import FatalApiError, OutcomeUnknownError, RetriableApiError
from connector.governor import Governor
from connector.ids import id_time_ms, new_id

WAIT_S = 10.0  # safety net for condition waits: a broken governor fails the test instead of hanging it


class ManualClock:
    """Time moves only when the test calls :meth:`advance`; ``sleep`` blocks until its deadline has been reached."""

    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self._now = start
        self._cond = threading.Condition()
        self.sleeping = 0

    def monotonic(self) -> float:
        with self._cond:
            return self._now

    def time(self) -> float:
        return self.monotonic()

    def sleep(self, seconds: float) -> None:
        with self._cond:
            deadline = self._now + seconds
            self.sleeping += 1
            self._cond.notify_all()
            try:
                if not self._cond.wait_for(lambda: self._now >= deadline, timeout=WAIT_S):
                    raise AssertionError("a sleeper was never woken")
            finally:
                self.sleeping -= 1

    def advance(self, seconds: float) -> None:
        with self._cond:
            self._now += seconds
            self._cond.notify_all()

    def wait_for_sleepers(self, n: int) -> None:
        with self._cond:
            assert self._cond.wait_for(lambda: self.sleeping >= n, timeout=WAIT_S), f"{self.sleeping} of {n} asleep"


def _connect(cloud: Any, clock: Any, handler: Any = None, **policy: Any) -> Connection:
    return Connection.from_config(
        cloud.config(),
        transport=httpx.MockTransport(handler or cloud.handler),
        clock=clock,
        retry=RetryPolicy(jitter=lambda: 1.0, **policy),
    )


def test_one_429_holds_every_thread_until_retry_after_has_passed(cloud: Any) -> None:
    clock = ManualClock()
    cloud.clock = clock
    sent_at: list[float] = []
    lock = threading.Lock()

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/accounts"):
            with lock:
                sent_at.append(clock.monotonic())
                first = len(sent_at) == 1
            if first:
                return httpx.Response(
                    429,
                    headers={"Retry-After": "7"},
                    json=cloud.error_body("0x80072322", "Number of requests exceeded the limit of 6000."),
                )
            return httpx.Response(200, json={"value": []}, headers={"x-ms-dop-hint": "4"})
        return cloud.handler(request)

    conn = _connect(cloud, clock, handler)
    client = conn.client
    client.whoami()  # the first answer: the governor now allows the hinted 4 requests at once
    start = clock.monotonic()
    errors: list[BaseException] = []

    def work() -> None:
        try:
            client.get_json("accounts")
        except BaseException as exc:  # reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=work)]
    threads[0].start()
    clock.wait_for_sleepers(1)  # the throttled thread is waiting out Retry-After
    threads += [threading.Thread(target=work) for _ in range(11)]
    for t in threads[1:]:
        t.start()
    clock.wait_for_sleepers(12)  # every new thread waits too, before sending anything
    assert sent_at == [start]
    clock.advance(6.5)
    assert sent_at == [start]  # nobody woke: every deadline is at 7 s
    clock.advance(0.5)
    for t in threads:
        t.join(WAIT_S)
    assert errors == []
    assert len(sent_at) == 13  # the refused one, its retry, and 11 others: nothing lost, nothing duplicated
    assert all(t >= start + 7 for t in sent_at[1:])
    assert conn.governor.peak <= 4


def test_peak_parallelism_never_exceeds_the_dop_hint(cloud: Any, clock: FakeClock) -> None:
    total = 24
    state = {"current": 0, "peak": 0, "started": 0}
    cond = threading.Condition()

    def handler(request: httpx.Request) -> httpx.Response:
        if not request.url.path.endswith("/accounts"):
            return cloud.handler(request)
        with cond:
            state["current"] += 1
            state["started"] += 1
            state["peak"] = max(state["peak"], state["current"])
            cond.notify_all()
            # hold each request until the hinted number are in flight together, so a leak above it would show
            cond.wait_for(lambda: state["current"] >= 4 or state["started"] == total, timeout=WAIT_S)
            state["current"] -= 1
            cond.notify_all()
        return httpx.Response(200, json={"value": []}, headers={"x-ms-dop-hint": "4"})

    conn = _connect(cloud, clock, handler)
    conn.client.whoami()  # FakeCloud's WhoAmI carries x-ms-dop-hint: 4
    assert conn.governor.limit == 4
    outcomes = conn.governor.map(lambda i: conn.client.get_json("accounts"), range(total))
    assert all(o.ok for o in outcomes)
    assert state["peak"] == 4
    assert conn.governor.peak == 4


def test_configured_maximum_caps_a_larger_hint(cloud: Any, clock: FakeClock) -> None:
    conn = Connection.from_config(
        cloud.config(max_parallelism=2), transport=httpx.MockTransport(cloud.handler), clock=clock
    )
    conn.client.whoami()
    assert conn.governor.dop_hint == 4
    assert conn.governor.limit == 2


def test_first_request_goes_alone_until_the_server_answers(clock: FakeClock) -> None:
    governor = Governor(clock=clock, max_parallelism=8)
    assert governor.limit == 1
    governor.observe({})
    assert governor.limit == 8
    governor.observe({"x-ms-dop-hint": "3"})
    assert governor.limit == 3
    governor.observe({"x-ms-dop-hint": "junk"})
    assert governor.limit == 3


class Sender:
    """A thread that takes a place (``beside`` or ordinary) and holds it until :meth:`let_go`; ``inside`` is set once
    it holds one. What goes wrong in the thread is kept for the test to see."""

    def __init__(self, governor: Governor, *, beside: bool) -> None:
        self.inside, self.leave = threading.Event(), threading.Event()
        self.errors: list[BaseException] = []
        self.thread = threading.Thread(target=self.run, args=(governor, beside))
        self.thread.start()

    def run(self, governor: Governor, beside: bool) -> None:
        try:
            with governor.beside() if beside else contextlib.nullcontext(), governor.slot():
                self.inside.set()
                if not self.leave.wait(WAIT_S):
                    raise AssertionError("never let go")
        except BaseException as exc:
            self.errors.append(exc)

    def let_go(self) -> None:
        self.leave.set()
        self.thread.join(WAIT_S)
        assert not self.thread.is_alive() and not self.errors, self.errors


def test_one_place_beside_the_limit_for_reads_ahead(clock: FakeClock) -> None:
    governor = Governor(clock=clock, max_parallelism=8)
    governor.observe({"x-ms-dop-hint": "2"})
    writes = [Sender(governor, beside=False) for _ in range(2)]
    assert all(w.inside.wait(WAIT_S) for w in writes)  # the writes hold every place the hint allows
    first = Sender(governor, beside=True)
    assert first.inside.wait(WAIT_S) and governor.in_flight == 3  # a read ahead still gets one, beside them
    second = Sender(governor, beside=True)
    third_write = Sender(governor, beside=False)
    assert not second.inside.wait(0.2) and not third_write.inside.is_set()  # one place beside, and no more writes
    first.let_go()
    assert second.inside.wait(WAIT_S) and governor.in_flight == 3  # the second read takes the place let go
    assert not third_write.inside.is_set()  # which was never a write's
    for sender in (*writes, second, third_write):
        sender.let_go()
    assert governor.in_flight == 0 and governor.peak == 3


def test_a_runs_cap_leaves_no_place_beside_and_counts_a_read_already_there(clock: FakeClock) -> None:
    governor = Governor(clock=clock, max_parallelism=8)
    governor.observe({"x-ms-dop-hint": "2"})
    early = Sender(governor, beside=True)  # a read beside, before any cap
    assert early.inside.wait(WAIT_S)
    with governor.capped(1):
        write = Sender(governor, beside=False)
        assert not write.inside.wait(0.2)  # the read counts against the cap of 1
        early.let_go()
        assert write.inside.wait(WAIT_S) and governor.in_flight == 1
        read = Sender(governor, beside=True)
        assert not read.inside.wait(0.2)  # under a cap a read ahead needs an ordinary place
        write.let_go()
        assert read.inside.wait(WAIT_S) and governor.in_flight == 1
        read.let_go()
    assert governor.peak == 1  # the write never joined the read that was there before the cap


def test_coded_500_is_fatal_and_not_retried(cloud: Any, clock: FakeClock) -> None:
    cloud.api_queue.append(httpx.Response(500, json=cloud.error_body("0x80040216", "An unexpected error occurred.")))
    with pytest.raises(FatalApiError) as info:
        _connect(cloud, clock).client.get_json("accounts")
    assert info.value.code == "0x80040216"
    assert len(cloud.api_requests) == 1
    assert clock.sleeps == []


def test_502_on_get_is_retried(cloud: Any, clock: FakeClock) -> None:
    cloud.api_queue.append(httpx.Response(502, text="Bad Gateway"))
    who = _connect(cloud, clock).client.whoami()
    assert who.user_id == cloud.USER_ID
    assert len(cloud.api_requests) == 2
    assert clock.sleeps == [0.5]  # backoff_base_s * 2**0, jitter pinned to 1


def test_502_on_plain_post_is_an_unknown_outcome(cloud: Any, clock: FakeClock) -> None:
    cloud.api_queue.append(httpx.Response(502, text="Bad Gateway"))
    with pytest.raises(OutcomeUnknownError):
        _connect(cloud, clock).client.create("accounts", {"name": "A"})
    assert len(cloud.api_requests) == 1


def test_4xx_is_fatal_and_not_retried(cloud: Any, clock: FakeClock) -> None:
    cloud.api_queue.append(httpx.Response(400, json=cloud.error_body("0x80060888", "Bad Request")))
    with pytest.raises(FatalApiError):
        _connect(cloud, clock).client.get_json("accounts")
    assert len(cloud.api_requests) == 1


class _Accounts:
    """A table that commits a create and then drops the connection once, as a failing load balancer would."""

    def __init__(self, cloud: Any, drop_after_commit: int = 1) -> None:
        self.cloud = cloud
        self.rows: dict[str, dict[str, Any]] = {}
        self.posts: list[dict[str, Any]] = []
        self.drops = drop_after_commit
        self._lock = threading.Lock()

    def handler(self, request: httpx.Request) -> httpx.Response:
        with self._lock:  # create_many sends from several threads
            return self._handle(request)

    def _handle(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if "/accounts" in path:
            self.cloud.requests.append(request)
        if request.method == "POST" and path.endswith("/accounts"):
            body = json.loads(request.content)
            self.posts.append(body)
            row_id = body.get("accountid") or "0f0f0f0f-0000-0000-0000-000000000001"
            if row_id in self.rows:
                duplicate = self.cloud.error_body(DUPLICATE_RECORD, "A record with matching key values already exists.")
                return httpx.Response(412, json=duplicate)
            self.rows[row_id] = body
            if self.drops:
                self.drops -= 1
                raise httpx.RemoteProtocolError("Server disconnected without sending a response.")
            return httpx.Response(204, headers={"OData-EntityId": f"{self.cloud.API}/accounts({row_id})"})
        if request.method == "GET" and "/accounts(" in path:
            row_id = path.rsplit("(", 1)[1].rstrip(")")
            if row_id in self.rows:
                return httpx.Response(200, json=self.rows[row_id])
            return httpx.Response(404, json=self.cloud.error_body("0x80040217", "account Does Not Exist"))
        return self.cloud.handler(request)


def test_dropped_create_with_a_client_id_is_resent_and_confirmed_once(cloud: Any, clock: FakeClock) -> None:
    table = _Accounts(cloud)
    result = _connect(cloud, clock, table.handler).client.create(
        "accounts", {"name": "Contoso"}, id_attribute="accountid", client_id=True
    )
    assert len(table.posts) == 2
    assert table.posts[0] == table.posts[1]  # the very same row, same client-generated id
    assert result.id == table.posts[0]["accountid"]
    assert id_time_ms(result.id) is not None  # time-ordered (UUIDv7)
    assert result.confirmed_by_get and result.sends == 2
    assert list(table.rows) == [result.id]  # created exactly once
    gets = [r for r in cloud.api_requests if r.method == "GET"]
    assert [r.url.path for r in gets] == [f"/api/data/v9.2/accounts({result.id})"]


def test_create_with_a_client_id_and_no_trouble(cloud: Any, clock: FakeClock) -> None:
    table = _Accounts(cloud, drop_after_commit=0)
    given = new_id()
    result = _connect(cloud, clock, table.handler).client.create(
        "accounts", {"name": "Contoso"}, id_attribute="accountid", client_id=given
    )
    assert result.id == given and result.sends == 1 and not result.confirmed_by_get


def test_duplicate_key_on_the_first_send_is_a_real_conflict(cloud: Any, clock: FakeClock) -> None:
    table = _Accounts(cloud, drop_after_commit=0)
    given = new_id()
    table.rows[given] = {"accountid": given}
    with pytest.raises(FatalApiError) as info:
        _connect(cloud, clock, table.handler).client.create(
            "accounts", {"name": "Contoso"}, id_attribute="accountid", client_id=given
        )
    assert info.value.code == DUPLICATE_RECORD
    assert len(table.posts) == 1


def test_dropped_create_without_a_client_id_is_reported_unknown(cloud: Any, clock: FakeClock) -> None:
    table = _Accounts(cloud)
    with pytest.raises(OutcomeUnknownError) as info:
        _connect(cloud, clock, table.handler).client.create("accounts", {"name": "Contoso"})
    assert "may or may not have been applied" in info.value.message
    assert len(table.posts) == 1  # not resent: a second row could be created


def test_refused_connection_on_create_is_retried_even_without_a_client_id(cloud: Any, clock: FakeClock) -> None:
    cloud.api_queue.append(httpx.ConnectError("Connection refused"))
    cloud.api_queue.append(httpx.Response(204, headers={"OData-EntityId": f"{cloud.API}/accounts({new_id()})"}))
    result = _connect(cloud, clock).client.create("accounts", {"name": "A"})
    assert result.sends == 2 and result.id is not None


def test_expired_token_during_a_long_wait_is_refreshed_before_the_retry(
    cloud: Any, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    cloud.token_lifetime = 60
    cloud.api_queue.append(
        httpx.Response(429, headers={"Retry-After": "120"}, json=cloud.error_body("0x80072321", "Combined time"))
    )
    with caplog.at_level(logging.DEBUG):
        _connect(cloud, clock).client.whoami()
    first, second = cloud.api_requests
    assert first.headers["Authorization"] == f"Bearer {cloud.issued[0]}"
    assert second.headers["Authorization"] == f"Bearer {cloud.issued[1]}"  # fetched after the wait, not a 401
    assert clock.sleeps == [120.0]
    assert "retrying after 120.0 s" in caplog.text
    assert cloud.TOKEN_SIGNATURE not in caplog.text


def test_total_time_cap_stops_retrying(cloud: Any, clock: FakeClock) -> None:
    for _ in range(3):
        cloud.api_queue.append(httpx.Response(429, headers={"Retry-After": "7"}))
    with pytest.raises(RetriableApiError):
        _connect(cloud, clock, max_elapsed_s=10).client.whoami()
    assert clock.sleeps == [7.0]


def test_attempt_cap_stops_retrying_transient_failures(cloud: Any, clock: FakeClock) -> None:
    for _ in range(5):
        cloud.api_queue.append(httpx.Response(503, text="Service Unavailable"))
    with pytest.raises(RetriableApiError):
        _connect(cloud, clock, max_attempts=3).client.whoami()
    assert len(cloud.api_requests) == 3


def test_map_keeps_order_and_per_item_errors(clock: FakeClock) -> None:
    governor = Governor(clock=clock, max_parallelism=4)

    def fn(i: int) -> int:
        if i % 3 == 0:
            raise ValueError(f"bad {i}")
        return i * 10

    outcomes = governor.map(fn, range(10))
    assert [o.index for o in outcomes] == list(range(10))
    assert [o.value for o in outcomes if o.ok] == [10, 20, 40, 50, 70, 80]
    assert [str(o.error) for o in outcomes if not o.ok] == ["bad 0", "bad 3", "bad 6", "bad 9"]
    with pytest.raises(ValueError, match="bad 0"):
        outcomes[0].result()
    assert outcomes[1].result() == 10
    assert governor.map(fn, []) == []


def test_one_governor_per_connection_shared_by_its_client(cloud: Any, clock: FakeClock) -> None:
    conn = _connect(cloud, clock)
    assert conn.client.governor is conn.governor
    assert conn.config.max_parallelism == 8


def test_ids_are_time_ordered_and_strictly_increasing() -> None:
    ids = [new_id() for _ in range(5000)]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    frozen = [new_id(lambda: 1_000) for _ in range(10)]  # a clock standing still (or stepping back) keeps order
    assert frozen == sorted(frozen)
    assert all(id_time_ms(i) is not None for i in ids)
    assert id_time_ms("6f9619ff-8b86-d011-b42d-00c04fc964ff") is None


def test_ids_are_canonical_version_7_guids_and_a_forked_child_draws_its_own_random_bits() -> None:
    for value in [new_id() for _ in range(600)]:  # more than one 4 KB pool of random bytes
        parsed = uuid.UUID(value)
        assert str(parsed) == value and parsed.version == 7 and parsed.variant == uuid.RFC_4122
    reader, writer = os.pipe()
    with warnings.catch_warnings():  # Python 3.12+ warns when a process with threads forks; this child only writes
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:  # the child: its ids' random parts, then gone
        os.close(reader)
        os.write(writer, json.dumps([new_id(lambda: 5_000)[19:] for _ in range(4)]).encode())
        os._exit(0)
    os.close(writer)
    with os.fdopen(reader) as pipe:
        child = json.loads(pipe.read())
    os.waitpid(pid, 0)
    ours = [new_id(lambda: 5_000)[19:] for _ in range(4)]
    assert not set(ours) & set(child)  # same millisecond, same pool position: still not the same bits


def test_create_many_uses_client_ids_by_default_and_loses_nothing(cloud: Any, clock: FakeClock) -> None:
    table = _Accounts(cloud, drop_after_commit=3)  # the first three creates commit, then lose their answer
    conn = _connect(cloud, clock, table.handler)
    conn.client.whoami()
    bodies = [{"name": f"A{i}"} for i in range(12)]
    outcomes = conn.client.create_many("accounts", bodies, id_attribute="accountid")
    assert all(o.ok for o in outcomes), [o.error for o in outcomes]
    results = [o.result() for o in outcomes]
    assert sorted(r.id for r in results if r.id) == sorted(table.rows)  # every row created exactly once
    assert [table.rows[r.id]["name"] for r in results if r.id] == [b["name"] for b in bodies]  # in order
    assert sum(r.confirmed_by_get for r in results) == 3


def test_create_many_without_client_ids_reports_unknown_outcomes(cloud: Any, clock: FakeClock) -> None:
    table = _Accounts(cloud, drop_after_commit=1)
    conn = _connect(cloud, clock, table.handler)
    conn.client.whoami()
    outcomes = conn.client.create_many("accounts", [{"name": "A"}], client_ids=False)
    assert isinstance(outcomes[0].error, OutcomeUnknownError)
