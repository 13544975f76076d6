"""``await runtime.arun_action(...)``: the runtime's entry point for asyncio platforms.

Why threads under an async face rather than an async twin of the library: #10 made the kernel's pieces shareable
(one governor, one token provider, one retry policy per :class:`~connector.connection.Connection`, all thread-safe),
so concurrent runs on one connection already share its throttle window, its parallelism limit and its cached token.
``arun_action`` runs :meth:`Runtime.run_action` on the runtime's own worker pool, so an event loop is never blocked
and every run still goes through the same validation, hooks and run ledger. Cancelling the awaiting task cancels the
run's :class:`~connector.progress.CancellationToken`: a long action stops starting work, its requests in flight
finish, and then the ``CancelledError`` is raised (cooperative, as the CLI's first Ctrl-C); cancelling the task again
aborts the wait, like a second Ctrl-C.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from connector.progress import CancellationToken, Reporter
from connector.runtime import Runtime

if TYPE_CHECKING:
    from connector.connection import Connection

__all__ = ["DEFAULT_WORKERS", "AsyncRuntime"]

#: Actions a runtime runs at once on its worker pool; each may itself use its connection's governor pool.
DEFAULT_WORKERS = 32


class AsyncRuntime(Runtime):
    """A :class:`Runtime` with awaitable runs; everything else (connections, schemas, data sources) is the same."""

    def __init__(self, *args: Any, workers: int = DEFAULT_WORKERS, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._workers = workers
        self._pool: ThreadPoolExecutor | None = None
        self._pool_lock = threading.Lock()

    def _executor(self) -> ThreadPoolExecutor:
        with self._pool_lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(max_workers=self._workers, thread_name_prefix="d365-arun")
            return self._pool

    async def arun_action(
        self,
        action_id: str,
        inputs: Any,
        connection: Connection,
        *,
        progress: Reporter | None = None,
        cancel: CancellationToken | None = None,
    ) -> dict[str, Any]:
        """:meth:`Runtime.run_action`, awaitable: same validation, hooks, errors and output.

        The caller's context variables travel with the run (a platform's request id in its log context).
        """
        token = cancel if cancel is not None else CancellationToken()
        call = functools.partial(self.run_action, action_id, inputs, connection, progress=progress, cancel=token)
        context = contextvars.copy_context()
        future = asyncio.get_running_loop().run_in_executor(self._executor(), context.run, call)
        try:
            return await asyncio.shield(future)
        except asyncio.CancelledError:
            token.cancel("the awaiting task was cancelled")
            try:  # the run stops starting work; its requests in flight finish before the connection may be closed
                await asyncio.shield(future)
            except asyncio.CancelledError:  # cancelled again: stop waiting for them too
                token.abort("the awaiting task was cancelled twice")
            except Exception:  # the run's own failure is not the caller's concern once it cancelled
                pass
            raise

    def close(self) -> None:
        """Close the connections, and stop the worker pool once the runs on it end."""
        super().close()
        with self._pool_lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=False)
