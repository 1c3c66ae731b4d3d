"""Micro-batching: many concurrent small requests become one forward pass.

Each request is a *job* of a few items. One asyncio task waits for a job, then `max_wait` seconds more
(unless a full batch is already waiting), takes whole jobs up to `max_items` items and runs them with one
call of `run` in a single worker thread (the event loop keeps accepting requests meanwhile). While a
batch runs the next one gathers; the wait after it lets the clients it answered send their next requests
in time to join, so a steady set of clients is served in one batch rather than two alternating halves
(each request would then wait for the other half's batch as well as its own).

A job larger than `max_items` runs alone. If a batch fails, its jobs are run one by one, so one bad job
fails alone. At most `max_pending` items wait; beyond that `submit` raises `Busy` (answered 503) instead
of queueing without bound.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("moe_reward.serve")


class Busy(RuntimeError):
    """More items are waiting than the server accepts; retry later."""


@dataclass
class _Job:
    payload: Any
    size: int
    future: asyncio.Future


class MicroBatcher:
    def __init__(
        self,
        run: Callable[[Sequence[Any]], Sequence[Any]],
        max_items: int = 256,
        max_wait: float = 0.005,
        max_pending: int = 16_384,
    ):
        """`run(payloads)` returns one result per payload (an exception instance fails that job only)."""
        if max_items < 1 or max_wait < 0 or max_pending < 1:
            raise ValueError("max_items and max_pending must be >= 1, max_wait >= 0")
        self._run = run
        self.max_items, self.max_wait, self.max_pending = max_items, max_wait, max_pending
        self._queue: deque[_Job] = deque()
        self._ready: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._executor: ThreadPoolExecutor | None = None
        self.pending = 0  # items queued, not yet in a batch

    async def start(self) -> None:
        self._ready = asyncio.Event()
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="moe-reward-batch")
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
        for job in self._queue:
            if not job.future.done():
                job.future.set_exception(Busy("the server is shutting down"))
        self._queue.clear()

    async def submit(self, payload: Any, size: int) -> Any:
        if self._ready is None:
            raise RuntimeError("MicroBatcher.start() was not awaited")
        if self.pending and self.pending + size > self.max_pending:
            raise Busy(f"{self.pending} items are waiting (limit {self.max_pending}); retry shortly")
        job = _Job(payload, max(int(size), 1), asyncio.get_running_loop().create_future())
        self._queue.append(job)
        self.pending += job.size
        self._ready.set()
        return await job.future

    def _take(self) -> list[_Job]:
        jobs = [self._queue.popleft()]
        n = jobs[0].size
        while self._queue and n + self._queue[0].size <= self.max_items:
            job = self._queue.popleft()
            jobs.append(job)
            n += job.size
        self.pending -= n
        return jobs

    async def _loop(self) -> None:
        assert self._ready is not None
        loop = asyncio.get_running_loop()
        while True:
            if not self._queue:
                self._ready.clear()
                await self._ready.wait()
            if self.max_wait > 0 and sum(j.size for j in self._queue) < self.max_items:
                # Give concurrent requests a moment to join: those arriving with this one, and (under
                # load) the next requests of the clients the previous batch just answered, which would
                # otherwise miss this batch and keep the clients split into two alternating batches.
                await asyncio.sleep(self.max_wait)
            jobs = [j for j in self._take() if not j.future.done()]  # (done: cancelled by its client)
            if not jobs:
                continue
            try:
                results = await loop.run_in_executor(self._executor, self._run_all, [j.payload for j in jobs])
            except Exception as exc:  # noqa: BLE001 (never let the loop die: every waiting request would hang)
                log.exception("micro-batch failed")
                results = [exc] * len(jobs)
            for job, result in zip(jobs, results, strict=True):
                if job.future.done():
                    continue
                if isinstance(result, BaseException):
                    job.future.set_exception(result)
                else:
                    job.future.set_result(result)

    def _run_all(self, payloads: list[Any]) -> list[Any]:
        """One call for the whole batch; if it fails, one call per job, so one bad job fails alone."""
        try:
            results = list(self._run(payloads))
            if len(results) != len(payloads):
                raise RuntimeError(f"{len(results)} results for {len(payloads)} jobs")
            return results
        except Exception as exc:  # noqa: BLE001
            if len(payloads) == 1:
                return [exc]
        out: list[Any] = []
        for payload in payloads:
            try:
                out.append(self._run([payload])[0])
            except Exception as exc:  # noqa: BLE001
                out.append(exc)
        return out
