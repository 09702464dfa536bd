"""Prometheus metrics of one bot, in a registry of its own (two bots in one process never share a number).

The core reports through small hooks and knows nothing of Prometheus: the job runner calls
`Metrics.changed(old, new)` (the `JobObserver` port) on every change of a job, the status message calls
`status_shown`, the launcher `interaction_answered`, fal errors are counted by `ObservedFal` around the
runner's fal client, and Discord's 429s by a filter on discord.py's loggers (`rate_limit_counter`): it logs
each one it waits out. Nothing hooks into every request.
`bot.metrics_server` serves the registry over HTTP.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncGenerator, Callable, Mapping
from contextlib import aclosing
from datetime import UTC, datetime
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from bot.fal import (
    Download,
    FalAuthError,
    FalConnectionError,
    FalError,
    FalHTTPError,
    FalProtocolError,
    FalRateLimited,
    FalRequestFailed,
    FalServerError,
    FalSubmitUnconfirmed,
    FalTimeout,
    FalUnsafeURL,
    FalValidationError,
    KontextOutput,
    QueueHandle,
    QueueStatus,
)
from bot.jobs import BILLABLE_STATES, FalQueue, Job, JobState

__all__ = ("Metrics", "ObservedFal", "fal_error_kind")

log = logging.getLogger(__name__)


# Most specific first: the first class an error is an instance of names its kind.
FAL_ERROR_KINDS: tuple[tuple[type[FalError], str], ...] = (
    (FalSubmitUnconfirmed, "submit_unconfirmed"),
    (FalConnectionError, "connection"),
    (FalTimeout, "timeout"),
    (FalUnsafeURL, "unsafe_url"),
    (FalProtocolError, "protocol"),
    (FalAuthError, "auth"),
    (FalValidationError, "validation"),
    (FalRateLimited, "rate_limited"),
    (FalServerError, "server"),
    (FalRequestFailed, "request_failed"),
    (FalHTTPError, "http"),
)


def fal_error_kind(exc: FalError) -> str:
    return next((kind for cls, kind in FAL_ERROR_KINDS if isinstance(exc, cls)), "other")


class Metrics:
    """Every metric of the bot. `clock` (monotonic seconds) is replaceable for tests."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.registry = CollectorRegistry()
        self._clock = clock
        self._entered: dict[str, float] = {}  # job id → when it entered its current state (this process saw it)
        reg = self.registry
        self.jobs = Counter("kontext_jobs", "Jobs that entered each state", ["source", "state"], registry=reg)
        self.jobs_active = Gauge(
            "kontext_jobs_active", "Unfinished jobs this process follows, by state", ["source", "state"], registry=reg
        )
        self.queue_wait = Histogram(
            "kontext_fal_queue_wait_seconds", "Time in fal's queue (queued → running)", registry=reg,
            buckets=(0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1800),
        )  # fmt: skip
        self.run_time = Histogram(
            "kontext_fal_run_seconds", "Time generating, result read included (running → succeeded)", registry=reg,
            buckets=(1, 2, 5, 10, 15, 20, 30, 45, 60, 90, 120, 300),
        )  # fmt: skip
        self.edit_lag = Histogram(
            "kontext_status_edit_lag_seconds", "A status change asked for → shown on Discord", registry=reg,
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 1.5, 2, 3, 5, 10, 30),
        )  # fmt: skip
        self.answer_latency = Histogram(
            "kontext_interaction_answer_seconds", "An interaction created → its answer accepted by Discord",
            registry=reg, buckets=(0.05, 0.1, 0.25, 0.5, 1, 1.5, 2, 2.5, 3, 5),
        )  # fmt: skip
        self.rate_limited = Counter(
            "kontext_discord_rate_limited", "Discord answers with HTTP 429 waited out: webhook, bot or global",
            ["scope"], registry=reg,
        )  # fmt: skip
        self.fal_errors = Counter(
            "kontext_fal_errors", "Errors of fal calls, by call and kind", ["operation", "kind"], registry=reg
        )
        self.spend = Counter(
            "kontext_estimated_spend_usd", "Estimated cost of jobs that ended billable (PRICE_PER_IMAGE_USD)",
            ["source"], registry=reg,
        )  # fmt: skip

    # --- the job runner's observer (bot.jobs.JobObserver) ------------------------------------------

    def changed(self, old: Job | None, new: Job) -> None:
        """A job changed; `old` is None when the runner takes it (launched, or resumed after a restart)."""
        try:
            self._changed(old, new)
        except Exception:  # metrics never break a job
            log.exception("metrics: recording a change of job %s failed", new.id)

    def _changed(self, old: Job | None, new: Job) -> None:
        if old is not None and old.state is new.state:
            return
        now = self._clock()
        if old is None:
            if new.state is JobState.PENDING:
                self.jobs.labels(new.source, new.state.value).inc()
                self._entered[new.id] = now  # a resumed job's time in its state is unknown: not timed
            self.jobs_active.labels(new.source, new.state.value).inc()
            return
        self.jobs.labels(new.source, new.state.value).inc()
        self.jobs_active.labels(old.source, old.state.value).dec()
        self._time_step(old, new, self._entered.pop(new.id, None), now)
        if new.state.finished:
            if new.state in BILLABLE_STATES:
                self.spend.labels(new.source).inc(float(new.cost_usd))
            return
        self.jobs_active.labels(new.source, new.state.value).inc()
        self._entered[new.id] = now

    def _time_step(self, old: Job, new: Job, since: float | None, now: float) -> None:
        if since is None:
            return
        if old.state is JobState.QUEUED and new.state is JobState.RUNNING:
            self.queue_wait.observe(now - since)
        elif old.state is JobState.RUNNING and new.state is JobState.SUCCEEDED:
            self.run_time.observe(now - since)

    # --- Discord ----------------------------------------------------------------------------------

    def status_shown(self, lag_seconds: float) -> None:
        self.edit_lag.observe(max(lag_seconds, 0.0))

    def interaction_answered(self, created_at: datetime) -> None:
        """An interaction's first answer was accepted by Discord; `created_at` comes from its snowflake id."""
        self.answer_latency.observe(max((datetime.now(UTC) - created_at).total_seconds(), 0.0))

    def rate_limit_counter(self) -> logging.Filter:
        """A filter for discord.py's loggers that counts the 429s they report (it logs every one it waits out)."""
        return _RateLimitCounter(self.rate_limited)

    # --- fal ----------------------------------------------------------------------------------------

    def fal_error(self, operation: str, exc: FalError) -> None:
        self.fal_errors.labels(operation, fal_error_kind(exc)).inc()


