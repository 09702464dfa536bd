"""Retry decisions as small pure functions, so the policy can be read and tested on its own."""

from __future__ import annotations

import random

from .errors import (
    FalConnectionError,
    FalError,
    FalHTTPError,
    FalRateLimited,
    FalServerError,
    FalSubmitUnconfirmed,
    FalTimeout,
)

__all__ = ("backoff_delay", "retryable_read", "retryable_submit")


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


def backoff_delay(attempt: int, *, base: float, cap: float, retry_after: float | None = None) -> float:
    """Exponential backoff with full jitter; a server's Retry-After wins when it is larger."""
    delay = random.uniform(min(base / 2, cap), min(cap, base * 2**attempt))
    return max(delay, min(retry_after or 0.0, cap))
