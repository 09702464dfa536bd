"""Saves made during one event-loop tick go to the store together, in one transaction.

Under load many jobs change at once (a queue moves, results arrive); one commit each would queue them
all behind each other's disk flush. A caller still waits until its own save is committed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Protocol

from bot.jobs.model import Job

__all__ = ("SaveBatcher",)


class SavesMany(Protocol):
    async def save_many(self, jobs: Sequence[Job]) -> None: ...


class SaveBatcher:
    def __init__(self, store: SavesMany) -> None:
        self._store = store
        self._pending: dict[str, Job] = {}  # the newest version of each job waiting to be saved
        self._waiters: list[asyncio.Future[None]] = []
        self._flusher: asyncio.Task[None] | None = None

    async def save(self, job: Job) -> None:
        """Return once `job` (or a newer version of it) is committed; raise what the commit raised."""
        loop = asyncio.get_running_loop()
        self._pending[job.id] = job
        waiter: asyncio.Future[None] = loop.create_future()
        self._waiters.append(waiter)
        if self._flusher is None:
            self._flusher = loop.create_task(self._flush(), name="job-save-batch")
        await waiter

    async def _flush(self) -> None:
        try:
            while self._pending:
                jobs, waiters = list(self._pending.values()), self._waiters
                self._pending, self._waiters = {}, []
                await self._commit(jobs, waiters)
        finally:
            self._flusher = None

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
