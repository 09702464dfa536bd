"""The one path every trigger takes to start a job, and the resumption of stored jobs after a restart.

An interaction is answered first — with the job's status message — before any database read, lock or
fal request, so Discord's 3-second window never closes on a busy bot. Admission (the limits) then runs
as one atomic step in the store; a refusal takes the status message back and answers ephemerally.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import discord
from discord.ext import commands

from bot.fal import EditRequest, ModelSpec
from bot.i18n import DEFAULT_LOCALE, t, using_locale
from bot.jobs import Job, ReplyToken
from bot.log import log_context
from bot.quota import Limits
from cogs.delivery import DiscordJobSink
from cogs.inputs import ImageRef, JobOptions, build_request, check_fits
from cogs.installs import Reach, StoredTokenTarget, TokenTarget
from cogs.policy import LaunchPolicy
from cogs.render import denial_text, render_status
from cogs.replies import NO_MENTIONS, UserFacingError, answered
from cogs.status import EDIT_ERRORS, ChannelTarget, EditPacer, StatusMessage, StatusTarget

if TYPE_CHECKING:
    from bot.bot import KontextBot

__all__ = ("DefaultModel", "Draft", "Launcher", "Origin", "launcher_of", "take_back")

log = logging.getLogger(__name__)

PIN_LIFETIME = timedelta(hours=24)


@dataclass(frozen=True, slots=True)
class Origin:
    """Who asked, where, and on which message the result thread should hang (None: the status message)."""

    user: discord.User | discord.Member
    channel_id: int
    guild_id: int | None
    source: str
    message_id: int | None = None
    locale: str = DEFAULT_LOCALE
    parent_id: int | None = None  # the channel of the thread `channel_id`, if it is one (a server's channel list)


@dataclass(frozen=True, slots=True)
class Draft:
    """A request as the user gave it; `use_pin` puts their pinned image ("Use as input") first. `model` is
    the model id they chose; None: the default (`Launcher.model_for`)."""

    prompt: str
    images: tuple[ImageRef, ...]
    options: JobOptions
    use_pin: bool = False
    model: str | None = None


# Where a user's or a server's own default model plugs in: a model id, or None for no opinion. Asked before
# the interaction is answered, so it must not wait on I/O (keep such settings in memory).
DefaultModel = Callable[[Origin], str | None]


class Launcher:
    def __init__(self, bot: KontextBot) -> None:
        self.bot = bot
        self.settings = bot.settings
        self.pacer = EditPacer(interval=bot.settings.status_edit_interval_seconds,
                               per_second=bot.settings.status_edits_per_second)  # fmt: skip
        self.policy = LaunchPolicy(bot)  # the server's settings and the user's defaults (cogs/policy.py)
        self.defaults: list[DefaultModel] = [self.policy.personal_model]  # asked in order before DEFAULT_MODEL

    # --- checks that need no database ---------------------------------------------------------

    def check(self, draft: Draft, origin: Origin) -> tuple[ModelSpec, EditRequest]:
        """Everything checkable in memory: the model, the input, the access lists, the load. Raises
        `UserFacingError`."""
        self.check_access(origin)
        model = self.model_for(draft.model, origin)
        request = self._request(draft, draft.images, model, origin)
        self.check_load()
        return model, request

    def _request(self, draft: Draft, images: tuple[ImageRef, ...], model: ModelSpec, origin: Origin) -> EditRequest:
        """The checked request: the user's defaults where the draft sets nothing, then the server's safety cap."""
        options = self.policy.fill_options(origin, model, draft.options)
        request = build_request(draft.prompt, images, options, self.settings, model)
        return self.policy.narrow(origin, model, request)

    def check_load(self) -> None:
        """Past the load bounds a new request is refused now, cheaply, instead of waiting behind all the rest."""
        seconds = self.bot.load_guard.busy_for()
        if seconds is not None:
            raise UserFacingError(t("I'm very busy right now; please try again in about {seconds} s.", seconds=seconds))

    def model_for(self, choice: str | None, origin: Origin) -> ModelSpec:
        """The model a job runs on: the user's choice (refused with `UserFacingError` unless enabled and allowed
        in the server), else the first allowed model a default hook names, else DEFAULT_MODEL (or, where the server
        does not allow that, its first allowed model)."""
        enabled = self.settings.enabled_models
        if choice is not None and choice not in enabled:
            names = ", ".join(model.name for model in self.settings.models)
            raise UserFacingError(t("That model is not available here. Choose one of: {names}.", names=names))
        if choice is not None:
            self.policy.check_model(origin, choice)
        allowed = self.policy.models(origin)
        defaults = (found for ask in self.defaults if (found := ask(origin)) in allowed)
        fallback = self.settings.default_model if self.settings.default_model in allowed else allowed[0]
        return self.settings.model(choice or next(defaults, fallback))

    def check_access(self, origin: Origin) -> None:
        """The operator's servers and roles, then the server's own channels and roles."""
        allowed_guilds, allowed_roles = self.settings.allowed_guild_ids, self.settings.allowed_role_ids
        if allowed_guilds and origin.guild_id not in allowed_guilds:
            raise UserFacingError(t("This bot is not enabled here."))
        if allowed_roles and not any(role.id in allowed_roles for role in getattr(origin.user, "roles", ())):
            raise UserFacingError(t("You need one of the roles an admin allowed to use this bot."))
        self.policy.check_origin(origin)

    @property
    def limits(self) -> Limits:
        """The operator's limits (a server may tighten them: `limits_for`)."""
        return Limits.from_settings(self.settings)

    def limits_for(self, origin: Origin) -> Limits:
        return self.policy.limits(origin.guild_id, self.limits)

    # --- interactions ---------------------------------------------------------------------------

    async def from_interaction(self, interaction: discord.Interaction[Any], draft: Draft, origin: Origin) -> None:
        """Check in memory, answer with the status message (or turn a defer into it), then admit and submit."""
        model, request = self.check(draft, origin)
        await self._launch(interaction, model, request, origin, draft)

    async def from_request(
        self, interaction: discord.Interaction[Any], request: EditRequest, model_id: str, origin: Origin
    ) -> None:
        """Launch a request built from an earlier job (Reroll) on that job's model, if it is still enabled."""
        self.check_access(origin)
        model = self.model_for(model_id, origin)
        check_fits(request, model)
        request = self.policy.narrow(origin, model, request)
        self.check_load()
        await self._launch(interaction, model, request, origin, None)

    async def _launch(
        self, interaction: discord.Interaction[Any], model: ModelSpec, request: EditRequest, origin: Origin,
        draft: Draft | None,
    ) -> None:  # fmt: skip
        job = self._new_job(model, request, origin)
        with log_context(job_id=job.id, guild_id=job.guild_id, user_id=job.user_id), self.bot.load_guard.admission():
            await self._answer_and_launch(interaction, job, origin, draft)

    async def _answer_and_launch(
        self, interaction: discord.Interaction[Any], job: Job, origin: Origin, draft: Draft | None
    ) -> None:
        reach = Reach.of(interaction)
        target = TokenTarget(interaction, reach)
        status = self._status(job, target)
        content, view = target.text(render_status(job)), status.cancel_view()
        target.message_id = message_id = await _answer(interaction, content, view, ephemeral=reach.ephemeral)
        job = job.update(status_message_id=message_id, origin_message_id=origin.message_id or message_id,
                         reply=None if reach.channel else ReplyToken(interaction.token, reach.ephemeral))  # fmt: skip
        status.mark_shown(job)
        try:
            job = await self._with_pin(job, draft, origin)
            denial = await self.bot.runner.admit(job, self.limits_for(origin))
        except UserFacingError as exc:
            await take_back(interaction, str(exc))
            return
        except Exception:
            log.exception("admitting a job for interaction %s failed", interaction.id)
            await take_back(interaction, t("Something went wrong on my side; it has been logged."))
            return
        if denial is not None:
            await take_back(interaction, denial_text(denial))
            return
        self.bot.runner.launch(job, DiscordJobSink(self.bot, status, reach))
        if draft is not None and draft.use_pin and len(job.request.image_urls) > len(draft.images):
            await self.bot.store.unpin_input(origin.user.id)  # used up once a job launched

    async def _with_pin(self, job: Job, draft: Draft | None, origin: Origin) -> Job:
        """The job with the user's pinned image first, if they have one; checked again with it."""
        if draft is None or not draft.use_pin:
            return job
        pinned = await self.bot.store.pinned_input(job.user_id, datetime.now(UTC) - PIN_LIFETIME)
        if pinned is None:
            return job
        images = (ImageRef(pinned[0], "pinned", content_type=pinned[1]), *draft.images)
        model = self.settings.model(job.model.id)  # with the operator's price
        request = self._request(draft, images, model, origin)
        return job.update(request=request, cost_usd=model.estimate(request))

    # --- the reaction trigger (no interaction) ----------------------------------------------------

    async def from_message(self, model: ModelSpec, request: EditRequest, origin: Origin) -> None:
        """Post the status as a reply to the message, then admit; a refusal replaces the status for a minute."""
        channel = self.bot.get_partial_messageable(origin.channel_id, guild_id=origin.guild_id)
        job = self._new_job(model, request, origin)
        reply = channel.get_partial_message(origin.message_id) if origin.message_id else discord.utils.MISSING
        target = ChannelTarget(self.bot, origin.channel_id, None)
        status = self._status(job, target)
        message = await channel.send(render_status(job), view=status.cancel_view(), allowed_mentions=NO_MENTIONS,
                                     reference=reply, mention_author=False, suppress_embeds=True)  # fmt: skip
        target.message_id = message.id
        job = job.update(status_message_id=message.id, origin_message_id=origin.message_id or message.id)
        status.mark_shown(job)
        denial = await self.bot.runner.admit(job, self.limits_for(origin))
        if denial is not None:
            await message.edit(content=f"<@{origin.user.id}> {denial_text(denial)}", view=None, delete_after=60,
                               allowed_mentions=NO_MENTIONS)  # fmt: skip
            return
        self.bot.runner.launch(job, DiscordJobSink(self.bot, status))

    # --- after a restart ------------------------------------------------------------------------

    async def resume_all(self) -> int:
        """Pick up every stored job that is not finished and belongs to a shard this process runs."""
        stored = await self.bot.store.unfinished(self.settings.shards)
        jobs = [job for job in stored if self.bot.runner.live(job.id) is None]
        for job in jobs:
            target, reach = self._resumed_target(job)
            self.bot.runner.resume(job, DiscordJobSink(self.bot, self._status(job, target, shown=False), reach))
        if jobs:
            log.info("resumed %d unfinished job(s)", len(jobs))
        return len(jobs)

    def _resumed_target(self, job: Job) -> tuple[StatusTarget, Reach | None]:
        """A resumed job's status: its channel message, or where only the user installed the app, the
        interaction's message through the stored token (`ReplyToken`), which is all the bot has there."""
        if job.reply is None:
            return ChannelTarget(self.bot, job.channel_id, job.status_message_id), None
        target = StoredTokenTarget(self.bot, job)
        return target, target.reach

    # --- helpers --------------------------------------------------------------------------------

    def _new_job(self, model: ModelSpec, request: EditRequest, origin: Origin) -> Job:
        return Job(
            request=request, user_id=origin.user.id, channel_id=origin.channel_id, guild_id=origin.guild_id,
            source=origin.source, origin_message_id=origin.message_id, endpoint=model.endpoint,
            cost_usd=model.estimate(request), locale=origin.locale,
        )  # fmt: skip

    def _status(self, job: Job, target: StatusTarget, *, shown: bool = True) -> StatusMessage:
        on_moved = functools.partial(self.bot.runner.status_moved, job.id)
        status = StatusMessage(self.bot, job, target, pacer=self.pacer, on_moved=on_moved)
        if shown:
            status.mark_shown(job)
        return status


