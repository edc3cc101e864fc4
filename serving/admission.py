"""Admission control: a bounded FIFO queue in front of the model, with a per-request deadline.

The model computes one micro-batch at a time per worker, so under overload requests
would pile up and every client would time out. Instead `concurrency` requests are
handed to the router at once (they form its batches) and at most `max_queue` more
wait: the next one is refused at once with 503 + Retry-After, and a request whose
deadline passed while it waited is dropped before any compute (504). Configured by
TASKROUTER_MAX_QUEUE, TASKROUTER_DEADLINE_MS and TASKROUTER_CONCURRENCY (default:
TASKROUTER_BATCH_MAX, so a full batch can form).
"""
from __future__ import annotations

import math
import threading
import time
from collections import deque
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

from taskrouter.schema import RequestError
from taskrouter.settings import Settings


class Overloaded(RequestError):
    """The queue is full: retry after `retry_after` seconds."""

    def __init__(self, retry_after: int, queued: int):
        super().__init__("overloaded", f"server busy: {queued} requests already queued; retry after {retry_after} s", 503)
        self.retry_after = retry_after


class DeadlineExceeded(RequestError):
    """The request waited past its deadline and was dropped without being computed."""

    def __init__(self, waited_ms: float, deadline_ms: float):
        super().__init__("deadline_exceeded",
                         f"request waited {waited_ms:.0f} ms in the queue, past its {deadline_ms:.0f} ms deadline; "
                         "it was not computed", 504)


@dataclass
class AdmissionStats:
    admitted: int = 0
    rejected: int = 0
    expired: int = 0


class Admission:
    """FIFO of waiting requests bounded by `max_queue`; `concurrency` of them run at once."""

    def __init__(self, max_queue: int = 32, deadline_ms: float = 10_000, concurrency: int = 1):
        if max_queue < 0 or concurrency < 1 or deadline_ms <= 0:
            raise ValueError("admission: max_queue >= 0, concurrency >= 1 and deadline_ms > 0 are required")
        self.max_queue, self.deadline_ms, self.concurrency = max_queue, deadline_ms, concurrency
        self._lock = threading.Lock()
        self._waiting: deque[threading.Event] = deque()
        self._running = 0
        self._service_s = 0.2  # moving average of a model call, for Retry-After
        self.stats = AdmissionStats()

    @classmethod
    def from_settings(cls, config: Settings) -> "Admission":
        return cls(max_queue=config.max_queue, deadline_ms=config.deadline_ms, concurrency=config.admitted_at_once)

    @property
    def queued(self) -> int:
        return len(self._waiting)

    @property
    def running(self) -> int:
        return self._running

    def retry_after(self) -> int:
        """Seconds until the current queue should have drained (at least 1)."""
        return max(1, math.ceil((len(self._waiting) + self._running) * self._service_s / self.concurrency))

    @contextmanager
    def slot(self, arrived: float | None = None) -> Iterator[None]:
        """Hold a model slot for the body; raises Overloaded or DeadlineExceeded instead of waiting forever.

        `arrived` is the request's `time.monotonic()` arrival; its deadline counts from there.
        """
        arrived = time.monotonic() if arrived is None else arrived
        ticket = threading.Event()
        with self._lock:
            if self._running < self.concurrency and not self._waiting:
                self._running += 1
                ticket.set()
            elif len(self._waiting) >= self.max_queue:
                self.stats.rejected += 1
                raise Overloaded(self.retry_after(), len(self._waiting))
            else:
                self._waiting.append(ticket)
        remaining = arrived + self.deadline_ms / 1000 - time.monotonic()
        if not ticket.wait(max(0.0, remaining)):
            with self._lock:
                if not ticket.is_set():  # still queued: leave the queue without ever running
                    self._waiting.remove(ticket)
                    self.stats.expired += 1
                    raise DeadlineExceeded((time.monotonic() - arrived) * 1000, self.deadline_ms)
        # we hold a slot (handed over by release or taken at once)
        if (waited := time.monotonic() - arrived) * 1000 > self.deadline_ms:
            self._release()
            with self._lock:
                self.stats.expired += 1
            raise DeadlineExceeded(waited * 1000, self.deadline_ms)
        with self._lock:
            self.stats.admitted += 1
        started = time.monotonic()
        try:
            yield
        finally:
            elapsed = time.monotonic() - started
            with self._lock:
                self._service_s = 0.8 * self._service_s + 0.2 * elapsed
            self._release()

    def _release(self) -> None:
        """Hand the slot to the oldest waiter, or free it."""
        with self._lock:
            if self._waiting:
                self._waiting.popleft().set()
            else:
                self._running -= 1
