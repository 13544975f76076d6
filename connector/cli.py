"""``d365``: the local action-runner harness, and the composition root of the package.

Output JSON goes to stdout and errors to stderr, with exit codes a script can branch on: 0 ok, 2 bad input, 3
connection or auth, 4 Dataverse API error, 5 completed with failed rows (:data:`EXIT_PARTIAL`), 130 interrupted, 1
anything else. Progress and Ctrl-C handling of ``d365 run`` live in :mod:`connector.cli_progress`. The emulator is
imported lazily, only by ``d365 emulator``.

What prints what, the same in every command so a script never guesses: a result is JSON on stdout, indented, or one
compact line with ``--json``, which also turns an error into one JSON object on stderr (else ``error: message``). The
one table is ``actions list`` on a terminal; piped, it prints JSON like the rest. Streams (``run --jsonl``, ``webhook
serve``) print one JSON line per record or event; status, summaries, continuations and progress go to stderr.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import sys
from typing import TYPE_CHECKING, Any, NoReturn

import click
from click.shell_completion import CompletionItem

from connector import cli_progress, cli_trigger, cli_webhook
from connector.cli_help import ActionCommand
from connector.cli_inputs import CONNECTION_ENV, cli_policy, load_connection_file, parse_set_options, read_inputs
from connector.cli_progress import EXIT_INTERRUPTED, EXIT_PARTIAL, INTERRUPTIBLE
from connector.errors import ConnectionConfigError, ConnectorError, ContractError, InputError, InputProblem
from connector.progress import CancellationToken
from connector.version import __version__

if TYPE_CHECKING:
    from rich.console import Console

    from connector.connection import Connection
    from connector.manifest import ActionInfo
    from connector.runtime import RecordStream, Runtime

JSON_HELP = "Compact JSON output, and errors as JSON on stderr."
SET_HELP = "Repeatable. KEY=TEXT is always text, KEY:=JSON is JSON (42, true, null, [..], {..}); dotted keys nest."


def _stdout() -> Console:
    from rich.console import Console  # imported when something is drawn: ``d365 --help`` starts faster

    return Console(soft_wrap=True)


def _fail(exc: ConnectorError, as_json: bool) -> NoReturn:
    if as_json:
        click.echo(json.dumps(exc.to_dict()), err=True)
    else:
        click.echo(f"error: {exc.message}", err=True)
    sys.exit(exc.exit_code)


def _runtime() -> Any:
    from connector.runtime import default_runtime

    return default_runtime()


def _complete_action_id(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[CompletionItem]:
    """Action ids of the effective manifest for shell completion; nothing when the runtime cannot start."""
    try:
        actions = _runtime().manifest.actions
    except ConnectorError:
        return []
    return [CompletionItem(a, help=actions[a].label) for a in sorted(actions) if a.startswith(incomplete)]


def _complete_data_source(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[CompletionItem]:
    """Data source names of the effective manifest for shell completion."""
    try:
        sources = _runtime().manifest.document.get("data_sources", [])
    except ConnectorError:
        return []
    names = [(s["name"], s.get("label")) for s in sources if isinstance(s, dict) and isinstance(s.get("name"), str)]
    return [CompletionItem(name, help=label) for name, label in sorted(names) if name.startswith(incomplete)]


def _print_json(data: Any, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(data, default=str))
    else:
        click.echo(json.dumps(data, indent=2, default=str, ensure_ascii=False))


class _Main(click.Group):
    """The ``d365`` group. ``sync`` and ``serve`` are imported only when used: they pull in SQLAlchemy, DuckDB, Arrow
    and Starlette (0.6 s of imports), which ``d365 run`` and ``d365 --help`` never need. Their one-line help is kept
    here so the command list needs no import either (``tests/connector/test_cli_help.py`` checks it matches)."""

    LAZY: dict[str, tuple[str, str]] = {
        "serve": ("connector.cli_serve", "Serve the actions, data sources, jobs and playground over HTTP."),
        "sync": (
            "connector.cli_sync",
            "Reverse-ETL: warehouse rows into a Dataverse table, with state, a ledger and resume.",
        ),
    }

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted([*super().list_commands(ctx), *self.LAZY])

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in self.LAZY:
            module = importlib.import_module(self.LAZY[cmd_name][0])
            return getattr(module, cmd_name)  # type: ignore[no-any-return]
        return super().get_command(ctx, cmd_name)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        names = self.list_commands(ctx)
        limit = formatter.width - 6 - max(len(n) for n in names)
        rows = []
        for name in names:
            if name in self.LAZY:
                rows.append((name, click.Command(name, help=self.LAZY[name][1]).get_short_help_str(limit)))
                continue
            cmd = super().get_command(ctx, name)
            if cmd is not None and not cmd.hidden:
                rows.append((name, cmd.get_short_help_str(limit)))
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(cls=_Main, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="d365")
def main() -> None:
    """Run Dynamics 365 / Dataverse connector actions from a terminal, and serve the local emulator."""


# -- actions ----------------------------------------------------------------------------------------------------------
@main.group()
def actions() -> None:
    """List and describe the actions of the effective manifest."""


@actions.command("list")
@click.option("--json", "as_json", is_flag=True, help="Compact JSON, also on a terminal (where a table is drawn).")
def actions_list(as_json: bool) -> None:
    """Every action, with the plugin that provides it: a table on a terminal, JSON when piped."""
    try:
        runtime = _runtime()
    except ConnectorError as exc:
        _fail(exc, as_json)
    rows = [
        {"id": a.id, "label": a.label, "category": a.category, "provider": a.provider, "description": a.description}
        for a in sorted(runtime.manifest.actions.values(), key=lambda a: (a.category, a.id))
    ]
    if as_json or not sys.stdout.isatty():
        _print_json(rows, as_json)
        return
    from rich.table import Table

    table = Table("id", "label", "category", "provider")
    for row in rows:
        table.add_row(row["id"], row["label"], row["category"], row["provider"])
    _stdout().print(table)


@actions.command("describe")
@click.argument("action_id", shell_complete=_complete_action_id)
@click.option("--json", "as_json", is_flag=True, help=JSON_HELP)
def actions_describe(action_id: str, as_json: bool) -> None:
    """An action's manifest entry with its input and output schemas, every $ref resolved (self-contained)."""
    try:
        runtime = _runtime()
        info = _action_info(runtime, action_id)
        described = {
            **dict(info.entry),
            "input": runtime.store.bundled(info.input_schema),
            "output": runtime.store.bundled(info.output_schema),
        }
    except ConnectorError as exc:
        _fail(exc, as_json)
    _print_json(described, as_json)