async def _answer(
    interaction: discord.Interaction[Any], content: str, view: discord.ui.View, *, ephemeral: bool
) -> int | None:
    """Answer with `content` (the first response, or an edit of a defer); the message's id. `ephemeral` where
    Discord makes it so anyway (`Reach`), so that discord.py knows it too."""
    if not interaction.response.is_done():
        response = await interaction.response.send_message(
            content, view=view, allowed_mentions=NO_MENTIONS, suppress_embeds=True, ephemeral=ephemeral
        )
        answered(interaction)
        return response.message_id
    message = await interaction.edit_original_response(content=content, view=view, allowed_mentions=NO_MENTIONS)
    return message.id


async def take_back(interaction: discord.Interaction[Any], text: str) -> None:
    """Replace the public answer to the interaction (a status message or a defer) by an ephemeral refusal."""
    try:
        await interaction.delete_original_response()
    except EDIT_ERRORS as exc:
        log.info("could not take back the status of interaction %s: %r", interaction.id, exc)
    try:
        await interaction.followup.send(text, ephemeral=True, allowed_mentions=NO_MENTIONS)
    except EDIT_ERRORS as exc:
        log.warning("could not tell the user of interaction %s why: %r", interaction.id, exc)


class Jobs(commands.Cog):
    """Owns the `Launcher` and resumes stored jobs once the bot is ready."""

    def __init__(self, bot: KontextBot) -> None:
        self.bot = bot
        self.launcher = Launcher(bot)
        self._resume_task: asyncio.Task[None] | None = None

    async def cog_load(self) -> None:
        self._resume_task = asyncio.create_task(self._resume_when_ready(), name="resume-jobs")

    async def cog_unload(self) -> None:
        if self._resume_task is not None:
            self._resume_task.cancel()

    async def _resume_when_ready(self) -> None:
        await self.bot.wait_until_ready()
        with using_locale(None):
            await self.launcher.resume_all()


def launcher_of(bot: KontextBot) -> Launcher:
    """The launcher, for the other cogs."""
    cog = bot.get_cog(Jobs.__cog_name__)
    if not isinstance(cog, Jobs):
        raise RuntimeError("the Jobs cog is not loaded")
    return cog.launcher


async def setup(bot: KontextBot) -> None:
    await bot.add_cog(Jobs(bot))
