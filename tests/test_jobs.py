"""The job runner — the one owner of a job's life — with the real fal client against the fake fal, a real
SQLite store and a recording sink."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from bot.fal import EditRequest, FalClient
from bot.jobs import (
    CancelOutcome,
    DeliveryFailed,
    DeliveryReport,
    InvalidTransition,
    Job,
    JobRunner,
    JobState,
    ResultImage,
)
from bot.quota import Limits
from bot.store import SqliteJobStore
from tests.fakes.fake_fal import FakeFal, JobScript, Outcome

LIMITS = Limits(max_concurrent=2, daily_user_images=20, daily_guild_images=200, cooldown=timedelta(0))


@dataclass
class RecordingSink:
    """Shows nothing, posts nothing: records what it was asked, and fails on demand."""

    shown: list[tuple[JobState, int | None]] = field(default_factory=list)
    deliveries: list[Job] = field(default_factory=list)
    failures: list[DeliveryFailed | Exception] = field(default_factory=list)
    next_message_id: int = 1000

    def show(self, job: Job) -> None:
        self.shown.append((job.state, job.queue_position))

    async def settle(self) -> None:
        return None

    async def deliver(self, job: Job, images: Sequence[ResultImage], report: DeliveryReport) -> None:
        self.deliveries.append(job)
        self.images = list(images)
        if self.failures:
            raise self.failures.pop(0)
        self.next_message_id += 1
        await report.result_posted(self.next_message_id)


class FlakyStore(SqliteJobStore):
    """A real store whose next `failures` saves raise, as a full disk or a locked file would."""

    failures = 0

    async def save_many(self, jobs: Sequence[Job]) -> None:
        if self.failures:
            self.failures -= 1
            raise OSError("disk I/O error")
        await super().save_many(jobs)


def new_job(num_images: int = 1, *, created_at: datetime | None = None) -> Job:
    request = EditRequest(prompt="make it blue", image_urls=("https://example.com/a.png",), num_images=num_images)
    return Job(request=request, user_id=1, channel_id=2, guild_id=3, source="test",
               cost_usd=Decimal("0.08") * num_images, created_at=created_at or datetime.now(UTC))  # fmt: skip


def runner(
    fal: FalClient, store: SqliteJobStore, *, job_timeout: float = 30.0, delivery_attempts: int = 4
) -> JobRunner:
    return JobRunner(fal, store, job_timeout=job_timeout, delivery_attempts=delivery_attempts, retry_seconds=0.01)


async def launched(jobs: JobRunner, sink: RecordingSink, num_images: int = 1) -> Job:
    """Admit a new job and run it to its end; the job as stored."""
    job = new_job(num_images)
    assert await jobs.admit(job, LIMITS) is None
    await jobs.launch(job, sink)
    stored = await jobs.lookup(job.id)
    assert stored is not None
    return stored


async def test_job_walks_the_queue_and_is_delivered_once(fal: FalClient, fake_fal: FakeFal, store: SqliteJobStore):
    fake_fal.add_script(JobScript(queue_positions=(2, 1, 0), progress_steps=2))
    sink = RecordingSink()

    job = await launched(runner(fal, store), sink, num_images=2)

    assert sink.shown == [
        (JobState.QUEUED, 2), (JobState.QUEUED, 1), (JobState.QUEUED, 0), (JobState.RUNNING, None),
        (JobState.DELIVERED, None),
    ]  # fmt: skip
    [delivering] = sink.deliveries
    assert delivering.state is JobState.SUCCEEDED and delivering.delivery_attempts == 1
    served = [(await fal.download(image.url)).data for image in job.result.images]  # type: ignore[union-attr]
    assert [image.data for image in sink.images] == served and len(served) == 2
    assert job.state is JobState.DELIVERED and job.result_message_ids == (1001,)
    assert fake_fal.count("submit") == 1


async def test_moderated_job_fails_with_a_plain_reason(fal: FalClient, fake_fal: FakeFal, store: SqliteJobStore):
    body = {"detail": [{"loc": ["body", "prompt"], "msg": "flagged", "type": "content_policy_violation"}]}
    fake_fal.add_script(JobScript(outcome=Outcome(kind="error", status_error="flagged", result_body=body)))
    sink = RecordingSink()

    job = await launched(runner(fal, store), sink)

    assert sink.deliveries == [] and sink.shown[-1] == (JobState.FAILED, None)
    assert job.state is JobState.FAILED and job.error is not None and "safety filter" in job.error


async def test_cancel_while_queued_reaches_fal_and_ends_cancelled(
    fal: FalClient, fake_fal: FakeFal, store: SqliteJobStore
):
    fake_fal.add_script(JobScript(queue_positions=(5,), hold=True))
    jobs, sink, job = runner(fal, store), RecordingSink(), new_job()
    await jobs.admit(job, LIMITS)
    task = jobs.launch(job, sink)
    await _until(lambda: (JobState.QUEUED, 5) in sink.shown)

    result = await jobs.request_cancel(job.id)
    await task

    assert result.outcome is CancelOutcome.REQUESTED
    stored = await store.get(job.id)
    assert stored is not None and stored.state is JobState.CANCELLED and stored.cancel_requested
    assert fake_fal.count("cancel") == 1 and fake_fal.count("result") == 0 and sink.deliveries == []


async def test_cancel_before_fal_answered_the_submit_is_sent_once_it_has(
    fal: FalClient, fake_fal: FakeFal, store: SqliteJobStore
):
    fake_fal.add_script(JobScript(queue_positions=(5,), hold=True))
    fake_fal.slow("submit", 0.3)
    jobs, sink, job = runner(fal, store), RecordingSink(), new_job()
    await jobs.admit(job, LIMITS)
    task = jobs.launch(job, sink)
    await _until(lambda: fake_fal.count("submit") == 1)

    result = await jobs.request_cancel(job.id)  # the submit is still on its way
    await task

    assert result.outcome is CancelOutcome.REQUESTED
    assert fake_fal.count("cancel") == 1
    stored = await store.get(job.id)
    assert stored is not None and stored.state is JobState.CANCELLED


async def test_failed_posts_are_retried_and_each_attempt_is_counted(
    fal: FalClient, fake_fal: FakeFal, store: SqliteJobStore
):
    sink = RecordingSink(failures=[RuntimeError("Discord is down"), DeliveryFailed("503", final=False)])

    job = await launched(runner(fal, store), sink)

    assert [attempt.delivery_attempts for attempt in sink.deliveries] == [1, 2, 3]
    assert job.state is JobState.DELIVERED and job.delivery_attempts == 3


async def test_a_final_delivery_failure_ends_the_job_and_frees_the_user(
    fal: FalClient, fake_fal: FakeFal, store: SqliteJobStore, caplog: pytest.LogCaptureFixture
):
    sink = RecordingSink(failures=[DeliveryFailed("I can't post in that channel.", final=True)])

    job = await launched(runner(fal, store), sink)

    assert job.state is JobState.UNDELIVERABLE and job.error == "I can't post in that channel."
    assert len(sink.deliveries) == 1 and sink.shown[-1] == (JobState.UNDELIVERABLE, None)
    usage = await store.usage_snapshot(job.user_id, job.guild_id, job.created_at)
    assert usage.active_jobs == 0 and usage.user_images == 1  # free to go again; the image was paid for


async def test_delivery_attempts_are_capped_across_restarts(fal: FalClient, fake_fal: FakeFal, store: SqliteJobStore):
    first = RecordingSink(failures=[RuntimeError("down")] * 2)
    jobs = runner(fal, store, delivery_attempts=3)
    job = new_job()
    await jobs.admit(job, LIMITS)
    task = jobs.launch(job, first)
    await _until(lambda: len(first.deliveries) == 2)
    await jobs.close()  # the bot stops during its third wait
    assert task.cancelled()

    stored = await store.get(job.id)
    assert stored is not None and stored.state is JobState.SUCCEEDED and stored.delivery_attempts == 2
    second = RecordingSink(failures=[RuntimeError("still down")] * 5)
    await runner(fal, store, delivery_attempts=3).resume(stored, second)

    final = await store.get(job.id)
    assert final is not None and final.state is JobState.UNDELIVERABLE and final.delivery_attempts == 3
    assert len(second.deliveries) == 1


async def test_a_job_past_its_deadline_is_cancelled_at_fal(fal: FalClient, fake_fal: FakeFal, store: SqliteJobStore):
    fake_fal.add_script(JobScript(queue_positions=(1,), hold=True))
    sink = RecordingSink()

    job = await launched(runner(fal, store, job_timeout=0.3), sink)  # the remaining time is at least 1 s

    assert job.state is JobState.TIMED_OUT and job.error is not None and "may still be charged" in job.error
    assert fake_fal.count("cancel") == 1 and sink.deliveries == []
    usage = await store.usage_snapshot(job.user_id, job.guild_id, job.created_at)
    assert (usage.active_jobs, usage.user_images) == (0, 1)  # fal may still bill it


async def test_a_job_stored_while_its_submit_was_on_the_way_ends_unconfirmed(
    fal: FalClient, fake_fal: FakeFal, store: SqliteJobStore, caplog: pytest.LogCaptureFixture
):
    job = new_job()
    await store.save(job)  # PENDING: the process died before fal's answer was saved
    sink = RecordingSink()

    await runner(fal, store).resume(job, sink)

    stored = await store.get(job.id)
    assert stored is not None and stored.state is JobState.UNCONFIRMED and stored.error is not None
    assert fake_fal.count("submit") == 0  # never resent
    assert any(r.levelno == logging.ERROR and job.id in r.getMessage() for r in caplog.records)


async def test_a_failed_save_after_fal_accepted_keeps_the_job_and_retries(
    fal: FalClient, fake_fal: FakeFal, tmp_path, caplog: pytest.LogCaptureFixture
):
    store = FlakyStore(tmp_path / "flaky.sqlite3")
    async with store:
        jobs, sink, job = runner(fal, store), RecordingSink(), new_job()
        await jobs.admit(job, LIMITS)
        store.failures = 2  # the save recording fal's acceptance fails, and the next one

        await jobs.launch(job, sink)
        await _until(lambda: jobs.unsaved == 0)  # the retry caught up

        stored = await store.get(job.id)
        [accepted] = fake_fal.jobs
        assert stored is not None and stored.state is JobState.DELIVERED and stored.request_id == accepted
        errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
        assert any(accepted in line and job.id in line for line in errors)  # an operator can recover it


async def test_a_job_refuses_an_impossible_transition():
    job = new_job().advance(JobState.QUEUED).advance(JobState.CANCELLED)

    with pytest.raises(InvalidTransition, match="cancelled → delivered"):
        job.advance(JobState.DELIVERED)
    with pytest.raises(TypeError):
        job.update(state=JobState.QUEUED)


async def _until(condition, timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():  # noqa: ASYNC110  # the runner has no event for these; poll briefly
            await asyncio.sleep(0.01)
