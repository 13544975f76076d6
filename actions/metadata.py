"""The metadata actions and the builder data sources: thin hooks over :mod:`connector.metadata_reads`,
:mod:`connector.metadata_writes` and :mod:`connector.metadata_checks`.

Inputs arrive validated (schema, then the ``validate_<id>`` hooks below against metadata reads); each hook builds
the action's typed inputs (:mod:`connector.inputs`) once and hands them to the library function of the same name.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from connector import builder_sources, metadata_checks, metadata_reads, metadata_writes
from connector import inputs as typed
from connector.connection import Connection
from connector.errors import InputProblem
from connector.hookspecs import hookimpl
from connector.progress import current


# -- phase two: tables, columns, full bodies, key columns, page tokens, against metadata reads ----------------------
@hookimpl
def validate_list_entity_types(inputs: Mapping[str, Any], connection: Connection) -> list[InputProblem]:
    return metadata_checks.list_entity_types_problems(typed.ListEntityTypes.of(inputs), connection)


@hookimpl
def validate_get_entity_metadata(inputs: Mapping[str, Any], connection: Connection) -> list[InputProblem]:
    return metadata_checks.get_entity_metadata_problems(typed.GetEntityMetadata.of(inputs), connection)


@hookimpl
def validate_get_entities_metadata(inputs: Mapping[str, Any], connection: Connection) -> list[InputProblem]:
    return metadata_checks.get_entities_metadata_problems(typed.GetEntitiesMetadata.of(inputs), connection)


@hookimpl
def validate_create_attribute(inputs: Mapping[str, Any], connection: Connection) -> list[InputProblem]:
    return metadata_checks.create_attribute_problems(typed.CreateAttribute.of(inputs), connection)


@hookimpl
def validate_get_attribute(inputs: Mapping[str, Any], connection: Connection) -> list[InputProblem]:
    return metadata_checks.get_attribute_problems(typed.GetAttribute.of(inputs), connection)


@hookimpl
def validate_update_attribute(inputs: Mapping[str, Any], connection: Connection) -> list[InputProblem]:
    return metadata_checks.update_attribute_problems(typed.UpdateAttribute.of(inputs), connection)


@hookimpl
def validate_list_attributes(inputs: Mapping[str, Any], connection: Connection) -> list[InputProblem]:
    return metadata_checks.list_attributes_problems(typed.ListAttributes.of(inputs), connection)


@hookimpl
def validate_query_attributes(inputs: Mapping[str, Any], connection: Connection) -> list[InputProblem]:
    return metadata_checks.query_attributes_problems(typed.QueryAttributes.of(inputs), connection)


@hookimpl
def validate_create_alternate_key(inputs: Mapping[str, Any], connection: Connection) -> list[InputProblem]:
    return metadata_checks.create_alternate_key_problems(typed.CreateAlternateKey.of(inputs), connection)


@hookimpl
def validate_list_alternate_keys(inputs: Mapping[str, Any], connection: Connection) -> list[InputProblem]:
    return metadata_checks.list_alternate_keys_problems(typed.ListAlternateKeys.of(inputs), connection)


# -- data sources and actions -----------------------------------------------------------------------------------------


@hookimpl
def data_source(name: str, params: Mapping[str, Any], connection: Connection) -> list[dict[str, Any]] | None:
    """Tables, columns, alternate keys, per-table schemas and records (None for a name another plugin answers)."""
    if name in builder_sources.SOURCES:
        return builder_sources.data_source(name, params, connection)
    return metadata_reads.data_source(name, params, connection)


@hookimpl
def list_entities(inputs: Mapping[str, Any], connection: Connection) -> dict[str, Any]:
    """Every table, one lean read."""
    return metadata_reads.list_entities(connection, typed.ListEntities.of(inputs))


@hookimpl
def list_entity_types(inputs: Mapping[str, Any], connection: Connection) -> dict[str, Any]:
    """Entity types, paged on our side."""
    return metadata_reads.list_entity_types(connection, typed.ListEntityTypes.of(inputs), progress=current().progress)


@hookimpl
def get_entity_metadata(inputs: Mapping[str, Any], connection: Connection) -> dict[str, Any]:
    """One table's definition with chosen expansions."""
    return metadata_reads.get_entity_metadata(connection, typed.GetEntityMetadata.of(inputs))


@hookimpl
def get_entities_metadata(inputs: Mapping[str, Any], connection: Connection) -> dict[str, Any]:
    """Chosen tables with their columns, table by table (a cancelled run returns the tables read so far)."""
    control = current()
    return metadata_reads.get_entities_metadata(
        connection, typed.GetEntitiesMetadata.of(inputs), progress=control.progress, cancel=control.cancel
    )


@hookimpl
def create_attribute(inputs: Mapping[str, Any], connection: Connection) -> dict[str, Any]:
    """Create a column (full body or short form; a lookup through its relationship)."""
    return metadata_writes.create_attribute(connection, typed.CreateAttribute.of(inputs))


@hookimpl
def get_attribute(inputs: Mapping[str, Any], connection: Connection) -> dict[str, Any]:
    """One column's definition, with options for a choice."""
    return metadata_reads.get_attribute(connection, typed.GetAttribute.of(inputs))


@hookimpl
def update_attribute(inputs: Mapping[str, Any], connection: Connection) -> dict[str, Any]:
    """Read, merge, PUT, publish when labels changed."""
    return metadata_writes.update_attribute(connection, typed.UpdateAttribute.of(inputs))


@hookimpl
def list_attributes(inputs: Mapping[str, Any], connection: Connection) -> dict[str, Any]:
    """A table's columns, filtered by type."""
    return metadata_reads.list_attributes(connection, typed.ListAttributes.of(inputs))


@hookimpl
def query_attributes(inputs: Mapping[str, Any], connection: Connection) -> dict[str, Any]:
    """A raw metadata query over a table's columns."""
    return metadata_reads.query_attributes(connection, typed.QueryAttributes.of(inputs))


@hookimpl
def create_alternate_key(inputs: Mapping[str, Any], connection: Connection) -> dict[str, Any]:
    """Create a key; optionally wait until its index is Active."""
    return metadata_writes.create_alternate_key(connection, typed.CreateAlternateKey.of(inputs))


@hookimpl
def list_alternate_keys(inputs: Mapping[str, Any], connection: Connection) -> dict[str, Any]:
    """A table's keys with their index status."""
    return metadata_reads.list_alternate_keys(connection, typed.ListAlternateKeys.of(inputs))
