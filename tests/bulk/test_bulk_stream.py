"""The streaming writer: every record of a stream answered exactly once, chunk by chunk, in bounded memory; a cancel
mid-stream reports what was not sent; one row's writes land in input order across chunks; bad input is refused
before anything is sent."""

from __future__ import annotations

import json
import threading
import tracemalloc
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from connector.bulk import RecordResult, WriteOptions, write_entities_stream
from connector.errors import InputError
from connector.progress import CancellationToken
from tests.bulk.conftest import FakeDataverse
from tests.bulk.test_bulk import BulkServer

WAIT_S = 10.0  # only a broken writer waits this long


class Seen:
    """The callback: every chunk's indexes, each index counted."""

    def __init__(self, n: int) -> None:
        self.times = bytearray(n)
        self.chunks: list[list[RecordResult]] = []
        self.keep = True

    def __call__(self, results: list[RecordResult]) -> None:
        for r in results:
            self.times[r.index] += 1
        if self.keep:
            self.chunks.append(results)

    def every_index_once(self) -> bool:
        return all(t == 1 for t in self.times)


def test_every_record_of_a_stream_is_answered_once_with_its_stream_position(fake: FakeDataverse) -> None:
    server = BulkServer(fake)
    rid = server.seed("EXISTING")
    records: list[dict[str, Any]] = [{"id": rid, "fields": {"name": "first"}}]  # the same row again at index 7
    records += [{"key": {"accountnumber": f"S-{i}"}, "fields": {"name": f"n{i}"}} for i in range(1, 12)]
    records[3] = {"key": {"accountnumber": "S-2"}, "fields": {"name": "later"}}  # merged into within its chunk
    records[5]["fields"]["name"] = float("nan")  # refused by itself
    records[7] = {"id": rid, "fields": {"name": "second"}}
    seen = Seen(len(records))
    with fake.connect(max_parallelism=2) as conn:
        summary = write_entities_stream(
            conn, "account", "upsert", iter(records), WriteOptions(chunk_size=4), on_chunk=seen
        )
    assert seen.every_index_once()
    assert [sorted(r.index for r in chunk) for chunk in sorted(seen.chunks, key=lambda c: min(r.index for r in c))] == [
        [0, 1, 2, 3],
        [4, 5, 6, 7],
        [8, 9, 10, 11],
    ]
    by_index = {r.index: r for chunk in seen.chunks for r in chunk}
    assert by_index[2].merged_into == 3 and by_index[3].status == "created"
    assert by_index[5].status == "failed" and by_index[5].code == "InputError"
    assert by_index[0].status == by_index[7].status == "updated"
    assert server.rows[rid]["name"] == "second"  # the later write of one row landed last
    assert summary.summary()["total"] == 12 and summary.summary()["merged"] == 1
    assert summary.summary()["created"] == 9 and summary.summary()["failed"] == 1


def test_a_row_written_by_a_chunk_in_flight_waits_for_it(fake: FakeDataverse) -> None:
    """Chunk A holds row X and is answered only once chunk B has arrived (so they run in parallel); chunk C also
    writes X: it must not be sent before A is answered."""
    server = BulkServer(fake)
    rid = server.seed("X")
    log: list[str] = []
    b_arrived = threading.Event()
    lock = threading.Lock()
    respond = fake.respond

    def ordered(request: httpx.Request) -> httpx.Response:
        if request.method == "POST" and "Multiple" in request.url.path:  # the writes (reads may come as a $batch)
            names = [t["name"] for t in json.loads(request.content)["Targets"]]
            tag = names[0][0]
            with lock:
                log.append(f"{tag}-start")
            if tag == "B":
                b_arrived.set()
            if tag == "A":
                assert b_arrived.wait(WAIT_S)
            response = respond(request)
            with lock:
                log.append(f"{tag}-end")
            return response
        return respond(request)

    fake.respond = ordered
    records = [
        {"id": rid, "fields": {"name": "A x"}},
        {"key": {"accountnumber": "a1"}, "fields": {"name": "A 1"}},
        {"key": {"accountnumber": "b1"}, "fields": {"name": "B 1"}},
        {"key": {"accountnumber": "b2"}, "fields": {"name": "B 2"}},
        {"id": rid, "fields": {"name": "C x"}},
        {"key": {"accountnumber": "c1"}, "fields": {"name": "C 1"}},
    ]
    seen = Seen(len(records))
    with fake.connect(max_parallelism=4) as conn:
        write_entities_stream(conn, "account", "upsert", records, WriteOptions(chunk_size=2), on_chunk=seen)
    assert seen.every_index_once()
    assert log.index("B-start") < log.index("A-end") < log.index("C-start")
    assert server.rows[rid]["name"] == "C x"


