"""The ``records_changed`` polling trigger: a thin hook over :mod:`connector.polling`.

The runtime's ``poll_trigger`` validates the configuration and the stored state before this hook runs and the events
and new state after; the hook only turns the mapping into :class:`connector.polling.PollConfig`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from connector import polling
from connector.connection import Connection
from connector.hookspecs import hookimpl


@hookimpl
def poll_records_changed(
    config: Mapping[str, Any], state: Mapping[str, Any] | None, connection: Connection
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The rows created, updated or deleted since ``state`` and the state to store after handling them."""
    return polling.poll(polling.PollConfig.from_mapping(config), state, connection)
