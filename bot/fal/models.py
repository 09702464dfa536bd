"""Wire models of the fal queue, the generic edit request and the edit models' output.

Pydantic sits at the JSON edge only; the rest of the bot sees these typed values.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeAlias

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .errors import FalProtocolError

if TYPE_CHECKING:
    from .registry import ModelSpec

__all__ = (
    "OPTION_NAMES",
    "Completed",
    "EditRequest",
    "InProgress",
    "KontextOutput",
    "OutputImage",
    "QueueHandle",
    "QueueStatus",
    "Queued",
    "parse_status",
)

# The options a user can set, by the bot's own names (Kontext's); each model maps or refuses them.
OPTION_NAMES = ("guidance_scale", "num_images", "output_format", "safety_tolerance", "aspect_ratio", "seed")


class EditRequest(BaseModel):
    """What a user asked for, independent of the model: `ModelSpec.payload` turns it into one model's body.

    An option at its default here (None, or one image) is unset: the model's own default applies."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    prompt: str = Field(min_length=1)
    image_urls: tuple[str, ...] = Field(min_length=1)
    num_images: int = 1
    seed: int | None = None
    guidance_scale: float | None = None
    output_format: str | None = None
    safety_tolerance: str | None = None
    aspect_ratio: str | None = None
    # Width x height of each input, where Discord said: per-megapixel estimates need them. Never sent to fal.
    image_pixels: tuple[int | None, ...] = ()

    def to_payload(self, model: ModelSpec) -> dict[str, Any]:
        return model.payload(self)

    def is_set(self, name: str) -> bool:
        return bool(getattr(self, name) != type(self).model_fields[name].default)

    @classmethod
    def from_json(cls, text: str | bytes) -> EditRequest:
        """A stored request. Rows from before the model registry hold Kontext's own body, which is this one
        plus `enhance_prompt` (never set by the bot)."""
        data = json.loads(text)
        if isinstance(data, dict):
            data.pop("enhance_prompt", None)
        return cls.model_validate(data)


class OutputImage(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")

    url: str
    width: int | None = None
    height: int | None = None
    content_type: str = "image/jpeg"


class KontextOutput(BaseModel):
    """The result JSON of any registered edit model (Kontext's shape is the richest): `seed` and
    `has_nsfw_concepts` are optional, extra keys (a `description`, resellers echoing the request) are ignored."""

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
