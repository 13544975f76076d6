"""The record actions: thin hooks over :mod:`connector.records` and :mod:`connector.paging`.

Inputs arrive validated (schema, then the ``validate_<id>`` hooks below against cached metadata); the action hooks
only translate them into library calls.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from connector import records
from connector.connection import Connection
from connector.errors import InputProblem
from connector.hookspecs import hookimpl
from connector.paging import run_query


# -- phase two: columns, keys, option labels, navigation properties, page tokens, against metadata ------------------
@hookimpl
def validate_get_entity(inputs: Mapping[str, Any], connection: Connection) -> list[InputProblem]:
    return records.input_problems("get_entity", inputs, connection)


@hookimpl
def validate_create_entity(inputs: Mapping[str, Any], connection: Connection) -> list[InputProblem]:
    return records.input_problems("create_entity", inputs, connection)


@hookimpl
def validate_update_entity(inputs: Mapping[str, Any], connection: Connection) -> list[InputProblem]:
    return records.input_problems("update_entity", inputs, connection)


@hookimpl
def validate_upsert_entity(inputs: Mapping[str, Any], connection: Connection) -> list[InputProblem]:
    return records.input_problems("upsert_entity", inputs, connection)


@hookimpl
def validate_delete_entity(inputs: Mapping[str, Any], connection: Connection) -> list[InputProblem]:
    return records.input_problems("delete_entity", inputs, connection)


@hookimpl
def validate_query_entities(inputs: Mapping[str, Any], connection: Connection) -> list[InputProblem]:
    return records.input_problems("query_entities", inputs, connection)


@hookimpl
def validate_associate_entities(inputs: Mapping[str, Any], connection: Connection) -> list[InputProblem]:
    return records.input_problems("associate_entities", inputs, connection)


@hookimpl
def validate_disassociate_entities(inputs: Mapping[str, Any], connection: Connection) -> list[InputProblem]:
    return records.input_problems("disassociate_entities", inputs, connection)


# -- the actions -------------------------------------------------------------------------------------------------------


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
    return records.associate(connection, inputs)


@hookimpl
def disassociate_entities(inputs: Mapping[str, Any], connection: Connection) -> dict[str, Any]:
    """Unlink two rows ($ref)."""
    return records.disassociate(connection, inputs)
