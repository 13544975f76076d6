"""``d365 sync``: run a sync definition, export a run's ledger, list the runs.

Same conventions as ``d365 run``: the result is JSON on stdout (compact with ``--json``), the summary table and the
progress go to stderr, and the exit code says how it went (0 done, 2 bad input, 3 connection, 4 Dataverse, 5 some rows
did not land, or in a dry run would fail, 130 interrupted). The first Ctrl-C stops sending after the groups in flight
and ledgers the rest ``not_sent``; state and ledger stay consistent, and the next run resends what was not confirmed.
An error that stops a run closes it ``failed`` with the error (``d365 sync history``).
"""

from __future__ import annotations

import csv
import io
import json
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, NoReturn

import click
from rich.console import Console
from rich.table import Table

from connector import cli_progress
from connector.cli_inputs import CONNECTION_ENV, cli_policy, load_connection_file, parse_set_options
from connector.cli_sync_more import FollowFlags, follow_options, run_all_command, run_follow, written_back
from connector.errors import ConnectorError, InputError, InputProblem
from connector.progress import CancellationToken
from connector.sync.engine import SyncResult, job_from_definition
from connector.sync.partition import DEFAULT_LEASE_S, Partition, create_lease_table, partition_names
from connector.sync.runner import run_definition
from connector.sync.state import StateStore
from connector.sync.writeback import write_back_target

__all__ = ["sync"]

FORMATS = ("csv", "jsonl", "parquet")
DEFINITION_HELP = "The sync definition file (YAML or JSON)."
Source = Callable[[], Iterable[list[dict[str, Any]]]]


def _fail(exc: ConnectorError, as_json: bool) -> NoReturn:
    click.echo(json.dumps(exc.to_dict()) if as_json else f"error: {exc.message}", err=True)
    sys.exit(exc.exit_code)


def _load(definition_file: str, pairs: tuple[str, ...] = ()) -> Any:
    from connector.sync.definition import load_definition

    return load_definition(Path(definition_file), policy=cli_policy(), overrides=parse_set_options(pairs))


def _store(definition: Any) -> StateStore:
    return StateStore(str(definition.state), str(definition.name))


@click.group("sync")
def sync() -> None:
    """Reverse-ETL: warehouse rows into a Dataverse table, with state, a ledger and resume."""


sync.add_command(run_all_command)


