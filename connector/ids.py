"""Client-generated, time-ordered record ids: what makes a create safe to send twice.

A create whose answer was lost (a dropped connection, a 502) may or may not have been applied. When the client chose
the primary key, sending it again is harmless: either the row is created now, or Dataverse answers with a duplicate
key, which a GET by that id confirms as "done". The ids are UUIDv7-shaped (RFC 9562): the first 48 bits are the Unix
time in milliseconds, so ids created later sort later, both as text and as 128-bit numbers. Time-ordered keys keep
inserts near the end of the table's clustered index instead of scattering them, which is what Microsoft's guidance
against random client GUIDs is about. Within one millisecond a counter keeps the order strict in this process.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections.abc import Callable

__all__ = ["id_time_ms", "new_id"]

_lock = threading.Lock()
_last_ms = 0
_counter = 0
_COUNTER_BITS = 12  # the rand_a field of UUIDv7, used as a sequence within one millisecond (RFC 9562, method 1)
_POOL_BYTES = 4096
_pool = b""
_at = 0


def _random_bits(bits: int) -> int:
    """``bits`` (at most 64) random bits from the system's generator, read 4 KB at a time (called under ``_lock``).

    Why a pool: ``os.urandom`` is a system call that lets go of the interpreter lock. A bulk chunk makes 1,000 ids
    while other threads parse answers; each call then waited to get the lock back, and the ids of one chunk of 1,000
    took 40 ms of a turn between two writes (issue 17) instead of 2."""
    global _pool, _at
    if _at + 8 > len(_pool):
        _pool, _at = os.urandom(_POOL_BYTES), 0
    value = int.from_bytes(_pool[_at : _at + 8], "big")
    _at += 8
    return value >> (64 - bits)


def _forget_pool() -> None:
    """A forked child starts with its parent's unused bytes: it must not draw the same ones."""
    global _pool, _at
    _pool, _at = b"", 0


os.register_at_fork(after_in_child=_forget_pool)


def new_id(now_ms: Callable[[], int] | None = None) -> str:
    """A new lower-case GUID string, later than every id this process generated before (UUID version 7).

    ``now_ms`` replaces the wall clock in milliseconds (tests). When the clock stands still or steps back, the last
    timestamp is reused and the sequence counter advanced, so the order never breaks.
    """
    global _last_ms, _counter
    ms = now_ms() if now_ms is not None else time.time_ns() // 1_000_000
    with _lock:
        if ms > _last_ms:
            _last_ms = ms
            # start each millisecond at a random point in the lower half, leaving room to count up
            _counter = _random_bits(_COUNTER_BITS - 1)
        else:
            _counter += 1
            if _counter >= 1 << _COUNTER_BITS:  # 4096 ids in one millisecond: borrow the next millisecond
                _last_ms += 1
                _counter = 0
        ms, seq, rand = _last_ms, _counter, _random_bits(62)
    value = (ms & ((1 << 48) - 1)) << 80
    value |= 0x7 << 76  # version 7
    value |= seq << 64
    value |= 0b10 << 62  # RFC 9562 variant
    value |= rand
    h = f"{value:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def id_time_ms(value: str) -> int | None:
    """The millisecond timestamp inside an id from :func:`new_id`, or None for a GUID of another version."""
    parsed = uuid.UUID(value)
    if parsed.version != 7:
        return None
    return parsed.int >> 80
