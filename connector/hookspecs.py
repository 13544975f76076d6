# mypy: disable-error-code="empty-body"
"""The hook contract between the runtime and the plugins that implement actions, triggers and data sources.

Every action in the manifest has one ``firstresult`` hookspec of the same name taking ``(inputs, connection)``; the
runtime never calls those directly but through ``execute_action``, whose built-in implementation dispatches by id, so a
plugin that wraps ``execute_action`` (``@hookimpl(wrapper=True)``) sees every action call. Triggers get three hooks per
trigger id (``handle_<id>``, ``subscribe_<id>``, ``unsubscribe_<id>``); packs build theirs with
:func:`make_trigger_specs`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from connector.connection import Connection
    from connector.errors import InputProblem

PROJECT = "d365_connector"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)

ACTION_ARGNAMES = ("inputs", "connection")


class ActionSpecs:
    """One hookspec per built-in action; the hook name is the manifest action id."""

    @hookspec(firstresult=True)
    def get_current_user(self, inputs: Mapping[str, Any], connection: Connection) -> dict[str, Any]:
        """Who the connection acts as: WhoAmI, then the systemuser row."""

    @hookspec(firstresult=True)
    def test_connection(self, inputs: Mapping[str, Any], connection: Connection) -> dict[str, Any]:
        """Fetch a token and call WhoAmI; explain any failure with its fix instead of raising."""

    @hookspec(firstresult=True)
    def get_entity(self, inputs: Mapping[str, Any], connection: Connection) -> dict[str, Any]:
        """Read one row by id or alternate key."""

    @hookspec(firstresult=True)
    def create_entity(self, inputs: Mapping[str, Any], connection: Connection) -> dict[str, Any]:
        """Create a row; lookups bound and choice labels mapped through metadata."""

    @hookspec(firstresult=True)
    def update_entity(self, inputs: Mapping[str, Any], connection: Connection) -> dict[str, Any]:
        """Update an existing row by id or alternate key; never creates."""

    @hookspec(firstresult=True)
    def upsert_entity(self, inputs: Mapping[str, Any], connection: Connection) -> dict[str, Any]:
        """Create or update a row by id or alternate key; the output says which happened."""

    @hookspec(firstresult=True)
    def delete_entity(self, inputs: Mapping[str, Any], connection: Connection) -> dict[str, Any]:
        """Delete a row by id or alternate key."""

    @hookspec(firstresult=True)
    def query_entities(self, inputs: Mapping[str, Any], connection: Connection) -> dict[str, Any]:
        """Query a table with OData or structured conditions, one page or every page up to max_records."""

    @hookspec(firstresult=True)
    def associate_entities(self, inputs: Mapping[str, Any], connection: Connection) -> dict[str, Any]:
        """Link two rows through a navigation property ($ref)."""

    @hookspec(firstresult=True)
    def disassociate_entities(self, inputs: Mapping[str, Any], connection: Connection) -> dict[str, Any]:
        """Remove the link between two rows through a navigation property ($ref)."""

    @hookspec(firstresult=True)
    def raw_request(self, inputs: Mapping[str, Any], connection: Connection) -> dict[str, Any]:
        """Any Web API request by a path relative to the Web API root; the token never leaves that root."""

    @hookspec(firstresult=True)
    def run_fetch_xml_query(self, inputs: Mapping[str, Any], connection: Connection) -> dict[str, Any]:
        """A FetchXML query checked before sending; one page, or every page by paging cookie up to max_records."""

    @hookspec(firstresult=True)
    def run_batch_operations(self, inputs: Mapping[str, Any], connection: Connection) -> dict[str, Any]:
        """Up to 1,000 record operations in one $batch, with change sets; one result per operation, in order."""

    @hookspec(firstresult=True)
    def list_entities(self, inputs: Mapping[str, Any], connection: Connection) -> dict[str, Any]:
        """Every table in one lean read: include_custom, top_level_only, include_details."""

    @hookspec(firstresult=True)
    def list_entity_types(self, inputs: Mapping[str, Any], connection: Connection) -> dict[str, Any]:
        """Entity types paged on the client side over one lean read (page_size, page_token, fetch_all)."""

    @hookspec(firstresult=True)
    def get_entity_metadata(self, inputs: Mapping[str, Any], connection: Connection) -> dict[str, Any]:
        """One table's definition by logical name, entity set name or MetadataId, optionally expanded."""

    @hookspec(firstresult=True)
    def get_entities_metadata(self, inputs: Mapping[str, Any], connection: Connection) -> dict[str, Any]:
        """Chosen tables with their columns, read table by table so memory stays flat."""

    @hookspec(firstresult=True)
    def create_attribute(self, inputs: Mapping[str, Any], connection: Connection) -> dict[str, Any]:
        """Create a column from a full AttributeMetadata body or a short typed form (lookup: a relationship)."""

    @hookspec(firstresult=True)
    def get_attribute(self, inputs: Mapping[str, Any], connection: Connection) -> dict[str, Any]:
        """One column's definition by logical name or MetadataId, with options for a choice."""

    @hookspec(firstresult=True)
    def update_attribute(self, inputs: Mapping[str, Any], connection: Connection) -> dict[str, Any]:
        """Read a column, merge the changes, PUT it back (MergeLabels), publish when labels changed."""

    @hookspec(firstresult=True)
    def list_attributes(self, inputs: Mapping[str, Any], connection: Connection) -> dict[str, Any]:
        """A table's columns with a lean select, filtered by type."""

    @hookspec(firstresult=True)
    def query_attributes(self, inputs: Mapping[str, Any], connection: Connection) -> dict[str, Any]:
        """A raw metadata query over a table's columns (select, filter, expand, cast)."""

    @hookspec(firstresult=True)
    def create_alternate_key(self, inputs: Mapping[str, Any], connection: Connection) -> dict[str, Any]:
        """Create an alternate key on one or more columns, optionally waiting until it is Active."""

    @hookspec(firstresult=True)
    def list_alternate_keys(self, inputs: Mapping[str, Any], connection: Connection) -> dict[str, Any]:
        """A table's alternate keys with their index status."""

    @hookspec(firstresult=True)
    def write_entities(self, inputs: Mapping[str, Any], connection: Connection) -> dict[str, Any]:
        """Create, update or upsert many rows through the bulk messages in parallel chunks; one result per record."""