@sync.command("run")
@click.argument("definition_file", metavar="DEF")
@click.option("--connection", "connection_file", envvar=CONNECTION_ENV, help=f"Connection file (or {CONNECTION_ENV}).")
@click.option(
    "--dry-run",
    is_flag=True,
    help="Map and check every row, print the plan and its cost; write nothing (exit 5: rows would fail).",
)
@click.option("--full", is_flag=True, help="Resend every row, not only new and changed ones.")
@click.option("--force", is_flag=True, help="Mode mirror: remove the rows that left even above max_delete_fraction.")
@click.option("--set", "pairs", multiple=True, metavar="KEY=TEXT|KEY:=JSON", help="Override a definition field.")
@click.option("--json", "as_json", is_flag=True, help="Compact JSON output, and errors as JSON on stderr.")
@click.option("--progress", "progress_mode", type=click.Choice(cli_progress.MODES), default="auto", show_default=True)
@click.option("--write-back", "write_back", metavar="TABLE", help="Write each row's outcome and id into TABLE.")
@follow_options
@click.option("--partition", "partition_text", metavar="K/N", help="Only the rows whose match key hashes to K of N.")
@click.option("--lease-s", default=DEFAULT_LEASE_S, show_default=True, help="Partition lease: a killed worker's hold.")
def sync_run(
    definition_file: str,
    connection_file: str | None,
    dry_run: bool,
    full: bool,
    force: bool,
    pairs: tuple[str, ...],
    as_json: bool,
    progress_mode: str,
    write_back: str | None,
    follow: FollowFlags,
    partition_text: str | None,
    lease_s: float,
) -> None:
    """Run the sync DEF once: only new and changed rows are sent; every source row ends in the run's ledger.
    With --follow, sync JSON lines as they arrive (standard input, or the definition's file tailed)."""
    if dry_run and (follow.enabled or write_back):
        raise click.UsageError("--dry-run writes nothing: it goes without --follow and --write-back")
    token = CancellationToken(grace_s=cli_progress.GRACE_S)
    base_dir = Path(definition_file).expanduser().resolve().parent
    try:
        with cli_progress.interruptions(token):
            partition = Partition.parse(partition_text) if partition_text is not None else None
            definition = _load(definition_file, pairs)
            target = None if write_back is None else write_back_target(
                definition, write_back, policy=cli_policy(), base_dir=base_dir
            )  # fmt: skip
            if follow.enabled:
                sys.exit(run_follow(definition, connection_file, follow, target, token, full=full))
            config, connection_dir = load_connection_file(connection_file)
            from connector.runtime import default_runtime

            runtime = default_runtime()
            connection = runtime.connection(config, base_dir=connection_dir, policy=cli_policy())
            try:
                with cli_progress.display(progress_mode, token) as reporter, _spooled(definition) as stdin:
                    result = run_definition(
                        definition,
                        connection,
                        policy=cli_policy(),
                        base_dir=base_dir,
                        stdin=stdin,
                        full=full,
                        dry_run=dry_run,
                        progress=reporter,
                        cancel=token,
                        force=force,
                        partition=partition,
                        lease_s=lease_s,
                    )
            finally:
                runtime.close()
            if target is not None and result.run is not None:
                written_back(definition, target, result.run)
    except ConnectorError as exc:
        _fail(exc, as_json)
    except KeyboardInterrupt:
        click.echo("sync: interrupted before the first group; nothing was sent", err=True)
        sys.exit(cli_progress.EXIT_INTERRUPTED)
    job = job_from_definition(definition)
    data = result.to_dict(job.batch_size)
    click.echo(json.dumps(data, separators=(",", ":")) if as_json else json.dumps(data, indent=2))
    _summary(result, Console(stderr=True))
    sys.exit(result.exit_code)


class _Spool:
    def __init__(self, definition: Any) -> None:
        self.path: Path | None = None
        if getattr(definition.source, "stdin", False):
            with tempfile.NamedTemporaryFile(prefix="d365-sync-", suffix=".jsonl", delete=False) as handle:
                shutil.copyfileobj(sys.stdin.buffer, handle)
            self.path = Path(handle.name)

    def __enter__(self) -> Path | None:
        return self.path

    def __exit__(self, *exc: object) -> None:
        if self.path is not None:
            self.path.unlink(missing_ok=True)


def _spooled(definition: Any) -> _Spool:
    """Standard input copied to a temporary file: the engine reads its source twice (duplicates: the last wins)."""
    return _Spool(definition)


def _summary(result: SyncResult, console: Console) -> None:
    table = Table(title=f"sync run {result.run or '(dry run)'}: {result.status}")
    table.add_column("outcome")
    table.add_column("rows", justify="right")
    for outcome, n in sorted(result.counts.items()):
        table.add_row(outcome, f"{n:,}")
    console.print(table)
    console.print(f"exit {result.exit_code}")


@sync.command("results")
@click.argument("run_id", metavar="RUN", type=int)
@click.option("--definition", "definition_file", required=True, help=DEFINITION_HELP)
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="jsonl", show_default=True)
@click.option("--output", "output", help="Write to this file (parquet needs one); default standard output.")
def sync_results(run_id: int, definition_file: str, fmt: str, output: str | None) -> None:
    """Export run RUN's ledger: one row per source row (outcome, Dataverse id, code, message, request id)."""
    try:
        definition = _load(definition_file)
    except ConnectorError as exc:
        _fail(exc, False)
    store = _store(definition)
    try:
        rows = (entry.to_dict() for entry in store.ledger(run_id))
        if fmt == "parquet":
            if output is None:
                _fail(InputError([InputProblem("--output", "parquet is binary: give --output FILE")]), False)
            _write_parquet(rows, Path(output))
            return
        with _open_text(output) as out:
            _write_text(rows, fmt, out)
    finally:
        store.close()


