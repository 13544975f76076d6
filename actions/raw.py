"""The ``raw_request`` action: a thin hook over :mod:`connector.raw`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from connector import raw
from connector.connection import Connection
from connector.errors import InputProblem
from connector.hookspecs import hookimpl
from connector.inputs import RawRequest


@hookimpl
def validate_raw_request(inputs: Mapping[str, Any], connection: Connection) -> list[InputProblem]:
    """Phase two: the path stays under the Web API root, no Authorization header, a coherent body."""
    return raw.raw_request_problems(RawRequest.of(inputs), connection)


@hookimpl
def raw_request(inputs: Mapping[str, Any], connection: Connection) -> dict[str, Any]:
    """Send it; status, headers and body back."""
    return raw.raw_request(connection, RawRequest.of(inputs))
