"""User installs: where the commands may be used, and what the bot can reach from an interaction.

A user may install the app on their account and use it where the bot is no member: a server that never added
it, a group DM. Discord then delivers the interaction, but the bot's own REST calls there fail (no channel
messages, threads, reactions or history): everything goes through the interaction's token, which lives 15
minutes and takes at most 5 followups. Where such a server turned off Use External Apps, Discord makes every
answer ephemeral.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Self, TypeVar

import discord
from discord import app_commands

from bot.i18n import t, using_locale
from cogs.status import TOKEN_MARGIN, InteractionTarget

__all__ = ("FOLLOWUP_CAP", "Reach", "TokenTarget", "anywhere")

T = TypeVar("T")
FOLLOWUP_CAP = 5  # followups per interaction where only the user installed the app (receiving-and-responding.mdx)


def anywhere(command: T) -> T:
    """Make a command (callback, `Command` or `ContextMenu`) usable from both installs, in servers, the bot's DM
    and private channels."""
    command = app_commands.allowed_installs(guilds=True, users=True)(command)
    return app_commands.allowed_contexts(guilds=True, dms=True, private_channels=True)(command)


@dataclass(frozen=True, slots=True)
class Reach:
    """What the bot can do where an interaction came from."""

    channel: bool = True  # it can post in the channel: a member of the server, or in its own DM
    ephemeral: bool = False  # Discord makes every answer there ephemeral

    @classmethod
    def of(cls, interaction: discord.Interaction[Any]) -> Self:
        channel = interaction.is_guild_integration() or interaction.context.dm_channel
        in_server = interaction.guild_id is not None
        return cls(channel, not channel and in_server and not interaction.permissions.use_external_apps)


class TokenTarget(InteractionTarget):
    """The status on the interaction's own response. Where the bot can't post in the channel it never moves
    to a channel message (`StatusMessage` leaves it on the token) and, while the job runs, its last minute
    says that results coming later can't be posted; where Discord forces answers to be private, it says so."""

    def __init__(self, interaction: discord.Interaction[Any], reach: Reach) -> None:
        super().__init__(interaction, None)
        self.reach = reach
        self.movable = reach.channel
        self._token_end = interaction.expires_at

    def text(self, content: str, *, running: bool = True) -> str:
        """`content` with the notes this place needs, in the language of the user who asked (the job's)."""
        with using_locale(str(self.interaction.locale)):
            notes = self._notes(running=running)
        return "\n".join([content, *(f"-# {note}" for note in notes)])

    def _notes(self, *, running: bool) -> list[str]:
        notes = []
        if self.reach.ephemeral:
            notes.append(t("👁️ Only you can see this: this server lets apps it hasn't added answer only privately."))
        if running and not self.reach.channel and datetime.now(UTC) >= self._token_end - TOKEN_MARGIN:
            notes.append(t("⌛ Discord lets me answer here only until <t:{time}:t>; if the job takes longer, I can't "
                           "post its results.", time=int(self._token_end.timestamp())))  # fmt: skip
        return notes

    async def edit(self, content: str, view: discord.ui.View | None) -> None:
        await super().edit(self.text(content, running=view is not None), view)  # the Cancel button: still running
