"""Dynamic batching: concurrent requests to one model answered by one onnxruntime run.

Each model has one worker thread and a bounded queue. The worker takes the oldest request, waits
up to ``max_queue_delay_ms`` for more (until ``max_batch_size`` rows), drops the requests whose
deadline has passed (their callers already got DEADLINE_EXCEEDED: the work is not done), and runs
the rest together. Requests are stacked along the first (batch) axis only when their other
dimensions agree (two lists padded to different widths are run apart), so batching never changes
an answer. A full queue refuses at once with RESOURCE_EXHAUSTED: waiting would only move the
overload into every caller's latency.
"""
from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass, field

import numpy as np

from millrace.serving.errors import DeadlineExceeded, Overloaded, ServingError

@dataclass(eq=False)
class _Pending:
    feed: dict[str, np.ndarray]
    rows: int
    deadline: float | None  # time.monotonic() value, or None: no deadline
    done: threading.Event = field(default_factory=threading.Event)
    outputs: dict[str, np.ndarray] | None = None
    error: BaseException | None = None
    abandoned: bool = False
    arrived: float = field(default_factory=time.monotonic)

    def shape_key(self) -> tuple:
        return tuple((name, array.shape[1:], array.dtype.str) for name, array in sorted(self.feed.items()))


class Batcher:
    """Batches ``run(feed) -> {output: array}`` (every output's first axis is the batch axis)."""

    def __init__(self, name: str, run, max_batch_size: int = 32, max_queue_delay_ms: float = 0.0,
                 max_queue: int = 256, metrics=None, runners: int = 1):
        self.name, self._run = name, run
        self.max_batch_size, self.max_queue = max_batch_size, max_queue
        self.delay = max_queue_delay_ms / 1000
        self.metrics = metrics
        self._queue: deque[_Pending] = deque()
        self._cond = threading.Condition()
        self._closed = False
        self.runners = runners  # runs at once (in workers, or inline in callers)
        self._active = 0
        self._threads = [threading.Thread(target=self._loop, name=f"batcher-{name}-{i}", daemon=True)
                         for i in range(runners)]
        for thread in self._threads:
            thread.start()

    @property
    def depth(self) -> int:
        return len(self._queue)

    def infer(self, feed: dict[str, np.ndarray], deadline: float | None = None) -> dict[str, np.ndarray]:
        """The model's outputs for ``feed`` (first axis: rows), run in a batch with whatever else is waiting.
        When the model is idle and nothing waits, the caller runs it at once in its own thread (no
        hand-off to the worker: a lone request pays nothing for batching)."""
        rows = _rows(feed)
        if deadline is not None and deadline <= time.monotonic():
            raise DeadlineExceeded(f"model '{self.name}': the deadline passed before the request could run")
        pending = None
        with self._cond:
            if self._closed:
                raise ServingError(f"model '{self.name}' is no longer served")
            if self._active < self.runners and not self._queue:
                self._active += 1
            elif len(self._queue) >= self.max_queue:
                raise Overloaded(f"model '{self.name}' has {len(self._queue)} requests waiting (the limit, "
                                 f"serving.batching.max_queue); retry with backoff")
            else:
                pending = _Pending(feed, rows, deadline)
                self._queue.append(pending)
                self._depth_changed()
                self._cond.notify()
        if pending is None:
            try:
                outputs = self._run(feed)
            finally:
                self._idle()
            if self.metrics is not None:
                self.metrics.batch(self.name, rows)
            return outputs
        timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
        if not pending.done.wait(timeout):
            pending.abandoned = True  # the worker skips it if it has not started
            raise DeadlineExceeded(f"model '{self.name}': the deadline passed while the request waited")
        if pending.error is not None:
            raise pending.error
        return pending.outputs

    def _idle(self) -> None:
        with self._cond:
            self._active -= 1
            if self._queue:
                self._cond.notify()

    def close(self) -> None:
        """Answer what is queued, then stop the worker (a replaced release's batchers)."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        for thread in self._threads:
            thread.join(timeout=30)

    # -- the worker ------------------------------------------------------------------------------

    def _loop(self) -> None:
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            try:
                for group in _groups(batch):
                    self._answer(group)
            finally:
                self._idle()

    def _next_batch(self) -> list[_Pending] | None:
        with self._cond:
            while True:
                while not self._queue or self._active >= self.runners:  # queued work waits for a free runner
                    if self._closed and not self._queue:
                        return None
                    self._cond.wait()
                # wait for company: until the batch is full, the oldest has waited the delay, or the server
                # closes; another runner may take the queue meanwhile (then wait for work again)
                while self._queue and not self._closed and self.delay:
                    rows = sum(p.rows for p in self._queue)
                    left = self._queue[0].arrived + self.delay - time.monotonic()
                    if rows >= self.max_batch_size or left <= 0:
                        break
                    self._cond.wait(left)
                if self._queue and self._active < self.runners:
                    break
            batch, taken = [], 0
            while self._queue and (not batch or taken + self._queue[0].rows <= self.max_batch_size):
                pending = self._queue.popleft()
                taken += pending.rows
                batch.append(pending)
            self._active += 1
            self._depth_changed()
        now = time.monotonic()
        live = []
        for pending in batch:
            if pending.abandoned or (pending.deadline is not None and pending.deadline <= now):
                pending.abandoned = True  # dropped, not run: its caller has (or is about to) give up
                pending.error = DeadlineExceeded(f"model '{self.name}': the deadline passed while the request waited")
                pending.done.set()
            else:
                live.append(pending)
        return live

    def _answer(self, group: list[_Pending]) -> None:
        try:
            feed = group[0].feed if len(group) == 1 else \
                {name: np.concatenate([p.feed[name] for p in group]) for name in group[0].feed}
            outputs = self._run(feed)
            if self.metrics is not None:
                self.metrics.batch(self.name, sum(p.rows for p in group))
            start = 0
            for pending in group:
                pending.outputs = {name: array[start:start + pending.rows] for name, array in outputs.items()}
                start += pending.rows
        except BaseException as exc:  # every caller of the batch learns of the failure
            for pending in group:
                pending.error = exc
        for pending in group:
            pending.done.set()

    def _depth_changed(self) -> None:
        if self.metrics is not None:
            self.metrics.queue_depth(self.name, len(self._queue))


def _rows(feed: dict[str, np.ndarray]) -> int:
    counts = {array.shape[0] if array.ndim else 1 for array in feed.values()}
    if len(counts) != 1:
        from millrace.serving.errors import InvalidInput

        raise InvalidInput(f"inputs disagree on the batch size (first dimensions {sorted(counts)})")
    return counts.pop()


def _groups(batch: list[_Pending]) -> list[list[_Pending]]:
    """Requests that can be stacked (same non-batch shapes and types), in arrival order."""
    groups: dict[tuple, list[_Pending]] = {}
    for pending in batch:
        groups.setdefault(pending.shape_key(), []).append(pending)
    return list(groups.values())
