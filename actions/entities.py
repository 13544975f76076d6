"""The record actions: thin hooks over :mod:`connector.records` and :mod:`connector.paging`.

Inputs arrive validated (schema, then the ``validate_<id>`` hooks below against cached metadata); the action hooks
only translate them into library calls.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from connector import associations, paging, records
from connector import inputs as typed
from connector.connection import Connection
from connector.errors import InputProblem
from connector.hookspecs import hookimpl
from connector.progress import current


# -- phase two: columns, keys, option labels, navigation properties, page tokens, against metadata ------------------
@hookimpl
def validate_get_entity(inputs: Mapping[str, Any], connection: Connection) -> list[InputProblem]:
    return records.get_entity_problems(typed.GetEntity.of(inputs), connection)


@hookimpl
def validate_create_entity(inputs: Mapping[str, Any], connection: Connection) -> list[InputProblem]:
    return records.create_entity_problems(typed.CreateEntity.of(inputs), connection)


@hookimpl
def validate_update_entity(inputs: Mapping[str, Any], connection: Connection) -> list[InputProblem]:
    return records.update_entity_problems(typed.UpdateEntity.of(inputs), connection)


@hookimpl
def validate_upsert_entity(inputs: Mapping[str, Any], connection: Connection) -> list[InputProblem]:
    return records.upsert_entity_problems(typed.UpsertEntity.of(inputs), connection)


@hookimpl
def validate_delete_entity(inputs: Mapping[str, Any], connection: Connection) -> list[InputProblem]:
    return records.delete_entity_problems(typed.DeleteEntity.of(inputs), connection)


@hookimpl
def validate_query_entities(inputs: Mapping[str, Any], connection: Connection) -> list[InputProblem]:
    return paging.query_entities_problems(typed.QueryEntities.of(inputs), connection)


@hookimpl
def validate_associate_entities(inputs: Mapping[str, Any], connection: Connection) -> list[InputProblem]:
    return associations.associate_entities_problems(typed.AssociateEntities.of(inputs), connection)


@hookimpl
def validate_disassociate_entities(inputs: Mapping[str, Any], connection: Connection) -> list[InputProblem]:
    return associations.disassociate_entities_problems(typed.DisassociateEntities.of(inputs), connection)


# -- the actions -------------------------------------------------------------------------------------------------------


@hookimpl
def get_entity(inputs: Mapping[str, Any], connection: Connection) -> dict[str, Any]:
    """GET one row by id or key."""
    return records.get_entity(connection, typed.GetEntity.of(inputs))


@hookimpl
def create_entity(inputs: Mapping[str, Any], connection: Connection) -> dict[str, Any]:
    """POST a row with lookups bound and labels mapped."""
    return records.create_entity(connection, typed.CreateEntity.of(inputs))


@hookimpl
def update_entity(inputs: Mapping[str, Any], connection: Connection) -> dict[str, Any]:
    """PATCH an existing row (If-Match)."""
    return records.update_entity(connection, typed.UpdateEntity.of(inputs))


@hookimpl
def upsert_entity(inputs: Mapping[str, Any], connection: Connection) -> dict[str, Any]:
    """Create or update by id or key; says which."""
    return records.upsert_entity(connection, typed.UpsertEntity.of(inputs))


@hookimpl
def delete_entity(inputs: Mapping[str, Any], connection: Connection) -> dict[str, Any]:
    """DELETE by id or key."""
    return records.delete_entity(connection, typed.DeleteEntity.of(inputs))


@hookimpl
def query_entities(inputs: Mapping[str, Any], connection: Connection) -> dict[str, Any]:
    """One page, or every page up to max_records."""
    control = current()
    return paging.query_entities(
        connection, typed.QueryEntities.of(inputs), progress=control.progress, cancel=control.cancel
    )


@hookimpl
def associate_entities(inputs: Mapping[str, Any], connection: Connection) -> dict[str, Any]:
    """Link two rows ($ref)."""
    return associations.associate_entities(connection, typed.AssociateEntities.of(inputs))


@hookimpl
def disassociate_entities(inputs: Mapping[str, Any], connection: Connection) -> dict[str, Any]:
    """Unlink two rows ($ref)."""
    return associations.disassociate_entities(connection, typed.DisassociateEntities.of(inputs))
