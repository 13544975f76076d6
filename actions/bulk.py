"""The bulk write action: a thin hook over :mod:`connector.bulk` (the same writer a library user or a sync engine
calls), with phase-two validation of every record against cached metadata before anything is written."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from connector import bulk
from connector.connection import Connection
from connector.errors import InputProblem
from connector.hookspecs import hookimpl


@hookimpl
def validate_write_entities(inputs: Mapping[str, Any], connection: Connection) -> list[InputProblem]:
    """Phase two: columns, values, labels and keys of every record, addressing per mode."""
    return bulk.write_problems(inputs, connection)


@hookimpl
def write_entities(inputs: Mapping[str, Any], connection: Connection) -> dict[str, Any]:
    """Write the records in parallel chunks; one result per record and a summary."""
    options = bulk.WriteOptions(
        chunk_size=int(inputs.get("chunk_size", bulk.DEFAULT_CHUNK_SIZE)),
        client_ids=bool(inputs.get("client_ids", True)),
        bypass_business_logic=tuple(inputs.get("bypass_business_logic") or ()),
        bypass_custom_plugins=bool(inputs.get("bypass_custom_plugins", False)),
        suppress_callback_registration_expander_job=bool(inputs.get("suppress_callback_registration_expander_job")),
        impersonate=inputs.get("impersonate"),
    )
    report = bulk.write_records(connection, str(inputs["table"]), str(inputs["mode"]), inputs["records"], options)
    return report.to_dict()
