"""Posting results: in a thread on the job's message (or its channel when threads are not
possible), within Discord's upload limits, and exactly once even across restarts."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import discord

from bot.jobs import Job, ResultImage
from cogs.render import render_result
from cogs.status import StatusMessage
from cogs.views import result_view

if TYPE_CHECKING:
    from bot.bot import KontextBot

__all__ = ("DiscordJobSink", "UploadPlan", "plan_uploads")

log = logging.getLogger(__name__)

DEFAULT_FILE_LIMIT = 10 * 1024 * 1024
MAX_REQUEST_BYTES = 24 * 1024 * 1024  # Discord takes 25 MiB per message request; keep room for the JSON
MAX_FILES_PER_MESSAGE = 10
THREAD_EXISTS = 160004
HISTORY_SCAN = 50
AnyChannel = discord.abc.GuildChannel | discord.abc.PrivateChannel | discord.Thread


@dataclass
class UploadPlan:
    """Which images go up as files (in batches), which as links, and how many are withheld."""

    batches: list[list[tuple[str, ResultImage]]] = field(default_factory=list)
    linked: list[str] = field(default_factory=list)
    withheld: int = 0

    @property
    def posted(self) -> int:
        return sum(len(batch) for batch in self.batches)


def plan_uploads(job: Job, images: Sequence[ResultImage], *, file_limit: int, nsfw_channel: bool) -> UploadPlan:
    """Flagged images are spoilered in NSFW channels and withheld elsewhere; too-large ones become links."""
    plan = UploadPlan()
    size = 0
    for number, image in enumerate(images, start=1):
        if image.nsfw and not nsfw_channel:
            plan.withheld += 1
        elif len(image.data) > file_limit:
            plan.linked.append(image.url)
        else:
            batch_full = not plan.batches or len(plan.batches[-1]) == MAX_FILES_PER_MESSAGE
            if batch_full or size + len(image.data) > MAX_REQUEST_BYTES:
                plan.batches.append([])
                size = 0
            plan.batches[-1].append((f"kontext-{job.id[:8]}-{number}.{image.extension}", image))
            size += len(image.data)
    return plan


def _files(batch: list[tuple[str, ResultImage]]) -> list[discord.File]:
    return [discord.File(io.BytesIO(image.data), filename=name, spoiler=image.nsfw) for name, image in batch]


class DiscordJobSink:
    """`JobSink` for Discord: status edits through `StatusMessage`, results as files in a thread."""

    def __init__(self, bot: KontextBot, status: StatusMessage, *, file_limit: int | None = None) -> None:
        self._bot = bot
        self.status = status
        self._file_limit = file_limit

    async def show(self, job: Job) -> None:
        self.status.show(job)
        if job.state.finished:
            await self.status.settle()

    async def deliver(self, job: Job, images: list[ResultImage], *, maybe_posted: bool) -> None:
        channel = await self._channel(job.channel_id)
        destination = await self._destination(job, channel)
        if maybe_posted and await self._already_posted(destination, job):
            log.info("job %s was already delivered before the restart", job.id)
            return
        plan = plan_uploads(job, images, file_limit=self._limit(channel), nsfw_channel=_is_nsfw(channel))
        await self._post(destination, job, plan)

    async def _post(self, destination: discord.abc.Messageable, job: Job, plan: UploadPlan) -> None:
        content = render_result(job, posted=plan.posted, withheld=plan.withheld, linked=plan.linked)
        mentions = discord.AllowedMentions(everyone=False, roles=False, users=[discord.Object(job.user_id)])
        batches: Iterator[list[tuple[str, ResultImage]]] = iter(plan.batches)
        first = next(batches, [])
        await destination.send(content, files=_files(first), view=result_view(job.id), allowed_mentions=mentions)
        for batch in batches:
            await destination.send(files=_files(batch), allowed_mentions=discord.AllowedMentions.none())

    async def _destination(self, job: Job, channel: AnyChannel | None) -> discord.abc.Messageable:
        if job.thread_id is None:
            thread_id = await self._start_thread(job, channel)
            if thread_id is not None:
                job.touch(thread_id=thread_id)
                await self._bot.store.save(job)
        destination: discord.abc.Messageable = self._bot.get_partial_messageable(
            job.thread_id or job.channel_id, guild_id=job.guild_id
        )
        return destination

    async def _start_thread(self, job: Job, channel: AnyChannel | None) -> int | None:
        if job.origin_message_id is None or not isinstance(channel, discord.TextChannel):
            return None  # DMs, threads, forums and voice chats: post in place
        name = f"Kontext: {' '.join(job.request.prompt.split())}"[:100]  # one line, Discord's limit
        try:
            thread = await channel.get_partial_message(job.origin_message_id).create_thread(name=name)
        except discord.HTTPException as exc:
            if exc.code == THREAD_EXISTS:
                return job.origin_message_id  # a thread's id is its starter message's id
            log.info("no thread for job %s (%s); posting in the channel", job.id, exc)
            return None
        return thread.id

    async def _already_posted(self, destination: discord.abc.Messageable, job: Job) -> bool:
        """Our result message carries the job id in its buttons' custom_ids: look for it."""
        marker = f":{job.id}"
        async for message in destination.history(limit=HISTORY_SCAN):
            if self._is_ours(message) and any(custom_id.endswith(marker) for custom_id in _custom_ids(message)):
                return True
        return False

    def _is_ours(self, message: discord.Message) -> bool:
        return self._bot.user is not None and message.author.id == self._bot.user.id

    async def _channel(self, channel_id: int) -> AnyChannel | None:
        channel: AnyChannel | None = self._bot.get_channel(channel_id)
        if channel is not None:
            return channel
        try:
            fetched: AnyChannel = await self._bot.fetch_channel(channel_id)
        except discord.HTTPException:
            return None
        return fetched

    def _limit(self, channel: object) -> int:
        if self._file_limit is not None:
            return self._file_limit
        guild = getattr(channel, "guild", None)
        return guild.filesize_limit if isinstance(guild, discord.Guild) else DEFAULT_FILE_LIMIT


def _custom_ids(message: discord.Message) -> Iterator[str]:
    for row in message.components:
        for child in getattr(row, "children", ()):
            yield getattr(child, "custom_id", None) or ""


def _is_nsfw(channel: object) -> bool:
    if isinstance(channel, discord.Thread):
        return channel.parent is not None and channel.parent.is_nsfw()
    is_nsfw = getattr(channel, "is_nsfw", None)
    return bool(is_nsfw()) if callable(is_nsfw) else False
