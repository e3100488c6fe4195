"""The garbage collector's thresholds around batch writes (serving/collector.py `deferred`)."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Iterator

import pytest

from cityos.serving import collector


@pytest.fixture
def thresholds() -> Iterator[tuple[int, int, int]]:
    """A serving process's young threshold for the test, the process's own given back after."""
    saved = gc.get_threshold()
    gc.set_threshold(collector.YOUNG_THRESHOLD, saved[1], saved[2])
    yield gc.get_threshold()
    gc.set_threshold(*saved)


def test_a_batch_defers_young_collections_until_the_loop_turns(thresholds: tuple[int, int, int]) -> None:
    seen: list[tuple[int, int, int]] = []

    async def batch() -> None:
        with collector.deferred():
            seen.append(gc.get_threshold())
        seen.append(gc.get_threshold())  # the batch's results are still held in this turn
        await asyncio.sleep(0)
        seen.append(gc.get_threshold())

    asyncio.run(batch())
    raised = (collector.BATCH_YOUNG_THRESHOLD, *thresholds[1:])
    assert seen == [raised, raised, thresholds]


def test_overlapping_batches_share_the_deferral_and_the_last_gives_it_back(
    thresholds: tuple[int, int, int],
) -> None:
    seen: list[tuple[int, int, int]] = []

    async def batch(started: asyncio.Event, release: asyncio.Event) -> None:
        with collector.deferred():
            started.set()
            await release.wait()

    async def two() -> None:
        first_in, first_out, second_in, second_out = (asyncio.Event() for _ in range(4))
        first = asyncio.create_task(batch(first_in, first_out))
        await first_in.wait()
        second = asyncio.create_task(batch(second_in, second_out))
        await second_in.wait()
        first_out.set()
        await first
        await asyncio.sleep(0)
        seen.append(gc.get_threshold())  # the second batch still runs
        second_out.set()
        await second
        await asyncio.sleep(0)
        seen.append(gc.get_threshold())

    asyncio.run(two())
    assert seen == [(collector.BATCH_YOUNG_THRESHOLD, *thresholds[1:]), thresholds]


def test_a_failed_batch_gives_the_thresholds_back_too(thresholds: tuple[int, int, int]) -> None:
    async def failing() -> None:
        with collector.deferred():
            raise ValueError("refused")

    async def run() -> None:
        with pytest.raises(ValueError, match="refused"):
            await failing()
        await asyncio.sleep(0)

    asyncio.run(run())
    assert gc.get_threshold() == thresholds


def test_without_a_running_loop_the_thresholds_come_back_at_once(thresholds: tuple[int, int, int]) -> None:
    with collector.deferred():
        assert gc.get_threshold()[0] == collector.BATCH_YOUNG_THRESHOLD
    assert gc.get_threshold() == thresholds


def test_a_larger_threshold_is_left_alone(thresholds: tuple[int, int, int]) -> None:
    gc.set_threshold(collector.BATCH_YOUNG_THRESHOLD * 2, *thresholds[1:])
    with collector.deferred():
        assert gc.get_threshold()[0] == collector.BATCH_YOUNG_THRESHOLD * 2
    assert gc.get_threshold()[0] == collector.BATCH_YOUNG_THRESHOLD * 2
