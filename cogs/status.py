"""The status message of a job: one message, edited only when its text changes, never faster than
`interval`, moved off the 15-minute interaction token before the token dies, and kept alive through any
error of a single edit — the final state is always shown."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Protocol

import aiohttp
import discord

from bot.i18n import t, using_locale
from bot.jobs import Job
from cogs.render import job_link, render_status
from cogs.replies import NO_MENTIONS
from cogs.views import status_view

if TYPE_CHECKING:
    from bot.bot import KontextBot

__all__ = (
    "EDIT_ERRORS",
    "ChannelTarget",
    "EditPacer",
    "Followups",
    "InteractionTarget",
    "StatusMessage",
    "StatusTarget",
)

log = logging.getLogger(__name__)

# Leave the interaction token this long before it expires.
TOKEN_MARGIN = timedelta(seconds=60)
SETTLE_SECONDS = 30.0
EDIT_ATTEMPTS = 3
# What one Discord request can fail with: an answer, a dropped connection, or no answer in time.
EDIT_ERRORS = (discord.HTTPException, aiohttp.ClientError, OSError, TimeoutError)

Wanted = tuple[str, bool]  # the text, and whether the Cancel button goes with it
DEFAULT_FILE_LIMIT = 10 * 1024 * 1024  # Discord's upload limit where nothing says more


@dataclass(frozen=True, slots=True)
class Followups:
    """An interaction's webhook: followup messages (and edits of its messages) while its token lives."""

    webhook: discord.Webhook
    expires_at: datetime
    filesize_limit: int = DEFAULT_FILE_LIMIT

    @classmethod
    def of(cls, interaction: discord.Interaction[Any]) -> Followups:
        return cls(interaction.followup, interaction.expires_at, interaction.filesize_limit)

    def expired(self) -> bool:
        return datetime.now(UTC) >= self.expires_at


class StatusTarget(Protocol):
    message_id: int | None
    expires_at: datetime | None
    movable: bool  # the status may go on in a new channel message (not where the bot can't post)

    @property
    def followups(self) -> Followups | None:
        """Where the results may go when the channel can't take them."""
        ...

    async def edit(self, content: str, view: discord.ui.View | None) -> None: ...


class InteractionTarget:
    """The interaction's own response, edited through its webhook token (15-minute life)."""

    movable = True

    def __init__(self, interaction: discord.Interaction[Any], message_id: int | None) -> None:
        self.interaction = interaction
        self.message_id = message_id
        self.expires_at: datetime | None = interaction.expires_at

    @property
    def followups(self) -> Followups | None:
        return Followups.of(self.interaction)  # made when needed: most jobs never post a followup

    async def edit(self, content: str, view: discord.ui.View | None) -> None:
        await self.interaction.edit_original_response(content=content, view=view, allowed_mentions=NO_MENTIONS)


class ChannelTarget:
    """A normal channel message of the bot's, editable for as long as it exists."""

    expires_at: datetime | None = None
    movable = True
    followups: Followups | None = None

    def __init__(self, bot: KontextBot, channel_id: int, message_id: int | None) -> None:
        self._channel = bot.get_partial_messageable(channel_id)
        self.message_id = message_id

    async def edit(self, content: str, view: discord.ui.View | None) -> None:
        if self.message_id is None:
            message = await self._channel.send(
                content, view=view or discord.utils.MISSING, allowed_mentions=NO_MENTIONS, suppress_embeds=True
            )
            self.message_id = message.id
            return
        await self._channel.get_partial_message(self.message_id).edit(
            content=content, view=view, allowed_mentions=NO_MENTIONS
        )


class EditPacer:
    """Spreads status edits so that all status messages together make at most `per_second` edits: with few
    jobs each message is edited every `interval` seconds at most (the first edit too, counted from its post);
    with many, each one less often. Under load the queue moves are shown less often, down to none; the final
    state does not wait."""

    def __init__(self, *, interval: float, per_second: float) -> None:
        self._interval = interval
        self._per_second = per_second
        self.live = 0  # status messages still being kept up to date

    @property
    def pause(self) -> float:
        return max(self._interval, self.live / self._per_second)


