"""Upsert chunks waiting for a place are pre-read while the chunks before them write, two to a request, by one reader
beside the write places (``ReadAhead``).

Which chunks are read ahead, and when, is decided on the chunks alone, so these tests drive
:class:`connector.bulk_run.ReadAhead` directly with a writer that records its reads (waiting on the chunks' own events,
never on time); the end-to-end tests (``tests/e2e/test_bulk_e2e.py``) check the outcomes of runs that read ahead
against the rows read back, and the requests in flight in the server's log.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import SimpleNamespace
from typing import cast

import pytest

from connector.bulk_chunks import ChunkWriter, Found, PlannedWrite
from connector.bulk_run import Chunk, ReadAhead
from connector.progress import CancellationToken


def by_key(start: int, n: int) -> list[PlannedWrite]:
    return [PlannedWrite(i, {"name": f"n{i}"}, key={"accountnumber": f"A{i:06d}"}) for i in range(start, start + n)]


class Reads:
    """A writer's ``lookup``: records the indexes each read covered (and whether it was sent in the governor's place
    beside the limit), answers a found set naming its first index, or fails while ``fail`` is set; ``gate`` holds a
    read until the test lets it go."""

    def __init__(self, mode: str = "upsert", fail: bool = False) -> None:
        self.mode = mode
        self.connection = SimpleNamespace(governor=SimpleNamespace(beside=self.beside))
        self.in_beside = threading.local()
        self.beside_reads: list[list[int]] = []
        self.calls: list[list[int]] = []
        self.fail = fail
        self.gate = threading.Event()
        self.gate.set()
        self.lock = threading.Lock()

    @contextmanager
    def beside(self) -> Iterator[None]:
        self.in_beside.on = True
        try:
            yield
        finally:
            self.in_beside.on = False

    def lookup(self, items: list[PlannedWrite]) -> Found:
        self.gate.wait(30)
        with self.lock:
            self.calls.append([item.index for item in items])
            if getattr(self.in_beside, "on", False):
                self.beside_reads.append(self.calls[-1])
        if self.fail:
            raise RuntimeError("the read failed")
        return {f"read-{items[0].index}"}, {}


def setup(n: int, reads: Reads, cancel: CancellationToken | None = None) -> tuple[ReadAhead, list[Chunk]]:
    ahead = ReadAhead(cast(ChunkWriter, reads), cancel)
    chunks = [Chunk(by_key(k * 100, 100)) for k in range(n)]
    for chunk in chunks:
        ahead.taken(chunk)
    return ahead, chunks


def read_ahead(chunk: Chunk) -> Found | None:
    assert chunk.shared is not None, "not read ahead"
    assert chunk.shared.over.wait(30)
    return chunk.shared.found


def test_a_chunk_reads_itself_then_the_reader_reads_the_next_two_waiting_in_one_request() -> None:
    reads = Reads()
    ahead, (first, second, third, fourth) = setup(4, reads)
    assert ahead.known(first, first.items) == ({"read-0"}, {})
    assert second.shared is None  # nothing read ahead until the first chunk's write is let go
    ahead.kick()
    assert read_ahead(second) == ({"read-100"}, {}) and read_ahead(third) == ({"read-100"}, {})
    assert reads.calls[:2] == [list(range(100)), list(range(100, 300))]
    assert reads.beside_reads == [list(range(100, 300))]  # the chunk's own read takes a place of the limit
    assert ahead.known(second, second.items) == ({"read-100"}, {})  # nothing read again
    ahead.close()
    assert fourth.shared is None  # alone, and the stream may go on: it waits for a partner or for its own turn
    assert len(reads.calls) == 2


def test_a_chunk_alone_at_the_end_of_the_stream_is_read_ahead_too() -> None:
    reads = Reads()
    ahead, (first, second) = setup(2, reads)
    ahead.known(first, first.items)
    ahead.kick()
    assert second.shared is None
    ahead.end()
    assert read_ahead(second) == ({"read-100"}, {})
    ahead.close()


class Watched(threading.Event):
    """An event that tells when a thread starts waiting on it."""

    def __init__(self) -> None:
        super().__init__()
        self.waited = threading.Event()

    def wait(self, timeout: float | None = None) -> bool:
        self.waited.set()
        return super().wait(timeout)


def test_a_chunk_whose_read_is_still_running_waits_for_it_and_does_not_read_again() -> None:
    reads = Reads()
    ahead, chunks = setup(3, reads)
    ahead.known(chunks[0], chunks[0].items)
    reads.gate.clear()  # the reader's read is held
    ahead.kick()
    shared = chunks[1].shared
    assert shared is not None and not shared.over.is_set()
    shared.over = Watched()
    got: list[Found | None] = []
    waiter = threading.Thread(target=lambda: got.append(ahead.known(chunks[1], chunks[1].items)))
    waiter.start()
    assert shared.over.waited.wait(30)  # the chunk waits for the running read...
    reads.gate.set()
    waiter.join(30)
    assert got == [({"read-100"}, {})] and [c[0] for c in reads.calls] == [0, 100]  # ...and reads nothing itself
    ahead.close()


def test_a_cancel_does_not_wait_for_a_read_ahead_nobody_will_use() -> None:
    cancel = CancellationToken()
    reads = Reads()
    ahead, (first, second, _) = setup(3, reads, cancel)
    ahead.known(first, first.items)
    reads.gate.clear()  # the reader's read is held, as by a long Retry-After
    ahead.kick()
    assert second.shared is not None and ahead.reader is not None
    cancel.cancel()
    closer = threading.Thread(target=ahead.close)
    closer.start()
    closer.join(30)  # returns at once (a test that fails does not hang): the chunks it reads for will not begin
    assert not closer.is_alive() and ahead.reader.is_alive()
    reads.gate.set()
    ahead.reader.join(30)
    assert second.shared.over.is_set()


def test_a_reader_thread_that_cannot_start_leaves_each_chunk_to_read_for_itself(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    reads = Reads()
    ahead, (first, second, third) = setup(3, reads)
    ahead.known(first, first.items)

    def no_thread(self: threading.Thread) -> None:
        raise RuntimeError("can't start new thread")

    monkeypatch.setattr(threading.Thread, "start", no_thread)
    ahead.kick()  # no error, and no chunk left waiting for a read that never comes
    monkeypatch.undo()
    assert second.shared is None and third.shared is None and ahead.reader is None
    assert ahead.known(second, second.items) == ({"read-100"}, {})


def test_a_failed_read_ahead_leaves_each_chunk_to_read_for_itself() -> None:
    reads = Reads()
    ahead, (first, second, third) = setup(3, reads)
    reads.fail = True
    with pytest.raises(RuntimeError):  # the chunk's own read fails in its own thread, as it would alone
        ahead.known(first, first.items)
    assert read_ahead(second) is None and read_ahead(third) is None  # the reader's read failed too
    reads.fail = False
    ahead.close()
    assert ahead.known(second, second.items) == ({"read-100"}, {})  # read now, for itself alone
    assert reads.calls[-1] == list(range(100, 200))


def test_nothing_is_read_ahead_after_a_cancel_or_for_another_mode() -> None:
    cancel = CancellationToken()
    reads = Reads()
    ahead, (first, second, third) = setup(3, reads, cancel)
    cancel.cancel()
    ahead.known(first, first.items)
    ahead.kick()
    ahead.end()
    assert second.shared is None and third.shared is None and reads.calls == [list(range(100))]
    update = Reads(mode="update")  # an update resolves its keys before chunking: no pre-read at all
    ahead, (a, _) = setup(2, update)
    assert ahead.known(a, a.items) is None and update.calls == []
