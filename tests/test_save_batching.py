"""The save window: one transaction for the saves of many jobs, and none of them told before it is committed."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path

from bot.fal import FalClient
from bot.jobs import Job, JobRunner, JobState
from bot.jobs.batching import SaveBatcher
from bot.store.sqlite import SqliteJobStore
from tests.fakes.fake_fal import FakeFal, JobScript
from tests.test_jobs import LIMITS, RecordingSink, new_job


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


async def test_closing_the_runner_commits_what_waits_in_the_window(
    fal: FalClient, fake_fal: FakeFal, store: SqliteJobStore
) -> None:
    """A job stopped by the shutdown keeps its newest version: the save window does not outlive the runner."""
    fake_fal.add_script(JobScript(queue_positions=(5,), hold=True))
    jobs, sink, job = JobRunner(fal, store, job_timeout=30, save_window=60.0), RecordingSink(), new_job()
    await jobs.admit(job, LIMITS)
    jobs.launch(job, sink)
    async with asyncio.timeout(5):
        while (JobState.QUEUED, 5) not in sink.shown:  # noqa: ASYNC110  # the sink records, it does not signal
            await asyncio.sleep(0.01)  # the request id was saved at once before this was shown
    moved = asyncio.create_task(jobs.status_moved(job.id, 4242))  # an ordinary save: waits in the window
    await asyncio.sleep(0.05)

    async with asyncio.timeout(5):
        await jobs.close()
        await moved  # its save was committed, not left behind

    stored = await store.get(job.id)
    assert stored is not None and stored.state is JobState.QUEUED and stored.status_message_id == 4242
