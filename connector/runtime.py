"""The one place that validates inputs and dispatches actions.

:meth:`Runtime.check_inputs` validates in two phases before anything is written: (1) the action's JSON Schema, every
problem with its JSON path; (2) the ``validate_inputs`` hook, dispatched to the action's own ``validate_<id>`` hook,
which checks inputs against cached Dataverse metadata (unknown column, key column not in an alternate key, option label
not in the option set). Both raise :class:`InputError`. ``run_action`` then dispatches through the ``execute_action``
hook, and ``stream_records`` (``d365 run --jsonl``) through the library's record generator, so a pack's wrapper and
the run ledger see every call, whichever front door it came through. Hook implementations never validate.

A pack that breaks the contract fails alone: :meth:`Runtime.check` leaves it out whole, with a warning naming it and
each problem, and keeps the built-ins and the healthy packs (``D365_STRICT_PACKS=1`` fails fast instead, for CI). A
broken built-in contract is our bug and always stops the runtime.

A platform keeps one :class:`Runtime` and, through :meth:`Runtime.connection`, one ``Connection`` per connection
configuration: the connection's token, metadata cache and (later) throttle governor are then shared by every run.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import threading
import time
import types
from collections.abc import Callable, Iterator, Mapping, Sequence
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pluggy

from connector.context import ActionContext, action_logger
from connector.contract_cache import CACHE_DIR_ENV, contract_digest, remembered_contract_problems
from connector.errors import ContractError, InputError, InputProblem, PluginError
from connector.hookspecs import hookimpl, validator_hook
from connector.inputs import INPUT_MODELS
from connector.manifest import EffectiveManifest, build_manifest
from connector.plugins import (
    BUILTIN,
    DEFAULT_PLUGINS,
    BrokenPacks,
    Pack,
    load_packs,
    make_plugin_manager,
    strict_from_env,
)
from connector.policy import OperatorPolicy
from connector.progress import CancellationToken, Reporter, current, running
from connector.runtime_triggers import TriggerPaths
from connector.schemas import SCHEMA_BASE, SchemaStore, data_root
from connector.strict_json import StrictJsonError, check_depth, check_value

if TYPE_CHECKING:
    from connector.auth import OnToken
    from connector.clock import Clock
    from connector.connection import Connection
    from connector.fetchxml import FetchRun
    from connector.paging import QueryRun

log = logging.getLogger("connector.runtime")

#: When set, every action run appends one JSON line here (action, outcome, error type, host): an audit trail a
#: platform can keep, and the record the test suite uses to prove every action ran and was refused at least once.
RUN_LEDGER_ENV = "D365_RUN_LEDGER"
#: When set to a true value, outputs are validated against their schemas (a mismatch is our bug: ContractError).
DEBUG_ENV = "D365_DEBUG"
#: The plugin name of the built-in dispatcher (see :class:`_Dispatcher`).
_DISPATCH = "connector.runtime.dispatch"
#: Actions whose records :meth:`Runtime.stream_records` yields from a library generator, one page in memory at a time.
STREAMING_ACTIONS = ("query_entities", "run_fetch_xml_query")


class _Dispatcher:
    """Built-in ``execute_action``, ``validate_inputs`` and ``stream_records``: each calls the hook named after the
    action id (the action, or ``validate_<id>``) or the library's generator, leaving out the built-ins of an action a
    pack overrides."""

    def __init__(self, pm: pluggy.PluginManager, overrides: Mapping[str, str]) -> None:
        self._pm = pm
        self._overrides = overrides

    @hookimpl(trylast=True)
    def execute_action(
        self, action_id: str, inputs: Mapping[str, Any], connection: Connection, context: ActionContext
    ) -> Any:
        caller = self._caller(action_id, action_id)
        if caller is None:
            raise ContractError([f"action {action_id!r} has no hookspec"])
        return caller(inputs=inputs, connection=connection, context=context)

    @hookimpl(trylast=True)
    def validate_inputs(self, action_id: str, inputs: Mapping[str, Any], connection: Connection) -> Any:
        caller = self._caller(action_id, validator_hook(action_id))
        if caller is None:
            return None
        found = caller(inputs=inputs, connection=connection)
        if caller.spec is not None and caller.spec.opts.get("firstresult"):
            found = [found]  # a pack that declared its own validator spec with firstresult
        return [problem for batch in found if batch for problem in batch]

    @hookimpl(trylast=True)
    def stream_records(self, action_id: str, inputs: Mapping[str, Any], connection: Connection) -> Any:
        if action_id in self._overrides:
            return None  # the pack's action is not the built-in generator; a pack streams it by implementing this
        return _start_run(action_id, inputs, connection)

    def _caller(self, action_id: str, hook: str) -> Any:
        caller = getattr(self._pm.hook, hook, None)
        if caller is not None and action_id in self._overrides:
            builtin = [self._pm.get_plugin(name) for name in DEFAULT_PLUGINS]
            caller = self._pm.subset_hook_caller(hook, remove_plugins=[p for p in builtin if p is not None])
        return caller


class Runtime(TriggerPaths):
    """Plugin manager, effective manifest, schemas and connections for one process (or one tenant of a platform)."""

    def __init__(
        self,
        *,
        load_entrypoints: bool = True,
        disabled: Sequence[str] | None = None,
        extra_packs: Sequence[Pack] = (),
        validate_output: bool | None = None,
        check: bool = True,
    ) -> None:
        packs, broken = load_packs(load_entrypoints=load_entrypoints, disabled=disabled, extra_packs=extra_packs)
        #: Packs left out, each with its problems (sentences naming the pack); see :meth:`check`.
        self.broken_packs: BrokenPacks = {}
        self.strict_packs = strict_from_env()
        self._leave_out(broken)
        self._assemble(packs)
        if validate_output is None:
            validate_output = os.environ.get(DEBUG_ENV, "").lower() in ("1", "true", "yes")
        self.validate_output = validate_output
        self._connections: dict[str, Connection] = {}
        self._connections_lock = threading.Lock()
        self._dedupe_stores: dict[str, Any] = {}
        if check:
            self.check()

    def _assemble(self, packs: Sequence[Pack]) -> None:
        """Schemas, effective manifest and plugin manager from the built-ins and ``packs``.

        Built again from scratch when a pack is left out: its fragment, schemas, hookspecs and implementations are
        interleaved with everyone else's in the store and the plugin manager, which have no way to remove one pack.
        """
        self.packs = list(packs)
        self.store = SchemaStore()
        problems, _ = self.store.add_folder(data_root() / "schemas")
        self.manifest: EffectiveManifest = build_manifest(self.packs, self.store)
        self.manifest.problems[:0] = [(BUILTIN, p) for p in problems]
        descriptions = {a.id: a.description for a in self.manifest.actions.values()}
        self.pm, refused = make_plugin_manager(self.packs, descriptions)
        self.manifest.problems += [(name, p) for name, found in refused.items() for p in found]
        self.pm.register(_Dispatcher(self.pm, self.manifest.overrides), name=_DISPATCH)

    def _leave_out(self, broken: BrokenPacks) -> None:
        """Record and warn about each broken pack (stderr when logging is not configured), or fail fast if strict."""
        if not broken:
            return
        if self.strict_packs:
            raise PluginError([p for found in broken.values() for p in found])
        for name, found in broken.items():
            lines = "".join(f"\n  - {p}" for p in found)
            log.warning("pack %s is left out (set D365_STRICT_PACKS=1 to stop instead):%s", name, lines)
            self.broken_packs[name] = list(found)

    # -- contract -----------------------------------------------------------------------------------------------
    def check(self) -> None:
        """Raise :class:`ContractError` on a broken built-in contract; leave out each pack that breaks it.

        A pack can break the contract only through what it adds, so a pack at fault is left out whole and the check
        runs again without it (another pack may have leant on it). Each round removes a pack, so this ends. Each
        round's check runs once per distinct digest and is remembered on disk (:mod:`connector.contract_cache`).
        """
        while True:
            found = remembered_contract_problems(self)
            builtin = found.pop(BUILTIN, [])
            if builtin:
                raise ContractError(builtin + [p for problems in found.values() for p in problems])
            if not found:
                return
            remaining = [p for p in self.packs if p.name not in found]
            if len(remaining) == len(self.packs):  # blamed on no loaded pack: leaving nothing out cannot help
                raise ContractError([p for problems in found.values() for p in problems])
            self._leave_out(found)
            self._assemble(remaining)

    def contract_digest(self) -> str:
        """A hash of everything the contract check reads; its result is remembered under it (see
        :mod:`connector.contract_cache`)."""
        return contract_digest(self)

    def provider_of(self, action_id: str) -> str:
        info = self.manifest.action(action_id)
        return info.provider if info else BUILTIN

    # -- connections --------------------------------------------------------------------------------------------
    def connection(
        self,
        config: Mapping[str, Any],
        *,
        base_dir: Path | None = None,
        transport: httpx.BaseTransport | None = None,
        clock: Clock | None = None,
        on_token: OnToken | None = None,
        policy: OperatorPolicy | None = None,
    ) -> Connection:
        """The ``Connection`` for this configuration, created once and reused by every later run.

        ``policy`` is the operator's (default: from the environment, preset ``hosted``); the CLI passes ``local``.

        ``on_token`` receives each rotated refresh token of an ``authorization_code`` connection, for platforms that
        keep tokens themselves; it belongs to the first caller of a configuration, like the connection itself.
        """
        from connector.connection import Connection

        candidate = Connection.from_config(
            config, base_dir=base_dir, transport=transport, clock=clock, on_token=on_token, policy=policy
        )
        with self._connections_lock:
            existing = self._connections.get(candidate.fingerprint)
            if existing is not None:
                candidate.close()
                return existing
            self._connections[candidate.fingerprint] = candidate
            return candidate

    def close(self) -> None:
        with self._connections_lock:
            for conn in self._connections.values():
                conn.close()
            self._connections.clear()

    # -- actions ------------------------------------------------------------------------------------------------
    def check_schema(self, action_id: str, inputs: Any) -> dict[str, Any]:
        """Phase one alone, which needs no connection: the CLI refuses bad input before it reads a connection file.
        Returns the inputs with top-level defaults filled in."""
        info = self.manifest.action(action_id)
        if info is None:
            known = ", ".join(sorted(self.manifest.actions))
            raise InputError([InputProblem("$action", f"unknown action {action_id!r}; known actions: {known}")])
        if not isinstance(inputs, Mapping):
            raise InputError([InputProblem("$", "inputs must be a JSON object")], action_id=action_id)
        _check_sendable(action_id, inputs)
        problems = self.store.validate(dict(inputs), info.input_schema)
        if problems:
            raise InputError(problems, action_id=action_id)
        return self._with_defaults(info.input_schema, dict(inputs))

    def bundled_schemas(self, action_id: str) -> dict[str, dict[str, Any]]:
        """The action's input and output schemas with every ``$ref`` inlined, as a server hands them to a builder:
        a form renderer has no registry to follow references with. Generated from ``schemas/`` on each call."""
        info = self.manifest.action(action_id)
        if info is None:
            known = ", ".join(sorted(self.manifest.actions))
            raise InputError([InputProblem("$action", f"unknown action {action_id!r}; known actions: {known}")])
        return {"input": self.store.bundled(info.input_schema), "output": self.store.bundled(info.output_schema)}

    def check_inputs(self, action_id: str, inputs: Any, connection: Connection) -> Mapping[str, Any]:
        """Both validation phases, through the ``validate_inputs`` hook so a pack's wrapper sees every check.

        Returns a read-only copy of the validated inputs, so no hook can change what the next one sees, nor the
        caller's data. An input judged item by item (``write_entities`` records) is handed on as given when only
        built-in hooks see it: they never change their inputs, and a copy of 20,000 records, with the garbage
        collector's passes over it, cost about 40 ms of the 270 the client spent before its first request.
        """
        checked = self.check_schema(action_id, inputs)
        shared = self._shared_inputs(action_id)
        frozen = types.MappingProxyType({k: v if k in shared else _copied(v) for k, v in checked.items()})
        found = self.pm.hook.validate_inputs(action_id=action_id, inputs=frozen, connection=connection)
        problems = [p for batch in found if batch for p in batch]
        if problems:
            raise InputError(problems, action_id=action_id)
        return frozen

    def _shared_inputs(self, action_id: str) -> frozenset[str]:
        """The inputs :meth:`check_inputs` need not copy: those judged item by item, when no pack's hook (a wrapper,
        an extra validator, an override) is among the implementations that see the action's inputs. Asked on each
        call (a few microseconds): a plugin may be registered at any time."""
        model = INPUT_MODELS.get(action_id)
        if model is None or not model.checked_per_item:
            return frozenset()
        hooks = ("validate_inputs", "execute_action", validator_hook(action_id), action_id)
        callers = [getattr(self.pm.hook, hook, None) for hook in hooks]
        names = [impl.plugin_name for caller in callers if caller is not None for impl in caller.get_hookimpls()]
        builtin = all(name in DEFAULT_PLUGINS or name == _DISPATCH for name in names)
        return model.checked_per_item if builtin else frozenset()

    def run_action(
        self,
        action_id: str,
        inputs: Any,
        connection: Connection,
        *,
        progress: Reporter | None = None,
        cancel: CancellationToken | None = None,
    ) -> dict[str, Any]:
        """Validate (both phases), dispatch through ``execute_action``, and return the action's JSON output.

        ``progress`` and ``cancel`` reach the hooks through :func:`connector.progress.current` (the hook signature
        stays ``(inputs, connection)``); the long actions pass them on to the library.
        """
        started = time.perf_counter()
        error: Exception | None = None
        try:
            frozen = self.check_inputs(action_id, inputs, connection)
            context = self.action_context(action_id, connection, progress=progress, cancel=cancel)
            with running(progress, cancel):
                result = self.pm.hook.execute_action(
                    action_id=action_id, inputs=frozen, connection=connection, context=context
                )
            if result is None:
                raise ContractError([f"action {action_id!r}: no implementation returned a result"])
            if self.validate_output:
                info = self.manifest.action(action_id)
                assert info is not None
                problems = self.store.validate(result, info.output_schema)
                if problems:
                    raise ContractError([f"action {action_id!r} output {p}" for p in problems])
            return dict(result)
        except Exception as exc:
            error = exc
            raise
        finally:
            _record_run(action_id, connection, started, error)

    def action_context(
        self,
        action_id: str,
        connection: Connection,
        *,
        progress: Reporter | None = None,
        cancel: CancellationToken | None = None,
    ) -> ActionContext:
        """The ``context`` a hook of ``action_id`` receives when it names that third argument."""
        return ActionContext(self, connection, action_id, action_logger(action_id), progress, cancel)

    def stream_records(
        self,
        action_id: str,
        inputs: Any,
        connection: Connection,
        *,
        progress: Reporter | None = None,
        cancel: CancellationToken | None = None,
    ) -> RecordStream:
        """The records of a query action one by one, straight from the library's generator (constant memory).

        Validated like ``run_action`` (bad input raises here, before any data request); the run ledger gets one
        entry, written when the stream ends or fails. ``progress`` hears each page; after ``cancel`` the stream ends
        at the next page boundary, with the token that continues in :meth:`RecordStream.summary`.
        """
        if action_id not in STREAMING_ACTIONS:
            problem = InputProblem("$action", f"only {', '.join(STREAMING_ACTIONS)} stream records")
            raise InputError([problem], action_id=action_id)
        started = time.perf_counter()
        try:
            frozen = self.check_inputs(action_id, inputs, connection)
            with running(progress, cancel):
                run = self.pm.hook.stream_records(action_id=action_id, inputs=frozen, connection=connection)
            if run is None:
                provider = self.provider_of(action_id)
                raise InputError(
                    [InputProblem("$action", f"{action_id} is provided by {provider}, which does not stream records; "
                                  "run it without --jsonl")],
                    action_id=action_id,
                )  # fmt: skip
        except Exception as exc:
            _record_run(action_id, connection, started, exc)
            raise
        return RecordStream(run, lambda error: _record_run(action_id, connection, started, error))

    # -- data sources -------------------------------------------------------------------------------------------
    def data_source(self, name: str, params: Any, connection: Connection) -> list[dict[str, Any]]:
        """Options for a builder dropdown (or, for a source declared ``"returns": "schema"``, a one-element list
        holding a JSON Schema): ``params`` checked against the source's schema, then the ``data_source`` hook asked.
        An unknown name or bad parameters raise :class:`InputError`, like an action's inputs."""
        entry = next((d for d in self.manifest.document.get("data_sources", []) if d.get("name") == name), None)
        if entry is None:
            known = ", ".join(sorted(str(d.get("name")) for d in self.manifest.document.get("data_sources", [])))
            raise InputError([InputProblem("$data_source", f"unknown data source {name!r}; known: {known}")])
        if not isinstance(params, Mapping):
            raise InputError([InputProblem("$", "data source parameters must be a JSON object")], action_id=name)
        schema_id = self.manifest.schema_id(entry.get("provider", BUILTIN), entry["params_schema"])
        problems = self.store.validate(dict(params), schema_id)
        if problems:
            raise InputError(problems, action_id=name)
        validated = types.MappingProxyType(self._with_defaults(schema_id, dict(params)))
        result = self.pm.hook.data_source(name=name, params=validated, connection=connection)
        if result is None:
            raise ContractError([f"data source {name!r}: no implementation answered"])
        if entry.get("returns") == "schema" and len(result) != 1:
            raise ContractError([f"data source {name!r} returns a schema: answer one JSON Schema, not {len(result)}"])
        return [dict(option) for option in result]


