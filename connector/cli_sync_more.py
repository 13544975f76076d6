"""The long-running forms of ``d365 sync``: ``run --follow``, ``run --write-back`` and ``run-all`` (with ``--every``).

Why apart from :mod:`connector.cli_sync`: these commands hold a connection, a state store and signal handling for as
long as they run (a follow session, a scheduler), and they keep :mod:`connector.cli_sync` within its size.
"""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from connector import cli_progress
from connector.cli_inputs import CONNECTION_ENV, cli_policy, load_connection_file
from connector.clock import SystemClock
from connector.errors import ConnectorError, InputError, InputProblem
from connector.progress import CancellationToken
from connector.sync.state import StateStore

if TYPE_CHECKING:
    from connector.sync.definition import SyncDefinition
    from connector.sync.writeback import WriteBack

__all__ = ["FollowFlags", "follow_options", "run_all_command", "run_follow", "written_back"]

F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class FollowFlags:
    enabled: bool = False
    flush_rows: int = 500
    flush_seconds: float = 5.0
    until_eof: bool = False
    poll_s: float = 0.2


def follow_options(command: F) -> F:
    """``--follow``, ``--flush-rows``, ``--flush-seconds`` and ``--until-eof``, given to ``command`` as one
    :class:`FollowFlags` named ``follow``."""

    @functools.wraps(command)
    def wrapper(*args: Any, follow: bool, flush_rows: int, flush_seconds: float, until_eof: bool, **kw: Any) -> Any:
        if (until_eof or flush_rows != 500 or flush_seconds != 5.0) and not follow:
            raise click.UsageError("--flush-rows, --flush-seconds and --until-eof go with --follow")
        return command(*args, follow=FollowFlags(follow, flush_rows, flush_seconds, until_eof), **kw)

    options = [
        click.option("--follow", is_flag=True, help="Sync JSON lines as they arrive (stdin, or the file tailed)."),
        click.option("--flush-rows", type=click.IntRange(1, 100_000), default=500, show_default=True,
                     help="Follow: write a micro-batch when it holds this many events."),
        click.option("--flush-seconds", type=click.FloatRange(0, min_open=True), default=5.0, show_default=True,
                     help="Follow: write a micro-batch this long after its first event."),
        click.option("--until-eof", is_flag=True, help="Follow a file: stop at its end instead of waiting for more."),
    ]  # fmt: skip
    for option in reversed(options):
        wrapper = option(wrapper)
    return wrapper  # type: ignore[return-value]


def _runtime_connection(connection_file: str | None) -> tuple[Any, Any]:
    from connector.runtime import default_runtime

    config, connection_dir = load_connection_file(connection_file)
    runtime = default_runtime()
    try:
        return runtime, runtime.connection(config, base_dir=connection_dir, policy=cli_policy())
    except BaseException:
        runtime.close()
        raise


def run_follow(
    definition: SyncDefinition,
    connection_file: str | None,
    flags: FollowFlags,
    target: WriteBack | None,
    token: CancellationToken,
    *,
    full: bool = False,
) -> int:
    """A follow session until EOF, SIGTERM or Ctrl-C: one JSON line per micro-batch on stdout; the exit code."""
    from connector.sync.follow import Follower, follow, follow_path, stdin_events, tail

    path = follow_path(definition)
    runtime, connection = _runtime_connection(connection_file)
    store = StateStore(str(definition.state), definition.name)
    clock = SystemClock()
    try:

        def after(result: Any) -> None:
            if target is not None:
                target.write(result.run, store.ledger(result.run))

        def report(line: dict[str, Any]) -> None:
            click.echo(json.dumps(line, separators=(",", ":")))
            sys.stdout.flush()

        follower = Follower(definition, connection, store, path=path, after_run=after, report=report, full=full)

        def stop() -> bool:
            return token.cancelled

        if path is None:
            events = stdin_events(sys.stdin.buffer, poll_s=flags.poll_s, stop=stop)
        else:
            start = follower.start()
            events = tail(path, start, clock=clock, poll_s=flags.poll_s, until_eof=flags.until_eof, stop=stop)
        try:
            follow(events, follower.flush, clock=clock, max_rows=flags.flush_rows, max_wait_s=flags.flush_seconds,
                   stop=stop, pending=follower.pending)  # fmt: skip
        except KeyboardInterrupt:
            click.echo("sync: follow interrupted; an unfinished batch is resumed by the next start", err=True)
            return cli_progress.EXIT_INTERRUPTED
    finally:
        store.close()
        runtime.close()
    totals: dict[str, int] = {}
    for result in follower.runs:
        for outcome, n in result.counts.items():
            totals[outcome] = totals.get(outcome, 0) + n
    stopped = "signal" if token.cancelled else "end of input"
    summary = {"follow": stopped, "runs": [r.run for r in follower.runs], "counts": totals}
    click.echo(json.dumps(summary, separators=(",", ":")), err=True)
    return follower.exit_code