def test_a_cancel_mid_stream_reports_the_rest_not_sent_without_reading_them_all(fake: FakeDataverse) -> None:
    server = BulkServer(fake)
    token = CancellationToken()
    read = [0]

    def records() -> Iterator[dict[str, Any]]:
        for i in range(50):
            read[0] += 1
            yield {"fields": {"name": f"n{i}"}}

    def on_chunk(results: list[RecordResult]) -> None:
        seen(results)
        token.cancel("SIGINT")  # after the first chunk is confirmed

    seen = Seen(50)
    with fake.connect(max_parallelism=1) as conn:
        summary = write_entities_stream(
            conn, "account", "create", records(), WriteOptions(chunk_size=5), on_chunk=on_chunk, cancel=token
        )
    assert seen.every_index_once() and read[0] == 50
    statuses = {r.index: r.status for chunk in seen.chunks for r in chunk}
    created = sorted(i for i, s in statuses.items() if s == "created")
    assert created == list(range(len(created))) and 5 <= len(created) < 50 and len(created) % 5 == 0
    assert all(statuses[i] == "not_sent" for i in range(len(created), 50))
    assert summary.cancelled and summary.summary()["not_sent"] == 50 - len(created)
    assert len(server.rows) == len(created) == 5 * summary.chunks


def test_bad_input_in_the_first_chunk_is_refused_before_any_request_later_fails_its_record(
    fake: FakeDataverse,
) -> None:
    server = BulkServer(fake)
    bad = [{"fields": {"name": "a", "nosuchcolumn": 1}}]
    with fake.connect() as conn, pytest.raises(InputError, match="nosuchcolumn"):
        write_entities_stream(conn, "account", "create", bad, on_chunk=Seen(1))
    assert not server.writes
    records = [{"fields": {"name": f"n{i}"}} for i in range(4)] + bad
    seen = Seen(5)
    with fake.connect() as conn:
        write_entities_stream(conn, "account", "create", records, WriteOptions(chunk_size=2), on_chunk=seen)
    last = next(r for chunk in seen.chunks for r in chunk if r.index == 4)
    assert (last.status, last.code) == ("failed", "InputError") and "nosuchcolumn" in str(last.message)
    assert seen.every_index_once() and len(server.rows) == 4


class Sink:
    """A Dataverse that creates what CreateMultiple carries and keeps nothing (a long stream's memory is the
    writer's alone)."""

    def __init__(self, fake: FakeDataverse) -> None:
        self.fake, self.created = fake, 0
        fake.respond = self.respond

    def respond(self, request: httpx.Request) -> httpx.Response:
        self.fake.requests.clear()
        if "sdkmessagefilters" in request.url.path:
            names = ["CreateMultiple", "UpdateMultiple"]
            return httpx.Response(200, json={"value": [{"sdkmessageid": {"name": m}} for m in names]})
        targets = json.loads(request.content)["Targets"]
        self.created += len(targets)
        return httpx.Response(200, json={"Ids": [t["accountid"] for t in targets]})


def test_a_stream_of_200000_records_holds_at_most_a_window_of_chunks(fake: FakeDataverse) -> None:
    """Records read from the stream and not yet answered never exceed 2 x parallelism chunks (and the one read)."""
    n, parallelism, size = 200_000, 2, 1000
    sink, read, answered, held = Sink(fake), [0], [0], [0]

    def records() -> Iterator[dict[str, Any]]:
        for _ in range(n):
            read[0] += 1
            held[0] = max(held[0], read[0] - answered[0])
            yield {"fields": {"name": "n"}}

    def on_chunk(results: list[RecordResult]) -> None:
        seen(results)
        answered[0] += len(results)

    seen = Seen(n)
    seen.keep = False
    with fake.connect(max_parallelism=parallelism) as conn:
        options = WriteOptions(chunk_size=size)
        summary = write_entities_stream(conn, "account", "create", records(), options, on_chunk=on_chunk)
    assert seen.every_index_once() and sink.created == n and summary.summary()["created"] == n
    assert held[0] <= parallelism * size * 2 + size


def test_a_streamed_write_peaks_far_below_the_same_rows_written_as_a_list(fake: FakeDataverse) -> None:
    """Traced bytes at the peak: the list form holds every planned body (about 27 MB for 20,000 rows here), the
    stream a window of them (about 4 MB)."""
    n = 20_000
    sink = Sink(fake)
    with fake.connect(max_parallelism=2) as conn:
        conn.metadata.table("account")
        tracemalloc.start()
        try:
            records = ({"fields": {"name": "n"}} for _ in range(n))
            options = WriteOptions(chunk_size=1000)
            write_entities_stream(conn, "account", "create", records, options, on_chunk=lambda results: None)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert sink.created == n
    assert peak < 8_000_000, f"peak {peak:,} bytes"


