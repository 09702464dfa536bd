"""The last word on app-command errors (slash commands and the message menu alike): the user always gets
an answer, and anything unexpected is logged once."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import discord
from discord import app_commands
from discord.ext import commands

from bot.i18n import t, using_locale
from cogs.replies import UserFacingError, send_ephemeral

if TYPE_CHECKING:
    from bot.bot import KontextBot

log = logging.getLogger(__name__)


class ErrorReplies(commands.Cog):
    def __init__(self, bot: KontextBot) -> None:
        self.bot = bot
        self._previous = bot.tree.on_error

    async def cog_load(self) -> None:
        self.bot.tree.on_error = self.on_app_command_error  # type: ignore[method-assign]  # discord.py's hook

    async def cog_unload(self) -> None:
        self.bot.tree.on_error = self._previous  # type: ignore[method-assign]

    async def on_app_command_error(
        self, interaction: discord.Interaction[Any], error: app_commands.AppCommandError
    ) -> None:
        original = getattr(error, "original", error)
        with using_locale(str(interaction.locale)):
            if isinstance(original, UserFacingError):
                await send_ephemeral(interaction, str(original))
            elif isinstance(error, app_commands.TransformerError):
                await send_ephemeral(interaction, t("That value is not valid here: {value}", value=error.value))
            elif isinstance(error, app_commands.CheckFailure):
                await send_ephemeral(interaction, t("You can't use this command here."))
            else:
                command = interaction.command.name if interaction.command else "?"
                log.error("command %s failed", command, exc_info=original)
                await send_ephemeral(interaction, t("Something went wrong on my side; it has been logged."))


async def setup(bot: KontextBot) -> None:
    await bot.add_cog(ErrorReplies(bot))