def written_back(definition: SyncDefinition, target: WriteBack, run: int) -> None:
    """Run ``run``'s ledger written back (``--write-back``); a line on stderr says where."""
    store = StateStore(str(definition.state), definition.name)
    try:
        n = target.write(run, store.ledger(run))
    finally:
        store.close()
    click.echo(json.dumps({"written_back": n, "table": target.table, "file": str(target.path)}), err=True)


def _duration(text: str, option: str) -> float:
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    number, unit = text[:-1], text[-1:].lower()
    if unit not in units or not number.isdigit() or int(number) == 0:
        raise InputError([InputProblem(option, f"{text!r} is not a duration: write 30s, 15m, 2h or 1d")])
    return int(number) * units[unit]


def _emit(line: dict[str, Any]) -> None:
    click.echo(json.dumps(line, separators=(",", ":")))
    sys.stdout.flush()


@click.command("run-all")
@click.argument("folder", metavar="DIR")
@click.option("--connection", "connection_file", envvar=CONNECTION_ENV, help=f"Connection file (or {CONNECTION_ENV}).")
@click.option("--full", is_flag=True, help="Resend every row of every definition.")
@click.option("--every", metavar="DURATION", help="Repeat every 30s, 15m, 2h or 1d until SIGTERM or Ctrl-C.")
@click.option(
    "--state", "state_url", help="The scheduler's store (its lock); default sqlite:///DIR/run-all.sync.sqlite."
)
@click.option("--lease", "lease_for", default="10m", show_default=True, help="How long the lock holds unrenewed.")
def run_all_command(
    folder: str, connection_file: str | None, full: bool, every: str | None, state_url: str | None, lease_for: str
) -> None:
    """Run every definition in DIR (*.sync.yaml, *.sync.yml, *.sync.json) in dependency order, cycles in two passes,
    on one connection; one JSON line per run on stdout. Two schedulers on one store cannot both run."""
    from connector.sync.definition import check_url_policy
    from connector.sync.lease import Lease
    from connector.sync.runall import load_folder, plan_steps, run_steps, schedule

    token = CancellationToken(grace_s=cli_progress.GRACE_S)
    policy = cli_policy()
    base = Path(folder).expanduser().resolve()
    clock = SystemClock()
    try:
        with cli_progress.interruptions(token):
            every_s = None if every is None else _duration(every, "--every")
            ttl_s = _duration(lease_for, "--lease")
            found = load_folder(base, policy)
            url = state_url or f"sqlite:///{base / 'run-all.sync.sqlite'}"
            check_url_policy(url, policy, "--state", state=True)
            runtime, connection = _runtime_connection(connection_file)
            lock = Lease(url, "run-all", ttl_s=ttl_s, clock=clock)
            done_rounds: list[int] = []
            try:

                def one_round() -> int:
                    """The folder read again each round: a definition edited between rounds is picked up, and one
                    broken meanwhile fails its round (reported), not the scheduler."""
                    try:
                        now_found = found if not done_rounds else load_folder(base, policy)
                    except ConnectorError as exc:
                        _emit({"error": exc.to_dict(), "exit_code": exc.exit_code})
                        return exc.exit_code
                    done_rounds.append(1)
                    steps = plan_steps(now_found, lambda table: _logical(connection, table))
                    return run_steps(steps, connection, policy=policy, full=full, before_each=lock.renew, report=_emit)

                code = schedule(one_round, lock, clock=clock, every_s=every_s, stop=lambda: token.cancelled)
            finally:
                lock.close()
                runtime.close()
    except ConnectorError as exc:
        click.echo(f"error: {exc.message}", err=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        click.echo("sync: run-all interrupted; an unfinished run is resumed by the next round", err=True)
        sys.exit(cli_progress.EXIT_INTERRUPTED)
    sys.exit(code)


def _logical(connection: Any, table: str) -> str:
    """A table's logical name (a definition may name its entity set); an unknown table as written (its mapping
    check reports it)."""
    try:
        return str(connection.metadata.table(table).logical_name)
    except ConnectorError:
        return table.lower()
