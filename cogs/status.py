"""The status message of a job: one message, edited only when its text changes, never faster
than `interval`, and moved off the 15-minute interaction token before the token dies."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Protocol

import discord

from bot.jobs import Job
from cogs.render import job_link, render_status
from cogs.views import status_view

if TYPE_CHECKING:
    from bot.bot import KontextBot

__all__ = ("ChannelTarget", "InteractionTarget", "StatusMessage", "StatusTarget")

log = logging.getLogger(__name__)

# Leave the interaction token this long before it expires.
TOKEN_MARGIN = timedelta(seconds=60)
NO_MENTIONS = discord.AllowedMentions.none()
SETTLE_SECONDS = 30.0
EDIT_ATTEMPTS = 3


class StatusTarget(Protocol):
    message_id: int | None
    expires_at: datetime | None

    async def edit(self, content: str, view: discord.ui.View | None) -> None: ...


class InteractionTarget:
    """The interaction's own response, edited through its webhook token (15-minute life)."""

    def __init__(self, interaction: discord.Interaction[Any], message_id: int | None) -> None:
        self._interaction = interaction
        self.message_id = message_id
        self.expires_at: datetime | None = interaction.expires_at

    async def edit(self, content: str, view: discord.ui.View | None) -> None:
        await self._interaction.edit_original_response(content=content, view=view, allowed_mentions=NO_MENTIONS)


class ChannelTarget:
    """A normal channel message of the bot's, editable for as long as it exists."""

    expires_at: datetime | None = None

    def __init__(self, bot: KontextBot, channel_id: int, message_id: int | None) -> None:
        self._channel = bot.get_partial_messageable(channel_id)
        self.message_id = message_id

    async def edit(self, content: str, view: discord.ui.View | None) -> None:
        if self.message_id is None:
            message = await self._channel.send(
                content, view=view or discord.utils.MISSING, allowed_mentions=NO_MENTIONS
            )
            self.message_id = message.id
            return
        await self._channel.get_partial_message(self.message_id).edit(
            content=content, view=view, allowed_mentions=NO_MENTIONS
        )


class StatusMessage:
    """Keeps a job's status message in step with the job, coalescing bursts of changes."""

    def __init__(self, bot: KontextBot, job: Job, target: StatusTarget, *, interval: float) -> None:
        self._bot = bot
        self._job = job
        self._target = target
        self._interval = interval
        self._shown: tuple[str, bool] | None = None
        self._wanted: tuple[str, bool] | None = None
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def show(self, job: Job, *, submitting: bool = False) -> None:
        """Ask for the status of `job` to be shown; returns at once."""
        self._wanted = _wanted(job, submitting=submitting)
        self._wake.set()
        if self._task is None:
            self._task = asyncio.create_task(self._editor(), name=f"status:{job.id}")

    async def settle(self) -> None:
        """Wait (a bounded time) until the last wanted text is shown; used for final states."""
        if self._task is not None:
            await asyncio.wait([self._task], timeout=SETTLE_SECONDS)

    def mark_shown(self, job: Job, *, submitting: bool = False) -> None:
        """The target already shows this (it was posted with this text)."""
        self._shown = _wanted(job, submitting=submitting)

    async def _editor(self) -> None:
        failures = 0
        while True:
            await self._sleep_until_needed()
            if self._token_running_out():
                await self._move_to_channel()
            wanted = self._wanted
            if wanted is not None and wanted != self._shown:
                await self._edit(wanted)
                failures = 0 if self._shown == wanted else failures + 1
                if failures:
                    self._give_up_or_retry(wanted, failures)
            if wanted is not None and not wanted[1] and wanted == self._shown:
                return
            await asyncio.sleep(self._interval * (1 + failures))

    def _give_up_or_retry(self, wanted: tuple[str, bool], failures: int) -> None:
        """A failed edit is tried again; after a few failures that text is dropped (a newer one may work)."""
        if failures >= EDIT_ATTEMPTS:
            log.warning("giving up showing a status of job %s after %d failed edits", self._job.id, failures)
            self._shown = wanted
        else:
            self._wake.set()

    async def _sleep_until_needed(self) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), timeout=self._seconds_to_switch())
        self._wake.clear()

    def _seconds_to_switch(self) -> float | None:
        if self._target.expires_at is None:
            return None
        return max((self._target.expires_at - TOKEN_MARGIN - datetime.now(UTC)).total_seconds(), 0.0)

    def _token_running_out(self) -> bool:
        expires = self._target.expires_at
        return expires is not None and datetime.now(UTC) >= expires - TOKEN_MARGIN

    async def _edit(self, wanted: tuple[str, bool]) -> None:
        try:
            await self._put(self._target, wanted)
        except discord.HTTPException as exc:
            log.warning("editing the status of job %s failed: %s", self._job.id, exc)
            if isinstance(self._target, InteractionTarget):
                await self._move_to_channel()
                return
            if exc.status != 404:
                return
            self._target.message_id = None  # deleted: post a fresh status message next time
            await self._repost(wanted)
            return
        self._shown = wanted

    async def _repost(self, wanted: tuple[str, bool]) -> None:
        try:
            await self._put(self._target, wanted)
        except discord.HTTPException as exc:
            log.warning("reposting the status of job %s failed: %s", self._job.id, exc)
            return
        self._shown = wanted
        await self._remember_target()

    async def _move_to_channel(self) -> None:
        """Post the status as a channel message and point the old interaction message at it."""
        old = self._target
        new = ChannelTarget(self._bot, self._job.channel_id, None)
        wanted = self._wanted or _wanted(self._job)
        try:
            await self._put(new, wanted)
        except discord.HTTPException as exc:
            log.warning("moving the status of job %s to the channel failed: %s", self._job.id, exc)
            old.expires_at = None  # stop trying; later edits may still work through the old target
            return
        self._target, self._shown = new, wanted
        await self._remember_target()
        link = job_link(self._job.guild_id, self._job.channel_id, new.message_id)
        try:
            await old.edit(f"⏩ Still working; the status continues here: {link}", None)
        except discord.HTTPException:
            log.info("could not point the old status of job %s at the new one", self._job.id)

    async def _put(self, target: StatusTarget, wanted: tuple[str, bool]) -> None:
        """Show `wanted` (text, cancellable) on `target`, with the Cancel button while it is cancellable."""
        content, cancellable = wanted
        await target.edit(content, status_view(self._job.id) if cancellable else None)

    async def _remember_target(self) -> None:
        self._job.touch(status_message_id=self._target.message_id)
        await self._bot.store.save(self._job)


def _wanted(job: Job, *, submitting: bool = False) -> tuple[str, bool]:
    """What the status message should show: its text, and whether it still offers Cancel."""
    return render_status(job, submitting=submitting), not job.state.finished
