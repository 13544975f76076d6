"""The ``get_current_user`` and ``test_connection`` actions: thin hooks over :mod:`connector.diagnostics`.

Inputs arrive validated by the runtime; these functions only translate them into library calls.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from connector import diagnostics
from connector.connection import Connection
from connector.hookspecs import hookimpl
from connector.inputs import GetCurrentUser, TestConnection


@hookimpl
def get_current_user(inputs: Mapping[str, Any], connection: Connection) -> dict[str, Any]:
    """WhoAmI, then the systemuser row; ``impersonate`` answers for another user."""
    return diagnostics.get_current_user(connection, GetCurrentUser.of(inputs))


@hookimpl
def test_connection(inputs: Mapping[str, Any], connection: Connection) -> dict[str, Any]:
    """Token, audience, WhoAmI; a failure is explained with its fix instead of raised."""
    return diagnostics.test_connection(connection, TestConnection.of(inputs))
