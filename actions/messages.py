"""The ``invoke_action`` and ``invoke_function`` actions and their data sources (``messages``, ``message_schema``):
thin hooks over :mod:`connector.messages` and :mod:`connector.message_schema`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from connector import message_schema, messages
from connector.connection import Connection
from connector.errors import InputProblem
from connector.hookspecs import hookimpl
from connector.inputs import InvokeAction, InvokeFunction


@hookimpl
def validate_invoke_action(inputs: Mapping[str, Any], connection: Connection) -> list[InputProblem]:
    """Phase two: the action exists as addressed; every parameter is known, typed right, present if required."""
    return messages.invoke_action_problems(InvokeAction.of(inputs), connection)


@hookimpl
def validate_invoke_function(inputs: Mapping[str, Any], connection: Connection) -> list[InputProblem]:
    return messages.invoke_function_problems(InvokeFunction.of(inputs), connection)


@hookimpl
def invoke_action(inputs: Mapping[str, Any], connection: Connection) -> dict[str, Any]:
    """POST the action; its answer decoded by its return type."""
    return messages.run(connection, InvokeAction.of(inputs))


@hookimpl
def invoke_function(inputs: Mapping[str, Any], connection: Connection) -> dict[str, Any]:
    """GET the function with its parameters as aliases; its answer decoded by its return type."""
    return messages.run(connection, InvokeFunction.of(inputs))


@hookimpl
def data_source(name: str, params: Mapping[str, Any], connection: Connection) -> list[dict[str, Any]] | None:
    """``messages`` and ``message_schema``; None for the sources other plugins answer."""
    return message_schema.data_source(name, params, connection)
