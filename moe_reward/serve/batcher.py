"""Micro-batching: many concurrent small requests become one forward pass.

Each request is a *job* of a few items. One asyncio task waits for a job, takes whole jobs up to
`max_items` items and runs them with one call of `run` in a single worker thread (the event loop keeps
accepting requests meanwhile); while a batch runs, the next one gathers.

Before it takes a batch it waits (unless a full batch is already waiting): at least `max_wait` seconds,
then until as many requests have arrived since the last batch ended as that batch answered, or until
arrivals pause for `max_wait` or `GAP_SHARE` (1%) of a typical batch's duration (a moving average),
whichever is longer, and never longer than `FOLLOW_SHARE` (5%) of it. Clients in a closed loop (each sends its next
request when answered: RLHF workers, the benchmark) are then served in one batch, rather than in two
halves that alternate, each request waiting for the other half's batch as well as its own; requests sent
together but spread out by a busy machine still meet in one batch; and when some clients do not come back
(they are done) the batch starts once the others have arrived. The waits scale with the batch time, so
they cost a few percent of throughput at most.

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
FOLLOW_SHARE = 0.05  # after a batch, wait at most this share of its duration for its clients to come back
GAP_SHARE = 0.01  # ... and stop once none arrived for this share of it (the others are not coming back)
TYPICAL_WEIGHT = (
    0.3  # batch times are averaged (exponentially) so that one short batch does not shrink the waits
)


class Busy(RuntimeError):
    """More items are waiting than the server accepts; retry later."""


@dataclass
class _Job:
    payload: Any
    size: int
    future: asyncio.Future
    queued: float = 0.0  # loop time at submit
    timing: dict | None = None  # filled in when its batch ends: queue_s, batch_s, batch_items


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
        self._arrived: asyncio.Event | None = None
        self._arrivals = 0  # requests submitted so far
        self._arrivals_at_end = 0  # ... when the last batch ended
        self._answered = 0  # requests the last batch answered
        self._last_end = float("-inf")
        self._last_arrival = float("-inf")
        self._last_seconds = 0.0
        self._typical_seconds = 0.0  # moving average of batch times: what the waits scale with

    async def start(self) -> None:
        self._ready, self._arrived = asyncio.Event(), asyncio.Event()
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

    async def submit(self, payload: Any, size: int, timing: dict | None = None) -> Any:
        """`run`'s result for `payload` (`size` items). `timing`, if given, gets the seconds the job waited
        for its batch (``queue_s``), its batch's seconds (``batch_s``) and items (``batch_items``)."""
        if self._ready is None:
            raise RuntimeError("MicroBatcher.start() was not awaited")
        if self.pending and self.pending + size > self.max_pending:
            raise Busy(f"{self.pending} items are waiting (limit {self.max_pending}); retry shortly")
        loop = asyncio.get_running_loop()
        job = _Job(payload, max(int(size), 1), loop.create_future(), loop.time(), timing)
        self._queue.append(job)
        self.pending += job.size
        self._arrivals += 1
        self._last_arrival = loop.time()
        self._ready.set()
        self._arrived.set()  # type: ignore[union-attr]
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

    async def _gather(self) -> None:
        """Wait before taking a batch (see the module docstring); never once a full batch waits."""
        assert self._arrived is not None
        loop = asyncio.get_running_loop()
        first = loop.time()
        gap = max(self.max_wait, GAP_SHARE * self._typical_seconds)
        follow = max(self.max_wait, FOLLOW_SHARE * self._typical_seconds)
        cap = max(first, self._last_end) + follow
        # Right after a batch, the requests arriving are (mostly) its clients coming back: once all are
        # back there is nothing more to wait for. After an idle spell, nobody is known to be coming.
        returning = first <= self._last_end + follow
        while sum(j.size for j in self._queue) < self.max_items:
            now = loop.time()
            back = self._arrivals - self._arrivals_at_end
            paused = min(cap, max(self._last_arrival, self._last_end) + gap)  # no arrival for `gap`
            if now >= first + self.max_wait and ((returning and back >= self._answered) or now >= paused):
                return
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), max(first + self.max_wait, paused) - now)
            except TimeoutError:
                pass

    async def _loop(self) -> None:
        assert self._ready is not None
        loop = asyncio.get_running_loop()
        while True:
            if not self._queue:
                self._ready.clear()
                await self._ready.wait()
            await self._gather()
            jobs = [j for j in self._take() if not j.future.done()]  # (done: cancelled by its client)
            if not jobs:
                continue
            start = loop.time()
            try:
                results = await loop.run_in_executor(self._executor, self._run_all, [j.payload for j in jobs])
            except Exception as exc:  # noqa: BLE001 (never let the loop die: every waiting request would hang)
                log.exception("micro-batch failed")
                results = [exc] * len(jobs)
            self._last_end = loop.time()
            self._last_seconds = self._last_end - start
            self._typical_seconds = (
                self._last_seconds
                if not self._typical_seconds
                else (1 - TYPICAL_WEIGHT) * self._typical_seconds + TYPICAL_WEIGHT * self._last_seconds
            )
            self._answered, self._arrivals_at_end = len(jobs), self._arrivals
            items = sum(j.size for j in jobs)
            for job, result in zip(jobs, results, strict=True):
                if job.timing is not None:
                    job.timing.update(
                        queue_s=start - job.queued, batch_s=self._last_seconds, batch_items=items
                    )
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
