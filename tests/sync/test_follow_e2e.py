"""Follow mode: micro-batches by size and time (a fake clock), a pipe into ``d365 sync run --follow``, a tailed file
restarted mid-stream (nothing lost, nothing written twice: the emulator's rows and request log say so), SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from connector import cli_progress
from connector.cli import main
from connector.clock import FakeClock
from connector.connection import Connection
from connector.errors import InputError
from connector.policy import OperatorPolicy
from connector.progress import CancellationToken
from connector.sync.definition import SyncDefinition, load_definition
from connector.sync.follow import Batch, Event, Follower, follow, follow_path, saved_offset, stdin_events, tail
from connector.sync.state import StateStore
from dataverse_emulator.testing import EmulatorHandle
from tests.sync.conftest import accounts, writes

ROOT = Path(__file__).resolve().parents[2]


class Crash(BaseException):
    """Stands for the process dying between a batch's commit and its checkpoint."""


def definition(folder: Path, source: dict[str, Any]) -> SyncDefinition:
    data = {
        "name": "follow",
        "source": source,
        "target": "account",
        "match": {"key": ["accountnumber"]},
        "mapping": [{"source": "num", "target": "accountnumber"}, {"source": "name", "target": "name"}],
        "batch_size": 2,
    }
    return load_definition(data, policy=OperatorPolicy(preset="local"), base_dir=folder)


def line(num: str, name: str) -> str:
    return json.dumps({"num": num, "name": name}) + "\n"


def test_micro_batches_by_size_and_by_time_with_a_fake_clock() -> None:
    clock = FakeClock()
    flushed: list[list[str]] = []

    def events() -> Iterator[Event | None]:
        for i in range(5):  # a burst: two full batches of 2, one left
            yield Event(i, {"n": i})
        yield None
        clock.advance(4.9)  # the last event waits: not yet due
        yield None
        clock.advance(0.2)  # 5 s after it arrived: due
        yield None
        yield Event(9, {"n": 9})  # then EOF flushes what is left

    follow(
        events(),
        lambda b: flushed.append([r["n"] for r in b.rows]),
        clock=clock,
        max_rows=2,
        max_wait_s=5,
        stop=lambda: False,
    )
    assert flushed == [[0, 1], [2, 3], [4], [9]]
    assert clock.sleeps == []


def test_follow_refuses_sources_it_cannot_follow(tmp_path: Path) -> None:
    assert follow_path(definition(tmp_path, {"stdin": True})) is None
    assert follow_path(definition(tmp_path, {"path": "events.jsonl"})) == tmp_path / "events.jsonl"
    for source in ({"path": "e.csv"}, {"path": "*.jsonl"}, {"path": "e.jsonl.gz"}, {"duckdb": "w.db", "table": "t"}):
        with pytest.raises(InputError) as caught:
            follow_path(definition(tmp_path, source))
        assert caught.value.problems[0].path == "$.source"


def test_a_pipe_into_sync_run_follow(tmp_path: Path, connection: Connection, emulator: EmulatorHandle) -> None:
    (tmp_path / "connection.json").write_text(json.dumps(emulator.connection_config()), encoding="utf-8")
    data = definition(tmp_path, {"stdin": True}).model_dump(exclude_none=True)
    (tmp_path / "follow.json").write_text(json.dumps({**data, "state": None}), encoding="utf-8")
    emulator.admin.clear_requests()
    stdin = line("F-1", "One") + line("F-2", "Two") + line("F-1", "One again") + "not json\n" + line("F-3", "Three")
    d365 = Path(sys.executable).parent / "d365"
    args = [str(d365), "sync", "run", str(tmp_path / "follow.json"), "--follow", "--flush-rows", "3"]
    done = subprocess.run(
        args,
        input=stdin.encode(),
        capture_output=True,
        cwd=ROOT,
        env={**os.environ, "D365_CONNECTION": str(tmp_path / "connection.json")},
        timeout=120,
        check=False,
    )
    assert done.returncode == 5, done.stderr  # the bad line is reported: not every event landed
    batches = [json.loads(x) for x in done.stdout.decode().splitlines()]
    assert [(b["events"], b["counts"]) for b in batches] == [
        (3, {"created": 2, "duplicate_of": 1}),  # F-1 twice in one batch: the last wins
        (1, {"created": 1}),
    ]
    assert batches[1]["rejected_lines"] == [{"line": 4, "message": "not JSON: Expecting value at line 1 column 1"}]
    rows = sorted((r["accountnumber"], r["name"]) for r in accounts(connection))
    assert rows == [("F-1", "One again"), ("F-2", "Two"), ("F-3", "Three")]
    assert len(writes(emulator)) == 2  # one create request per batch
    summary = json.loads(done.stderr.decode().splitlines()[-1])
    assert summary == {"follow": "end of input", "runs": [1, 2], "counts": {"created": 3, "duplicate_of": 1}}


def _session(
    sync: SyncDefinition, connection: Connection, url: str, path: Path, crash_at: int | None = None
) -> list[dict[str, Any]]:
    """One follow session over ``path`` until its end; ``crash_at``: die before the checkpoint of that batch."""
    store = StateStore(url, sync.name)
    lines: list[dict[str, Any]] = []
    flushes = [0]

    def hook(point: str) -> None:
        flushes[0] += 1
        if flushes[0] == crash_at:
            raise Crash(point)

    try:
        follower = Follower(sync, connection, store, path=path, report=lines.append, hook=hook)
        clock = FakeClock()
        events = tail(path, follower.start(), clock=clock, poll_s=1, until_eof=True, stop=lambda: False)
        follow(events, follower.flush, clock=clock, max_rows=2, max_wait_s=60, stop=lambda: False)
    finally:
        store.close()
    return lines


