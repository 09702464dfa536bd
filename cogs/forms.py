"""The edit form: one modal for every way to start an edit from Discord's UI, with the prompt, the images (a File
Upload, discord.py 2.7), the number of results and, editing a result, which one. The files come with the submit
itself, so it needs neither an earlier message nor the Message Content intent.

`/kontext` without images asks for 1 to N images; "Edit again" and "Edit with Kontext" already have theirs and
take up to as many more as the model and MAX_IMAGES allow.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import discord

from bot.config import Settings
from bot.fal import ModelSpec
from bot.i18n import t
from cogs.inputs import ImageRef

__all__ = ("MAX_UPLOADS", "EditForm", "FormValues", "image_room")

MAX_UPLOADS = 10  # files one File Upload takes (components/reference.mdx)
TITLE_LIMIT, LABEL_LIMIT, DESCRIPTION_LIMIT = 45, 45, 100


def image_room(settings: Settings, model: ModelSpec) -> int:
    """How many input images a job on `model` may have."""
    return min(settings.max_images, model.max_images)


@dataclass(frozen=True, slots=True)
class FormValues:
    """What the user submitted; the counts as typed (checked by the caller)."""

    prompt: str
    num_images: str = "1"
    which: str = "1"
    images: tuple[ImageRef, ...] = ()


SubmitForm = Callable[[discord.Interaction[Any], FormValues], Awaitable[None]]
TextInput = discord.ui.TextInput["EditForm"]


class EditForm(discord.ui.Modal):
    """Asks for a prompt, images (`uploads`: at least, at most; None for no upload), the number of results
    (when the model makes more than one) and which of `image_count` results to edit (when more than one)."""

    def __init__(
        self, title: str, on_values: SubmitForm, *, uploads: tuple[int, int] | None, default_prompt: str = "",
        max_length: int = 1500, max_results: int = 4, default_results: int = 1, image_count: int = 0,
    ) -> None:  # fmt: skip
        super().__init__(title=title[:TITLE_LIMIT], timeout=600)
        self._on_values = on_values
        self.prompt = self._text(
            t("Prompt"), "prompt", style=discord.TextStyle.paragraph, max_length=min(max_length, 4000),
            default=default_prompt[:max_length] or None,
            placeholder=t("What should change? e.g. put the cat from image 2 on a sofa"),
        )  # fmt: skip
        self.images = self._upload(uploads) if uploads is not None and uploads[1] > 0 else None
        self.num_images: TextInput | None = None
        self.which: TextInput | None = None
        if max_results > 1:
            self.num_images = self._text(t("Number of results (1-{count})", count=max_results), "num_images",
                                         default=str(default_results), max_length=1, required=False)  # fmt: skip
        if image_count > 1:
            self.which = self._text(t("Which result to edit (1-{count})", count=image_count), "which", default="1",
                                    max_length=1, required=False)  # fmt: skip

    def _text(self, label: str, custom_id: str, **options: Any) -> TextInput:
        field: TextInput = discord.ui.TextInput(custom_id=custom_id, **options)
        self.add_item(discord.ui.Label(text=label[:LABEL_LIMIT], component=field))
        return field

    def _upload(self, uploads: tuple[int, int]) -> discord.ui.FileUpload[EditForm]:
        low, high = min(uploads[0], MAX_UPLOADS), min(uploads[1], MAX_UPLOADS)
        field: discord.ui.FileUpload[EditForm] = discord.ui.FileUpload(
            custom_id="images", min_values=low, max_values=high, required=low > 0
        )
        label = t("Images (1-{count})", count=high) if low else t("More images (up to {count})", count=high)
        hint = t("PNG, JPEG or WebP")
        self.add_item(discord.ui.Label(text=label[:LABEL_LIMIT], description=hint[:DESCRIPTION_LIMIT], component=field))
        return field

    async def on_submit(self, interaction: discord.Interaction[Any]) -> None:
        images = tuple(ImageRef.from_attachment(a) for a in self.images.values) if self.images else ()
        values = FormValues(self.prompt.value, _value(self.num_images), _value(self.which), images)
        await self._on_values(interaction, values)


def _value(field: TextInput | None) -> str:
    return (field.value if field is not None else "") or "1"
