"""Posting results: in a thread on the job's message (or in place where threads are not possible), within
Discord's upload limits, and exactly once across retries and restarts.

Each result message is reported to the job's owner the moment Discord confirms it, so a retry or a
restarted bot posts only what is missing. Every post carries a nonce that Discord enforces, so a post
whose answer was lost is not made twice; a post older than Discord's nonce window is found in the
channel by that job's own result buttons or file names. Where the bot has no access, or only the user
installed the app (`cogs.installs`), the results go to the interaction's followups while its token lives;
otherwise the delivery ends with a reason. Each message is a result card (`cogs.cards`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import discord

from bot.config import NsfwPolicy
from bot.i18n import t, using_locale
from bot.jobs import DeliveryFailed, DeliveryReport, Job, JobSink, ResultImage
from cogs.cards import GALLERY_LIMIT, card_files, more_results_card, result_card
from cogs.installs import FOLLOWUP_CAP, Reach
from cogs.render import result_notes
from cogs.status import DEFAULT_FILE_LIMIT, EDIT_ERRORS, Followups, StatusMessage
from cogs.views import RESULT_ACTIONS

if TYPE_CHECKING:
    from bot.bot import KontextBot

__all__ = ("DiscordJobSink", "PlannedMessage", "UploadPlan", "plan_uploads")

log = logging.getLogger(__name__)

MAX_REQUEST_BYTES = 24 * 1024 * 1024  # Discord takes 25 MiB per message request; keep room for the JSON
MAX_FILES_PER_MESSAGE = GALLERY_LIMIT  # Discord takes 10 files per message, a gallery shows 10
THREAD_EXISTS = 160004
HISTORY_SCAN = 100
THREAD_NAME_LIMIT = 100
AnyChannel = discord.abc.GuildChannel | discord.abc.PrivateChannel | discord.Thread


@dataclass
class PlannedMessage:
    """One result message: its files (file name, image); the first message also has the text and buttons."""

    files: list[tuple[str, ResultImage]] = field(default_factory=list)
    size: int = 0


@dataclass
class UploadPlan:
    """Which images go up as files (in messages), which as links, how many are withheld or missing."""

    messages: list[PlannedMessage] = field(default_factory=lambda: [PlannedMessage()])
    linked: list[str] = field(default_factory=list)
    withheld: int = 0
    missing: int = 0
    spoiler: bool = True  # flagged images that are posted go up as spoilers
    withheld_here: bool = False  # withheld by the server's policy even though the channel is NSFW

    @property
    def posted(self) -> int:
        return sum(len(message.files) for message in self.messages)


def file_name(job: Job, number: int, image: ResultImage) -> str:
    """Names that say which job a file belongs to, so a post can be recognised after a restart."""
    return f"kontext-{job.id[:12]}-{number}.{image.extension}"


def plan_uploads(
    job: Job, images: Sequence[ResultImage], *, file_limit: int, nsfw_channel: bool,
    policy: NsfwPolicy = NsfwPolicy.SPOILER, max_messages: int | None = None,
) -> UploadPlan:  # fmt: skip
    """Flagged images are withheld outside NSFW channels; in NSFW channels the server's policy spoilers them
    (the default), posts them as they are, or withholds them too. Too-large ones become links, as do those that
    would need more than `max_messages` messages. The plan depends only on its arguments, so a retry makes the
    same messages in the same order."""
    shown = nsfw_channel and policy is not NsfwPolicy.WITHHOLD
    plan = UploadPlan(spoiler=policy is NsfwPolicy.SPOILER, withheld_here=nsfw_channel and not shown)
    for number, image in enumerate(images, start=1):
        if image.data is None:
            plan.missing += 1
        elif image.nsfw and not shown:
            plan.withheld += 1
        elif len(image.data) > file_limit or not _add(plan, file_name(job, number, image), image, max_messages):
            plan.linked.append(image.url)
    return plan


def _add(plan: UploadPlan, name: str, image: ResultImage, max_messages: int | None) -> bool:
    """Add the file to the last message or a new one; False when that would take too many messages."""
    size = len(image.data or b"")
    last = plan.messages[-1]
    if len(last.files) == MAX_FILES_PER_MESSAGE or last.size + size > MAX_REQUEST_BYTES:
        if max_messages is not None and len(plan.messages) >= max_messages:
            return False
        last = PlannedMessage()
        plan.messages.append(last)
    last.files.append((name, image))
    last.size += size
    return True


def _nonce(job: Job, index: int) -> str:
    return f"{job.id[:22]}-{index}"  # Discord allows 25 characters


class DiscordJobSink(JobSink):
    """`JobSink` for Discord: status edits through `StatusMessage`, results as cards in a thread (or, where the
    bot can't post, as the interaction's followups)."""

    def __init__(self, bot: KontextBot, status: StatusMessage, reach: Reach | None = None) -> None:
        self._bot = bot
        self.status = status
        self.reach = reach or Reach()

    def show(self, job: Job) -> None:
        self.status.show(job)

    async def settle(self) -> None:
        await self.status.settle()

    async def deliver(self, job: Job, images: Sequence[ResultImage], report: DeliveryReport) -> None:
        with using_locale(job.locale):
            await _Delivery(self._bot, job, images, report, self.status.followups, self.reach).run()


class _Delivery:
    """One attempt at posting one job's results."""

    def __init__(
        self,
        bot: KontextBot,
        job: Job,
        images: Sequence[ResultImage],
        report: DeliveryReport,
        followups: Followups | None,
        reach: Reach,
    ) -> None:
        self._bot = bot
        self._job = job
        self._images = images
        self._report = report
        self._followups = followups
        self._reach = reach
        self._done = len(job.result_message_ids)
        self._maybe_posted = job.delivery_attempts > 1  # an earlier attempt may have posted without recording it

    async def run(self) -> None:
        if not self._reach.channel:
            await self._post_as_followups(None)  # only the user installed the app here: no channel, no thread
            return
        try:
            channel = await self._channel()
            policy = self._bot.guild_settings.effective(self._job.guild_id).nsfw_policy
            plan = plan_uploads(self._job, self._images, file_limit=_file_limit(channel),
                                nsfw_channel=_is_nsfw(channel), policy=policy)  # fmt: skip
            if self._done >= len(plan.messages):
                return  # everything was posted before a crash
            await self._post_in_channel(channel, plan)
        except (discord.Forbidden, discord.NotFound) as exc:
            await self._post_as_followups(exc)
        except EDIT_ERRORS as exc:
            raise DeliveryFailed(
                t("Discord did not take the results ({error}).", error=_short(exc)), final=False
            ) from exc

    async def _post_in_channel(self, channel: AnyChannel, plan: UploadPlan) -> None:
        destination = await self._destination(channel)
        for index in range(self._done, len(plan.messages)):
            message = await self._find_posted(destination, plan, index) if self._maybe_posted else None
            if message is None:
                message = await destination.send(nonce=_nonce(self._job, index), **self._message(plan, index))
            else:
                log.info("job %s: result message %d was already posted", self._job.id, index + 1)
            await self._report.result_posted(message.id)
            self._done += 1

    async def _post_as_followups(self, error: discord.HTTPException | None) -> None:
        """No access to the channel (`error`), or none expected: the interaction's own webhook still works while
        its token lives, for up to FOLLOWUP_CAP messages (Discord's cap where only the user installed the app)."""
        followups = self._followups
        if followups is None or followups.expired():
            raise DeliveryFailed(_no_access_text(error), final=True) from error
        if error is not None:
            log.info("job %s: no access to channel %s (%s); posting the results as followups",
                     self._job.id, self._job.channel_id, error)  # fmt: skip
        plan = plan_uploads(self._job, self._images, file_limit=followups.filesize_limit, nsfw_channel=False,
                            max_messages=FOLLOWUP_CAP)  # fmt: skip
        try:
            for index in range(self._done, len(plan.messages)):
                message = self._message(plan, index)
                sent = await followups.webhook.send(wait=True, ephemeral=self._reach.ephemeral, **message)
                await self._report.result_posted(sent.id)
                self._done += 1
        except EDIT_ERRORS as exc:
            raise DeliveryFailed(_no_access_text(error), final=isinstance(exc, discord.HTTPException)) from exc

    def _message(self, plan: UploadPlan, index: int) -> dict[str, Any]:
        """The keyword arguments of result message `index`: a result card (Components V2) and its files."""
        planned = plan.messages[index].files
        files = card_files(planned)
        if index > 0:
            view = more_results_card(self._job, planned, spoiler=plan.spoiler)
            return {"view": view, "files": files, "allowed_mentions": discord.AllowedMentions.none()}
        notes = result_notes(posted=plan.posted, withheld=plan.withheld, linked=plan.linked, missing=plan.missing,
                             withheld_here=plan.withheld_here)  # fmt: skip
        mentions = discord.AllowedMentions(everyone=False, roles=False, users=[discord.Object(self._job.user_id)])
        return {"view": result_card(self._job, planned, notes, spoiler=plan.spoiler), "files": files,
                "allowed_mentions": mentions,
                "suppress_embeds": True}  # fmt: skip

    async def _channel(self) -> AnyChannel:
        channel: AnyChannel | None = self._bot.get_channel(self._job.channel_id)
        if channel is not None:
            return channel
        fetched: AnyChannel = await self._bot.fetch_channel(self._job.channel_id)
        return fetched

    async def _destination(self, channel: AnyChannel) -> discord.abc.Messageable:
        if self._job.thread_id is None:
            thread_id = await self._start_thread(channel)
            if thread_id is not None:
                await self._report.thread_created(thread_id)
                self._job = self._job.update(thread_id=thread_id)
        destination: discord.abc.Messageable = self._bot.get_partial_messageable(
            self._job.thread_id or self._job.channel_id, guild_id=self._job.guild_id
        )
        return destination

    async def _start_thread(self, channel: AnyChannel) -> int | None:
        origin = self._job.origin_message_id
        if origin is None or not isinstance(channel, discord.TextChannel):
            return None  # DMs, threads, forum posts and voice chats: post in place
        name = thread_name(self._job.request.prompt)
        try:
            thread = await channel.get_partial_message(origin).create_thread(name=name)
        except discord.HTTPException as exc:
            if exc.code == THREAD_EXISTS:
                return origin  # a thread's id is its starter message's id
            log.info("no thread for job %s (%s); posting in the channel", self._job.id, exc)
            return None
        return thread.id

    async def _find_posted(self, destination: discord.abc.Messageable, plan: UploadPlan, index: int) -> Any:
        """This job's result message `index`, if an earlier attempt posted it: only messages since the job
        began, only ours, recognised by this job's own result buttons or file names (never its status)."""
        names = {name for name, _ in plan.messages[index].files}
        buttons = {f"kontext:{action}:{self._job.id}" for action in RESULT_ACTIONS} if index == 0 else set()
        since = discord.Object(discord.utils.time_snowflake(self._job.created_at))
        async for message in destination.history(limit=HISTORY_SCAN, after=since):
            if self._is_ours(message) and (_attachment_names(message) & names or _custom_ids(message) & buttons):
                return message
        return None

    def _is_ours(self, message: discord.Message) -> bool:
        return self._bot.user is not None and message.author.id == self._bot.user.id