def _action_info(runtime: Any, action_id: str) -> ActionInfo:
    """The action's manifest entry, or the input error (exit 2) that lists the known ids."""
    info: ActionInfo | None = runtime.manifest.action(action_id)
    if info is None:
        known = ", ".join(sorted(runtime.manifest.actions))
        raise InputError([InputProblem("ACTION_ID", f"unknown action {action_id!r}; known actions: {known}")])
    return info


# -- run ------------------------------------------------------------------------------------------------------------
@main.command("run", cls=ActionCommand, runtime=lambda: _runtime())  # looked up per call: tests swap _runtime
@click.argument("action_id", shell_complete=_complete_action_id)
@click.option("--connection", "connection_file", envvar=CONNECTION_ENV, help=f"Connection file (or {CONNECTION_ENV}).")
@click.option("--input", "input_file", help="JSON file of inputs, or - for standard input.")
@click.option("--set", "pairs", multiple=True, metavar="KEY=TEXT|KEY:=JSON", help=SET_HELP)
@click.option("--json", "as_json", is_flag=True, help="Compact JSON output, and errors as JSON on stderr.")
@click.option(
    "--jsonl",
    is_flag=True,
    help="query_entities and run_fetch_xml_query: print each record as one JSON line as it arrives (constant "
    "memory); the continuation (more_records, next_page_token) goes to stderr.",
)
@click.option(
    "--progress",
    "progress_mode",
    type=click.Choice(cli_progress.MODES),
    default="auto",
    show_default=True,
    help="Progress on stderr: a Rich bar (rich), one JSON line per update (json), none; auto: rich on a terminal.",
)
@click.option(
    "--allow-partial", is_flag=True, help=f"Exit 0, not {EXIT_PARTIAL}, when the run completed with failed rows."
)
def run(
    action_id: str,
    connection_file: str | None,
    input_file: str | None,
    pairs: tuple[str, ...],
    as_json: bool,
    jsonl: bool,
    progress_mode: str,
    allow_partial: bool,
) -> None:
    """Run one action: inputs are validated before the connection is used; the output is JSON on stdout.

    Exit 5 when the run completed with failed rows (unless --allow-partial), 130 when interrupted: the first Ctrl-C
    stops sending and waits for the requests in flight, the second stops waiting; every record's result is printed.
    """
    from connector.plugins import BUILTIN
    from connector.runtime import STREAMING_ACTIONS

    token: CancellationToken | None = None
    try:
        runtime = _runtime()
        # A pack's action may write through context.run_action, so it gets the token too; a built-in single request
        # keeps Ctrl-C's plain meaning (stop now).
        if action_id in INTERRUPTIBLE or runtime.provider_of(action_id) != BUILTIN:
            token = CancellationToken(grace_s=cli_progress.GRACE_S)
        with cli_progress.interruptions(token):  # from here a Ctrl-C before the first request leaves rows not_sent
            inputs = read_inputs(input_file, pairs)
            if jsonl and action_id not in STREAMING_ACTIONS:
                raise InputError([InputProblem("--jsonl", f"only {', '.join(STREAMING_ACTIONS)} streams records")])
            runtime.check_schema(action_id, inputs)
            config, base_dir = load_connection_file(connection_file)
            connection = runtime.connection(config, base_dir=base_dir, policy=cli_policy())
            result = _execute(runtime, action_id, inputs, connection, jsonl, progress_mode, token)
    except ConnectorError as exc:
        _fail(exc, as_json or jsonl)
    except KeyboardInterrupt:  # no request is left in flight on another thread here: a plain exit
        click.echo(f"{action_id}: interrupted; no result is known", err=True)
        sys.exit(EXIT_INTERRUPTED)
    if result is not None:
        _print_json(result, as_json)
    # under --progress=json stderr is JSON lines throughout, the closing summary included
    as_json_summary = as_json or progress_mode == "json"
    cli_progress.finish(action_id, result, token, as_json=as_json_summary, allow_partial=allow_partial)


