"""What ``d365 run`` shows while a long action runs, what Ctrl-C does to it, and the exit codes of a run that ended
short (:data:`EXIT_PARTIAL`, :data:`EXIT_INTERRUPTED`).

Why here and not in the library: the library only reports :class:`~connector.progress.Progress` snapshots and honours a
:class:`~connector.progress.CancellationToken`; drawing them and turning signals into cancellation is the terminal's
business. Progress goes to stderr, so stdout stays the action's JSON result and can be piped:

* ``--progress=rich`` draws a Rich bar (rows done of the total, counts per outcome, rows/s, ETA, throttle waits);
* ``--progress=json`` writes each snapshot as one JSON line, for platforms that run the CLI as a subprocess;
* ``--progress=auto`` (the default) is ``rich`` when stderr is a terminal and nothing otherwise.

Signals: the first SIGINT or SIGTERM cancels the token (no new chunk is sent; requests in flight finish, within
:data:`GRACE_S`), the second aborts (the run stops waiting for them). The handlers only set the token, which is safe
from a signal handler; when nothing is waiting on the token (the main thread is inside a request) the second signal
raises :class:`KeyboardInterrupt`, as Python's default would.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import TYPE_CHECKING, Any, NoReturn

from connector.progress import CancellationToken, Progress, Reporter

if TYPE_CHECKING:
    from rich.console import Console

__all__ = [
    "EXIT_INTERRUPTED",
    "EXIT_PARTIAL",
    "GRACE_S",
    "INTERRUPTIBLE",
    "MODES",
    "PARTIAL_COUNTS",
    "counts_of",
    "display",
    "exit_now",
    "finish",
    "interruptions",
    "print_summary",
    "summary_line",
]

EXIT_PARTIAL = 5
"""The run completed, but some rows did not land: ``write_entities`` with failed, unknown or not_sent records,
``run_batch_operations`` with a failed (rolled back, not run) operation. ``--allow-partial`` exits 0 instead."""
EXIT_INTERRUPTED = 130
"""SIGINT or SIGTERM (128 + 2, the shell's convention): the results known so far are printed first."""
#: Actions that stop between chunks or pages on the first Ctrl-C and still report every record; others stop at once.
INTERRUPTIBLE = (
    "write_entities",
    "run_batch_operations",
    "query_entities",
    "run_fetch_xml_query",
    "get_entities_metadata",
)
#: Counts that make a completed run partial.
PARTIAL_COUNTS = ("failed", "unknown", "not_sent", "rolled_back", "not_run")
MODES = ("auto", "none", "rich", "json")
GRACE_S = 30.0
"""How long an interrupted run waits for the requests in flight before it reports them ``unknown`` and exits."""


class JsonLines:
    """One JSON line per snapshot on stderr (flushed: a platform reads them as they come)."""

    def __call__(self, event: Progress) -> None:
        sys.stderr.write(json.dumps(event.to_dict(), separators=(",", ":")) + "\n")
        sys.stderr.flush()


class RichDisplay:
    """A Rich bar on stderr, started by the first snapshot and left drawn at the end."""

    def __init__(self, console: Console, token: CancellationToken | None) -> None:
        from rich.progress import BarColumn, TextColumn
        from rich.progress import Progress as RichBar

        self._bar = RichBar(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            TextColumn("{task.fields[detail]}"),
            console=console,
            refresh_per_second=8,
        )
        self._token = token
        self._task: Any = None
        self._lock = threading.Lock()

    def __call__(self, event: Progress) -> None:
        with self._lock:
            if self._task is None:
                self._bar.start()
                self._task = self._bar.add_task(event.operation, total=event.total, detail="")
            self._bar.update(self._task, completed=event.done, total=event.total, detail=self._detail(event))

    def close(self) -> None:
        with self._lock:
            if self._task is not None:
                self._bar.refresh()
                self._bar.stop()

    def _detail(self, event: Progress) -> str:
        parts = [f"{event.done:,}/{event.total:,}" if event.total is not None else f"{event.done:,}"]
        parts += [f"{name.replace('_', ' ')} {n:,}" for name, n in event.counts.items()]
        rate, eta = event.rows_per_s, event.eta_s
        if rate is not None:
            parts.append(f"{rate:,.0f} rows/s")
        if eta is not None:
            parts.append(f"ETA {int(eta) // 60}:{int(eta) % 60:02d}")
        if event.throttle_waits:
            parts.append(f"throttled {event.throttle_waits}x ({event.throttled_s:.1f} s)")
        if self._token is not None and self._token.cancelled:
            parts.append("[yellow]stopping: finishing requests in flight (Ctrl-C again to abort)")
        return " · ".join(parts)


@contextmanager
def display(mode: str, token: CancellationToken | None = None) -> Iterator[Reporter | None]:
    """The reporter for ``--progress=mode`` (None for none), closed when the block ends."""
    if mode == "json":
        yield JsonLines()
        return
    if mode not in ("auto", "rich"):
        yield None
        return
    from rich.console import Console  # only a bar needs Rich: a run without one starts faster

    console = Console(stderr=True)
    if mode == "auto":
        mode = "rich" if console.is_terminal else "none"
    if mode == "json":
        yield JsonLines()
        return
    if mode != "rich":
        yield None
        return
    rich = RichDisplay(console, token)
    try:
        yield rich
    finally:
        rich.close()


@contextmanager
def interruptions(token: CancellationToken | None) -> Iterator[None]:
    """SIGINT and SIGTERM cancel ``token`` (the first) and abort it (the second) inside the block; the handlers in
    place before are restored after. Without a token, or off the main thread, signals keep their handlers."""
    if token is None or threading.current_thread() is not threading.main_thread():
        yield
        return

    def handle(signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if not token.cancelled:
            token.cancel(name)
            return
        waiting = token.listening
        token.abort(name)
        if not waiting:
            raise KeyboardInterrupt

    previous = {sig: signal.signal(sig, handle) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


_NOT_SHOWN = frozenset({"total", "chunks", "split_requests", "pre_reads"})


def counts_of(action_id: str, result: dict[str, Any] | None) -> dict[str, Any] | None:
    """The counts an exit code is decided on (and the stderr summary shows), for the actions that have them."""
    if result is None:
        return None
    if action_id == "write_entities" and isinstance(result.get("summary"), dict):
        return dict(result["summary"])
    if action_id == "sync_records" and isinstance(result.get("counts"), dict):
        return dict(result["counts"])
    if action_id == "run_batch_operations":
        return {k: result.get(k) for k in ("total", "succeeded", "failed", "rolled_back", "not_run")}
    if action_id == "get_entities_metadata":
        return {"tables": result.get("count"), "not_read": result.get("not_read", 0)}
    if "returned" in result:
        return {"returned": result["returned"], "more_records": result.get("more_records")}
    return None


def summary_line(action_id: str, counts: dict[str, Any] | None, why: str) -> str:
    """The one line a person reads on stderr when a run ended short: the counts, and why the exit code is not 0."""
    counts = counts or {}
    shown = ", ".join(f"{n} {name.replace('_', ' ')}" for name, n in counts.items() if name not in _NOT_SHOWN)
    total = counts.get("total")
    head = f"{total} in all: " if total is not None else ""
    return f"{action_id}: {head}{shown}; {why}" if shown else f"{action_id}: {why}"


def print_summary(action_id: str, counts: dict[str, Any] | None, why: str, code: int, as_json: bool) -> None:
    """The summary on stderr: a line for people, or one JSON object with ``--json``."""
    if as_json:
        line = json.dumps({"action": action_id, "summary": counts, "exit_code": code, "why": why})
    else:
        line = summary_line(action_id, counts, why)
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


def finish(
    action_id: str,
    result: dict[str, Any] | None,
    token: CancellationToken | None,
    *,
    as_json: bool,
    allow_partial: bool,
) -> None:
    """Exit 130 after an interruption, 5 after a partial run (unless allowed), else return; the summary goes to
    stderr. Called after the result is printed."""
    counts = counts_of(action_id, result)
    if token is not None and token.cancelled:
        why = f"interrupted ({token.reason}): exit {EXIT_INTERRUPTED}"
        print_summary(action_id, counts, why, EXIT_INTERRUPTED, as_json)
        if token.aborted:
            exit_now(EXIT_INTERRUPTED)
        sys.exit(EXIT_INTERRUPTED)
    if counts is None or not any(counts.get(name) for name in PARTIAL_COUNTS):
        return
    if allow_partial:
        print_summary(action_id, counts, "some rows did not land (--allow-partial: exit 0)", 0, as_json)
        return
    why = f"some rows did not land: exit {EXIT_PARTIAL} (--allow-partial exits 0)"
    print_summary(action_id, counts, why, EXIT_PARTIAL, as_json)
    sys.exit(EXIT_PARTIAL)


def exit_now(code: int) -> NoReturn:
    """Exit without waiting for worker threads still in a request (an aborted run leaves them behind)."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
