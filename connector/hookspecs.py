# mypy: disable-error-code="empty-body"
"""The hook contract between the runtime and the plugins that implement actions, triggers and data sources.

Action hookspecs are generated from the effective manifest (:func:`make_action_specs`), as trigger specs are from a
trigger id (:func:`make_trigger_specs`), so a manifest entry and its hook cannot drift apart. Every action id gets two
hookspecs: ``<id>(inputs, connection, context)`` (``firstresult``) runs the action, ``validate_<id>(inputs,
connection)`` returns its phase-two problems; every implementation of a validator is called and their problems add
up, so a pack can add checks to an action but never silence the built-in ones (only a declared override replaces
them). The runtime calls neither directly but the generic hooks ``execute_action``, ``validate_inputs`` and
``stream_records``, whose built-in implementations dispatch by id: a pack wraps one generic hook
(``@hookimpl(wrapper=True)``) to see every call.

Why per-action validator hooks rather than a registry of functions: it is the shape ``execute_action`` already has, a
pack's own actions get their validator hook from its manifest fragment with nothing to register, and pluggy refuses a
validator whose arguments are wrong, or (through the contract check) one for an action no manifest declares.

Why ``context`` is a third argument rather than a new hook: pluggy passes an implementation only the arguments it
names, so a hook written as ``(inputs, connection)`` keeps working unchanged while a new one asks for
``(inputs, connection, context)`` (:class:`connector.context.ActionContext`) and can run other actions through the
runtime. Validators get no context: they may read metadata but never run an action that could write.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from connector.connection import Connection
    from connector.context import ActionContext
    from connector.errors import InputProblem

PROJECT = "d365_connector"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)

#: Arguments of an action hookspec; implementations may take any leading subset, ``(inputs, connection)`` as before.
ACTION_ARGNAMES = ("inputs", "connection", "context")
#: Arguments of a validator hookspec, and of action hookspecs packs declared themselves before ``context`` existed.
VALIDATOR_ARGNAMES = ("inputs", "connection")


def validator_hook(action_id: str) -> str:
    """The name of an action's validator hook; one function so the specs, the dispatch and the check agree."""
    return f"validate_{action_id}"


class RuntimeSpecs:
    """Hooks the runtime calls; wrappers placed here apply to every action or data source."""

    @hookspec(firstresult=True)
    def execute_action(
        self, action_id: str, inputs: Mapping[str, Any], connection: Connection, context: ActionContext
    ) -> dict[str, Any]:
        """Run one validated action; the built-in implementation dispatches to the hook named ``action_id``, handing
        on ``context`` (a wrapper may leave it out of its arguments, as pluggy allows)."""

    @hookspec
    def validate_inputs(
        self, action_id: str, inputs: Mapping[str, Any], connection: Connection
    ) -> list[InputProblem] | None:
        """Phase-two validation against cached metadata (metadata GETs only, never writes); return the problems.

        The built-in implementation dispatches to ``validate_<action_id>``; packs wrap this hook to see every check.
        """

    @hookspec(firstresult=True)
    def stream_records(self, action_id: str, inputs: Mapping[str, Any], connection: Connection) -> Any:
        """Start a validated query action as an iterator of records (``d365 run --jsonl``), one page in memory.

        The built-in implementation runs the library's generator for the built-in query actions; a wrapper here sees
        every streamed run as one on ``execute_action`` sees every other.
        """

    @hookspec(firstresult=True)
    def data_source(self, name: str, params: Mapping[str, Any], connection: Connection) -> list[dict[str, Any]]:
        """Answer a builder data source declared in the manifest: options as ``{"value": ..., "label": ...}``."""


def make_action_specs(actions: Mapping[str, str], declared: Collection[str] = ()) -> type:
    """Build the hookspecs of the given actions (id to manifest description): ``<id>`` and ``validate_<id>`` each,
    minus the ``declared`` names, whose specs a pack wrote itself (pluggy takes one spec per hook)."""

    def spec(name: str, doc: str, *, firstresult: bool, with_context: bool) -> Any:
        def action(self: Any, inputs: Mapping[str, Any], connection: Connection, context: ActionContext) -> Any: ...

        def validator(self: Any, inputs: Mapping[str, Any], connection: Connection) -> Any: ...

        fn = action if with_context else validator
        fn.__name__, fn.__doc__ = name, doc
        fn.__qualname__ = f"ActionSpecs.{name}"  # pluggy strips ``self`` only for qualified names
        return hookspec(firstresult=firstresult)(fn)

    namespace: dict[str, Any] = {}
    for action_id, description in actions.items():
        namespace[action_id] = spec(action_id, description, firstresult=True, with_context=True)
        namespace[validator_hook(action_id)] = spec(
            validator_hook(action_id),
            f"Phase-two problems of {action_id}'s inputs (metadata reads only, never a write); [] when none.",
            firstresult=False,
            with_context=False,
        )
    for name in declared:
        namespace.pop(name, None)
    return type("ActionSpecs", (), namespace)


def trigger_hook_names(trigger_id: str, trigger_type: str = "webhook") -> tuple[str, ...]:
    """The hooks a trigger of a type must have; one function so the specs, the runtime and the check agree."""
    prefixes = ("poll",) if trigger_type == "polling" else ("handle", "subscribe", "unsubscribe")
    return tuple(f"{prefix}_{trigger_id}" for prefix in prefixes)


def make_trigger_specs(trigger_id: str, trigger_type: str = "webhook") -> type:
    """Build the hookspecs of one trigger, so every trigger of a type (built-in or from a pack) has the same shape.

    A ``webhook`` trigger has ``handle_<id>``, ``subscribe_<id>`` and ``unsubscribe_<id>``; a ``polling`` trigger has
    ``poll_<id>(config, state, connection) -> (events, new_state)``: a pure step whose ``new_state`` the consumer stores
    after handling ``events`` (``state`` is None on the first poll).
    """

    def handle(self: Any, request: Any, config: Mapping[str, Any]) -> Any:
        """Verify, parse and normalise one delivery; pure function of the request."""

    def subscribe(self: Any, config: Mapping[str, Any], connection: Connection, target_url: str) -> Any:
        """Register the delivery endpoint with Dataverse; return the subscription to keep."""

    def unsubscribe(self: Any, subscription: Mapping[str, Any], connection: Connection) -> Any:
        """Remove what ``subscribe`` registered."""

    def poll(self: Any, config: Mapping[str, Any], state: Mapping[str, Any] | None, connection: Connection) -> Any:
        """The changes since ``state`` and the state to store after handling them: ``(events, new_state)``."""

    functions: dict[str, Any] = {"handle": handle, "subscribe": subscribe, "unsubscribe": unsubscribe, "poll": poll}
    namespace: dict[str, Any] = {}
    for name in trigger_hook_names(trigger_id, trigger_type):
        fn = functions[name.removesuffix(f"_{trigger_id}")]
        fn.__name__ = name
        fn.__qualname__ = f"TriggerSpecs_{trigger_id}.{name}"  # pluggy strips ``self`` only for qualified names
        namespace[name] = hookspec(firstresult=True)(fn)
    return type(f"TriggerSpecs_{trigger_id}", (), namespace)


#: The built-in ``webhook`` trigger: ``handle_webhook``, ``subscribe_webhook``, ``unsubscribe_webhook``.
WebhookSpecs = make_trigger_specs("webhook")
#: The built-in ``records_changed`` polling trigger: ``poll_records_changed``.
RecordsChangedSpecs = make_trigger_specs("records_changed", "polling")
