"""The sync state store: schema versioning, intents, one-transaction outcome commits, the ledger's one row per run."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa

from connector.sync.state import Intent, LedgerRow, StateStore


@pytest.fixture
def store(tmp_path: Path) -> StateStore:
    return StateStore(f"sqlite:///{tmp_path / 's.sqlite'}", "accounts")


def test_a_run_commits_outcomes_and_confirms_intents(store: StateStore) -> None:
    run, stale = store.start_run("upsert", full=False)
    assert stale == []
    store.record_intents(run, 0, [Intent(0, "k1", "create", "id-1"), Intent(1, "k2", "update", None)])
    assert {i.match_key for i in store.pending_intents(run)} == {"k1", "k2"}
    store.commit_outcomes(
        run,
        [LedgerRow(0, "k1", "created", "id-1"), LedgerRow(1, "k2", "failed", code="0x1", message="no")],
        {"k1": ("h1", "id-1")},
        ["k2"],
    )
    assert [i.match_key for i in store.pending_intents(run)] == ["k2"]
    assert store.row_states(["k1", "k2"])["k1"].hash == "h1"
    assert store.ledger_counts(run) == {"created": 1, "failed": 1}
    store.end_run(run, "done", store.ledger_counts(run), 0)
    (record,) = store.runs()
    assert (record.status, record.counts, record.exit_status) == ("done", {"created": 1, "failed": 1}, 0)


def test_a_crash_mid_commit_leaves_nothing_of_the_chunk(store: StateStore) -> None:
    run, _ = store.start_run("upsert", full=False)
    store.record_intents(run, 0, [Intent(0, "k1", "create", "id-1")])

    def crash(point: str) -> None:
        raise KeyboardInterrupt(point)

    with pytest.raises(KeyboardInterrupt):
        store.commit_outcomes(run, [LedgerRow(0, "k1", "created", "id-1")], {"k1": ("h1", "id-1")}, hook=crash)
    assert list(store.ledger(run)) == []
    assert store.row_states(["k1"]) == {}
    assert store.pending_ids(["k1"]) == {"k1": "id-1"}


def test_an_interrupted_run_is_closed_and_its_ids_reused(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 's.sqlite'}"
    first = StateStore(url, "accounts")
    run, _ = first.start_run("upsert", full=False)
    first.record_intents(run, 0, [Intent(0, "k1", "create", "id-1")])
    again = StateStore(url, "accounts")
    second, stale = again.start_run("upsert", full=False)
    assert stale == [run]
    assert again.pending_ids(["k1", "k2"]) == {"k1": "id-1"}
    again.commit_outcomes(second, [LedgerRow(0, "k1", "created", "id-1")], {"k1": ("h", "id-1")})
    assert again.pending_intents() == []
    assert [r.status for r in again.runs()] == ["running", "interrupted"]


def test_one_ledger_row_per_source_row_and_run(store: StateStore) -> None:
    run, _ = store.start_run("upsert", full=False)
    store.commit_outcomes(run, [LedgerRow(0, "k1", "unchanged")], {})
    with pytest.raises(sa.exc.IntegrityError):
        store.commit_outcomes(run, [LedgerRow(0, "k1", "unchanged")], {})


def test_another_schema_version_is_refused(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 's.sqlite'}"
    StateStore(url, "a").close()
    engine = sa.create_engine(url)
    with engine.begin() as db:
        db.execute(sa.text("UPDATE sync_schema SET value = '99' WHERE name = 'version'"))
    with pytest.raises(RuntimeError, match="schema version 99"):
        StateStore(url, "a")


def test_a_version_1_store_gains_the_error_column(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 's.sqlite'}"
    engine = sa.create_engine(url)
    with engine.begin() as db:  # version 1's runs table, as it was created
        db.execute(sa.text("CREATE TABLE sync_schema (name VARCHAR(64) PRIMARY KEY, value VARCHAR(64))"))
        db.execute(sa.text("INSERT INTO sync_schema VALUES ('version', '1')"))
        db.execute(
            sa.text(
                "CREATE TABLE sync_runs (id INTEGER PRIMARY KEY AUTOINCREMENT, sync VARCHAR(200) NOT NULL, "
                "started VARCHAR(40) NOT NULL, ended VARCHAR(40), mode VARCHAR(20) NOT NULL, full BOOLEAN NOT NULL, "
                "status VARCHAR(20) NOT NULL, counts TEXT, exit_status INTEGER)"
            )
        )
        db.execute(
            sa.text("INSERT INTO sync_runs (sync, started, mode, full, status) VALUES ('a', 't', 'upsert', 0, 'done')")
        )
    store = StateStore(url, "a")
    run, _ = store.start_run("upsert", full=False)
    store.end_run(run, "failed", {}, 4, error="DataverseApiError: boom")
    assert [(r.status, r.error) for r in store.runs()] == [("failed", "DataverseApiError: boom"), ("done", None)]
    store.close()
    StateStore(url, "a").close()  # opened again: version 2 now
