"""Turning Discord attachments, embeds and options into a checked Kontext request.

Everything here runs before any paid call; a problem raises `UserFacingError` with a text for the user.
The limits of each option live in one place, the `KontextInput` model: the slash command's ranges and
choices and the checks here are read from it.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import PurePosixPath
from typing import Any, Literal, get_args, get_origin

import annotated_types
import discord
from pydantic import ValidationError
from yarl import URL

from bot.config import Settings
from bot.fal import KontextInput
from bot.i18n import t, tn
from cogs.replies import UserFacingError

__all__ = (
    "ASPECT_RATIOS",
    "GUIDANCE",
    "NUM_IMAGES",
    "OUTPUT_FORMATS",
    "SAFETY_LEVELS",
    "SEED",
    "ImageRef",
    "JobOptions",
    "build_request",
    "check_images",
    "clean_prompt",
    "images_of_message",
)

ACCEPTED_TYPES = {"image/png": "PNG", "image/jpeg": "JPEG", "image/webp": "WebP"}
EXTENSION_TYPES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".webp": "image/webp"}
# Characters that reorder text on screen (a prompt could make its echo read backwards).
BIDI_CONTROLS = dict.fromkeys(map(ord, "\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"))


def _bounds(name: str) -> tuple[int, int]:
    """The `ge`/`le` bounds of a numeric `KontextInput` field."""
    metadata = KontextInput.model_fields[name].metadata
    low: Any = next(m.ge for m in metadata if isinstance(m, annotated_types.Ge))
    high: Any = next(m.le for m in metadata if isinstance(m, annotated_types.Le))
    return int(low), int(high)


def _choices(name: str) -> tuple[str, ...]:
    """The values of a `Literal` (or optional `Literal`) `KontextInput` field."""
    annotation: Any = KontextInput.model_fields[name].annotation
    literal = next(arg for arg in (annotation, *get_args(annotation)) if get_origin(arg) is Literal)
    return tuple(str(value) for value in get_args(literal))


GUIDANCE = _bounds("guidance_scale")
NUM_IMAGES = _bounds("num_images")
SEED = _bounds("seed")
OUTPUT_FORMATS = _choices("output_format")
SAFETY_LEVELS = _choices("safety_tolerance")
ASPECT_RATIOS = _choices("aspect_ratio")


@dataclass(frozen=True, slots=True)
class ImageRef:
    """An input image: where fal can download it, and what we know about it beforehand."""

    url: str
    filename: str
    content_type: str | None = None
    size: int | None = None
    decodable: bool | None = None  # False: Discord could not read it as an image (no width/height)

    @classmethod
    def from_attachment(cls, attachment: discord.Attachment) -> ImageRef:
        return cls(attachment.url, attachment.filename, attachment.content_type, attachment.size,
                   decodable=attachment.width is not None)  # fmt: skip

    @classmethod
    def from_url(cls, url: str) -> ImageRef | None:
        """A link's image, only over http(s); None for anything else or a malformed URL."""
        try:
            parsed = URL(url)
        except (ValueError, TypeError):
            return None
        if parsed.scheme not in ("http", "https") or not parsed.host:
            return None
        return cls(url, PurePosixPath(parsed.path).name or "image")

    @property
    def effective_type(self) -> str | None:
        if self.content_type:
            return self.content_type.split(";")[0].strip().lower()
        return EXTENSION_TYPES.get(PurePosixPath(self.filename.lower()).suffix)


@dataclass(frozen=True, slots=True)
class JobOptions:
    """The endpoint options a user can set; None keeps fal's default."""

    guidance_scale: float | None = None
    num_images: int = 1
    output_format: str = "jpeg"
    safety_tolerance: str | None = None
    aspect_ratio: str | None = None
    seed: int | None = None


def build_request(prompt: str, images: Sequence[ImageRef], options: JobOptions, settings: Settings) -> KontextInput:
    """Check everything we can check locally and build the request. Raises `UserFacingError`."""
    text = clean_prompt(prompt, settings.max_prompt_length)
    check_images(images, settings)
    try:
        return KontextInput.model_validate(
            {"prompt": text, "image_urls": tuple(image.url for image in images), **asdict(options)}
        )
    except ValidationError as exc:
        raise UserFacingError(_option_problem(exc)) from None


