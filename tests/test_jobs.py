"""JobRunner with the real fal client against the fake fal, a real SQLite store and a recording sink."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from bot import jobs as jobs_module
from bot.fal import FalClient, KontextInput
from bot.jobs import Job, JobRunner, JobState, ResultImage
from bot.store import SqliteJobStore
from tests.fakes.fake_fal import FakeFal, JobScript, Outcome


@dataclass
class RecordingSink:
    shown: list[tuple[JobState, int | None]] = field(default_factory=list)
    deliveries: list[tuple[list[ResultImage], bool]] = field(default_factory=list)
    failures_left: int = 0

    async def show(self, job: Job) -> None:
        self.shown.append((job.state, job.queue_position))

    async def deliver(self, job: Job, images: list[ResultImage], *, maybe_posted: bool) -> None:
        self.deliveries.append((images, maybe_posted))
        if self.failures_left:
            self.failures_left -= 1
            raise RuntimeError("Discord is down")


def request(num_images: int = 1) -> KontextInput:
    return KontextInput(prompt="make it blue", image_urls=("https://example.com/a.png",), num_images=num_images)


async def submitted(fal: FalClient, store: SqliteJobStore, num_images: int = 1) -> Job:
    job = Job(request=request(num_images), user_id=1, channel_id=2, guild_id=3, source="test")
    job.accepted(await fal.submit(job.request))
    await store.save(job)
    return job


async def test_job_walks_the_queue_and_is_delivered_once(fal: FalClient, fake_fal: FakeFal, store: SqliteJobStore):
    fake_fal.add_script(JobScript(queue_positions=(2, 1, 0), progress_steps=2))
    job = await submitted(fal, store, num_images=2)
    sink = RecordingSink()
    assert job.queue_position == 2  # from the submit answer

    await JobRunner(fal, store, job_timeout=30).run(job, sink)

    assert sink.shown == [
        (JobState.QUEUED, 1), (JobState.QUEUED, 0), (JobState.RUNNING, None), (JobState.DELIVERED, None),
    ]  # fmt: skip
    [(images, maybe_posted)] = sink.deliveries
    assert maybe_posted is False
    fake_job = fake_fal.jobs[job.request_id]
    served = [await _served(fal, image.url) for image in images]
    assert [image.data for image in images] == served and len(served) == 2 == fake_job.num_images
    stored = await store.get(job.id)
    assert stored is not None and stored.state is JobState.DELIVERED and stored.result is not None


async def _served(fal: FalClient, url: str) -> bytes:
    return (await fal.download(url)).data


async def test_moderated_job_fails_with_a_plain_reason(fal: FalClient, fake_fal: FakeFal, store: SqliteJobStore):
    body = {"detail": [{"loc": ["body", "prompt"], "msg": "flagged", "type": "content_policy_violation"}]}
    fake_fal.add_script(JobScript(outcome=Outcome(kind="error", status_error="flagged", result_body=body)))
    job = await submitted(fal, store)
    sink = RecordingSink()

    await JobRunner(fal, store, job_timeout=30).run(job, sink)

    assert sink.deliveries == []
    assert sink.shown[-1] == (JobState.FAILED, None)
    assert job.error is not None and "safety filter" in job.error
    stored = await store.get(job.id)
    assert stored is not None and stored.state is JobState.FAILED


async def test_cancel_while_queued_ends_cancelled(fal: FalClient, fake_fal: FakeFal, store: SqliteJobStore):
    fake_fal.add_script(JobScript(queue_positions=(5,), hold=True))
    job = await submitted(fal, store)
    sink = RecordingSink()
    runner = JobRunner(fal, store, job_timeout=30)
    task = runner.start(job, sink)

    job.touch(cancel_requested=True)
    assert await fal.cancel(job.handle) is True
    await task

    assert job.state is JobState.CANCELLED
    assert sink.shown == [(JobState.CANCELLED, 5)]
    assert sink.deliveries == []
    assert fake_fal.count("result") == 0


async def test_delivery_is_retried_and_told_it_may_have_posted(
    fal: FalClient, fake_fal: FakeFal, store: SqliteJobStore, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setattr(jobs_module, "DELIVERY_RETRY_SECONDS", 0.01)
    job = await submitted(fal, store)
    sink = RecordingSink(failures_left=2)

    await JobRunner(fal, store, job_timeout=30).run(job, sink)

    assert [maybe for _, maybe in sink.deliveries] == [False, True, True]
    assert job.state is JobState.DELIVERED


async def test_resumed_delivery_looks_before_posting(fal: FalClient, fake_fal: FakeFal, store: SqliteJobStore):
    job = await submitted(fal, store)
    await JobRunner(fal, store, job_timeout=30).run(job, RecordingSink())
    crashed = await store.get(job.id)
    assert crashed is not None
    crashed.touch(state=JobState.SUCCEEDED, delivery_started=True)  # as if killed right after posting

    sink = RecordingSink()
    await JobRunner(fal, store, job_timeout=30).run(crashed, sink)

    assert [maybe for _, maybe in sink.deliveries] == [True]
    assert fake_fal.count("submit") == 1


async def test_job_that_outlives_its_deadline_fails_clearly(fal: FalClient, fake_fal: FakeFal, store: SqliteJobStore):
    fake_fal.add_script(JobScript(queue_positions=(1,), hold=True))
    job = await submitted(fal, store)
    sink = RecordingSink()

    await JobRunner(fal, store, job_timeout=0.3).run(job, sink)  # the remaining time is at least 1 s

    assert job.state is JobState.FAILED and job.error is not None and "in time" in job.error
    assert sink.deliveries == []