def thread_name(prompt: str) -> str:
    """One line of at most Discord's 100 characters, cut with an ellipsis."""
    name = f"Kontext: {' '.join(prompt.split())}"
    return name if len(name) <= THREAD_NAME_LIMIT else name[: THREAD_NAME_LIMIT - 1].rstrip() + "…"


def _attachment_names(message: discord.Message) -> set[str]:
    return {attachment.filename.removeprefix("SPOILER_") for attachment in message.attachments}


def _custom_ids(message: discord.Message) -> set[str]:
    return {getattr(component, "custom_id", None) or "" for component in _walk(message.components)}


def _walk(components: Iterable[Any]) -> Iterator[Any]:
    """Every component of a message, nested ones too (a V2 card's buttons sit in a row in a container)."""
    for component in components:
        yield component
        yield from _walk(getattr(component, "children", ()))
        if (accessory := getattr(component, "accessory", None)) is not None:
            yield accessory


def _file_limit(channel: object) -> int:
    """What the bot may upload there: the server's limit (bots have no Nitro), 10 MiB elsewhere."""
    guild = getattr(channel, "guild", None)
    return guild.filesize_limit if isinstance(guild, discord.Guild) else DEFAULT_FILE_LIMIT


def _is_nsfw(channel: object) -> bool:
    if isinstance(channel, discord.Thread):
        return channel.parent is not None and channel.parent.is_nsfw()
    is_nsfw = getattr(channel, "is_nsfw", None)
    return bool(is_nsfw()) if callable(is_nsfw) else False


def _no_access_text(error: discord.HTTPException | None) -> str:
    if error is None:
        return t("The results could not be posted: Discord lets me answer here only for 15 minutes after you "
                 "asked, and that time is up.")  # fmt: skip
    if isinstance(error, discord.NotFound):
        return t("The results could not be posted: the channel is gone.")
    return t("The results could not be posted: I can't post in that channel. Ask an admin to let me in.")


def _short(exc: BaseException) -> str:
    return str(exc)[:200] or type(exc).__name__
