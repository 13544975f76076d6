"""Trigger paths of the runtime: configurations checked, webhook deliveries handled and deduplicated, polls checked.

A mixin of :class:`connector.runtime.Runtime` (kept apart so the runtime module stays small): it uses the runtime's
manifest, schema store, plugin manager and the lock that guards its per-process stores, and lends it
:meth:`TriggerPaths._with_defaults` (trigger configurations and action inputs get their defaults the same way).
"""

from __future__ import annotations

import copy
import json
import logging
import threading
import types
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import pluggy

from connector.errors import ContractError, InputError, InputProblem
from connector.manifest import EffectiveManifest
from connector.plugins import BUILTIN
from connector.policy import OperatorPolicy
from connector.schemas import SchemaStore

if TYPE_CHECKING:
    from connector.connection import Connection

log = logging.getLogger("connector.runtime")


class TriggerPaths:
    """The ``*_trigger`` methods of :class:`~connector.runtime.Runtime`."""

    manifest: EffectiveManifest
    store: SchemaStore
    pm: pluggy.PluginManager
    _dedupe_stores: dict[str, Any]
    _connections_lock: threading.Lock

    def trigger_config(self, trigger_id: str, config: Any) -> dict[str, Any]:
        """A trigger configuration checked against its schema (every problem listed), with top-level defaults."""
        entry = self._trigger_entry(trigger_id)
        schema_id = self.manifest.schema_id(entry.get("provider", BUILTIN), entry["config_schema"])
        if not isinstance(config, Mapping):
            problem = InputProblem("$", "the trigger configuration must be a JSON object")
            raise InputError([problem], action_id=trigger_id)
        problems = self.store.validate(dict(config), schema_id)
        if problems:
            raise InputError(problems, action_id=trigger_id)
        return self._with_defaults(schema_id, dict(config))

    def handle_trigger(
        self, trigger_id: str, request: Any, config: Any, *, policy: OperatorPolicy | None = None
    ) -> dict[str, Any] | None:
        """One delivery: configuration validated, ``handle_<id>`` called, its event validated, redeliveries dropped.
        ``policy`` (default: the environment's) rules the ``dedupe_sqlite_path`` the configuration names.

        Returns the event, or ``None`` for a redelivery of an event already returned (answer it 2xx so the sender
        stops). Refusals raise :class:`~connector.errors.WebhookError` with the HTTP status to answer. An event that
        fails the payload schema is our bug (``ContractError``), never handed on.
        """
        validated = self.trigger_config(trigger_id, config)
        hook = getattr(self.pm.hook, f"handle_{trigger_id}")
        event = hook(request=request, config=types.MappingProxyType(validated))
        if event is None:
            raise ContractError([f"trigger {trigger_id!r}: no implementation of handle_{trigger_id} returned an event"])
        entry = self._trigger_entry(trigger_id)
        payload_schema = self.manifest.schema_id(entry.get("provider", BUILTIN), entry["payload_schema"])
        problems = self.store.validate(event, payload_schema)
        if problems:
            raise ContractError([f"trigger {trigger_id!r} event {p}" for p in problems])
        key = event.get("dedupe_key")
        if isinstance(key, str) and not self._dedupe_store(trigger_id, validated, policy).add(key):
            log.info("trigger %s: redelivery %s dropped", trigger_id, key)
            return None
        return dict(event)

    def forget_trigger_event(
        self, trigger_id: str, config: Any, event: Mapping[str, Any], *, policy: OperatorPolicy | None = None
    ) -> None:
        """Un-remember an event that could not be handed on, so the sender's next attempt is accepted again."""
        key = event.get("dedupe_key")
        if isinstance(key, str):
            self._dedupe_store(trigger_id, self.trigger_config(trigger_id, config), policy).discard(key)

    def subscribe_trigger(self, trigger_id: str, config: Any, connection: Connection, target_url: str) -> Any:
        """Register ``target_url`` with Dataverse through ``subscribe_<id>``; returns the subscription to keep."""
        validated = self.trigger_config(trigger_id, config)
        hook = getattr(self.pm.hook, f"subscribe_{trigger_id}")
        return hook(config=types.MappingProxyType(validated), connection=connection, target_url=target_url)

    def unsubscribe_trigger(self, trigger_id: str, subscription: Mapping[str, Any], connection: Connection) -> Any:
        """Remove what ``subscribe_trigger`` registered (idempotent)."""
        self._trigger_entry(trigger_id)
        return getattr(self.pm.hook, f"unsubscribe_{trigger_id}")(subscription=subscription, connection=connection)

    def poll_trigger(
        self, trigger_id: str, config: Any, state: Any, connection: Connection
    ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        """One poll of a ``polling`` trigger: config and stored state checked, ``poll_<id>`` called, its events and new
        state checked against the trigger's schemas (a failure there is our bug, ``ContractError``)."""
        validated, entry = self.trigger_config(trigger_id, config), self._trigger_entry(trigger_id)
        provider = entry.get("provider", BUILTIN)
        state_schema = self.manifest.schema_id(provider, entry.get("state_schema", ""))
        if state is not None:
            problems = self.store.validate(state, state_schema)
            if problems:
                raise InputError([InputProblem("$state" + p.path.removeprefix("$"), p.message) for p in problems])
        hook = getattr(self.pm.hook, f"poll_{trigger_id}")
        result = hook(config=types.MappingProxyType(validated), state=state, connection=connection)
        events, new_state = result if result is not None else ((), None)  # no implementation: a contract problem
        payload_schema = self.manifest.schema_id(provider, entry["payload_schema"])
        problems = [p for e in events for p in self.store.validate(e, payload_schema)]
        problems += self.store.validate(new_state, state_schema)
        if problems:
            raise ContractError([f"trigger {trigger_id!r} poll result {p}" for p in problems])
        return list(events), dict(new_state or {})

    def _trigger_entry(self, trigger_id: str) -> dict[str, Any]:
        for entry in self.manifest.document.get("triggers", []):
            if entry.get("id") == trigger_id:
                return dict(entry)
        known = ", ".join(sorted(t.get("id", "") for t in self.manifest.document.get("triggers", [])))
        raise InputError([InputProblem("$trigger", f"unknown trigger {trigger_id!r}; known triggers: {known}")])

    def _dedupe_store(self, trigger_id: str, config: Mapping[str, Any], policy: OperatorPolicy | None) -> Any:
        """One store per trigger configuration (the secret left out of the key), kept for the runtime's life."""
        from connector.webhook_dedupe import dedupe_store_for

        basis = {k: v for k, v in config.items() if k != "secret"}
        key = trigger_id + json.dumps(basis, sort_keys=True, default=str)
        with self._connections_lock:
            store = self._dedupe_stores.get(key)
            if store is None:
                capacity, path = config.get("dedupe_capacity"), config.get("dedupe_sqlite_path")
                store = self._dedupe_stores[key] = dedupe_store_for(capacity, path, policy)
            return store

    def _with_defaults(self, schema_id: str, inputs: dict[str, Any]) -> dict[str, Any]:
        """Fill in top-level defaults so hooks see what the builder form showed (defaults behind ``$ref`` too)."""
        schema = self.store.get(schema_id)
        for name, prop in schema.get("properties", {}).items():
            if name in inputs or not isinstance(prop, Mapping):
                continue
            node: Mapping[str, Any] = prop
            resolver = self.store.resolver(schema_id)
            while "default" not in node and isinstance(node.get("$ref"), str):
                resolved = resolver.lookup(node["$ref"])
                node, resolver = resolved.contents, resolved.resolver
            if "default" in node:
                inputs[name] = copy.deepcopy(node["default"])
        return inputs