def test_a_streamed_update_by_key_resolves_each_chunks_keys(fake: FakeDataverse) -> None:
    server = BulkServer(fake)
    ids = [server.seed(f"K-{i}") for i in range(4)]
    records = [{"key": {"accountnumber": f"K-{i}"}, "fields": {"name": f"new {i}"}} for i in (0, 1, 2, 9, 3)]
    seen = Seen(len(records))
    with fake.connect() as conn:
        summary = write_entities_stream(conn, "account", "update", records, WriteOptions(chunk_size=2), on_chunk=seen)
    by_index = {r.index: r for chunk in seen.chunks for r in chunk}
    assert seen.every_index_once() and len(seen.chunks) == 3
    assert [by_index[i].status for i in range(5)] == ["updated", "updated", "updated", "failed", "updated"]
    assert by_index[3].code == "0x80040217" and by_index[4].id == ids[3]
    assert [server.rows[rid]["name"] for rid in ids] == ["new 0", "new 1", "new 2", "new 3"]
    assert summary.pre_reads == 3  # one key read per chunk


def test_short_keys_are_pre_read_a_thousand_to_a_request_and_guids_in_two_sent_as_one(fake: FakeDataverse) -> None:
    """The pre-read's URL is bounded by its encoded length: 1,000 short account numbers in one read, 1,000 GUIDs in
    two (the URL limit, not a count, decides), every URL inside Dataverse's 32 KB; the two go as one ``$batch``, one
    request against the limits."""
    from connector.bulk import write_entities

    server = BulkServer(fake)
    by_key = [{"key": {"accountnumber": f"A{i:05d}"}, "fields": {"name": f"n{i}"}} for i in range(1000)]
    by_id = [{"id": f"00000000-0000-4000-8000-{i:012d}", "fields": {"name": f"n{i}"}} for i in range(1000)]
    with fake.connect() as conn:
        keyed = write_entities(conn, "account", "upsert", by_key, WriteOptions(chunk_size=1000))
        assert len(server.reads) == 1 and server.batched_reads == []
        ided = write_entities(conn, "account", "upsert", by_id, WriteOptions(chunk_size=1000))
    assert keyed.pre_reads == 1 and keyed.summary()["created"] == 1000
    assert ided.pre_reads == 1 and ided.summary()["created"] == 1000 and len(server.batched_reads) == 2
    urls = [str(r.url) for r in server.reads] + server.batched_reads
    assert all(len(url) < 32_768 for url in urls)
    assert max(len(url) for url in urls) > 16_384  # the room up to the limit is used


def test_a_list_is_planned_chunk_by_chunk_as_the_run_takes_them_with_its_duplicates_merged_across_chunks(
    fake: FakeDataverse, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first write leaves before the whole list is planned (at most a window of chunks is), and a record whose
    row an earlier record names, several chunks later, is still merged into that earlier record's write."""
    import connector.bulk_plan as bulk_plan
    from connector.bulk import write_entities

    server = BulkServer(fake)
    plan = bulk_plan.planned
    calls = [0]

    def counting(*args: Any, **kwargs: Any) -> Any:
        calls[0] += 1
        return plan(*args, **kwargs)

    monkeypatch.setattr(bulk_plan, "planned", counting)
    at_first_write: list[int] = []
    server.before_write.append(lambda: at_first_write.append(calls[0]))
    records = [{"key": {"accountnumber": f"L-{i}"}, "fields": {"name": f"n{i}"}} for i in range(200)]
    records[150] = {"key": {"accountnumber": "l-3"}, "fields": {"name": "later"}}  # the row of record 3, any case
    with fake.connect(max_parallelism=2) as conn:  # a window of 2 x 2 chunks
        report = write_entities(conn, "account", "upsert", records, WriteOptions(chunk_size=10))
    assert at_first_write and at_first_write[0] <= 4 * 10 + 1 < 200  # 4 chunks, and record 150 planned with 3
    assert calls[0] == 200 and report.summary()["created"] == 200 and report.summary()["merged"] == 1
    assert report.results[3].merged_into == 150 and report.results[150].status == "created"
    assert [r["name"] for r in server.rows.values() if r["accountnumber"].lower() == "l-3"] == ["later"]
    assert len(server.writes) == 20  # the merged row went with the first chunk: 199 rows in 20 chunks of 10