class RuntimeSpecs:
    """Hooks the runtime calls; wrappers placed here apply to every action or data source."""

    @hookspec(firstresult=True)
    def execute_action(self, action_id: str, inputs: Mapping[str, Any], connection: Connection) -> dict[str, Any]:
        """Run one validated action; the built-in implementation dispatches to the hook named ``action_id``."""

    @hookspec
    def validate_inputs(
        self, action_id: str, inputs: Mapping[str, Any], connection: Connection
    ) -> list[InputProblem] | None:
        """Phase-two validation against cached metadata (metadata GETs only, never writes); return the problems."""

    @hookspec(firstresult=True)
    def data_source(self, name: str, params: Mapping[str, Any], connection: Connection) -> list[dict[str, Any]]:
        """Answer a builder data source declared in the manifest: options as ``{"value": ..., "label": ...}``."""


def make_trigger_specs(trigger_id: str) -> type:
    """Build the three hookspecs of one trigger, so every trigger (built-in or from a pack) has the same shape."""

    def handle(self: Any, request: Any, config: Mapping[str, Any]) -> Any:
        """Verify, parse and normalise one delivery; pure function of the request."""

    def subscribe(self: Any, config: Mapping[str, Any], connection: Connection, target_url: str) -> Any:
        """Register the delivery endpoint with Dataverse; return the subscription to keep."""

    def unsubscribe(self: Any, subscription: Mapping[str, Any], connection: Connection) -> Any:
        """Remove what ``subscribe`` registered."""

    namespace: dict[str, Any] = {}
    for prefix, fn in (("handle", handle), ("subscribe", subscribe), ("unsubscribe", unsubscribe)):
        name = f"{prefix}_{trigger_id}"
        fn.__name__ = name
        fn.__qualname__ = f"TriggerSpecs_{trigger_id}.{name}"  # pluggy strips ``self`` only for qualified names
        namespace[name] = hookspec(firstresult=True)(fn)
    return type(f"TriggerSpecs_{trigger_id}", (), namespace)


#: The built-in ``webhook`` trigger: ``handle_webhook``, ``subscribe_webhook``, ``unsubscribe_webhook``.
WebhookSpecs = make_trigger_specs("webhook")


def action_hook_names(specs: type = ActionSpecs) -> set[str]:
    """The action ids a spec class declares (every public attribute is one hookspec)."""
    return {name for name in vars(specs) if not name.startswith("_")}
