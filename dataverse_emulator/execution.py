"""The execution-time model behind the service protection limits: what one request costs, and the fastest a run can
go through each write path under a set of limits (the ceiling a benchmark compares a client with).

Why a model at all: Dataverse charges every request's execution time to the per-user budget (1,200 s per 300 s) and a
request takes that time on the server, so the cheapest path is the one Microsoft documents as most efficient. The
costs below are durations on Dataverse's own clock; ``--time-scale`` divides the wall-clock delay and the window, not
the costs (the budget and the costs are durations of the same scale).

Sources (BEHAVIOURS.md rows ``throttle-*`` and ``exec-*``):

* a ``$batch`` counts as one request, its operations are "applied sequentially on the server, so there's no improved
  efficiency per operation" (optimize-performance-create-update.md): a batch costs the sum of its operations;
* a bulk message (``CreateMultiple``...) counts as one request whose execution time accrues (bulk-operations.md FAQ)
  and is "the most performant" way to write many rows: one pipeline pass plus a cheaper per-record cost;
* ``OPERATION_S`` (GUESS, calibrated): 7.2 ms is the execution budget (4 s per s) divided by the 2,000,000 rows/hour
  quoted second-hand for ExecuteMultiple, so a batch path that keeps the budget busy lands on that figure; the same
  cost makes a bulk path at the GUESS ratio of one fifth land on the quoted 10,000,000 rows/hour;
* ``BULK_RECORD_RATIO`` (GUESS): a bulk record costs one fifth of a single operation, from the quoted "up to 5x";
  exposed as ``--bulk-record-cost-ratio`` so a benchmark can show how much its result depends on it;
* ``TIMEOUT_S``: a request is given 2 minutes (plug-ins "must complete within a generous 2-minute time limit",
  optimize-performance-create-update.md; CrmServiceClient's default timeout, bulk-operations.md); a bulk request
  whose records would run longer fails with the SQL timeout bulk-operations.md lists for "batch size too large";
* ``MAX_MESSAGE_BYTES``: 116.85 MB, above which a request fails when a plug-in is registered for it
  (troubleshoot-plug-in.md, "Message size exceeded when sending context to Sandbox").
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from dataclasses import dataclass

OPERATION_S = 0.0072
BULK_RECORD_RATIO = 0.2
TIMEOUT_S = 120.0
MAX_MESSAGE_BYTES = int(116.85 * 1024 * 1024)
BULK_MESSAGES = frozenset({"CreateMultiple", "UpdateMultiple", "UpsertMultiple", "DeleteMultiple"})


@dataclass(frozen=True)
class Costs:
    """Execution seconds per request kind: ``single`` (any request that is neither of the others), ``batch``
    (``$batch``: its operations one after another) and ``bulk`` (a bulk message: one pass plus a cheaper record)."""

    operation_s: float = OPERATION_S
    bulk_record_ratio: float = BULK_RECORD_RATIO
    timeout_s: float = TIMEOUT_S

    def __post_init__(self) -> None:
        if not self.operation_s > 0 or not self.bulk_record_ratio > 0 or not self.timeout_s > 0:
            raise ValueError("the operation cost, the bulk record cost ratio and the timeout must be positive")

    def of(self, kind: str, records: int) -> float:
        """The modelled execution seconds of one request of ``kind`` that touches ``records`` records."""
        if kind == "bulk":
            return self.operation_s * (1 + self.bulk_record_ratio * max(0, records))
        if kind == "batch":
            return self.operation_s * max(1, records)
        return self.operation_s


def request_kind(path: str) -> str:
    """``batch``, ``bulk`` or ``single`` from a Web API path (the middleware decides before any handler runs)."""
    last = path.rstrip("/").rsplit("/", 1)[-1]
    if last == "$batch":
        return "batch"
    if last.startswith("Microsoft.Dynamics.CRM.") and last.rsplit(".", 1)[-1] in BULK_MESSAGES:
        return "bulk"
    return "single"


def sustained_rate(
    costs: Costs, kind: str, per_request: int, window_s: float, max_requests: int, max_exec_s: float, concurrency: int
) -> float:
    """Records per second (Dataverse's clock) one user keeps up through ``kind`` with ``per_request`` records a request:
    the least of the request limit, the execution-time limit and the concurrency limit times one request's duration."""
    records = 1 if kind == "single" else per_request
    cost = costs.of(kind, records)
    return min(max_requests / window_s * records, max_exec_s / window_s * records / cost, concurrency * records / cost)


def fastest_run_s(
    costs: Costs,
    kind: str,
    n: int,
    per_request: int,
    window_s: float,
    max_requests: int,
    max_exec_s: float,
    concurrency: int,
    round_trip_s: float = 0.0,
) -> float:
    """A lower bound (Dataverse's clock) on the time ``n`` records take through ``kind``: the sliding window lets the
    first requests through at once, then one window's worth per window; each request lasts its cost (plus
    ``round_trip_s`` of network) and at most ``concurrency`` run at a time. For the ceiling a client can reach,
    ``concurrency`` is what it may keep in flight: the least of the limit (52) and the ``x-ms-dop-hint`` it honours.
    A benchmark divides by ``--time-scale`` and calls ``n`` / that its ceiling.

    The closed form charges a request's whole cost when it is admitted, so a request longer than the window's share of
    the budget waits for a next window the emulator does not impose (it charges one operation at admission and the
    rest when the request finishes): 20 chunks of 1,000 at 4 in flight took 7.45 s there against 7.30 s for a perfect
    client. A bound above what a client reaches flatters the client, so the answer is the faster of the closed form
    and :func:`_simulated_run_s`."""
    records = 1 if kind == "single" else per_request
    n_req = math.ceil(n / records)
    cost = costs.of(kind, records)
    by_concurrency = math.ceil(n_req / concurrency) * (cost + round_trip_s)
    by_requests = (n_req - 1) // max_requests * window_s + cost
    per_window = max(1, math.ceil(max_exec_s / cost))  # admitted while the window's total is under the budget
    by_exec = (n_req - 1) // per_window * window_s + cost
    closed = max(by_concurrency, by_requests, by_exec)
    limits = (window_s, max_requests, max_exec_s, concurrency, round_trip_s)
    return min(closed, _simulated_run_s(costs, kind, n, per_request, *limits))


def _simulated_run_s(
    costs: Costs,
    kind: str,
    n: int,
    per_request: int,
    window_s: float,
    max_requests: int,
    max_exec_s: float,
    concurrency: int,
    round_trip_s: float,
) -> float:
    """A perfect client under :class:`~dataverse_emulator.throttle.Throttle`'s own admission rule: it sends as soon as
    one of ``concurrency`` places is free and the window admits the request (fewer than ``max_requests`` in it, and
    its charged execution time under ``max_exec_s``, a request charged one operation when admitted and the rest when
    it finishes); each request lasts its cost plus ``round_trip_s``."""
    records = 1 if kind == "single" else per_request
    cost, first = costs.of(kind, records), costs.operation_s
    places = [0.0] * concurrency  # when each place is free again
    sent: deque[tuple[float, float]] = deque()  # (admitted, finished) of the requests in the window
    end = 0.0
    for _ in range(math.ceil(n / records)):
        now = heapq.heappop(places)
        while True:
            while sent and sent[0][0] <= now - window_s:
                sent.popleft()
            charged = sum(cost if done <= now else first for _, done in sent)
            if len(sent) < max_requests and charged < max_exec_s:
                break
            now = math.nextafter(sent[0][0] + window_s, math.inf)  # the next change that can admit it: the oldest
            # request leaves the window (just after: the window's edge, rounded, must not keep it in)
        done = now + cost + round_trip_s
        sent.append((now, done))
        heapq.heappush(places, done)
        end = max(end, done)
    return end
