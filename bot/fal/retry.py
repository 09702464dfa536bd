"""Retry decisions as small pure functions, so the policy can be read and tested on its own."""

from __future__ import annotations

import random

from .errors import (
    FalConnectionError,
    FalError,
    FalHTTPError,
    FalProtocolError,
    FalRateLimited,
    FalServerError,
    FalSubmitUnconfirmed,
    FalTimeout,
    FalUnsafeURL,
)

__all__ = ("backoff_delay", "retryable_read", "retryable_submit", "retryable_watch")


def retryable_submit(error: FalError) -> bool:
    """A submit is retried only when fal surely did not take the job: it refused it (429, 503)
    or the connection never opened. Anything ambiguous would risk paying twice."""
    if isinstance(error, FalSubmitUnconfirmed):
        return False
    if isinstance(error, FalRateLimited):
        return True
    if isinstance(error, FalServerError):
        return error.status == 503
    return isinstance(error, FalConnectionError)


def retryable_read(error: FalError) -> bool:
    """Status, result and cancel calls are idempotent: retry transient failures (408 included)."""
    if isinstance(error, FalHTTPError) and error.status == 408:
        return True
    return isinstance(error, FalConnectionError | FalTimeout | FalRateLimited | FalServerError)


def retryable_watch(error: FalError) -> bool:
    """While a job is followed, a garbled status answer is retried like a dropped one: fal has the job, and
    only the job's own deadline (the caller's) should end the wait. A refused URL is final."""
    if isinstance(error, FalUnsafeURL):
        return False
    return isinstance(error, FalProtocolError) or retryable_read(error)


def backoff_delay(attempt: int, *, base: float, cap: float, retry_after: float | None = None) -> float:
    """Exponential backoff with full jitter; a server's Retry-After wins when it is larger."""
    delay = random.uniform(min(base / 2, cap), min(cap, base * 2**attempt))
    return max(delay, min(retry_after or 0.0, cap))
