"""Shedding load instead of dying: past a bound on admissions in flight or on event-loop lag, a new
request is refused at once (cheaply) rather than queued behind everyone until Discord's 3 s run out.

Accepted jobs are never dropped; only requests that have not been admitted yet are turned away.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ("LoadGuard", "LoopMonitor")


class LoopMonitor:
    """How late the event loop runs what is ready: a task asks to wake every `interval` and records by how
    much it overslept. The lag shown is the worst of the last `window` seconds, so one quiet tick in a busy
    stretch does not hide it."""

    def __init__(self, *, interval: float = 0.05, window: float = 1.0) -> None:
        self._interval = interval
        self._samples = max(1, math.ceil(window / interval))
        self._recent: list[float] = []
        self._task: asyncio.Task[None] | None = None

    @property
    def lag(self) -> float:
        return max(self._recent, default=0.0)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._measure(), name="loop-monitor")

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None

    async def _measure(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            asked = loop.time()
            await asyncio.sleep(self._interval)
            self._recent.append(max(loop.time() - asked - self._interval, 0.0))
            del self._recent[: -self._samples]


class LoadGuard:
    """Says whether a new request may be taken on, and counts the admissions in flight."""

    def __init__(self, monitor: LoopMonitor, *, max_admitting: int, max_lag: float) -> None:
        self._monitor = monitor
        self._max_admitting = max_admitting
        self._max_lag = max_lag
        self.admitting = 0
        self.shed = 0

    def busy_for(self) -> int | None:
        """None when a request may go ahead; else about how many seconds to wait (and it counts as shed)."""
        lag = self._monitor.lag
        if self.admitting < self._max_admitting and lag < self._max_lag:
            return None
        self.shed += 1
        return min(max(5, math.ceil(lag * 10)), 60)

    @contextmanager
    def admission(self) -> Iterator[None]:
        self.admitting += 1
        try:
            yield
        finally:
            self.admitting -= 1
