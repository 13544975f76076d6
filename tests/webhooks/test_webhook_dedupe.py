"""The deduplication stores: bounded in memory, and shared between worker processes through SQLite."""

from __future__ import annotations

from pathlib import Path

from connector.webhook_dedupe import MemoryDedupeStore, SqliteDedupeStore, dedupe_store_for, default_dedupe_path


def test_webhook_memory_store_is_bounded_oldest_first() -> None:
    store = MemoryDedupeStore(capacity=3)
    assert [store.add(k) for k in "abc"] == [True, True, True]
    assert store.add("a") is False
    assert store.add("d") is True and len(store) == 3
    assert store.add("b") is True, "b was the oldest and was forgotten"
    assert store.add("a") is False, "a was seen again recently and kept"


def test_webhook_sqlite_store_shared_between_workers(tmp_path: Path) -> None:
    path = tmp_path / "seen.sqlite"
    worker_a, worker_b = SqliteDedupeStore(path, capacity=2), SqliteDedupeStore(path, capacity=2)
    try:
        assert worker_a.add("op1|step|Update|r1") is True
        assert worker_b.add("op1|step|Update|r1") is False, "the other worker already took this delivery"
        assert worker_b.add("op2") is True and worker_a.add("op3") is True
        assert worker_a.add("op1|step|Update|r1") is True, "beyond the capacity the oldest key is forgotten"
    finally:
        worker_a.close()
        worker_b.close()


def test_webhook_store_choice(tmp_path: Path) -> None:
    assert isinstance(dedupe_store_for(5), MemoryDedupeStore)
    store = dedupe_store_for(5, str(tmp_path / "d.sqlite"))
    assert isinstance(store, SqliteDedupeStore)
    store.close()


def test_webhook_default_dedupe_path_follows_xdg_state_home(tmp_path: Path) -> None:
    assert default_dedupe_path({"XDG_STATE_HOME": str(tmp_path)}) == tmp_path / "d365" / "webhook-dedupe.sqlite"
    fallback = Path.home() / ".local" / "state" / "d365" / "webhook-dedupe.sqlite"
    assert default_dedupe_path({}) == fallback
    assert default_dedupe_path({"XDG_STATE_HOME": "relative/dir"}) == fallback, "the spec ignores relative paths"
