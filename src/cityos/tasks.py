"""Stopping background tasks so that a stop always ends.

On Python 3.11, asyncio.wait_for (which asyncpg and aiomqtt use inside) swallows a cancellation
that arrives just as the wait it guards completes; the task then runs on as if never cancelled,
and `task.cancel(); await task` waits for good (a server's shutdown, or a test's, hung that way
once in thousands of stops). stop_tasks cancels again until every task has ended.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

RECANCEL_SECONDS = 0.5
"""How long a cancelled task may take to end before it is cancelled again."""


async def stop_tasks(tasks: Iterable[asyncio.Task[Any] | None]) -> None:
    """Cancel the tasks and wait until each has ended; an exception one ended with (other than
    its cancellation) is raised, as `await task` would."""
    every = [task for task in tasks if task is not None]
    for task in every:
        task.cancel()
    pending = {task for task in every if not task.done()}
    while pending:
        _, pending = await asyncio.wait(pending, timeout=RECANCEL_SECONDS)
        for task in pending:
            task.cancel()
    for task in every:
        if not task.cancelled() and task.exception() is not None:
            raise task.exception()  # type: ignore[misc]


async def stop_task(task: asyncio.Task[Any] | None) -> None:
    """stop_tasks for one task (None: nothing to stop)."""
    await stop_tasks([task])
