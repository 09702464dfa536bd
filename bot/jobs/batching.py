"""Saves go to the store together: one transaction for all the saves made within a short window.

Under load many jobs change at once (a queue moves, results arrive); a commit each would cost a disk flush
and a trip to the database thread each (about half a millisecond of CPU, most of a job's database cost).
The window groups them; a save that must not wait (fal just accepted a paid job: its request id) commits
at once, taking the others with it. A caller still waits until its own save is committed, so nothing is
told before it is saved.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from typing import Protocol

from bot.jobs.model import Job

__all__ = ("SAVE_WINDOW_SECONDS", "SaveBatcher")

SAVE_WINDOW_SECONDS = 0.05  # what a job's steps wait at most to be saved; a job takes seconds


class SavesMany(Protocol):
    async def save_many(self, jobs: Sequence[Job]) -> None: ...


class SaveBatcher:
    def __init__(self, store: SavesMany, *, window: float = SAVE_WINDOW_SECONDS) -> None:
        self._store = store
        self._window = window
        self._pending: dict[str, Job] = {}  # the newest version of each job waiting to be saved
        self._waiters: list[asyncio.Future[None]] = []
        self._urgent = asyncio.Event()  # a pending save must not wait for the window
        self._flusher: asyncio.Task[None] | None = None

    async def save(self, job: Job, *, at_once: bool = False) -> None:
        """Return once `job` (or a newer version of it) is committed; raise what the commit raised.
        `at_once`: commit now (with whatever else is pending) instead of at the end of the window."""
        loop = asyncio.get_running_loop()
        self._pending[job.id] = job
        waiter: asyncio.Future[None] = loop.create_future()
        self._waiters.append(waiter)
        if at_once:
            self._urgent.set()
        if self._flusher is None:
            self._flusher = loop.create_task(self._flush(), name="job-save-batch")
        await waiter

    async def flush(self) -> None:
        """Commit what is waiting now, without the rest of the window (the runner is closing)."""
        if self._flusher is not None:
            self._urgent.set()
            await asyncio.wait([self._flusher])

    async def _flush(self) -> None:
        try:
            while self._pending:
                await self._window_ends()
                self._urgent.clear()
                jobs, waiters = list(self._pending.values()), self._waiters
                self._pending, self._waiters = {}, []
                await self._commit(jobs, waiters)
        finally:
            self._flusher = None

    async def _window_ends(self) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self._window):
                await self._urgent.wait()

    async def _commit(self, jobs: list[Job], waiters: list[asyncio.Future[None]]) -> None:
        try:
            await self._store.save_many(jobs)
        except asyncio.CancelledError:
            for waiter in waiters:
                waiter.cancel()
            raise
        except Exception as exc:
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_exception(exc)
            return
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)