def _execute(
    runtime: Runtime,
    action_id: str,
    inputs: dict[str, Any],
    connection: Connection,
    jsonl: bool,
    progress_mode: str,
    token: CancellationToken | None,
) -> dict[str, Any] | None:
    """Run (or stream) the action with the progress display and the signal handlers in place; None when streamed."""
    try:
        with cli_progress.display(progress_mode, token) as reporter:
            if jsonl:
                _print_records(runtime.stream_records(action_id, inputs, connection, progress=reporter, cancel=token))
                return None
            return runtime.run_action(action_id, inputs, connection, progress=reporter, cancel=token)
    finally:
        if token is None or not token.aborted:  # after an abort, requests may still be in flight on the connection
            runtime.close()


def _print_records(stream: RecordStream) -> None:
    """One record per line as it arrives (one page in memory at a time); the continuation goes to stderr."""
    write = sys.stdout.write
    for record in stream:
        write(json.dumps(record, default=str, separators=(",", ":")) + "\n")
    sys.stdout.flush()
    click.echo(json.dumps(stream.summary()), err=True)


# -- data sources ---------------------------------------------------------------------------------------------------
@main.command("datasource")
@click.argument("name", shell_complete=_complete_data_source)
@click.option("--param", "pairs", multiple=True, metavar="KEY=TEXT|KEY:=JSON", help=SET_HELP)
@click.option("--connection", "connection_file", envvar=CONNECTION_ENV, help=f"Connection file (or {CONNECTION_ENV}).")
@click.option("--json", "as_json", is_flag=True, help=JSON_HELP)
def datasource(name: str, pairs: tuple[str, ...], connection_file: str | None, as_json: bool) -> None:
    """Print a builder data source's options (tables, columns, alternate_keys) as a builder would receive them."""
    try:
        runtime = _runtime()
        params = parse_set_options(pairs, "--param")
        config, base_dir = load_connection_file(connection_file)
        conn = runtime.connection(config, base_dir=base_dir, policy=cli_policy())
        try:
            options = runtime.data_source(name, params, conn)
        finally:
            runtime.close()
    except ConnectorError as exc:
        _fail(exc, as_json)
    _print_json(options, as_json)


# -- connection -----------------------------------------------------------------------------------------------------
@main.group()
def connection() -> None:
    """Check a connection file."""


