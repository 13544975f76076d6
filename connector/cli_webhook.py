"""The ``d365 webhook serve`` options that bound what a receiver holds, and its deduplication default.

Why apart from :mod:`connector.cli`: they are the receiver's own settings (limits, where deliveries are remembered),
decided here once, and the CLI module stays within its size.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click

from connector.errors import InputError, InputProblem
from connector.webhook_dedupe import default_dedupe_path
from connector.webhook_server import DEFAULT_BODY_TIMEOUT_S, DEFAULT_MAX_CONNECTIONS

__all__ = ["serve_options", "with_dedupe_file"]

F = TypeVar("F", bound=Callable[..., Any])


def serve_options(command: F) -> F:
    """``--dedupe-memory``, ``--body-timeout`` and ``--max-connections`` for ``d365 webhook serve``."""
    options = [
        click.option(
            "--dedupe-memory",
            is_flag=True,
            help="Remember deliveries in memory only (a restart forgets them); default: the configuration's "
            "dedupe_sqlite_path, else $XDG_STATE_HOME/d365/webhook-dedupe.sqlite (~/.local/state/d365/...).",
        ),
        click.option(
            "--body-timeout",
            type=click.FloatRange(min=0, min_open=True),
            default=DEFAULT_BODY_TIMEOUT_S,
            show_default=True,
            help="Seconds a request's head, then its body, may take to arrive before the connection is closed.",
        ),
        click.option(
            "--max-connections",
            type=click.IntRange(min=1),
            default=DEFAULT_MAX_CONNECTIONS,
            show_default=True,
            help="Open connections and requests before new ones are answered 503.",
        ),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def with_dedupe_file(config: dict[str, Any], memory: bool) -> dict[str, Any]:
    """The default deduplication file when the configuration names none, unless memory was asked for: so a replay
    after a restart is still dropped."""
    if memory:
        if config.get("dedupe_sqlite_path"):
            problem = "is set, and --dedupe-memory asks for memory only: drop one of the two"
            raise InputError([InputProblem("$.dedupe_sqlite_path", problem)])
        return config
    if not config.get("dedupe_sqlite_path"):
        path = default_dedupe_path()
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        config = {**config, "dedupe_sqlite_path": str(path)}
    return config
