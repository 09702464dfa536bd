"""Jobs: what a user asked for, where it is in fal's queue, and how it ends.

    QUEUED ──► RUNNING ──► SUCCEEDED ──► DELIVERED
       │          │            │
       └──────────┴────────────┴──► FAILED | CANCELLED

A job is stored from the moment fal accepts it. `JobRunner` follows it to the end and saves
every change before telling Discord, so a restart can pick any job up where it was.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncGenerator
from contextlib import aclosing
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from enum import StrEnum
from typing import Any, Protocol

from bot.fal import (
    Completed,
    Download,
    FalError,
    InProgress,
    KontextInput,
    KontextOutput,
    Queued,
    QueueHandle,
    QueueStatus,
)
from bot.messages import describe_failure

__all__ = ("Job", "JobRunner", "JobSink", "JobState", "JobStore", "ResultImage")

log = logging.getLogger(__name__)

DELIVERY_ATTEMPTS = 3
DELIVERY_RETRY_SECONDS = 2.0


class JobState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    DELIVERED = "delivered"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        return self in (JobState.DELIVERED, JobState.FAILED, JobState.CANCELLED)


@dataclass(slots=True)
class Job:
    """One paid request to fal, and the Discord places it reports to."""

    request: KontextInput
    user_id: int
    channel_id: int
    guild_id: int | None
    source: str
    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    state: JobState = JobState.QUEUED
    request_id: str = ""
    status_url: str = ""
    response_url: str = ""
    cancel_url: str = ""
    queue_position: int | None = None
    origin_message_id: int | None = None
    status_message_id: int | None = None
    thread_id: int | None = None
    result: KontextOutput | None = None
    error: str | None = None
    cost_usd: Decimal = Decimal(0)
    cancel_requested: bool = False
    delivery_started: bool = False
    created_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    updated_at: datetime = field(default_factory=lambda: datetime.now(UTC))

    @property
    def handle(self) -> QueueHandle:
        return QueueHandle(self.request_id, self.status_url, self.response_url, self.cancel_url)

    def accepted(self, handle: QueueHandle) -> None:
        self.request_id, self.status_url = handle.request_id, handle.status_url
        self.response_url, self.cancel_url = handle.response_url, handle.cancel_url
        self.queue_position = handle.queue_position

    def touch(self, **changes: Any) -> None:
        for name, value in changes.items():
            setattr(self, name, value)
        self.updated_at = datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class ResultImage:
    """A downloaded result image, ready to post."""

    data: bytes
    content_type: str
    url: str
    nsfw: bool

    @property
    def extension(self) -> str:
        return {"image/png": "png", "image/webp": "webp"}.get(self.content_type, "jpg")


class JobStore(Protocol):
    """Where jobs live; `bot.store` has the SQLite one."""

    async def save(self, job: Job) -> None: ...
    async def get(self, job_id: str) -> Job | None: ...
    async def unfinished(self) -> list[Job]: ...


class JobSink(Protocol):
    """Where a job reports: the Discord side implements it."""

    async def show(self, job: Job) -> None:
        """The job's visible status changed (position, running, failed, cancelled)."""

    async def deliver(self, job: Job, images: list[ResultImage], *, maybe_posted: bool) -> None:
        """Post the results. `maybe_posted` means an earlier attempt may have posted them already
        (a crash or an error mid-way): look before posting again."""


class FalQueue(Protocol):
    """The part of `FalClient` the runner uses."""

    def watch(self, handle: QueueHandle) -> AsyncGenerator[QueueStatus, None]: ...
    async def result(self, handle: QueueHandle) -> KontextOutput: ...
    async def download(self, url: str) -> Download: ...


