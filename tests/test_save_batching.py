"""The save window: one transaction for the saves of many jobs, and none of them told before it is committed."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path

from bot.jobs import Job
from bot.jobs.batching import SaveBatcher
from bot.store.sqlite import SqliteJobStore
from tests.test_jobs import new_job


class CountingStore(SqliteJobStore):
    """A real store that notes the jobs of each transaction."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.transactions: list[list[str]] = []

    async def save_many(self, jobs: Sequence[Job]) -> None:
        await super().save_many(jobs)
        self.transactions.append([job.id for job in jobs])


async def stored(store: SqliteJobStore, jobs: Sequence[Job]) -> list[bool]:
    return [await store.get(job.id) is not None for job in jobs]


async def test_saves_within_the_window_share_one_transaction(tmp_path: Path) -> None:
    store = CountingStore(tmp_path / "jobs.sqlite3")
    async with store:
        batcher, jobs = SaveBatcher(store, window=0.3), [new_job() for _ in range(4)]

        async def later(job: Job) -> None:
            await asyncio.sleep(0.05)  # another loop tick, well inside the window
            await batcher.save(job)

        await asyncio.gather(*(batcher.save(job) for job in jobs[:3]), later(jobs[3]))

        assert store.transactions == [[job.id for job in jobs]]
        assert await stored(store, jobs) == [True] * 4  # each caller returned after the commit


async def test_a_save_at_once_takes_the_waiting_ones_along_without_waiting_the_window(tmp_path: Path) -> None:
    store = CountingStore(tmp_path / "jobs.sqlite3")
    async with store:
        batcher, waiting, urgent = SaveBatcher(store, window=60.0), new_job(), new_job()
        pending = asyncio.create_task(batcher.save(waiting))
        await asyncio.sleep(0.05)
        assert store.transactions == [] and not pending.done()  # inside its window

        async with asyncio.timeout(5):
            await batcher.save(urgent, at_once=True)
            await pending

        assert store.transactions == [[waiting.id, urgent.id]]


async def test_a_newer_version_saved_in_the_window_is_the_one_stored(tmp_path: Path) -> None:
    store = CountingStore(tmp_path / "jobs.sqlite3")
    async with store:
        batcher, job = SaveBatcher(store, window=0.1), new_job()
        moved = job.update(queue_position=3)

        await asyncio.gather(batcher.save(job), batcher.save(moved))

        assert store.transactions == [[job.id]]
        assert (await store.get(job.id)).queue_position == 3  # type: ignore[union-attr]
