"""What the job runner needs from the outside: a store, fal's queue, and a sink that shows and posts.

The Discord side implements `JobSink`. It never changes a job: it reports what it did (a message
posted, a thread made) through the `DeliveryReport` it is handed, and the runner records it.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Callable, Mapping, Sequence
from datetime import datetime
from typing import Any, Protocol

from bot.fal import Download, KontextOutput, QueueHandle, QueueStatus
from bot.jobs.model import Job, ResultImage
from bot.quota import Denial, UsageSnapshot
from bot.shards import ShardSet

__all__ = ("DeliveryFailed", "DeliveryReport", "FalQueue", "JobObserver", "JobSink", "JobStore")


class JobStore(Protocol):
    async def admit(self, job: Job, decide: Callable[[UsageSnapshot], Denial | None]) -> Denial | None: ...
    async def save(self, job: Job) -> None: ...
    async def save_many(self, jobs: Sequence[Job]) -> None: ...
    async def get(self, job_id: str) -> Job | None: ...
    async def unfinished(self, shards: ShardSet | None = None) -> list[Job]:
        """Jobs not finished yet, oldest first: all of them, or those of guilds on `shards` (DMs: shard 0)."""

    async def request_cancel(self, job_id: str) -> None: ...
    async def usage_snapshot(self, user_id: int, guild_id: int | None, now: datetime) -> UsageSnapshot: ...


class FalQueue(Protocol):
    """The part of `FalClient` the runner uses."""

    async def submit(self, endpoint: str, payload: Mapping[str, Any]) -> QueueHandle: ...
    def watch(self, handle: QueueHandle) -> AsyncGenerator[QueueStatus, None]: ...
    async def result(self, handle: QueueHandle, *, max_images: int | None = None) -> KontextOutput: ...
    async def cancel(self, handle: QueueHandle) -> bool: ...
    async def download(self, url: str) -> Download: ...


class DeliveryReport(Protocol):
    """How the sink tells the runner what it posted, as soon as Discord confirms it."""

    async def thread_created(self, thread_id: int) -> None: ...
    async def result_posted(self, message_id: int) -> None: ...


class DeliveryFailed(Exception):
    """Posting failed. `final`: trying again cannot help (no access, channel gone)."""

    def __init__(self, reason: str, *, final: bool) -> None:
        super().__init__(reason)
        self.reason = reason
        self.final = final


class JobSink(Protocol):
    """Where a job shows itself: the Discord side implements it."""

    def show(self, job: Job) -> None:
        """The job's visible status changed; returns at once (edits are coalesced)."""

    async def settle(self) -> None:
        """Wait, a bounded time, until the last status asked for is shown."""

    async def deliver(self, job: Job, images: Sequence[ResultImage], report: DeliveryReport) -> None:
        """Post the results that `job.result_message_ids` does not list yet. Raises `DeliveryFailed`."""


class JobObserver(Protocol):
    """Told of every change of a job the runner makes (metrics). Called synchronously: it must not block."""

    def changed(self, old: Job | None, new: Job) -> None:
        """`old` is None when the runner takes the job (launched, or resumed after a restart)."""
