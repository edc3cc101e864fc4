"""Dynamic micro-batching: requests that arrive together run as one model call.

Leader/follower, no background thread: every caller queues its item, then takes
the run lock in turn; whoever holds it runs the oldest queued items (its own
among them, or already done by an earlier batch) as one batch. While a batch
computes, new arrivals queue up, so under load batches form by themselves; when
the queue is short, the leader waits `window_s` for company first.
"""
from __future__ import annotations

import threading
import time
from concurrent.futures import Future
from typing import Callable, Generic, Sequence, TypeVar

# Requests per forward pass unless TASKROUTER_BATCH_MAX says otherwise. Measured with block attention,
# 16 users (`taskrouter loadtest`, twice each): 3.28-3.44 req/s with batches of 8, 3.89-3.90 with 16.
DEFAULT_BATCH = 16

Item = TypeVar("Item")
Result = TypeVar("Result")


class MicroBatcher(Generic[Item, Result]):
    """Runs `run_batch(items) -> results-or-exceptions` on up to `max_batch` items at a time, one batch at once."""

    def __init__(self, run_batch: Callable[[Sequence[Item]], list[Result | BaseException]],
                 max_batch: int = DEFAULT_BATCH, window_s: float = 0.002):
        if max_batch < 1 or window_s < 0:
            raise ValueError("batching: max_batch >= 1 and window >= 0 are required")
        self.run_batch, self.max_batch, self.window_s = run_batch, max_batch, window_s
        self._queue: list[tuple[Item, Future]] = []
        self._queue_lock = threading.Lock()
        self._run_lock = threading.Lock()
        self.batches = 0  # batches run so far (for tests and stats)
        self.items = 0

    def submit(self, item: Item) -> Result:
        """Block until `item` has been computed in some batch; re-raises its own exception only."""
        future: Future = Future()
        with self._queue_lock:
            self._queue.append((item, future))
        while not future.done():
            with self._run_lock:
                if not future.done():
                    self._run_one_batch()
        return future.result()

    def _run_one_batch(self) -> None:
        if self.window_s and len(self._queue) < self.max_batch:
            time.sleep(self.window_s)
        with self._queue_lock:
            batch, self._queue = self._queue[: self.max_batch], self._queue[self.max_batch:]
        results: list = [RuntimeError("batch interrupted")] * len(batch)  # what callers see if the run dies
        try:
            results = self.run_batch([item for item, _ in batch])
        except Exception as exc:  # the whole call failed: every caller of this batch sees why
            results = [exc] * len(batch)
        finally:
            self.batches += 1
            self.items += len(batch)
            for (_, future), result in zip(batch, results):
                if isinstance(result, BaseException):
                    future.set_exception(result)
                else:
                    future.set_result(result)
