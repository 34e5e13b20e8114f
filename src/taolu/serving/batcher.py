"""Dynamic batching: images from requests that arrive together go through the model in one
forward pass, run on one model thread so the event loop keeps answering meanwhile.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import torch


class Batcher:
    """Collects images from concurrent requests into batches for `run` (a list of images ->
    one row of results per image, e.g. probabilities (N, classes)).

    A batch starts with whatever is waiting when the model is free; when that is less than
    `max_batch`, it waits at most `window_seconds` for more. While a batch runs, the next one
    fills up, so under load batches grow by themselves and at low load an image waits at
    most the window. The queue and the worker task are made on first use, in the loop that
    serves the requests (an app mounted in another app gets no lifespan events).
    """

    def __init__(
        self,
        run: Callable[[list[torch.Tensor]], torch.Tensor],
        *,
        max_batch: int,
        window_seconds: float,
    ):
        self.run = run
        self.max_batch = max_batch
        self.window_seconds = window_seconds
        # One thread: the model runs one batch at a time, with torch's own threads inside.
        self._model_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="taolu-model")
        self._queue: asyncio.Queue | None = None
        self._worker: asyncio.Task | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        # Counts since start, for /health: batches run, images in them, the largest batch.
        self.batches = self.images = self.largest = 0

    async def submit(self, images: list[torch.Tensor]) -> list[Any]:
        """The result row of each image, in order, once their batches have run."""
        loop = asyncio.get_running_loop()
        if self._worker is None or self._worker.done() or self._loop is not loop:
            self._queue, self._loop = asyncio.Queue(), loop
            self._worker = loop.create_task(self._work())
        waiting = []
        for image in images:
            future = loop.create_future()
            self._queue.put_nowait((image, future))
            waiting.append(future)
        return list(await asyncio.gather(*waiting))

    async def run_alone(self, function: Callable[..., Any], *args: Any) -> Any:
        """`function(*args)` on the model thread, between batches (for work that must not
        run beside them, such as hooks placed on the model)."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._model_thread, function, *args)

    def _take_waiting(self, batch: list) -> None:
        while len(batch) < self.max_batch and not self._queue.empty():
            batch.append(self._queue.get_nowait())

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self._queue.get()]
            self._take_waiting(batch)
            if len(batch) < self.max_batch and self.window_seconds > 0:
                await asyncio.sleep(self.window_seconds)
                self._take_waiting(batch)
            batch = [(image, future) for image, future in batch if not future.done()]
            if not batch:  # every request in it has gone (client closed the connection)
                continue
            try:
                rows = await loop.run_in_executor(
                    self._model_thread, self.run, [image for image, _ in batch]
                )
            except Exception as error:  # the model failed: every request in the batch says so
                for _, future in batch:
                    if not future.done():
                        future.set_exception(error)
                continue
            self.batches += 1
            self.images += len(batch)
            self.largest = max(self.largest, len(batch))
            for (_, future), row in zip(batch, rows, strict=True):
                if not future.done():
                    future.set_result(row)

    async def close(self) -> None:
        """Stop the worker and the model thread (the app's shutdown)."""
        if self._worker is not None:
            self._worker.cancel()
            try:
                await self._worker
            except asyncio.CancelledError:
                pass
        self._model_thread.shutdown(wait=False, cancel_futures=True)
