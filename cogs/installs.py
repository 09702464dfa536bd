"""User installs: where the commands may be used, and what the bot can reach from an interaction.

A user may install the app on their account and use it where the bot is no member: a server that never added
it, a group DM. Discord then delivers the interaction, but the bot's own REST calls there fail (no channel
messages, threads, reactions or history): everything goes through the interaction's token, which lives 15
minutes and takes at most 5 followups. Where such a server turned off Use External Apps, Discord makes every
answer ephemeral.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Self, TypeVar

import discord
from discord import app_commands

from bot.i18n import t, using_locale
from bot.jobs import Job
from cogs.replies import NO_MENTIONS
from cogs.status import TOKEN_MARGIN, Followups, InteractionTarget

if TYPE_CHECKING:
    from bot.bot import KontextBot

__all__ = ("FOLLOWUP_CAP", "Reach", "StoredTokenTarget", "TokenTarget", "anywhere")

T = TypeVar("T")
FOLLOWUP_CAP = 5  # followups per interaction where only the user installed the app (receiving-and-responding.mdx)
TOKEN_LIFE = timedelta(minutes=15)  # of an interaction's token, from the interaction


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
        return with_notes(content, self.reach, self._token_end, str(self.interaction.locale), running=running)

    async def edit(self, content: str, view: discord.ui.View | None) -> None:
        await super().edit(self.text(content, running=view is not None), view)  # the Cancel button: still running


class StoredTokenTarget:
    """After a restart, the status of a job that can answer only through its interaction (`ReplyToken`): edited,
    and its results posted, through the webhook of the stored token while that lives; never moved."""

    movable = False

    def __init__(self, bot: KontextBot, job: Job) -> None:
        if job.reply is None:
            raise ValueError(f"job {job.id} has no interaction token")
        self.reach = Reach(channel=False, ephemeral=job.reply.ephemeral)
        self.message_id = job.status_message_id
        self._token_end = job.created_at + TOKEN_LIFE  # the job was made as its interaction came
        self.expires_at: datetime | None = self._token_end
        self._locale = job.locale
        # What `Interaction.followup` makes: the application's webhook, with the bot's state (views, files).
        data = {"id": bot.application_id, "type": 3, "token": job.reply.token}
        self._webhook = discord.Webhook.from_state(data, bot._connection)  # type: ignore[arg-type]
        self.followups: Followups | None = Followups(self._webhook, self._token_end)

    async def edit(self, content: str, view: discord.ui.View | None) -> None:
        if self.message_id is None:
            raise discord.ClientException("no interaction message to edit")
        text = with_notes(content, self.reach, self._token_end, self._locale, running=view is not None)
        await self._webhook.edit_message(self.message_id, content=text, view=view, allowed_mentions=NO_MENTIONS)


def with_notes(content: str, reach: Reach, token_end: datetime, locale: str, *, running: bool) -> str:
    """A status where the bot answers through an interaction: private answers say so, and a job still running
    in the token's last minute says that results coming later can't be posted."""
    notes = []
    with using_locale(locale):
        if reach.ephemeral:
            notes.append(t("👁️ Only you can see this: this server lets apps it hasn't added answer only privately."))
        if running and not reach.channel and datetime.now(UTC) >= token_end - TOKEN_MARGIN:
            notes.append(t("⌛ Discord lets me answer here only until <t:{time}:t>; if the job takes longer, I can't "
                           "post its results.", time=int(token_end.timestamp())))  # fmt: skip
    return "\n".join([content, *(f"-# {note}" for note in notes)])
