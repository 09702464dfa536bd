"""The one path every trigger takes: access and quota checks, the status message, one submit
to fal, then the runner. Also resumes stored jobs after a restart."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import discord

from bot.fal import FalError, KontextInput
from bot.jobs import Job, JobState
from bot.messages import describe_failure
from bot.quota import QuotaDenied, QuotaExceeded, Quotas
from cogs.delivery import DiscordJobSink
from cogs.inputs import UserFacingError
from cogs.render import render_status
from cogs.status import NO_MENTIONS, ChannelTarget, InteractionTarget, StatusMessage, StatusTarget
from cogs.views import status_view

if TYPE_CHECKING:
    from bot.bot import KontextBot

__all__ = ("Launcher", "Origin")

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Origin:
    """Who asked, where, and on which message the result thread should hang (None: the status message)."""

    user: discord.User | discord.Member
    channel_id: int
    guild_id: int | None
    source: str
    message_id: int | None = None


class Launcher:
    def __init__(self, bot: KontextBot) -> None:
        self.bot = bot
        self.settings = bot.settings
        self.quotas = Quotas(bot.store, bot.settings)

    async def from_interaction(
        self, interaction: discord.Interaction[Any], request: KontextInput, origin: Origin
    ) -> None:
        """Answer the interaction with the status message (its acknowledgement), then submit."""
        async with self._admitted(origin, request) as job:
            response = await interaction.response.send_message(
                render_status(job, submitting=True), view=status_view(job.id), allowed_mentions=NO_MENTIONS
            )
            message_id = response.message_id
            target = InteractionTarget(interaction, message_id)
            await self._submit(job, target, file_limit=interaction.filesize_limit, status_message_id=message_id)

    async def from_message(self, request: KontextInput, origin: Origin) -> None:
        """A trigger without an interaction (the reaction): the status is a reply to the message."""
        channel = self.bot.get_partial_messageable(origin.channel_id, guild_id=origin.guild_id)
        async with self._admitted(origin, request) as job:
            reply = channel.get_partial_message(origin.message_id) if origin.message_id else discord.utils.MISSING
            message = await channel.send(
                render_status(job, submitting=True), view=status_view(job.id), allowed_mentions=NO_MENTIONS,
                reference=reply, mention_author=False,
            )  # fmt: skip
            target = ChannelTarget(self.bot, message.channel.id, message.id)
            await self._submit(job, target, file_limit=None, status_message_id=message.id)

    def check_access(self, user: discord.User | discord.Member, guild_id: int | None) -> None:
        allowed_guilds, allowed_roles = self.settings.allowed_guild_ids, self.settings.allowed_role_ids
        if allowed_guilds and guild_id not in allowed_guilds:
            raise UserFacingError("This bot is not enabled here.")
        if allowed_roles and not any(role.id in allowed_roles for role in getattr(user, "roles", ())):
            raise UserFacingError("You need one of the roles an admin allowed to use this bot.")

    @asynccontextmanager
    async def _admitted(self, origin: Origin, request: KontextInput) -> AsyncIterator[Job]:
        """Access and quota checks; the job's quota is held until it is stored (or failed)."""
        self.check_access(origin.user, origin.guild_id)
        now = datetime.now(UTC)
        try:
            reservation = self.quotas.reserve(
                user_id=origin.user.id, guild_id=origin.guild_id, images=request.num_images, now=now
            )
            async with reservation:
                yield self._new_job(request, origin)
        except QuotaExceeded as exc:
            raise UserFacingError(_denial_text(exc.denial)) from None

    def _new_job(self, request: KontextInput, origin: Origin) -> Job:
        return Job(
            request=request, user_id=origin.user.id, channel_id=origin.channel_id, guild_id=origin.guild_id,
            source=origin.source, origin_message_id=origin.message_id, cost_usd=self.quotas.cost(request.num_images),
        )  # fmt: skip

    async def _submit(
        self, job: Job, target: StatusTarget, *, file_limit: int | None, status_message_id: int | None
    ) -> None:
        job.touch(status_message_id=status_message_id, origin_message_id=job.origin_message_id or status_message_id)
        status = StatusMessage(self.bot, job, target, interval=self.settings.status_edit_interval_seconds)
        status.mark_shown(job, submitting=True)
        try:
            handle = await self.bot.fal.submit(job.request)
        except FalError as exc:
            log.warning("submit for job %s failed: %s", job.id, exc)
            job.touch(state=JobState.FAILED, error=describe_failure(exc))
            status.show(job)
            await status.settle()
            return
        job.accepted(handle)
        await self.bot.store.save(job)
        log.info("job %s accepted by fal as %s", job.id, handle.request_id)
        self.start(job, status, file_limit=file_limit)

    def start(self, job: Job, status: StatusMessage, *, file_limit: int | None = None) -> None:
        status.show(job)
        self.bot.runner.start(job, DiscordJobSink(self.bot, status, file_limit=file_limit))

    async def resume_all(self) -> int:
        """Pick up every stored job that is not finished (after a restart)."""
        jobs = [job for job in await self.bot.store.unfinished() if self.bot.runner.live(job.id) is None]
        for job in jobs:
            target = ChannelTarget(self.bot, job.channel_id, job.status_message_id)
            status = StatusMessage(self.bot, job, target, interval=self.settings.status_edit_interval_seconds)
            self.start(job, status)
        if jobs:
            log.info("resumed %d unfinished job(s)", len(jobs))
        return len(jobs)


def _denial_text(denial: QuotaDenied) -> str:
    if denial.retry_at is None:
        return denial.reason
    return f"{denial.reason} You can go again <t:{int(denial.retry_at.timestamp())}:R>."
