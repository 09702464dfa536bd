"""A job: what a user asked for, where it is in fal's queue, and how it ended.

    PENDING ──► QUEUED ──► RUNNING ──► SUCCEEDED ──► DELIVERED
       │           │          │             └──────► UNDELIVERABLE
       │           └──────────┴──► FAILED | CANCELLED | TIMED_OUT | UNDELIVERABLE
       └──► FAILED | UNCONFIRMED | CANCELLED

`Job` is immutable: every change makes a new value, and only `JobRunner` makes them. A change of
state must be in `TRANSITIONS`, so an impossible step raises instead of being stored.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from decimal import Decimal
from enum import StrEnum
from typing import Any

from bot.fal import EditRequest, KontextOutput, ModelSpec, QueueHandle, model_by_endpoint

__all__ = (
    "ACTIVE_STATES",
    "BILLABLE_STATES",
    "DEFAULT_ENDPOINT",
    "TRANSITIONS",
    "InvalidTransition",
    "Job",
    "JobState",
    "ReplyToken",
    "ResultImage",
)

DEFAULT_ENDPOINT = "fal-ai/flux-pro/kontext/max/multi"  # jobs stored before the model registry ran on it


class JobState(StrEnum):
    PENDING = "pending"  # admitted and stored; the submit is on its way to fal
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"  # generated and fetched; being posted
    DELIVERED = "delivered"
    FAILED = "failed"  # refused or failed at fal, or never sent
    CANCELLED = "cancelled"
    TIMED_OUT = "timed_out"  # our deadline passed; cancelled at fal, which may still bill it
    UNDELIVERABLE = "undeliverable"  # generated, but could not be posted
    UNCONFIRMED = "unconfirmed"  # the submit may have reached fal; never resent

    @property
    def finished(self) -> bool:
        return not TRANSITIONS[self]


_ENDINGS = {JobState.FAILED, JobState.CANCELLED, JobState.TIMED_OUT, JobState.UNDELIVERABLE}
TRANSITIONS: dict[JobState, frozenset[JobState]] = {
    JobState.PENDING: frozenset({JobState.QUEUED, JobState.FAILED, JobState.UNCONFIRMED, JobState.CANCELLED}),
    JobState.QUEUED: frozenset({JobState.RUNNING, JobState.SUCCEEDED, *_ENDINGS}),
    JobState.RUNNING: frozenset({JobState.SUCCEEDED, *_ENDINGS}),
    JobState.SUCCEEDED: frozenset({JobState.DELIVERED, JobState.UNDELIVERABLE}),
    JobState.DELIVERED: frozenset(),
    JobState.FAILED: frozenset(),
    JobState.CANCELLED: frozenset(),
    JobState.TIMED_OUT: frozenset(),
    JobState.UNDELIVERABLE: frozenset(),
    JobState.UNCONFIRMED: frozenset(),
}

# A user's running jobs: these hold the concurrency limit.
ACTIVE_STATES = frozenset({JobState.PENDING, JobState.QUEUED, JobState.RUNNING, JobState.SUCCEEDED})
# Jobs fal may bill: these count against the daily image limits.
BILLABLE_STATES = ACTIVE_STATES | {
    JobState.DELIVERED, JobState.UNDELIVERABLE, JobState.TIMED_OUT, JobState.UNCONFIRMED,
}  # fmt: skip


class InvalidTransition(Exception):
    def __init__(self, job_id: str, old: JobState, new: JobState) -> None:
        super().__init__(f"job {job_id}: {old} → {new} is not a valid transition")


def _now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class ReplyToken:
    """The token of the interaction that started a job where the bot can answer only through it (only the user
    installed the app there): kept with the job while it runs, so that a restarted bot can still show its status
    and post its results while the token lives (15 minutes from the interaction). A secret: never in a repr or
    a log line, and no longer stored once the job has ended."""

    token: str = field(repr=False)
    ephemeral: bool = False  # Discord makes every answer there ephemeral


@dataclass(frozen=True, slots=True)
class Job:
    """One paid request to fal, and the Discord places it reports to."""

    request: EditRequest
    user_id: int
    channel_id: int
    guild_id: int | None
    source: str
    cost_usd: Decimal
    endpoint: str = DEFAULT_ENDPOINT  # names the job's model (`model_by_endpoint`)
    locale: str = "en-US"
    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    state: JobState = JobState.PENDING
    request_id: str | None = None
    queue_position: int | None = None
    origin_message_id: int | None = None  # the message the result thread hangs on
    status_message_id: int | None = None
    thread_id: int | None = None
    result: KontextOutput | None = None
    result_message_ids: tuple[int, ...] = ()
    delivery_attempts: int = 0
    error: str | None = None
    cancel_requested: bool = False
    reply: ReplyToken | None = None
    created_at: datetime = field(default_factory=_now)
    updated_at: datetime = field(default_factory=_now)

    @property
    def handle(self) -> QueueHandle:
        if self.request_id is None:
            raise RuntimeError(f"job {self.id} has no request id yet")
        return QueueHandle(self.endpoint, self.request_id)

    @property
    def num_images(self) -> int:
        return self.request.num_images

    @property
    def model(self) -> ModelSpec:
        """The registered model of this job's endpoint; `LookupError` if none has it."""
        return model_by_endpoint(self.endpoint)

    def payload(self) -> dict[str, Any]:
        """The body to submit to `endpoint`."""
        return self.request.to_payload(self.model)

    def advance(self, state: JobState, **changes: Any) -> Job:
        """This job in `state`; raises `InvalidTransition` for a step the table does not allow."""
        if state not in TRANSITIONS[self.state]:
            raise InvalidTransition(self.id, self.state, state)
        return replace(self, state=state, updated_at=_now(), **changes)

    def update(self, **changes: Any) -> Job:
        """This job with other fields changed; its state stays."""
        if "state" in changes:
            raise TypeError("change the state with advance()")
        return replace(self, updated_at=_now(), **changes)


@dataclass(frozen=True, slots=True)
class ResultImage:
    """A result image to post: its bytes, or why there are none."""

    url: str
    content_type: str
    nsfw: bool
    data: bytes | None = None
    problem: str | None = None

    @property
    def extension(self) -> str:
        return {"image/png": "png", "image/webp": "webp"}.get(self.content_type, "jpg")
