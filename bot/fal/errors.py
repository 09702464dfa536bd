"""Errors raised by the fal queue client: every failure, whatever fal sent, is one of these.

FalError
├── FalHTTPError                 a non-2xx answer (status, detail, error_type); a queue 3xx too: never followed
│   ├── FalAuthError             401 / 403 (bad key, locked account, exhausted balance)
│   ├── FalValidationError       422 (detail list; content policy is one kind)
│   ├── FalRateLimited           429
│   ├── FalServerError           5xx
│   └── FalRequestFailed         the job ran and failed (COMPLETED with error, or result endpoint error)
├── FalProtocolError             an answer we cannot use: not JSON or not UTF-8, the wrong shape, larger than
│   │                            `max_response_bytes`, an SSE line or event over that cap; a result image over
│   │                            `max_download_bytes` or a bad data URI. While a job is watched these are
│   │                            retried: they never end it on their own
│   └── FalUnsafeURL             a URL we refuse to call: a queue URL off FAL_QUEUE_URL or built from a hostile
│                                request id / endpoint (nothing is sent); a result file off the allowed hosts or
│                                over plain http (nothing is sent), or one answering with a redirect (not followed)
├── FalConnectionError           the request never got an answer (connect/read failure)
│   └── FalSubmitUnconfirmed     a submit fal may have taken but that gave us no usable request id (no answer,
│                                deadline hit mid-answer, garbage answer): never resent, never assumed lost
└── FalTimeout                   our own deadline ran out: a status, result, cancel or download exchange, or
                                 a status stream silent for `request_timeout` (a submit's is unconfirmed)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = (
    "FalAuthError",
    "FalConnectionError",
    "FalError",
    "FalHTTPError",
    "FalProtocolError",
    "FalRateLimited",
    "FalRequestFailed",
    "FalServerError",
    "FalSubmitUnconfirmed",
    "FalTimeout",
    "FalUnsafeURL",
    "FalValidationError",
    "ValidationIssue",
    "http_error",
)

MODERATION_TYPES = frozenset({"content_policy_violation"})


class FalError(Exception):
    """Root of every error the fal client raises."""


class ValidationIssue:
    """One entry of a 422 `detail` list."""

    __slots__ = ("field", "message", "type")

    def __init__(self, field: str, message: str, type: str) -> None:
        self.field = field
        self.message = message
        self.type = type

    @classmethod
    def from_payload(cls, item: Mapping[str, Any]) -> ValidationIssue:
        loc = item.get("loc")
        parts = [str(part) for part in loc if part != "body"] if isinstance(loc, list) else []
        return cls(".".join(parts), _text(item.get("msg")), _text(item.get("type")))

    def __repr__(self) -> str:
        return f"ValidationIssue(field={self.field!r}, type={self.type!r}, message={self.message!r})"


class FalHTTPError(FalError):
    """fal answered with a non-2xx status."""

    def __init__(self, status: int, detail: Any, error_type: str | None = None) -> None:
        self.status = status
        self.detail = detail
        self.error_type = error_type
        super().__init__(f"fal answered {status}: {self.summary[:500]}")

    @property
    def summary(self) -> str:
        """A short human text from `detail`, whatever its shape."""
        if isinstance(self.detail, list):
            return "; ".join(_item_text(item) for item in self.detail)
        if isinstance(self.detail, Mapping):
            return str(self.detail.get("message") or self.detail.get("status") or self.detail)
        return str(self.detail or "")

    @property
    def error_types(self) -> list[str]:
        """The machine-readable kinds: `error_type` first, then those of the `detail` list's items."""
        types = [self.error_type] if self.error_type else []
        if isinstance(self.detail, list):
            types += [_text(item.get("type")) for item in self.detail if isinstance(item, Mapping)]
        return types

    @property
    def moderated(self) -> bool:
        """A safety filter (fal's or its partner's) refused the input or the output."""
        return not MODERATION_TYPES.isdisjoint(self.error_types)


class FalAuthError(FalHTTPError):
    """The key is wrong, or the account is locked (exhausted balance, admin lock)."""

    @property
    def balance_exhausted(self) -> bool:
        return "balance" in self.summary.lower()


class FalValidationError(FalHTTPError):
    """422: the input was refused; `issues` lists what and why."""

    @property
    def issues(self) -> list[ValidationIssue]:
        if not isinstance(self.detail, list):
            return []
        return [ValidationIssue.from_payload(item) for item in self.detail if isinstance(item, Mapping)]


class FalRateLimited(FalHTTPError):
    """429: too many requests or concurrency exhausted."""

    def __init__(
        self, status: int, detail: Any, error_type: str | None = None, retry_after: float | None = None
    ) -> None:
        super().__init__(status, detail, error_type)
        self.retry_after = retry_after


class FalServerError(FalHTTPError):
    """5xx from fal or a proxy in front of it."""


class FalRequestFailed(FalHTTPError):
    """The job itself failed: COMPLETED with `error`, or the result endpoint answered an error."""


class FalProtocolError(FalError):
    """fal's answer did not have the shape we rely on."""


class FalUnsafeURL(FalProtocolError):
    """A URL the client refuses to use; nothing was sent to it."""


class FalConnectionError(FalError):
    """The request got no answer (connection refused, reset, or read failure)."""


class FalSubmitUnconfirmed(FalConnectionError):
    """A submit may have reached fal but we never saw the answer. It is not resent: that could bill twice."""


class FalTimeout(FalError):
    """Our own deadline for a request or a job ran out."""


def http_error(status: int, body: Any, headers: Mapping[str, str], *, during_result: bool = False) -> FalHTTPError:
    """Map a non-2xx answer to the most specific error class."""
    detail = body.get("detail", body) if isinstance(body, Mapping) else body
    error_type = _text(body.get("error_type") if isinstance(body, Mapping) else None) or headers.get("x-fal-error-type")
    if status in (401, 403):
        return FalAuthError(status, detail, error_type)
    if during_result and _job_failure(status, error_type):
        return FalRequestFailed(status, detail, error_type)
    if status == 422:
        return FalValidationError(status, detail, error_type)
    if status == 429:
        return FalRateLimited(status, detail, error_type, _retry_after(headers))
    if status >= 500:
        return FalServerError(status, detail, error_type)
    return FalHTTPError(status, detail, error_type)


def _job_failure(status: int, error_type: str | None) -> bool:
    """On the result endpoint most errors are the job's own; 408/429 and a bare 5xx are the way there."""
    if status in (408, 429):
        return False
    return not (status >= 500 and error_type is None)


def _item_text(item: Any) -> str:
    return str(item.get("msg", item)) if isinstance(item, Mapping) else str(item)


def _text(value: Any) -> str:
    """A string field of fal's answer; anything else (a hostile or broken answer) counts as absent."""
    return value if isinstance(value, str) else ""


def _retry_after(headers: Mapping[str, str]) -> float | None:
    try:
        seconds = float(headers["retry-after"])
    except (KeyError, ValueError):
        return None
    return seconds if 0 <= seconds < float("inf") else None
