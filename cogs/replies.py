"""Answering interactions: the user's own language, ephemeral problems, and never a crash for a reply
Discord no longer takes."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import discord

from bot.i18n import using_locale

__all__ = ("NO_MENTIONS", "UserFacingError", "answered", "replying", "send_ephemeral")

log = logging.getLogger(__name__)

NO_MENTIONS = discord.AllowedMentions.none()


class UserFacingError(Exception):
    """A problem the user can fix (or must wait out); its message is shown to them as it is."""


async def send_ephemeral(interaction: discord.Interaction[Any], text: str) -> None:
    """Answer only the user; if Discord no longer takes the answer (expired interaction), log it and move on."""
    try:
        if interaction.response.is_done():
            await interaction.followup.send(text, ephemeral=True, allowed_mentions=NO_MENTIONS)
        else:
            await interaction.response.send_message(text, ephemeral=True, allowed_mentions=NO_MENTIONS)
            answered(interaction)
    except (discord.HTTPException, discord.InteractionResponded) as exc:
        log.warning("could not answer interaction %s: %s", interaction.id, exc)


def answered(interaction: discord.Interaction[Any]) -> None:
    """Record how long the first answer to `interaction` took (for the metrics, when the client keeps them)."""
    metrics = getattr(interaction.client, "metrics", None)
    if metrics is not None:
        metrics.interaction_answered(interaction.created_at)


@asynccontextmanager
async def replying(interaction: discord.Interaction[Any]) -> AsyncIterator[None]:
    """Run the block in the user's language; a `UserFacingError` raised in it becomes an ephemeral reply."""
    with using_locale(str(interaction.locale)):
        try:
            yield
        except UserFacingError as exc:
            await send_ephemeral(interaction, str(exc))
