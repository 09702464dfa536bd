"""The result card: one Components V2 message (discord.py's `LayoutView`) with the prompt, model, seed, size and
cost as text, the result files in a media gallery (images fal flagged behind the item's spoiler, the prompt as
alt text), links for files too large to upload, and the Reroll / Edit again / Use as input buttons.

A gallery takes 10 files, so a job with more gets more cards, galleries only. Files keep the job's names
(`cogs.delivery.file_name`) and the buttons its id: that is how a post is recognised after a restart.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

import discord

from bot.jobs import Job, ResultImage
from cogs.render import prompt_quote, result_header, result_sizes
from cogs.views import EditAgainButton, RerollButton, UseAsInputButton

__all__ = ("ALT_TEXT_LIMIT", "GALLERY_LIMIT", "TEXT_LIMIT", "card_files", "more_results_card", "result_card")

GALLERY_LIMIT = 10  # items of one media gallery
ALT_TEXT_LIMIT = 1024  # a gallery item's description (components/reference.mdx)
TEXT_LIMIT = 4000  # all Text Displays of one message together
ACCENT = discord.Colour.blurple()

CardFiles = Sequence[tuple[str, ResultImage]]  # (file name, image)


def card_files(files: CardFiles) -> list[discord.File]:
    """The uploads a card's gallery names; no SPOILER_ prefix: the gallery item carries the spoiler."""
    return [discord.File(io.BytesIO(image.data or b""), filename=name) for name, image in files]


def result_card(job: Job, files: CardFiles, notes: Sequence[str], *, spoiler: bool = True) -> discord.ui.LayoutView:
    """The first result message: the text, the gallery (if any file is posted), the notes and the buttons.
    `spoiler`: flagged images go behind the gallery's spoiler (unless the server allows them in NSFW channels)."""
    texts = _fit([f"{result_header(job)}\n{prompt_quote(job.request.prompt)}", *_details(job, notes)])
    container: discord.ui.Container[Any] = discord.ui.Container(discord.ui.TextDisplay(texts[0]), accent_colour=ACCENT)
    if files:
        container.add_item(_gallery(job, files, spoiler))
    for text in texts[1:]:
        container.add_item(discord.ui.TextDisplay(text))
    container.add_item(discord.ui.ActionRow(RerollButton(job.id), EditAgainButton(job.id), UseAsInputButton(job.id)))
    return _view(container)


def more_results_card(job: Job, files: CardFiles, *, spoiler: bool = True) -> discord.ui.LayoutView:
    """A further result message of the same job: its gallery only."""
    return _view(discord.ui.Container(_gallery(job, files, spoiler), accent_colour=ACCENT))


def _view(container: discord.ui.Container[Any]) -> discord.ui.LayoutView:
    view = discord.ui.LayoutView(timeout=None)
    view.add_item(container)
    return view


def _gallery(job: Job, files: CardFiles, spoiler: bool) -> discord.ui.MediaGallery[Any]:
    if not 1 <= len(files) <= GALLERY_LIMIT:
        raise ValueError(f"a media gallery takes 1 to {GALLERY_LIMIT} items, not {len(files)}")
    alt = _cut(job.request.prompt, ALT_TEXT_LIMIT)
    items = [discord.MediaGalleryItem(f"attachment://{name}", description=alt, spoiler=image.nsfw and spoiler)
             for name, image in files]  # fmt: skip
    return discord.ui.MediaGallery(*items)


def _details(job: Job, notes: Sequence[str]) -> list[str]:
    sizes = result_sizes(job)
    lines = [f"-# {sizes}"] if sizes else []
    return ["\n".join([*lines, *notes])] if lines or notes else []


def _fit(texts: list[str]) -> list[str]:
    """The texts within Discord's total for one message; the last ones (notes, long links) give way first."""
    fitted: list[str] = []
    room = TEXT_LIMIT
    for text in texts:
        if room <= 1:
            break
        fitted.append(_cut(text, room))
        room -= len(fitted[-1])
    return fitted


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"