class _Text:
    def __init__(self, output: str | None) -> None:
        self.file = open(output, "w", encoding="utf-8", newline="") if output else None  # noqa: SIM115

    def __enter__(self) -> io.TextIOBase | Any:
        return self.file if self.file is not None else sys.stdout

    def __exit__(self, *exc: object) -> None:
        if self.file is not None:
            self.file.close()


def _open_text(output: str | None) -> _Text:
    return _Text(output)


COLUMNS = ("source_index", "match_key", "outcome", "dataverse_id", "duplicate_of", "code", "message", "request_id")


def _write_text(rows: Iterator[dict[str, Any]], fmt: str, out: Any) -> None:
    if fmt == "jsonl":
        for row in rows:
            out.write(json.dumps(row) + "\n")
        return
    writer = csv.DictWriter(out, fieldnames=COLUMNS)
    writer.writeheader()
    for row in rows:
        writer.writerow(row)


def _write_parquet(rows: Iterator[dict[str, Any]], path: Path) -> None:
    import pyarrow as pa  # type: ignore[import-untyped]
    import pyarrow.parquet as pq  # type: ignore[import-untyped]

    schema = pa.schema([(c, pa.int64() if c in ("source_index", "duplicate_of") else pa.string()) for c in COLUMNS])
    with pq.ParquetWriter(str(path), schema) as writer:
        batch: list[dict[str, Any]] = []
        for row in rows:
            batch.append(row)
            if len(batch) >= 10_000:
                writer.write_table(pa.Table.from_pylist(batch, schema=schema))
                batch = []
        writer.write_table(pa.Table.from_pylist(batch, schema=schema))


@sync.command("history")
@click.option("--definition", "definition_file", required=True, help=DEFINITION_HELP)
@click.option("--json", "as_json", is_flag=True, help="JSON, also on a terminal (where a table is drawn).")
def sync_history(definition_file: str, as_json: bool) -> None:
    """The sync's runs, newest first, with their counts and exit codes."""
    try:
        definition = _load(definition_file)
    except ConnectorError as exc:
        _fail(exc, as_json)
    store = _store(definition)
    try:
        runs = store.runs()
    finally:
        store.close()
    console = Console()
    if as_json or not console.is_terminal:
        click.echo(json.dumps([vars(r) for r in runs], separators=(",", ":") if as_json else None))
        return
    table = Table(title=f"sync {definition.name}")
    for column in ("run", "started", "ended", "mode", "status", "counts", "exit"):
        table.add_column(column)
    for r in runs:
        counts = ", ".join(f"{k} {v:,}" for k, v in sorted(r.counts.items()))
        table.add_row(
            str(r.id),
            r.started,
            r.ended or "",
            r.mode,
            r.status,
            counts,
            "" if r.exit_status is None else str(r.exit_status),
        )
    console.print(table)


@sync.command("status")
@click.argument("definition_file", metavar="DEF")
def sync_status(definition_file: str) -> None:
    """Every partition's last run (and the unpartitioned sync's), as JSON lines: its state name, status and counts."""
    try:
        definition = _load(definition_file)
    except ConnectorError as exc:
        _fail(exc, False)
    store = _store(definition)
    try:
        create_lease_table(store.engine)  # so partition workers started next find the whole schema in place
        names = [definition.name, *partition_names(store.engine, definition.name)]
        for name in names:
            runs = StateStore(str(definition.state), name, engine=store.engine).runs(limit=1)
            if runs:
                last = runs[0]
                line = {"sync": name, "run": last.id, "status": last.status, "counts": last.counts}
                click.echo(json.dumps(line | {"ended": last.ended}, separators=(",", ":")))
    finally:
        store.close()