class RecordStream:
    """One streamed query: iterate for the records; afterwards :meth:`summary` tells where the query stopped."""

    def __init__(self, run: QueryRun | FetchRun, on_end: Callable[[Exception | None], None]) -> None:
        self._run = run
        self._on_end = on_end

    def __iter__(self) -> Iterator[dict[str, Any]]:
        error: Exception | None = None
        try:
            yield from self._run
        except Exception as exc:
            error = exc
            raise
        finally:
            self._on_end(error)

    def summary(self) -> dict[str, Any]:
        """What ``--jsonl`` prints last: how many records came, and the token that continues the query."""
        run = self._run
        out: dict[str, Any] = {
            "returned": run.returned,
            "more_records": run.more_records,
            "next_page_token": run.next_page_token,
        }
        count = getattr(run, "count", None)
        if count is not None:
            out["count"] = count
        return out


def _start_run(action_id: str, inputs: Mapping[str, Any], connection: Connection) -> QueryRun | FetchRun:
    from connector import fetchxml, paging
    from connector.inputs import QueryEntities, RunFetchXmlQuery

    control = current()  # the generator runs after the call returns: it keeps the run's reporter and token
    if action_id == "run_fetch_xml_query":
        return fetchxml.stream_fetch_xml(
            connection, RunFetchXmlQuery.of(inputs), progress=control.progress, cancel=control.cancel
        )
    typed = QueryEntities.of(inputs)
    return paging.stream_entities(connection, typed, progress=control.progress, cancel=control.cancel)


