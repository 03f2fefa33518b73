"""Dynamic batching: concurrent predictions of one model gathered into one forward pass.

A route parses its request, then awaits `Batcher.submit(model, images)`. One inference thread takes what is
queued for a model, at most `max_size` images, runs it as one `run(model, inputs)` call and hands each caller its
own result through the caller's event loop (one `loop.call_soon_threadsafe` per batch and loop): no request waits
in the thread pool. When the model's previous batch gathered several callers (concurrent traffic), the thread
waits for more to join, up to `max_wait_s` or `wait_share` of the model's last forward pass, whichever is longer,
after the oldest caller arrived: a fast model is not held back, and a slow one fills its batches instead of
splitting its callers into half-full batches that take turns. A lone caller is never delayed. A call larger than
`max_size` runs alone, unsplit. Models take turns: what is left of one model's queue goes after the
others'.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from service.handoff import answer_callers

log = logging.getLogger(__name__)

RunBatch = Callable[[str, list[np.ndarray]], Sequence[Any]]
"""`run(key, inputs)`: one outcome per input, in order; an exception instance as an outcome fails that caller only,
an exception raised fails every caller of the batch."""


@dataclass(eq=False)
class _Job:
    key: str
    x: np.ndarray
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future
    arrived: float = field(default_factory=time.monotonic)


class Batcher:
    """One inference thread (started by the first call) serving every key's callers in batches."""

    def __init__(self, run: RunBatch, *, max_size: int, max_wait_s: float, wait_share: float = 0.0,
                 prepare_thread: Callable[[], None] | None = None, name: str = "inference"):
        self.max_size, self.max_wait_s, self.wait_share, self.name = max_size, max_wait_s, wait_share, name
        self._run, self._prepare = run, prepare_thread
        self._queue: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._crowded: dict[str, bool] = {}
        """Keys whose last batch had several callers or left some waiting: worth waiting for more."""
        self._run_s: dict[str, float] = {}
        """Key -> seconds its last batch took to run."""

    async def submit(self, key: str, x: np.ndarray) -> Any:
        """The outcome of `run(key, [..., x, ...])` for `x` (N images), or its exception."""
        loop = asyncio.get_running_loop()
        job = _Job(key, x, loop, loop.create_future())
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._serve, name=self.name, daemon=True)
                self._thread.start()
            self._queue.put(job)
        return await job.future

    def close(self, timeout_s: float = 30.0) -> None:
        """Answer what was submitted, then stop the thread (a later call starts a new one)."""
        with self._lock:
            thread, self._thread = self._thread, None
            if thread is not None:
                self._queue.put(None)  # what is queued after it goes to the next thread
        if thread is not None:
            thread.join(timeout_s)

    def _serve(self) -> None:
        if self._prepare is not None:
            try:
                self._prepare()
            except Exception:  # serving without the tuning beats not serving
                log.exception("could not prepare the %s thread", self.name)
        waiting: dict[str, list[_Job]] = {}  # insertion order = the order keys take turns
        open_ = True
        while open_ or waiting:
            if not waiting:
                job = self._queue.get()
                if job is None:
                    return
                waiting[job.key] = [job]
            key = next(iter(waiting))
            if open_:
                open_ = self._gather(key, waiting)
            self._execute(key, self._take(key, waiting))

    def _gather(self, key: str, waiting: dict[str, list[_Job]]) -> bool:
        """Move queued jobs into `waiting` until `key` has `max_size` images or its wait is over; False when told
        to stop (what is queued after that is the next thread's)."""
        jobs = waiting[key]
        rows = sum(len(job.x) for job in jobs)
        deadline = jobs[0].arrived + self.wait_s(key) if self._crowded.get(key) else 0.0
        while rows < self.max_size:
            timeout = deadline - time.monotonic()
            try:
                job = self._queue.get(timeout=timeout) if timeout > 0 else self._queue.get_nowait()
            except queue.Empty:
                return True
            if job is None:
                return False
            waiting.setdefault(job.key, []).append(job)
            if job.key == key:
                rows += len(job.x)
        return True

    def wait_s(self, key: str) -> float:
        """How long a crowded batch of `key` waits for more callers after its oldest arrived."""
        return max(self.max_wait_s, self.wait_share * self._run_s.get(key, 0.0))

    def _take(self, key: str, waiting: dict[str, list[_Job]]) -> list[_Job]:
        """The oldest jobs of `key` that fit in `max_size` images (at least one); the rest wait for the next
        turn, behind the other keys."""
        jobs = waiting.pop(key)
        count, rows = 0, 0
        while count < len(jobs) and (count == 0 or rows + len(jobs[count].x) <= self.max_size):
            rows += len(jobs[count].x)
            count += 1
        if count < len(jobs):
            waiting[key] = jobs[count:]
        self._crowded[key] = len(jobs) > 1
        return jobs[:count]

    def _execute(self, key: str, batch: list[_Job]) -> None:
        began = time.monotonic()
        try:
            outcomes: Sequence[Any] = self._run(key, [job.x for job in batch])
            if len(outcomes) != len(batch):
                raise RuntimeError(f"{len(outcomes)} outcomes for a batch of {len(batch)} calls")
        except Exception as exc:  # e.g. the model does not verify: every caller of the batch gets it
            outcomes = [exc] * len(batch)
        self._run_s[key] = time.monotonic() - began
        answer_callers((job.loop, job.future, outcome) for job, outcome in zip(batch, outcomes, strict=True))