class JobRunner:
    """Follows accepted jobs to delivery, one task per job, each owned and logged."""

    def __init__(self, fal: FalQueue, store: JobStore, *, job_timeout: float) -> None:
        self._fal = fal
        self._store = store
        self._job_timeout = job_timeout
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._jobs: dict[str, Job] = {}

    def start(self, job: Job, sink: JobSink) -> asyncio.Task[None]:
        """Follow `job` in the background; a second call for a job already followed is a no-op."""
        if job.id in self._tasks:
            return self._tasks[job.id]
        task = asyncio.create_task(self.run(job, sink), name=f"job:{job.id}")
        self._tasks[job.id] = task
        self._jobs[job.id] = job
        task.add_done_callback(lambda t: self._forget(job.id, t))
        return task

    def live(self, job_id: str) -> Job | None:
        """The job object being followed right now, if any (fresher than the store's copy)."""
        return self._jobs.get(job_id)

    @property
    def active(self) -> int:
        return len(self._tasks)

    async def wait_idle(self) -> None:
        """Wait until no job is being followed (jobs started meanwhile are waited for too)."""
        while self._tasks:
            await asyncio.gather(*self._tasks.values(), return_exceptions=True)

    async def close(self) -> None:
        """Stop following jobs (they stay stored and resume on the next start)."""
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def run(self, job: Job, sink: JobSink) -> None:
        """Drive one job from wherever it is to a finished state."""
        try:
            if job.state in (JobState.QUEUED, JobState.RUNNING):
                await self._follow(job, sink)
            if job.state is JobState.SUCCEEDED:
                await self._deliver(job, sink)
        except FalError as exc:
            await self._fail(job, sink, describe_failure(exc))
        except TimeoutError:
            await self._fail(job, sink, describe_failure(None, timed_out=True))

    async def _follow(self, job: Job, sink: JobSink) -> None:
        async with asyncio.timeout(self._remaining_time(job)), aclosing(self._fal.watch(job.handle)) as statuses:
            async for status in statuses:
                await self._apply(job, sink, status)
                if isinstance(status, Completed):
                    break

    async def _apply(self, job: Job, sink: JobSink, status: QueueStatus) -> None:
        if isinstance(status, Queued):
            await self._update(job, sink, state=JobState.QUEUED, queue_position=status.position)
        elif isinstance(status, InProgress):
            await self._update(job, sink, state=JobState.RUNNING, queue_position=None)
        elif status.error_type == "client_cancelled" or (status.error and job.cancel_requested):
            await self._update(job, sink, state=JobState.CANCELLED, error="Cancelled.")
        else:
            result = await self._fal.result(job.handle)  # raises FalRequestFailed for a failed job
            await self._save(job, state=JobState.SUCCEEDED, result=result, queue_position=None)

    async def _deliver(self, job: Job, sink: JobSink) -> None:
        if job.result is None:
            raise RuntimeError(f"job {job.id} succeeded without a result")
        images = [await self._download(job.result, index) for index in range(len(job.result.images))]
        for attempt in range(1, DELIVERY_ATTEMPTS + 1):
            maybe_posted = job.delivery_started
            await self._save(job, delivery_started=True)
            try:
                await sink.deliver(job, images, maybe_posted=maybe_posted)
            except Exception:
                if attempt == DELIVERY_ATTEMPTS:
                    raise  # stays SUCCEEDED in the store: the next start tries again
                log.exception("delivering job %s failed; attempt %d", job.id, attempt)
                await asyncio.sleep(DELIVERY_RETRY_SECONDS * attempt)
            else:
                break
        await self._save(job, state=JobState.DELIVERED)
        await sink.show(job)

    async def _download(self, result: KontextOutput, index: int) -> ResultImage:
        image = result.images[index]
        download = await self._fal.download(image.url)
        return ResultImage(download.data, download.content_type or image.content_type, image.url, result.is_nsfw(index))

    async def _fail(self, job: Job, sink: JobSink, reason: str) -> None:
        log.info("job %s (request %s) failed: %s", job.id, job.request_id, reason)
        await self._update(job, sink, state=JobState.FAILED, error=reason)

    async def _update(self, job: Job, sink: JobSink, **changes: Any) -> None:
        if all(getattr(job, name) == value for name, value in changes.items()):
            return
        await self._save(job, **changes)
        await sink.show(job)

    async def _save(self, job: Job, **changes: Any) -> None:
        job.touch(**changes)
        await self._store.save(job)

    def _remaining_time(self, job: Job) -> float:
        age = (datetime.now(UTC) - job.created_at).total_seconds()
        return max(self._job_timeout - age, 1.0)

    def _forget(self, job_id: str, task: asyncio.Task[None]) -> None:
        self._tasks.pop(job_id, None)
        self._jobs.pop(job_id, None)
        if not task.cancelled() and task.exception() is not None:
            log.error("job %s crashed", job_id, exc_info=task.exception())