def _record_run(action_id: str, connection: Any, started: float, error: Exception | None) -> None:
    """Log one run and append it to the run ledger (when ``D365_RUN_LEDGER`` is set)."""
    elapsed_ms = round((time.perf_counter() - started) * 1000, 2)
    if error is None:
        outcome, error_type = "ok", None
    elif isinstance(error, InputError):
        outcome, error_type = "input_error", "InputError"
    else:
        outcome, error_type = "error", type(error).__name__
    log.debug("action %s %s in %s ms", action_id, outcome, elapsed_ms)
    path = os.environ.get(RUN_LEDGER_ENV)
    if not path:
        return
    host = None
    url = getattr(connection, "organization_url", None)
    if isinstance(url, str):
        host = httpx.URL(url).host
    line = json.dumps(
        {"action": action_id, "outcome": outcome, "error": error_type, "host": host, "elapsed_ms": elapsed_ms}
    )
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(line + "\n")


@lru_cache(maxsize=1)
def default_runtime() -> Runtime:
    """The process-wide runtime the CLI and :func:`run_action` use (entry points loaded)."""
    return Runtime()


def run_action(action_id: str, inputs: Any, connection: Connection) -> dict[str, Any]:
    """Run one action through the default runtime."""
    return default_runtime().run_action(action_id, inputs, connection)