@connection.command("test")
@click.option("--connection", "connection_file", envvar=CONNECTION_ENV, help=f"Connection file (or {CONNECTION_ENV}).")
@click.option("--json", "as_json", is_flag=True, help=JSON_HELP)
def connection_test(connection_file: str | None, as_json: bool) -> None:
    """Fetch a token and call WhoAmI; exit 0 when connected, 3 with the diagnosis and its fix otherwise."""
    try:
        runtime = _runtime()
        config, base_dir = load_connection_file(connection_file)
        conn = runtime.connection(config, base_dir=base_dir, policy=cli_policy())
        try:
            result = runtime.run_action("test_connection", {}, conn)
        finally:
            runtime.close()
    except ConnectorError as exc:
        _fail(exc, as_json)
    _print_json(result, as_json)
    if not result.get("ok"):
        sys.exit(ConnectionConfigError.exit_code)


@connection.command("login")
@click.option("--connection", "connection_file", envvar=CONNECTION_ENV, help=f"Connection file (or {CONNECTION_ENV}).")
@click.option("--no-browser", is_flag=True, help="Print the sign-in URL instead of opening a browser.")
@click.option("--timeout", "timeout_s", type=float, default=300.0, show_default=True, help="Seconds to wait.")
@click.option("--json", "as_json", is_flag=True, help=JSON_HELP)
def connection_login(connection_file: str | None, no_browser: bool, timeout_s: float, as_json: bool) -> None:
    """Sign in as a user (authorization_code connections) and keep the refresh token in token_store."""
    import webbrowser

    from connector.auth import AuthorizationCodeProvider, run_login
    from connector.connection import Connection

    def show(url: str) -> None:
        if not no_browser and webbrowser.open(url):
            click.echo("Opened the sign-in page in your browser; waiting for the redirect...", err=True)
            return
        click.echo("Open this URL in a browser on this machine to sign in:", err=True)
        click.echo(url, err=True)

    try:
        config, base_dir = load_connection_file(connection_file)
        conn = Connection.from_config(config, base_dir=base_dir, policy=cli_policy())
        try:
            provider = conn.token_provider
            if not isinstance(provider, AuthorizationCodeProvider):
                raise ConnectionConfigError(
                    f"login is for kind authorization_code; this connection is {conn.config.kind}", field="kind"
                )
            if provider.token_store is None:
                raise ConnectionConfigError(
                    "set token_store in the connection file: login keeps the refresh token there", field="token_store"
                )
            run_login(provider, port=conn.config.redirect_port, show_url=show, timeout_s=timeout_s)
            who = conn.client.whoami()
        finally:
            conn.close()
    except ConnectorError as exc:
        _fail(exc, as_json)
    _print_json({"ok": True, "token_store": str(provider.token_store.path), "user_id": who.user_id}, as_json)


# -- manifest -------------------------------------------------------------------------------------------------------
@main.group()
def manifest() -> None:
    """Validate and show the effective manifest (built-in plus packs)."""


@manifest.command("validate")
def manifest_validate() -> None:
    """Run the contract check; exit 1 listing every problem, and every pack left out with its problems."""
    from connector.runtime import Runtime

    quiet = logging.getLogger("connector.runtime")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # the left-out warnings are the listing below: said once, not twice
    try:
        runtime = Runtime()
    except ContractError as exc:
        for problem in exc.problems:
            click.echo(f"- {problem}", err=True)
        sys.exit(1)
    except ConnectorError as exc:
        _fail(exc, False)
    finally:
        quiet.setLevel(level)
    for name, problems in runtime.broken_packs.items():
        click.echo(f"pack {name} is left out:", err=True)
        for problem in problems:
            click.echo(f"- {problem}", err=True)
    n = len(runtime.manifest.actions)
    summary = f"manifest ok: {n} actions, {len(runtime.manifest.document.get('triggers', []))} triggers"
    if runtime.broken_packs:
        left_out = ", ".join(sorted(runtime.broken_packs))
        click.echo(f"built-ins and healthy packs ok: {n} actions; left out: {left_out}", err=True)
        sys.exit(1)
    click.echo(summary)


@manifest.command("show")
@click.option("--json", "as_json", is_flag=True, help=JSON_HELP)
def manifest_show(as_json: bool) -> None:
    """The effective manifest as JSON (each action names its provider)."""
    try:
        runtime = _runtime()
    except ConnectorError as exc:
        _fail(exc, as_json)
    _print_json(runtime.manifest.document, as_json)


