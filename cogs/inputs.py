"""Turning Discord attachments, embeds and options into a checked Kontext request.

Everything here runs before any paid call; a problem raises `UserFacingError` with a text for the user.
"""

from __future__ import annotations

import random
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

import discord
from pydantic import ValidationError
from yarl import URL

from bot.config import Settings
from bot.fal import ASPECT_RATIOS, KontextInput

__all__ = ("ImageRef", "JobOptions", "UserFacingError", "build_request", "check_images", "images_of_message")

ACCEPTED_TYPES = {"image/png": "PNG", "image/jpeg": "JPEG", "image/webp": "WebP"}
EXTENSION_TYPES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".webp": "image/webp"}
MAX_SEED = 2**32 - 1


class UserFacingError(Exception):
    """A problem the user can fix; its message is shown to them as it is."""


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
    def from_url(cls, url: str) -> ImageRef:
        return cls(url, PurePosixPath(URL(url).path).name or "image")

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

    def with_new_seed(self) -> JobOptions:
        return JobOptions(self.guidance_scale, self.num_images, self.output_format, self.safety_tolerance,
                          self.aspect_ratio, random.randint(0, MAX_SEED))  # fmt: skip


def build_request(prompt: str, images: Sequence[ImageRef], options: JobOptions, settings: Settings) -> KontextInput:
    """Check everything we can check locally and build the request. Raises `UserFacingError`."""
    text = _check_prompt(prompt, settings.max_prompt_length)
    _check_images(images, settings)
    _check_options(options)
    try:
        return KontextInput(
            prompt=text,
            image_urls=tuple(image.url for image in images),
            seed=options.seed,
            guidance_scale=options.guidance_scale,
            num_images=options.num_images,
            output_format=options.output_format,
            safety_tolerance=options.safety_tolerance,
            aspect_ratio=options.aspect_ratio,
        )
    except ValidationError as exc:  # a bound we did not foresee; still no paid call
        raise UserFacingError(f"Those options are not valid: {_first_error(exc)}") from None


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
        url = embed.image.url or (embed.thumbnail.url if embed.type == "image" else None)
        if url:
            refs.append(ImageRef.from_url(url))
    return refs


def _looks_like_image(attachment: discord.Attachment) -> bool:
    return (attachment.content_type or "").startswith("image/") or attachment.width is not None


def _check_prompt(prompt: str | None, limit: int) -> str:
    text = (prompt or "").strip()
    if not _visible(text):
        raise UserFacingError("Please write a prompt: what should change in the image(s)?")
    if len(text) > limit:
        raise UserFacingError(f"The prompt is {len(text)} characters long; the limit is {limit}.")
    return text


def _visible(text: str) -> bool:
    """Anything but white space and invisible format characters (zero-width spaces and joiners)."""
    return any(not char.isspace() and unicodedata.category(char) not in ("Cf", "Cc") for char in text)


def check_images(images: Sequence[ImageRef], settings: Settings) -> None:
    """The image checks alone, for triggers that ask for the prompt afterwards."""
    _check_images(images, settings)


def _check_images(images: Sequence[ImageRef], settings: Settings) -> None:
    if not images:
        raise UserFacingError("Please attach at least one image (PNG, JPEG or WebP).")
    if len(images) > settings.max_images:
        raise UserFacingError(f"You gave {len(images)} images; at most {settings.max_images} can be combined.")
    for number, image in enumerate(images, start=1):
        _check_image(number, image, settings.max_image_bytes)


def _check_image(number: int, image: ImageRef, max_bytes: int) -> None:
    kind = image.effective_type
    name = discord.utils.escape_markdown(image.filename[:80])
    if kind not in ACCEPTED_TYPES or image.decodable is False:
        accepted = ", ".join(ACCEPTED_TYPES.values())
        raise UserFacingError(f"Image {number} (`{name}`) is not a supported image; use {accepted}.")
    if image.size is not None and image.size > max_bytes:
        size, limit = _sizes(image.size, max_bytes)
        raise UserFacingError(f"Image {number} (`{name}`) is {size}; the limit is {limit} per image.")
    if image.size == 0:
        raise UserFacingError(f"Image {number} (`{name}`) is empty.")


def _check_options(options: JobOptions) -> None:
    checks: Iterable[tuple[bool, str]] = (
        (options.guidance_scale is None or 1 <= options.guidance_scale <= 20, "guidance_scale must be 1 to 20."),
        (1 <= options.num_images <= 4, "num_images must be 1 to 4."),
        (options.output_format in ("jpeg", "png"), "output_format must be jpeg or png."),
        (options.safety_tolerance in (None, "1", "2", "3", "4", "5", "6"), "safety_tolerance must be 1 to 6."),
        (options.aspect_ratio is None or options.aspect_ratio in ASPECT_RATIOS, "aspect_ratio is not supported."),
        (options.seed is None or 0 <= options.seed <= MAX_SEED, f"seed must be 0 to {MAX_SEED}."),
    )
    for ok, problem in checks:
        if not ok:
            raise UserFacingError(problem)


def _first_error(exc: ValidationError) -> str:
    error: dict[str, Any] = dict(exc.errors(include_url=False)[0])
    return f"{'.'.join(str(p) for p in error['loc'])}: {error['msg']}"


def _sizes(size: int, limit: int) -> tuple[str, str]:
    """Both sizes in MiB, or in bytes when MiB would make them look the same."""
    shown = f"{size / 2**20:.1f} MiB", f"{limit / 2**20:.1f} MiB"
    return shown if shown[0] != shown[1] else (f"{size:,} bytes", f"{limit:,} bytes")
