"""The KServe runtime's batcher: a lone request runs at once, later ones form the next batch."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from fashion_serve.batcher import Batcher


class Recorder:
    """A run_batch that records its batches and can be held inside a batch."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.release = threading.Event()
        self.release.set()
        self.entered = threading.Event()

    def __call__(self, items: list[int]) -> list[int]:
        self.batches.append(list(items))
        self.entered.set()
        assert self.release.wait(10)
        if any(item < 0 for item in items):
            raise RuntimeError("a batch with a negative item")
        return [item * 10 for item in items]


def test_a_lone_request_runs_at_once_in_a_batch_of_its_own():
    recorder = Recorder()
    batcher = Batcher(recorder, max_batch_size=8)

    async def one() -> tuple[int, float]:
        started = time.perf_counter()
        result = await batcher.submit(3)
        return result, time.perf_counter() - started

    result, seconds = asyncio.run(one())
    assert result == 30 and recorder.batches == [[3]]
    assert seconds < 0.5  # no batching delay (generous: a shared CI machine)
    batcher.close()


def test_requests_that_arrive_during_a_batch_form_the_next_ones_up_to_the_size():
    recorder = Recorder()
    batcher = Batcher(recorder, max_batch_size=4)

    async def scenario() -> list[int]:
        recorder.release.clear()
        first = asyncio.ensure_future(batcher.submit(0))
        await asyncio.get_running_loop().run_in_executor(None, recorder.entered.wait, 10)
        later = [asyncio.ensure_future(batcher.submit(i)) for i in range(1, 7)]
        await asyncio.sleep(0.05)  # all six wait while batch [0] runs
        recorder.release.set()
        return await asyncio.gather(first, *later)

    results = asyncio.run(scenario())
    assert results == [0, 10, 20, 30, 40, 50, 60]
    assert recorder.batches == [[0], [1, 2, 3, 4], [5, 6]]
    batcher.close()


def test_a_failed_batch_fails_its_own_items_and_not_the_next_batch():
    recorder = Recorder()
    batcher = Batcher(recorder, max_batch_size=2)

    async def scenario():
        recorder.release.clear()
        first = asyncio.ensure_future(batcher.submit(1))
        await asyncio.get_running_loop().run_in_executor(None, recorder.entered.wait, 10)
        bad = [asyncio.ensure_future(batcher.submit(i)) for i in (-1, 2)]
        good = asyncio.ensure_future(batcher.submit(3))
        await asyncio.sleep(0.05)
        recorder.release.set()
        return await asyncio.gather(first, *bad, good, return_exceptions=True)

    first, bad, batch_mate, good = asyncio.run(scenario())
    assert first == 10 and good == 30
    assert isinstance(bad, RuntimeError) and isinstance(batch_mate, RuntimeError)
    batcher.close()


def test_a_cancelled_request_is_left_out_of_its_batch():
    recorder = Recorder()
    batcher = Batcher(recorder, max_batch_size=8)

    async def scenario():
        recorder.release.clear()
        first = asyncio.ensure_future(batcher.submit(1))
        await asyncio.get_running_loop().run_in_executor(None, recorder.entered.wait, 10)
        gone = asyncio.ensure_future(batcher.submit(2))
        kept = asyncio.ensure_future(batcher.submit(3))
        await asyncio.sleep(0.01)
        gone.cancel()  # the client went away while waiting
        recorder.release.set()
        return await asyncio.gather(first, kept)

    assert asyncio.run(scenario()) == [10, 30]
    assert recorder.batches == [[1], [3]]
    batcher.close()


def test_a_batch_size_below_one_is_refused():
    with pytest.raises(ValueError, match="max_batch_size"):
        Batcher(Recorder(), max_batch_size=0)
