"""Wire models of the fal queue and of the Kontext [max] multi endpoint.

Pydantic sits at the JSON edge only; the rest of the bot sees these typed values.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, TypeAlias, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .errors import FalProtocolError

__all__ = (
    "ASPECT_RATIOS",
    "AspectRatio",
    "Completed",
    "InProgress",
    "KontextInput",
    "KontextOutput",
    "OutputFormat",
    "OutputImage",
    "QueueHandle",
    "QueueStatus",
    "Queued",
    "SafetyTolerance",
    "parse_status",
)

AspectRatio: TypeAlias = Literal["21:9", "16:9", "4:3", "3:2", "1:1", "2:3", "3:4", "9:16", "9:21"]
OutputFormat: TypeAlias = Literal["jpeg", "png"]
SafetyTolerance: TypeAlias = Literal["1", "2", "3", "4", "5", "6"]
ASPECT_RATIOS: tuple[str, ...] = get_args(AspectRatio)


class KontextInput(BaseModel):
    """The request body of `fal-ai/flux-pro/kontext/max/multi`; unset options keep fal's defaults."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    prompt: str = Field(min_length=1)
    image_urls: tuple[str, ...] = Field(min_length=1)
    seed: int | None = Field(default=None, ge=0, le=2**32 - 1)
    guidance_scale: float | None = Field(default=None, ge=1, le=20)
    num_images: int = Field(default=1, ge=1, le=4)
    output_format: OutputFormat = "jpeg"
    safety_tolerance: SafetyTolerance | None = None
    aspect_ratio: AspectRatio | None = None
    enhance_prompt: bool | None = None

    def to_payload(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_none=True)


class OutputImage(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")

    url: str
    width: int | None = None
    height: int | None = None
    content_type: str = "image/jpeg"


class KontextOutput(BaseModel):
    """The result JSON; lenient about extra keys (resellers echo the request)."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    images: tuple[OutputImage, ...] = Field(min_length=1)
    seed: int | None = None
    has_nsfw_concepts: tuple[bool, ...] = ()
    prompt: str = ""
    timings: dict[str, Any] = Field(default_factory=dict)

    @classmethod
    def from_payload(cls, data: Any) -> KontextOutput:
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise FalProtocolError(f"unexpected result shape: {exc.error_count()} problem(s)") from None

    def first(self, count: int) -> KontextOutput:
        """At most `count` images, with `has_nsfw_concepts` cut to stay aligned with them."""
        kept = {"images": self.images[:count], "has_nsfw_concepts": self.has_nsfw_concepts[:count]}
        return self.model_copy(update=kept)

    def is_nsfw(self, index: int) -> bool:
        return index < len(self.has_nsfw_concepts) and self.has_nsfw_concepts[index]


@dataclass(frozen=True, slots=True)
class QueueHandle:
    """What identifies a queued job: the endpoint it was submitted to and fal's request id.

    No URL is kept: the client builds each one from its configured base on every use, so a stored
    handle follows a changed `FAL_QUEUE_URL` and nothing fal sent can redirect our key."""

    endpoint: str
    request_id: str
    queue_position: int | None = field(default=None, compare=False)  # as of the submit; not part of its identity


@dataclass(frozen=True, slots=True)
class Queued:
    position: int


@dataclass(frozen=True, slots=True)
class InProgress:
    logs: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Completed:
    """The job ended; `error` set means it failed (fal has no FAILED state)."""

    error: str | None = None
    error_type: str | None = None
    inference_seconds: float | None = None


QueueStatus: TypeAlias = Queued | InProgress | Completed


def parse_status(data: Any) -> QueueStatus:
    """Parse a status payload; unknown states count as still running. Anything else is `FalProtocolError`."""
    if not isinstance(data, Mapping) or not isinstance(data.get("status"), str):
        raise FalProtocolError("status payload without a status")
    status = data["status"]
    if status == "IN_QUEUE":
        return Queued(_int_or_zero(data.get("queue_position")))
    if status == "COMPLETED":
        return _completed(data)
    return InProgress(_log_messages(data.get("logs")))


def _completed(data: Mapping[str, Any]) -> Completed:
    metrics = data.get("metrics")
    inference = metrics.get("inference_time") if isinstance(metrics, Mapping) else None
    error, error_type = data.get("error"), data.get("error_type")
    return Completed(
        error=(error if isinstance(error, str) else "fal reported an error") if error else None,
        error_type=error_type if isinstance(error_type, str) and error_type else None,
        inference_seconds=_seconds(inference),
    )


def _seconds(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        seconds = float(value)
    except OverflowError:  # an int too large for a float
        return None
    return seconds if 0 <= seconds < math.inf else None


def _int_or_zero(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


def _log_messages(logs: Any) -> tuple[str, ...]:
    if not isinstance(logs, list):
        return ()
    return tuple(_message(entry.get("message")) for entry in logs if isinstance(entry, Mapping))


def _message(value: Any) -> str:
    return value if isinstance(value, str) else ""
