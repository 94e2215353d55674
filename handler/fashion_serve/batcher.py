"""Batching that never makes a lone request wait: for a runtime with an asyncio event loop.

A request that finds the model idle runs at once. Requests that arrive while a batch runs
queue up and form the next batch, up to `max_batch_size`, which starts as soon as the last
one ends. So a quiet server answers with no delay (TorchServe's frontend holds every request
for `maxBatchDelay`, 1 ms at least), and a busy one fills its batches by itself.

The batch runs on one executor thread, off the event loop, which keeps reading and writing
sockets meanwhile; torch releases the GIL inside its kernels.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Generic, TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")


class Batcher(Generic[Item, Result]):
    def __init__(
        self, run_batch: Callable[[list[Item]], Sequence[Result]], max_batch_size: int
    ) -> None:
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, not {max_batch_size}")
        self.run_batch = run_batch
        self.max_batch_size = max_batch_size
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="batch")
        self._waiting: list[tuple[Item, asyncio.Future]] = []
        self._busy = False
        self._drainer: asyncio.Task | None = None  # held: the loop keeps only weak references

    async def submit(self, item: Item) -> Result:
        """The item's result, from the batch it ran in; an exception that failed the whole
        batch is raised for each of its items."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._waiting.append((item, future))
        if not self._busy:
            self._busy = True
            self._drainer = loop.create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self._waiting:
                batch = self._waiting[: self.max_batch_size]
                del self._waiting[: self.max_batch_size]
                batch = [(item, future) for item, future in batch if not future.done()]
                if not batch:
                    continue  # every caller went away (cancelled) while waiting
                items = [item for item, _ in batch]
                try:
                    results = await loop.run_in_executor(self._executor, self.run_batch, items)
                except Exception as error:
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(error)
                    continue
                for (_, future), result in zip(batch, results, strict=True):
                    if not future.done():
                        future.set_result(result)
        finally:
            self._busy = False

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