__all__ = [
    "CACHE_DIR_ENV",
    "DEBUG_ENV",
    "RUN_LEDGER_ENV",
    "SCHEMA_BASE",
    "STREAMING_ACTIONS",
    "RecordStream",
    "Runtime",
    "default_runtime",
    "run_action",
]


_IMMUTABLE = frozenset({str, int, float, bool, type(None)})


def _copied(value: Any) -> Any:
    """``copy.deepcopy`` at a fraction of its cost for JSON (a quarter of a second per 20,000 records): dicts and
    lists copied, JSON scalars shared (immutable), anything else deep-copied. A scalar is shared without a call of
    its own: most values of a bulk write's records are scalars."""
    kind = type(value)
    if kind is dict:
        return {k: v if type(v) in _IMMUTABLE else _copied(v) for k, v in value.items()}
    if kind is list:
        return [v if type(v) in _IMMUTABLE else _copied(v) for v in value]
    return value if kind in _IMMUTABLE else copy.deepcopy(value)


def _check_sendable(action_id: str, inputs: Mapping[str, Any]) -> None:
    """Inputs from Python callers did not come through :func:`connector.strict_json.loads`: deep nesting would end in
    ``RecursionError`` inside the schema validator, so it is refused first; ``NaN`` and lone surrogates too, except in
    the inputs judged item by item (a ``write_entities`` record fails alone: :mod:`connector.bulk`)."""
    model = INPUT_MODELS.get(action_id)
    per_item = model.checked_per_item if model is not None else frozenset()
    try:
        for key, value in inputs.items():
            check = check_depth if key in per_item else check_value
            check({key: value})
    except StrictJsonError as exc:
        raise InputError([InputProblem(exc.path, exc.reason)], action_id=action_id) from None