class ObservedFal:
    """The runner's `FalQueue`, counting every error a call ends with (what the runner sees and handles)."""

    def __init__(self, fal: FalQueue, metrics: Metrics) -> None:
        self._fal = fal
        self._metrics = metrics

    async def submit(self, endpoint: str, payload: Mapping[str, Any]) -> QueueHandle:
        try:
            return await self._fal.submit(endpoint, payload)
        except FalError as exc:
            self._metrics.fal_error("submit", exc)
            raise

    async def watch(self, handle: QueueHandle) -> AsyncGenerator[QueueStatus, None]:
        try:
            async with aclosing(self._fal.watch(handle)) as statuses:
                async for status in statuses:
                    yield status
        except FalError as exc:
            self._metrics.fal_error("status", exc)
            raise

    async def result(self, handle: QueueHandle, *, max_images: int | None = None) -> KontextOutput:
        try:
            return await self._fal.result(handle, max_images=max_images)
        except FalError as exc:
            self._metrics.fal_error("result", exc)
            raise

    async def cancel(self, handle: QueueHandle) -> bool:
        try:
            return await self._fal.cancel(handle)
        except FalError as exc:
            self._metrics.fal_error("cancel", exc)
            raise

    async def download(self, url: str) -> Download:
        try:
            return await self._fal.download(url)
        except FalError as exc:
            self._metrics.fal_error("download", exc)
            raise


class _RateLimitCounter(logging.Filter):
    """discord.py waits out each 429 itself and says so in its log: counting those lines counts the 429s,
    without hooking into every request."""

    SCOPES = (
        ("Global rate limit", "global"), ("We are being rate limited", "bot"), ("Webhook ID", "webhook"),
    )  # fmt: skip

    def __init__(self, counter: Counter) -> None:
        super().__init__()
        self._counter = counter

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.WARNING:
            message = str(record.msg)
            for prefix, scope in self.SCOPES:
                if message.startswith(prefix) and ("rate limit" in message or "429" in message):
                    self._counter.labels(scope).inc()
                    break
        return True
