"""What an action hook may ask for beyond its inputs: ``context``, a handle on the runtime that is running it.

A pack's action often needs another action (look a row up, then create it) or the table metadata. Without a context
it would reach for the library directly and skip what the runtime guarantees: both validation phases, the
``execute_action`` wrappers, overrides and the run ledger. :meth:`ActionContext.run_action` goes through all of
them, on the same connection. A hook receives the context by naming a third argument, ``def my_action(inputs,
connection, context)``; pluggy passes only the arguments an implementation names, so two-argument hooks are
unchanged.

``progress`` and ``cancel`` are the run's progress callback and cancellation token when the caller gave them, ``None``
otherwise; an action run through the context inherits both, so a Ctrl-C stops the nested write too.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from connector.connection import Connection
    from connector.metadata import MetadataCache
    from connector.progress import CancellationToken, Reporter
    from connector.runtime import Runtime


@dataclass(frozen=True)
class ActionContext:
    """The runtime, connection, logger and (when given) progress and cancellation of one action run."""

    runtime: Runtime
    connection: Connection
    action_id: str
    log: logging.Logger
    progress: Reporter | None = None
    cancel: CancellationToken | None = None

    def run_action(self, action_id: str, inputs: Mapping[str, Any]) -> dict[str, Any]:
        """Run another action through the runtime on the same connection: validated, wrapped and ledgered."""
        return self.runtime.run_action(action_id, inputs, self.connection, progress=self.progress, cancel=self.cancel)

    @property
    def metadata(self) -> MetadataCache:
        """The connection's table metadata cache (entity sets, columns, keys), shared with every other run."""
        return self.connection.metadata


def action_logger(action_id: str) -> logging.Logger:
    """One logger per action, under ``connector.actions``, so a platform can route a pack's messages by action."""
    return logging.getLogger(f"connector.actions.{action_id}")