def test_a_tailed_file_restarted_mid_stream_loses_and_repeats_nothing(
    tmp_path: Path, connection: Connection, emulator: EmulatorHandle
) -> None:
    path = tmp_path / "events.jsonl"
    sync = definition(tmp_path, {"path": str(path)})
    url = f"sqlite:///{tmp_path / 'state.sqlite'}"
    first = [line(f"T-{i}", f"Name {i}") for i in range(5)]
    path.write_text("".join(first) + '{"num": "T-9", "na', encoding="utf-8")  # the writer is mid-line
    emulator.admin.clear_requests()
    with pytest.raises(Crash):
        _session(sync, connection, url, path, crash_at=2)  # batch 2 committed, its checkpoint never saved
    assert len(writes(emulator)) == 2
    store = StateStore(url, sync.name)
    assert saved_offset(store, path) == len("".join(first[:2]).encode())
    store.close()

    with path.open("a", encoding="utf-8") as handle:  # the writer ends its line and goes on
        handle.write('me": "Nine"}\n' + line("T-1", "Renamed") + line("T-7", "Seven"))
    emulator.admin.clear_requests()
    lines = _session(sync, connection, url, path)
    assert [(x["events"], x["counts"]) for x in lines] == [
        (2, {"unchanged": 2}),  # batch 2 replayed (at-least-once): nothing sent
        (2, {"created": 2}),  # T-4, T-9
        (2, {"created": 1, "updated": 1}),  # T-1 renamed, T-7
    ]
    assert len(writes(emulator)) == 3  # one request per batch that had something to send, none for the replay
    names = {r["accountnumber"]: r["name"] for r in accounts(connection)}
    expected = {f"T-{i}": f"Name {i}" for i in range(5)} | {"T-1": "Renamed", "T-7": "Seven", "T-9": "Nine"}
    assert names == expected and len(accounts(connection)) == len(expected)
    assert _session(sync, connection, url, path) == []  # at the end: nothing left to read


def test_a_truncated_file_is_refused_before_anything_is_read(tmp_path: Path, connection: Connection) -> None:
    path = tmp_path / "events.jsonl"
    path.write_text(line("X-1", "One") + line("X-2", "Two"), encoding="utf-8")
    sync = definition(tmp_path, {"path": str(path)})
    url = f"sqlite:///{tmp_path / 'state.sqlite'}"
    _session(sync, connection, url, path)
    path.write_text(line("X-3", "Three"), encoding="utf-8")
    with pytest.raises(InputError) as caught:
        _session(sync, connection, url, path)
    assert "truncated or replaced" in caught.value.problems[0].message


def test_sigterm_stops_reading_and_flushes_what_was_read(tmp_path: Path, connection: Connection) -> None:
    sync = definition(tmp_path, {"stdin": True})
    store = StateStore(f"sqlite:///{tmp_path / 'state.sqlite'}", sync.name)
    token = CancellationToken()
    flushed: list[Batch] = []
    read: list[int] = []

    def events() -> Iterator[Event | None]:
        for i in range(2):
            read.append(i)
            yield Event(i, {"num": f"S-{i}", "name": f"S {i}"})
        os.kill(os.getpid(), signal.SIGTERM)
        yield None
        read.append(2)
        yield Event(2, {"num": "S-2", "name": "never read"})

    follower = Follower(sync, connection, store)
    try:
        with cli_progress.interruptions(token):

            def flush(batch: Batch) -> None:
                flushed.append(batch)
                follower.flush(batch)

            follow(events(), flush, clock=FakeClock(), max_rows=100, max_wait_s=60, stop=lambda: token.cancelled)
    finally:
        store.close()
    assert read == [0, 1] and [len(b.rows) for b in flushed] == [2]
    assert sorted(r["accountnumber"] for r in accounts(connection)) == ["S-0", "S-1"]


def test_dry_run_goes_without_follow_and_write_back(tmp_path: Path) -> None:
    data = definition(tmp_path, {"stdin": True}).model_dump(exclude_none=True)
    (tmp_path / "follow.json").write_text(json.dumps({**data, "state": None}), encoding="utf-8")
    for extra in (["--follow"], ["--write-back", "results"]):
        done = CliRunner().invoke(main, ["sync", "run", str(tmp_path / "follow.json"), "--dry-run", *extra])
        assert done.exit_code == 2 and "--dry-run writes nothing" in done.output
    lonely = CliRunner().invoke(main, ["sync", "run", str(tmp_path / "follow.json"), "--until-eof"])
    assert lonely.exit_code == 2 and "go with --follow" in lonely.output


class OpenPipe:
    """Lines, then a pipe that stays open (its writer alive); ``read_all`` is set once every line was taken."""

    def __init__(self, lines: list[bytes]) -> None:
        self.lines = lines
        self.read_all = threading.Event()
        self.closed = threading.Event()

    def __iter__(self) -> Iterator[bytes]:
        yield from self.lines
        self.read_all.set()
        self.closed.wait(30)


def test_a_stopped_pipe_still_gives_the_lines_it_read() -> None:
    pipe = OpenPipe([line(f"P-{i}", "x").encode() for i in range(3)])
    flushed: list[list[str]] = []
    try:
        events = stdin_events(pipe, poll_s=0.05, stop=pipe.read_all.is_set)  # type: ignore[arg-type]
        follow(
            events,
            lambda b: flushed.append([r["num"] for r in b.rows]),
            clock=FakeClock(),
            max_rows=100,
            max_wait_s=60,
            stop=pipe.read_all.is_set,
        )
    finally:
        pipe.closed.set()
    assert flushed == [["P-0", "P-1", "P-2"]]
