"""connector.progress and the governor's part in it: snapshots, cancellation, grace, throttle holds counted.

Nothing here sleeps: workers block on events the test sets, bounded by ``WAIT_S`` so a broken map fails, not hangs.
"""

from __future__ import annotations

import json
import threading

import pytest

from connector.clock import FakeClock
from connector.governor import Governor
from connector.progress import CancellationToken, Progress, Tracker, current, running

WAIT_S = 10.0


def test_a_pre_cancelled_map_starts_nothing() -> None:
    token = CancellationToken()
    token.cancel("test")
    called: list[int] = []
    outcomes = Governor(clock=FakeClock()).map(called.append, [1, 2, 3], cancel=token)
    assert called == []
    assert [(o.started, o.finished, o.ok) for o in outcomes] == [(False, False, False)] * 3


def test_a_cancel_lets_the_item_in_flight_finish_and_starts_no_other() -> None:
    governor = Governor(clock=FakeClock(), max_parallelism=1)
    token = CancellationToken()
    seen: list[int] = []

    def work(n: int) -> int:
        token.cancel("test")  # the item in flight is not stopped
        return n * 10

    outcomes = governor.map(work, [1, 2, 3], cancel=token, on_outcome=lambda o: seen.append(o.index))
    assert [o.value for o in outcomes] == [10, None, None]
    assert [o.started for o in outcomes] == [True, False, False]
    assert seen == [0]  # on_outcome hears the items that finished, on the calling thread


def test_an_abort_stops_waiting_for_the_item_in_flight() -> None:
    governor = Governor(clock=FakeClock(), max_parallelism=1)
    token = CancellationToken()
    release = threading.Event()

    def work(n: int) -> int:
        token.abort("test")
        assert release.wait(WAIT_S)
        return n

    try:
        outcomes = governor.map(work, [1, 2], cancel=token)
    finally:
        release.set()
    assert [(o.started, o.finished) for o in outcomes] == [(True, False), (False, False)]
    assert token.cancelled and token.aborted and token.reason == "test"


def test_a_grace_period_bounds_the_wait_after_a_cancel() -> None:
    governor = Governor(clock=FakeClock(), max_parallelism=2)
    governor.observe({})  # an answer came: two items may run
    token = CancellationToken(grace_s=0.0)
    release = threading.Event()
    started = threading.Barrier(2, timeout=WAIT_S)

    def work(n: int) -> int:
        started.wait()  # both items in flight before the cancel
        if n == 1:
            token.cancel("test")
        assert release.wait(WAIT_S)
        return n

    try:
        outcomes = governor.map(work, [1, 2], cancel=token)
    finally:
        release.set()
    assert [(o.started, o.finished) for o in outcomes] == [(True, False), (True, False)]


def test_a_deadline_cancels_on_the_injected_clock() -> None:
    clock = FakeClock()
    token = CancellationToken(deadline_s=30, clock=clock)
    assert not token.cancelled and token.reason is None
    clock.advance(29.9)
    assert not token.cancelled
    clock.advance(0.2)
    assert token.cancelled and token.reason == "deadline" and not token.aborted


def test_cancel_wakes_subscribers_until_they_unsubscribe() -> None:
    token = CancellationToken()
    woken: list[str] = []
    unsubscribe = token.subscribe(lambda: woken.append("a"))
    token.cancel("first")
    unsubscribe()
    token.abort("second")
    assert woken == ["a"] and token.reason == "first"


def test_throttle_holds_are_reported_once_each_with_the_time_added() -> None:
    clock = FakeClock()
    governor = Governor(clock=clock)
    holds: list[float] = []
    unwatch = governor.watch_throttle(holds.append)
    governor.throttle(5)
    governor.throttle(3)  # inside the first hold: nothing added
    governor.throttle(8)
    unwatch()
    governor.throttle(20)
    assert holds == [5, 3]


def test_tracker_snapshots_counts_rate_eta_and_throttle_waits() -> None:
    clock = FakeClock()
    governor = Governor(clock=clock)
    events: list[Progress] = []
    token = CancellationToken()
    with Tracker("write_entities", events.append, total=100, clock=clock, throttle=governor, cancel=token) as tracker:
        clock.advance(2)
        tracker.advance({"created": 30, "failed": 10})
        governor.throttle(4)
        token.cancel()
        tracker.advance({"not_sent": 60})
    governor.throttle(50)  # after the end: not counted
    assert [e.event for e in events] == ["start", "advance", "throttle", "advance", "end"]
    first = events[1]
    assert (first.done, first.total, dict(first.counts)) == (40, 100, {"created": 30, "failed": 10})
    assert first.rows_per_s == 20.0 and first.eta_s == 3.0 and not first.cancelled
    last = events[-1]
    assert (last.done, last.throttle_waits, last.throttled_s, last.cancelled) == (100, 1, 4.0, True)
    line = json.loads(json.dumps(last.to_dict()))
    assert line["counts"] == {"created": 30, "failed": 10, "not_sent": 60} and line["eta_s"] == 0.0


def test_current_is_empty_outside_a_run_and_nested_runs_restore_it() -> None:
    assert current().progress is None and current().cancel is None
    token = CancellationToken()
    with running(cancel=token):
        assert current().cancel is token
        with running():
            assert current().cancel is None
        assert current().cancel is token
    assert current().cancel is None


def test_a_reporter_that_raises_is_dropped_and_the_work_goes_on(caplog: pytest.LogCaptureFixture) -> None:
    calls: list[str] = []

    def broken(event: Progress) -> None:
        calls.append(event.event)
        raise RuntimeError("display gone")

    clock = FakeClock()
    with Tracker("write_entities", broken, total=2, clock=clock) as tracker:
        tracker.advance({"created": 1})
        tracker.advance({"created": 1})
    assert calls == ["start"] and tracker.done == 0  # dropped: no more snapshots, no more counting
    assert "the progress reporter of write_entities failed" in caplog.text


def test_rows_never_sent_are_done_but_not_part_of_the_rate() -> None:
    from connector.progress import Progress

    cancelled = Progress("write_entities", "end", 100, 100, {"created": 10, "not_sent": 90}, elapsed_s=2.0)
    assert cancelled.rows_per_s == 5.0  # 10 rows in 2 s, not 100
    nothing_moved = Progress("write_entities", "end", 100, 100, {"not_sent": 100}, elapsed_s=2.0)
    assert nothing_moved.rows_per_s is None and nothing_moved.eta_s is None