@manifest.command("schema")
@click.argument("action_id", shell_complete=_complete_action_id)
@click.option("--output", "which", flag_value="output", help="Print the output schema instead of the input schema.")
@click.option("--bundled", is_flag=True, help="Every $ref resolved: self-contained, as a form renderer needs.")
@click.option("--json", "as_json", is_flag=True, help=JSON_HELP)
def manifest_schema(action_id: str, which: str | None, bundled: bool, as_json: bool) -> None:
    """An action's input (or --output) schema as written, with its $refs; --bundled resolves them."""
    try:
        runtime = _runtime()
        info = _action_info(runtime, action_id)
        if bundled:
            schema = runtime.bundled_schemas(action_id)[which or "input"]
        else:
            schema = runtime.store.get(info.output_schema if which == "output" else info.input_schema)
    except ConnectorError as exc:
        _fail(exc, as_json)
    _print_json(schema, as_json)


# -- webhook --------------------------------------------------------------------------------------------------------
@main.group()
def webhook() -> None:
    """Receive Dataverse webhook deliveries (the ``webhook`` trigger) on this machine."""


@webhook.command("serve")
@click.option("--connection", "connection_file", envvar=CONNECTION_ENV, help="Connection file (for --subscribe).")
@click.option("--config", "config_file", required=True, help="Trigger configuration (JSON, webhook.config.json).")
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to listen on.")
@click.option("--port", type=int, default=0, show_default=True, help="Port; 0 picks a free one.")
@click.option("--path", "url_path", default="/", show_default=True, help="URL path deliveries are posted to.")
@click.option("--subscribe", is_flag=True, help="Register the webhook in Dataverse on start, remove it on exit.")
@click.option("--public-url", help="URL Dataverse posts to (required with --subscribe unless on the emulator).")
@cli_webhook.serve_options
@click.option(
    "--progress",
    "progress_mode",
    type=click.Choice(cli_progress.MODES),
    default="auto",
    show_default=True,
    help="Delivery counters on stderr: live (rich), one JSON line per delivery (json), none; auto: rich on a terminal.",
)
def webhook_serve(
    connection_file: str | None,
    config_file: str,
    host: str,
    port: int,
    url_path: str,
    subscribe: bool,
    public_url: str | None,
    dedupe_memory: bool,
    body_timeout: float,
    max_connections: int,
    progress_mode: str,
) -> None:
    """Print each verified event as one JSON line on stdout; status lines (listening, subscribed) and the delivery
    counters (received, delivered, redeliveries dropped, refused by reason) go to stderr."""
    from connector.webhook_server import load_trigger_config, serve

    def emit(event: dict[str, Any]) -> None:
        click.echo(json.dumps(event, default=str))
        sys.stdout.flush()

    def status(line: dict[str, Any]) -> None:
        click.echo(json.dumps(line, default=str), err=True)

    try:
        runtime = _runtime()
        config = cli_webhook.with_dedupe_file(load_trigger_config(config_file), dedupe_memory)
        conn = None
        if subscribe:
            data, base_dir = load_connection_file(connection_file)
            conn = runtime.connection(data, base_dir=base_dir, policy=cli_policy())
        try:
            with cli_progress.display(progress_mode) as reporter:
                serve(runtime, config, connection=conn, host=host, port=port, path=url_path, public_url=public_url,
                      on_event=emit, on_status=status, progress=reporter, policy=cli_policy(),
                      body_timeout=body_timeout, max_connections=max_connections)  # fmt: skip
        finally:
            runtime.close()
    except ConnectorError as exc:
        _fail(exc, False)


# -- emulator -------------------------------------------------------------------------------------------------------
class _EmulatorGroup(click.Group):
    """Loads the emulator's commands only when ``d365 emulator`` is used, keeping ``d365`` start-up light."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return ["serve"]

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name != "serve":
            return None
        from dataverse_emulator.cli import serve

        return serve  # type: ignore[no-any-return]


main.add_command(_EmulatorGroup("emulator", help="Serve the local Dataverse Web API emulator."))
main.add_command(cli_trigger.trigger)


if __name__ == "__main__":  # pragma: no cover
    main(prog_name=os.path.basename(sys.argv[0]))
