"""An upsert chunk's pre-read takes the next waiting chunk's rows along, one request for both (``ReadAhead``).

The pairing is decided on the chunks alone, so these tests drive :class:`connector.bulk_run.ReadAhead` directly with a
writer that records its reads; the end-to-end tests (``tests/e2e/test_bulk_e2e.py``) check the outcomes of runs that
pair chunks against the rows read back.
"""

from __future__ import annotations

from typing import cast

import pytest

from connector.bulk_chunks import ChunkWriter, Found, PlannedWrite
from connector.bulk_run import Chunk, ReadAhead


def by_key(start: int, n: int, column: str = "accountnumber") -> list[PlannedWrite]:
    return [PlannedWrite(i, {"name": f"n{i}"}, key={column: f"A{i:06d}"}) for i in range(start, start + n)]


def by_id(start: int, n: int) -> list[PlannedWrite]:
    return [PlannedWrite(i, {"name": f"n{i}"}, id=f"00000000-0000-4000-8000-{i:012d}") for i in range(start, start + n)]


class Reads:
    """A writer's ``lookup``: records the indexes each read covered, answers what ``found`` says (or fails)."""

    def __init__(self, fail: bool = False) -> None:
        self.calls: list[list[int]] = []
        self.fail = fail

    def lookup(self, items: list[PlannedWrite]) -> Found:
        self.calls.append([item.index for item in items])
        if self.fail:
            raise RuntimeError("the read failed")
        return {items[0].id} if items[0].id else set(), {}


def test_a_chunk_takes_the_first_waiting_chunk_along_and_that_one_reads_nothing() -> None:
    ahead = ReadAhead("upsert")
    first, second, third = Chunk(by_key(0, 500)), Chunk(by_key(500, 500)), Chunk(by_key(1000, 500))
    for chunk in (first, second, third):
        ahead.taken(chunk)
    reads = Reads()
    writer = cast(ChunkWriter, reads)
    assert ahead.known(first, first.items, writer) is not None
    assert reads.calls == [list(range(1000))]  # one read for both chunks
    assert second.shared is not None and second.shared.over.is_set()
    assert ahead.known(second, second.items, writer) == second.shared.found  # nothing read again
    assert ahead.known(third, third.items, writer) is None  # nobody waits: its own pre-read reads it
    assert reads.calls == [list(range(1000))]


def test_a_chunk_begun_out_of_order_takes_the_first_chunk_nobody_took_along() -> None:
    ahead = ReadAhead("upsert")
    chunks = [Chunk(by_key(k * 100, 100)) for k in range(4)]
    for chunk in chunks:
        ahead.taken(chunk)
    assert ahead.begin(chunks[0]) is chunks[1]
    assert ahead.begin(chunks[2]) is chunks[3]  # the second is taken along already
    assert ahead.begin(chunks[1]) is None and ahead.begin(chunks[3]) is None


def test_only_an_upsert_takes_a_chunk_along() -> None:
    ahead = ReadAhead("update")  # an update resolves its keys before chunking: no pre-read to share
    a, b = Chunk(by_key(0, 10)), Chunk(by_key(10, 10))
    ahead.taken(a)
    ahead.taken(b)
    assert ahead.begin(a) is None and b.shared is None


def test_a_failed_shared_read_leaves_the_other_chunk_to_read_for_itself() -> None:
    ahead = ReadAhead("upsert")
    first, second = Chunk(by_key(0, 10)), Chunk(by_key(10, 10))
    ahead.taken(first)
    ahead.taken(second)
    with pytest.raises(RuntimeError):
        ahead.known(first, first.items, cast(ChunkWriter, Reads(fail=True)))
    assert second.shared is not None and second.shared.over.is_set() and second.shared.found is None
    assert ahead.known(second, second.items, cast(ChunkWriter, Reads())) is None  # None: it reads its own rows