def clean_prompt(prompt: str | None, limit: int) -> str:
    """The prompt without reordering characters, checked for content and length."""
    text = (prompt or "").translate(BIDI_CONTROLS).strip()
    if not _visible(text):
        raise UserFacingError(t("Please write a prompt: what should change in the image(s)?"))
    if len(text) > limit:
        raise UserFacingError(t("The prompt is {length} characters long; the limit is {limit}.",
                                length=len(text), limit=limit))  # fmt: skip
    return text


def images_of_message(message: discord.Message) -> list[ImageRef]:
    """Image attachments and image embeds of a message, then those of the message it replies to."""
    refs = _images_in(message)
    reference = message.reference.resolved if message.reference else None
    if isinstance(reference, discord.Message):
        refs += _images_in(reference)
    return refs


def _images_in(message: discord.Message) -> list[ImageRef]:
    refs = [ImageRef.from_attachment(a) for a in message.attachments if _looks_like_image(a)]
    for embed in message.embeds:
        ref = _embed_image(embed)
        if ref is not None:
            refs.append(ref)
    return refs


def _embed_image(embed: discord.Embed) -> ImageRef | None:
    """The copy Discord's media proxy already fetched, never the link's own URL (which could point anywhere)."""
    media = embed.image if embed.image.url else (embed.thumbnail if embed.type == "image" else None)
    proxy_url = media.proxy_url if media is not None else None
    return ImageRef.from_url(proxy_url) if proxy_url else None


def _looks_like_image(attachment: discord.Attachment) -> bool:
    return (attachment.content_type or "").startswith("image/") or attachment.width is not None


def _visible(text: str) -> bool:
    """Anything but white space and invisible format characters (zero-width spaces and joiners)."""
    return any(not char.isspace() and unicodedata.category(char) not in ("Cf", "Cc") for char in text)


def check_images(images: Sequence[ImageRef], settings: Settings) -> None:
    if not images:
        raise UserFacingError(t("Please attach at least one image (PNG, JPEG or WebP)."))
    if len(images) > settings.max_images:
        raise UserFacingError(tn("You gave {count} image; at most {limit} can be combined.",
                                 "You gave {count} images; at most {limit} can be combined.",
                                 len(images), limit=settings.max_images))  # fmt: skip
    for number, image in enumerate(images, start=1):
        _check_image(number, image, settings.max_image_bytes)


def _check_image(number: int, image: ImageRef, max_bytes: int) -> None:
    kind = image.effective_type
    name = discord.utils.escape_markdown(image.filename[:80])
    if kind not in ACCEPTED_TYPES or image.decodable is False:
        raise UserFacingError(t("Image {number} (`{name}`) is not a supported image; use {accepted}.",
                                number=number, name=name, accepted=", ".join(ACCEPTED_TYPES.values())))  # fmt: skip
    if image.size is not None and image.size > max_bytes:
        size, limit = _sizes(image.size, max_bytes)
        raise UserFacingError(t("Image {number} (`{name}`) is {size}; the limit is {limit} per image.",
                                number=number, name=name, size=size, limit=limit))  # fmt: skip
    if image.size == 0:
        raise UserFacingError(t("Image {number} (`{name}`) is empty.", number=number, name=name))


_OPTION_RULES = {
    "guidance_scale": lambda: t("guidance_scale must be from {low} to {high}.", low=GUIDANCE[0], high=GUIDANCE[1]),
    "num_images": lambda: t("num_images must be from {low} to {high}.", low=NUM_IMAGES[0], high=NUM_IMAGES[1]),
    "seed": lambda: t("seed must be from {low} to {high}.", low=SEED[0], high=SEED[1]),
    "output_format": lambda: t("output_format must be one of {choices}.", choices=", ".join(OUTPUT_FORMATS)),
    "safety_tolerance": lambda: t("safety_tolerance must be one of {choices}.", choices=", ".join(SAFETY_LEVELS)),
    "aspect_ratio": lambda: t("aspect_ratio must be one of {choices}.", choices=", ".join(ASPECT_RATIOS)),
}


def _option_problem(exc: ValidationError) -> str:
    field = str(exc.errors(include_url=False)[0]["loc"][0])
    rule = _OPTION_RULES.get(field)
    return rule() if rule else t("The option {name} is not valid.", name=field)


def _sizes(size: int, limit: int) -> tuple[str, str]:
    """Both sizes in MiB, or in bytes when MiB would make them look the same."""
    shown = f"{size / 2**20:.1f} MiB", f"{limit / 2**20:.1f} MiB"
    return shown if shown[0] != shown[1] else (f"{size:,} bytes", f"{limit:,} bytes")
