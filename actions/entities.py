"""The record actions: thin hooks over :mod:`connector.records` and :mod:`connector.paging`.

Inputs arrive validated (schema, then :func:`validate_inputs` below against cached metadata); these functions only
translate them into library calls.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from connector import associations, records
from connector.connection import Connection
from connector.errors import InputProblem
from connector.hookspecs import hookimpl
from connector.paging import run_query


@hookimpl
def validate_inputs(action_id: str, inputs: Mapping[str, Any], connection: Connection) -> list[InputProblem] | None:
    """Phase two for the record actions: columns, keys, option labels, navigation properties, page tokens."""
    if action_id not in records.RECORD_ACTIONS:
        return None
    return records.input_problems(action_id, inputs, connection)


@hookimpl
def get_entity(inputs: Mapping[str, Any], connection: Connection) -> dict[str, Any]:
    """GET one row by id or key."""
    return records.get_record(connection, inputs)


@hookimpl
def create_entity(inputs: Mapping[str, Any], connection: Connection) -> dict[str, Any]:
    """POST a row with lookups bound and labels mapped."""
    return records.create_record(connection, inputs)


@hookimpl
def update_entity(inputs: Mapping[str, Any], connection: Connection) -> dict[str, Any]:
    """PATCH an existing row (If-Match)."""
    return records.update_record(connection, inputs)


@hookimpl
def upsert_entity(inputs: Mapping[str, Any], connection: Connection) -> dict[str, Any]:
    """Create or update by id or key; says which."""
    return records.upsert_record(connection, inputs)


@hookimpl
def delete_entity(inputs: Mapping[str, Any], connection: Connection) -> dict[str, Any]:
    """DELETE by id or key."""
    return records.delete_record(connection, inputs)


@hookimpl
def query_entities(inputs: Mapping[str, Any], connection: Connection) -> dict[str, Any]:
    """One page, or every page up to max_records."""
    return run_query(connection, inputs)


@hookimpl
def associate_entities(inputs: Mapping[str, Any], connection: Connection) -> dict[str, Any]:
    """Link two rows ($ref)."""
    return associations.associate(connection, inputs)


@hookimpl
def disassociate_entities(inputs: Mapping[str, Any], connection: Connection) -> dict[str, Any]:
    """Unlink two rows ($ref)."""
    return associations.disassociate(connection, inputs)
