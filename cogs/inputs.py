"""Turning Discord attachments, embeds and options into a checked edit request for one model.

Everything here runs before any paid call; a problem raises `UserFacingError` with a text for the user.
The limits of each option live in one place, the model registry (`bot.fal.registry`): the slash command's
ranges and choices (the widest any model allows) and the checks here (the chosen model's) are read from it.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import PurePosixPath

import discord
from pydantic import ValidationError
from yarl import URL

from bot.config import Settings
from bot.fal import MODELS, EditRequest, ModelSpec, Problem, option_choices, option_span
from bot.i18n import COMMAND, t, tn, tp
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
    "check_fits",
    "check_images",
    "clean_prompt",
    "images_of_message",
    "problem_text",
)

ACCEPTED_TYPES = {"image/png": "PNG", "image/jpeg": "JPEG", "image/webp": "WebP"}
EXTENSION_TYPES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".webp": "image/webp"}
# Characters that reorder text on screen (a prompt could make its echo read backwards).
BIDI_CONTROLS = dict.fromkeys(map(ord, "\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"))


def _int_span(name: str) -> tuple[int, int]:
    low, high = option_span(name)
    return int(low), int(high)


GUIDANCE = option_span("guidance_scale")
NUM_IMAGES = (1, max(model.max_outputs for model in MODELS))
SEED = _int_span("seed")
OUTPUT_FORMATS = option_choices("output_format")
SAFETY_LEVELS = option_choices("safety_tolerance")
ASPECT_RATIOS = option_choices("aspect_ratio")


@dataclass(frozen=True, slots=True)
class ImageRef:
    """An input image: where fal can download it, and what we know about it beforehand."""

    url: str
    filename: str
    content_type: str | None = None
    size: int | None = None
    decodable: bool | None = None  # False: Discord could not read it as an image (no width/height)
    pixels: int | None = None  # width x height, where known (per-megapixel prices count them)

    @classmethod
    def from_attachment(cls, attachment: discord.Attachment) -> ImageRef:
        pixels = _pixels(attachment.width, attachment.height)
        return cls(attachment.url, attachment.filename, attachment.content_type, attachment.size,
                   decodable=attachment.width is not None, pixels=pixels)  # fmt: skip

    @classmethod
    def from_url(cls, url: str, pixels: int | None = None) -> ImageRef | None:
        """A link's image, only over http(s); None for anything else or a malformed URL."""
        try:
            parsed = URL(url)
        except (ValueError, TypeError):
            return None
        if parsed.scheme not in ("http", "https") or not parsed.host:
            return None
        return cls(url, PurePosixPath(parsed.path).name or "image", pixels=pixels)

    @property
    def effective_type(self) -> str | None:
        if self.content_type:
            return self.content_type.split(";")[0].strip().lower()
        return EXTENSION_TYPES.get(PurePosixPath(self.filename.lower()).suffix)


@dataclass(frozen=True, slots=True)
class JobOptions:
    """The options a user can set; None keeps the model's default (one image for `num_images`), unless the user
    has a personal default (`cogs/policy.py`)."""

    guidance_scale: float | None = None
    num_images: int | None = None
    output_format: str | None = None
    safety_tolerance: str | None = None
    aspect_ratio: str | None = None
    seed: int | None = None


def build_request(
    prompt: str, images: Sequence[ImageRef], options: JobOptions, settings: Settings, model: ModelSpec
) -> EditRequest:
    """Check everything we can check locally, for `model`, and build the request. Raises `UserFacingError`."""
    text = clean_prompt(prompt, settings.max_prompt_length)
    check_images(images, settings, model)
    values = {**asdict(options), "num_images": 1 if options.num_images is None else options.num_images}
    try:
        request = EditRequest(prompt=text, image_urls=tuple(image.url for image in images),
                              image_pixels=tuple(image.pixels for image in images), **values)  # fmt: skip
    except ValidationError as exc:
        field = str(exc.errors(include_url=False)[0]["loc"][0])
        raise UserFacingError(t("The option {name} is not valid.", name=tp(COMMAND, field))) from None
    check_fits(request, model)
    return request


def check_fits(request: EditRequest, model: ModelSpec) -> None:
    """Refuse what `model` cannot take (an option it lacks, a value out of its range, too many images)."""
    problems = model.problems(request)
    if problems:
        raise UserFacingError(problem_text(problems[0], len(request.image_urls), request.num_images))


def problem_text(problem: Problem, inputs: int, outputs: int = 1) -> str:
    """What is wrong, naming the model and what it takes; `inputs` and `outputs` are the job's image counts."""
    model, option = problem.model.name, problem.option
    if problem.name == "images":
        return tn("{model} takes at most {count} input image; this job has {given}.",
                  "{model} takes at most {count} input images; this job has {given}.", problem.limit,
                  model=model, given=inputs)  # fmt: skip
    if problem.name == "images_in_and_out":
        return t("{model} takes at most {limit} images in and out together; {given} in and {asked} out are too many.",
                 model=model, limit=problem.limit, given=inputs, asked=outputs)  # fmt: skip
    if problem.name == "num_images":  # a model without the option makes one image
        return t("For {model}, num_images must be from 1 to {high}.", model=model, high=problem.model.max_outputs)
    if option is None:
        return t("{model} has no {option} option; leave it out or choose another model.", model=model,
                 option=tp(COMMAND, problem.name))  # fmt: skip
    if option.span is not None:
        low, high = (_number(value) for value in option.span)
        return t("For {model}, {option} must be from {low} to {high}.", model=model, option=tp(COMMAND, option.name),
                 low=low, high=high)  # fmt: skip
    return t("For {model}, {option} must be one of {choices}.", model=model, option=tp(COMMAND, option.name),
             choices=", ".join(option.choices))  # fmt: skip


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
    pixels = _pixels(getattr(media, "width", None), getattr(media, "height", None))
    return ImageRef.from_url(proxy_url, pixels) if proxy_url else None


def _looks_like_image(attachment: discord.Attachment) -> bool:
    return (attachment.content_type or "").startswith("image/") or attachment.width is not None


def _visible(text: str) -> bool:
    """Anything but white space and invisible format characters (zero-width spaces and joiners)."""
    return any(not char.isspace() and unicodedata.category(char) not in ("Cf", "Cc") for char in text)


def check_images(images: Sequence[ImageRef], settings: Settings, model: ModelSpec) -> None:
    if not images:
        raise UserFacingError(t("Please attach at least one image (PNG, JPEG or WebP)."))
    if len(images) > settings.max_images:
        raise UserFacingError(tn("You gave {count} image; at most {limit} can be combined.",
                                 "You gave {count} images; at most {limit} can be combined.",
                                 len(images), limit=settings.max_images))  # fmt: skip
    if len(images) > model.max_images:
        raise UserFacingError(problem_text(Problem(model, "images", limit=model.max_images), len(images)))
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


def _number(value: float) -> str:
    return str(int(value)) if value == int(value) else f"{value:g}"


def _pixels(width: int | None, height: int | None) -> int | None:
    return width * height if width and height else None


def _sizes(size: int, limit: int) -> tuple[str, str]:
    """Both sizes in MiB, or in bytes when MiB would make them look the same."""
    shown = _mebibytes(size), _mebibytes(limit)
    return shown if shown[0] != shown[1] else (_bytes(size), _bytes(limit))


def _mebibytes(size: int) -> str:
    return t("{amount} MiB", amount=format(size / 2**20, ".1f"))


def _bytes(size: int) -> str:
    return tn("{amount} byte", "{amount} bytes", size, amount=format(size, ","))
