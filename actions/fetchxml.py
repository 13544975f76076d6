"""The ``run_fetch_xml_query`` action: a thin hook over :mod:`connector.fetchxml`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from connector import fetchxml
from connector.connection import Connection
from connector.errors import InputProblem
from connector.hookspecs import hookimpl
from connector.inputs import RunFetchXmlQuery
from connector.progress import current


@hookimpl
def validate_run_fetch_xml_query(inputs: Mapping[str, Any], connection: Connection) -> list[InputProblem]:
    """Phase two: the XML (safely parsed), FetchXML's shape, the table's metadata and the page token."""
    return fetchxml.run_fetch_xml_query_problems(RunFetchXmlQuery.of(inputs), connection)


@hookimpl
def run_fetch_xml_query(inputs: Mapping[str, Any], connection: Connection) -> dict[str, Any]:
    """One page, or every page up to max_records."""
    control = current()
    return fetchxml.run_fetch_xml_query(
        connection, RunFetchXmlQuery.of(inputs), progress=control.progress, cancel=control.cancel
    )
