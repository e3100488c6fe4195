"""Background tasks always stop (cityos.tasks): a task that swallows its cancellation, as one
inside Python 3.11's asyncio.wait_for can when the cancellation lands just as its wait completes,
is cancelled again until it has ended."""

from __future__ import annotations

import asyncio

import pytest

from cityos.tasks import stop_task, stop_tasks


async def swallows_one_cancellation(stopped: list[str]) -> None:
    """Runs until cancelled twice: the first cancellation is lost, as in the wait_for race."""
    swallowed = False
    try:
        while True:
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                if swallowed:
                    raise
                swallowed = True  # carries on as if nothing happened
    finally:
        stopped.append("ended")


def test_a_task_that_swallowed_its_cancellation_is_cancelled_again() -> None:
    async def scenario() -> list[str]:
        stopped: list[str] = []
        task = asyncio.create_task(swallows_one_cancellation(stopped))
        await asyncio.sleep(0)
        await asyncio.wait_for(stop_task(task), 5)  # a single cancel() and await would never end
        return stopped

    assert asyncio.run(scenario()) == ["ended"]


def test_an_exception_a_task_ended_with_is_raised_and_the_others_still_stop() -> None:
    async def fails() -> None:
        raise ValueError("broken")

    async def scenario() -> bool:
        broken = asyncio.create_task(fails())
        waiting = asyncio.create_task(asyncio.Event().wait())
        await asyncio.sleep(0)
        with pytest.raises(ValueError, match="broken"):
            await stop_tasks([broken, None, waiting])
        return waiting.cancelled()

    assert asyncio.run(scenario())