class StatusMessage:
    """Keeps a job's status message in step with the job, coalescing bursts of changes.

    It never changes the job: when the message moves (a new channel message), it reports the new
    message id through `on_moved`, and the job's owner records it."""

    def __init__(
        self,
        bot: KontextBot,
        job: Job,
        target: StatusTarget,
        *,
        pacer: EditPacer,
        on_moved: Callable[[int], Awaitable[None]] | None = None,
    ) -> None:
        self._bot = bot
        self._job = job
        self._target = target
        self._pacer = pacer
        self._on_moved = on_moved
        self._shown: Wanted | None = None
        self._asked: float | None = None  # when the oldest change not shown yet was asked for (metrics)
        self._wake = asyncio.Event()
        self._final = asyncio.Event()  # the job ended: its status goes out without waiting its turn
        self._task: asyncio.Task[None] | None = None
        self._view: discord.ui.View | None = None  # built once: a view is not cheap to make

    @property
    def followups(self) -> Followups | None:
        """The webhook of the interaction the status answers, while its token can still post."""
        return None if self._token_running_out() else self._target.followups

    def show(self, job: Job) -> None:
        """Ask for the status of `job` to be shown; returns at once. The text is made when the edit is due: under
        load most changes are passed over by a newer one before their turn comes."""
        self._job = job
        self._asked = self._asked or time.monotonic()
        self._wake.set()
        if job.state.finished:
            self._final.set()
        if self._task is None:
            self._task = asyncio.create_task(self._editor(), name=f"status:{job.id}")

    async def settle(self) -> None:
        """Wait (a bounded time) until the last wanted text is shown; used for final states."""
        if self._task is not None:
            await asyncio.wait([self._task], timeout=SETTLE_SECONDS)

    def mark_shown(self, job: Job) -> None:
        """The target already shows this (it was posted with this text)."""
        self._job = job
        self._shown = _wanted(job)

    async def _editor(self) -> None:
        self._pacer.live += 1
        try:
            if self._shown is not None:  # just posted: the first edit waits its turn like any other
                await self._rest(0)
            await self._keep_shown()
        finally:
            self._pacer.live -= 1

    async def _keep_shown(self) -> None:
        failures = 0
        while True:
            await self._sleep_until_needed()
            if self._bot.is_closed():
                return  # shutting down: after a restart the job's status is shown again
            if self._token_running_out():
                await self._move_to_channel()
            wanted = _wanted(self._job)  # made when the edit is due, not on every change
            if wanted != self._shown:
                failures = 0 if await self._edit(wanted) else failures + 1
                if failures:
                    failures = await self._after_failure(wanted, failures)
            else:
                self._asked = None  # nothing new to show after all
            if not wanted[1] and wanted == self._shown:
                return  # the final state is shown
            await self._rest(failures)

    async def _rest(self, failures: int) -> None:
        """Wait this message's turn (longer after failures); the final state does not wait for it."""
        pause = self._pacer.pause * (1 + failures)
        if failures:
            await asyncio.sleep(pause)
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(pause):  # not wait_for: no task per wait
                await self._final.wait()

    async def _after_failure(self, wanted: Wanted, failures: int) -> int:
        """Try a failed text again; after a few failures post it as a new message, else drop it."""
        if failures < EDIT_ATTEMPTS:
            self._wake.set()
            return failures
        final = not wanted[1]
        if final and await self._move_to_channel():
            return 0
        log.warning("giving up showing a status of job %s after %d failed edits", self._job.id, failures)
        self._shown = wanted
        return 0

    async def _sleep_until_needed(self) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self._seconds_to_switch()):
                await self._wake.wait()
        self._wake.clear()

    def _seconds_to_switch(self) -> float | None:
        if self._target.expires_at is None:
            return None
        return max((self._target.expires_at - TOKEN_MARGIN - datetime.now(UTC)).total_seconds(), 0.0)

    def _token_running_out(self) -> bool:
        expires = self._target.expires_at
        return expires is not None and datetime.now(UTC) >= expires - TOKEN_MARGIN

    async def _edit(self, wanted: Wanted) -> bool:
        asked, self._asked = self._asked, None
        try:
            await self._put(self._target, wanted)
        except EDIT_ERRORS as exc:
            self._asked = asked or self._asked
            log.warning("editing the status of job %s failed: %r", self._job.id, exc)
            if isinstance(exc, discord.NotFound) and isinstance(self._target, ChannelTarget):
                self._target.message_id = None  # deleted: the next try posts a fresh status message
            return False
        self._shown = wanted
        if asked is not None:
            self._bot.metrics.status_shown(time.monotonic() - asked)
        if isinstance(self._target, ChannelTarget) and self._target.message_id != self._job.status_message_id:
            await self._report_move(self._target.message_id)
        return True

    async def _move_to_channel(self) -> bool:
        """Post the status as a channel message and point the old interaction message at it."""
        old = self._target
        if not old.movable:  # it stays on the token, whose target says until when (cogs.installs)
            old.expires_at, self._shown = None, None
            return False
        new = ChannelTarget(self._bot, self._job.channel_id, None)
        wanted = _wanted(self._job)
        try:
            await self._put(new, wanted)
        except EDIT_ERRORS as exc:
            log.warning("moving the status of job %s to the channel failed: %r", self._job.id, exc)
            old.expires_at = None  # stop trying; later edits may still work through the old target
            return False
        self._target, self._shown = new, wanted
        await self._report_move(new.message_id)
        link = job_link(self._job.guild_id, self._job.channel_id, new.message_id)
        try:
            with using_locale(self._job.locale):
                await old.edit(t("⏩ Still working; the status continues here: {link}", link=link), None)
        except EDIT_ERRORS:
            log.info("could not point the old status of job %s at the new one", self._job.id)
        return True

    async def _report_move(self, message_id: int | None) -> None:
        if message_id is not None and self._on_moved is not None:
            await self._on_moved(message_id)

    async def _put(self, target: StatusTarget, wanted: Wanted) -> None:
        content, cancellable = wanted
        await target.edit(content, self.cancel_view() if cancellable else None)

    def cancel_view(self) -> discord.ui.View:
        """The Cancel button of this job's status, made once (the first post uses it too)."""
        if self._view is None:
            with using_locale(self._job.locale):
                self._view = status_view(self._job.id)
        return self._view


def _wanted(job: Job) -> Wanted:
    """What the status message should show: its text, and whether it still offers Cancel."""
    with using_locale(job.locale):
        return render_status(job), not job.state.finished
