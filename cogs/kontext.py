"""Discord entry points: /kontext, the "Edit with Kontext" menu, the reaction trigger, the result
buttons and /kontext-usage. Each one checks, extracts and hands over to the `Launcher`."""

from __future__ import annotations

import asyncio
import functools
import logging
import random
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import discord
from discord import app_commands
from discord.ext import commands

from bot.fal import ASPECT_RATIOS, FalError, KontextInput, OutputImage
from bot.jobs import Job, JobState
from bot.messages import describe_failure
from cogs.inputs import (
    MAX_SEED,
    ImageRef,
    JobOptions,
    UserFacingError,
    build_request,
    check_images,
    images_of_message,
)
from cogs.launch import Launcher, Origin
from cogs.refresh import refresh_discord_urls
from cogs.render import money
from cogs.views import CancelButton, EditAgainButton, PromptModal, RerollButton, UseAsInputButton

if TYPE_CHECKING:
    from bot.bot import KontextBot

log = logging.getLogger(__name__)

PROMPT_WAIT_SECONDS = 120
PIN_LIFETIME = timedelta(hours=24)
BUTTONS = (CancelButton, RerollButton, EditAgainButton, UseAsInputButton)
Choice = app_commands.Choice


async def send_ephemeral(interaction: discord.Interaction[Any], text: str) -> None:
    """Answer only the user; if Discord no longer takes the answer (expired interaction), log it and move on."""
    try:
        if interaction.response.is_done():
            await interaction.followup.send(text, ephemeral=True)
        else:
            await interaction.response.send_message(text, ephemeral=True)
    except discord.HTTPException as exc:
        log.warning("could not answer interaction %s: %s", interaction.id, exc)


def parse_count(value: str, what: str, upper: int) -> int:
    try:
        number = int(value.strip() or "1")
    except ValueError:
        raise UserFacingError(f"{what} must be a number from 1 to {upper}.") from None
    if not 1 <= number <= upper:
        raise UserFacingError(f"{what} must be a number from 1 to {upper}.")
    return number


class Kontext(commands.Cog):
    def __init__(self, bot: KontextBot) -> None:
        self.bot = bot
        self.launcher = Launcher(bot)
        self.edit_menu = app_commands.ContextMenu(name="Edit with Kontext", callback=self.edit_with_kontext)
        self._resume_task: asyncio.Task[None] | None = None

    async def cog_load(self) -> None:
        self.bot.tree.add_command(self.edit_menu)
        self.bot.add_dynamic_items(*BUTTONS)
        self._resume_task = asyncio.create_task(self._resume_when_ready(), name="resume-jobs")

    async def cog_unload(self) -> None:
        self.bot.tree.remove_command(self.edit_menu.name, type=self.edit_menu.type)
        self.bot.remove_dynamic_items(*BUTTONS)
        if self._resume_task is not None:
            self._resume_task.cancel()

    async def _resume_when_ready(self) -> None:
        await self.bot.wait_until_ready()
        await self.launcher.resume_all()

    # --- /kontext -----------------------------------------------------------------------------

    @app_commands.command(name="kontext", description="Edit or combine up to 4 images with FLUX.1 Kontext [max]")
    @app_commands.describe(
        prompt="What to change, e.g. 'put the hat from image 2 on the dog in image 1'",
        image1="First image (PNG, JPEG or WebP)", image2="Second image", image3="Third image", image4="Fourth image",
        guidance_scale="How closely to follow the prompt (1-20, default 3.5)", num_images="How many results (1-4)",
        output_format="File format of the results", safety_tolerance="1 is strictest, 6 most permissive (default 2)",
        aspect_ratio="Aspect ratio of the result", seed="Same seed + same inputs = same result",
    )  # fmt: skip
    @app_commands.choices(
        output_format=[Choice(name="JPEG", value="jpeg"), Choice(name="PNG", value="png")],
        safety_tolerance=[Choice(name=str(level), value=str(level)) for level in range(1, 7)],
        aspect_ratio=[Choice(name=ratio, value=ratio) for ratio in ASPECT_RATIOS],
    )
    async def kontext(
        self,
        interaction: discord.Interaction[Any],
        prompt: str,
        image1: discord.Attachment | None = None,
        image2: discord.Attachment | None = None,
        image3: discord.Attachment | None = None,
        image4: discord.Attachment | None = None,
        guidance_scale: app_commands.Range[float, 1, 20] | None = None,
        num_images: app_commands.Range[int, 1, 4] = 1,
        output_format: str = "jpeg",
        safety_tolerance: str | None = None,
        aspect_ratio: str | None = None,
        seed: app_commands.Range[int, 0, MAX_SEED] | None = None,
    ) -> None:
        images = [ImageRef.from_attachment(a) for a in (image1, image2, image3, image4) if a is not None]
        options = JobOptions(guidance_scale, num_images, output_format, safety_tolerance, aspect_ratio, seed)
        await self._launch(interaction, prompt, images, options, source="slash")

    async def _launch(
        self, interaction: discord.Interaction[Any], prompt: str, images: list[ImageRef], options: JobOptions,
        *, source: str, message_id: int | None = None, use_pin: bool = True,
    ) -> None:  # fmt: skip
        """Validate, then launch; a problem becomes an ephemeral message and no fal call."""
        pinned = await self._pinned_input(interaction.user.id) if use_pin else None
        try:
            request = build_request(prompt, [*pinned, *images] if pinned else images, options, self.bot.settings)
            await self._launch_request(interaction, request, source=source, message_id=message_id)
        except UserFacingError as exc:
            await send_ephemeral(interaction, str(exc))
            return
        if pinned:
            await self.bot.store.unpin_input(interaction.user.id)  # used up only once a job was launched

    async def _launch_request(
        self, interaction: discord.Interaction[Any], request: KontextInput, *, source: str, message_id: int | None
    ) -> None:
        channel_id = interaction.channel_id
        if channel_id is None:
            raise UserFacingError("I can't work in this kind of channel.")
        origin = Origin(interaction.user, channel_id, interaction.guild_id, source, message_id)
        await self.launcher.from_interaction(interaction, request, origin)

    async def _pinned_input(self, user_id: int) -> list[ImageRef]:
        """The image the user saved with "Use as input", if any (it comes first)."""
        pinned = await self.bot.store.pinned_input(user_id, datetime.now(UTC) - PIN_LIFETIME)
        return [ImageRef(pinned[0], "pinned", content_type=pinned[1])] if pinned else []

    # --- "Edit with Kontext" message menu -----------------------------------------------------

    async def edit_with_kontext(self, interaction: discord.Interaction[Any], message: discord.Message) -> None:
        images = images_of_message(message)
        if not images:
            await send_ephemeral(interaction, "That message has no images I can use (PNG, JPEG or WebP).")
            return
        try:
            check_images(images, self.bot.settings)  # before the user types a prompt for nothing
        except UserFacingError as exc:
            await send_ephemeral(interaction, str(exc))
            return
        on_values = functools.partial(self._menu_submitted, message_id=message.id, images=images)
        await interaction.response.send_modal(PromptModal("Edit with Kontext", on_values, max_length=self._max_prompt))

    async def _menu_submitted(
        self, interaction: discord.Interaction[Any], values: dict[str, str], *, message_id: int, images: list[ImageRef]
    ) -> None:
        try:
            options = JobOptions(num_images=parse_count(values["num_images"], "Number of results", 4))
        except UserFacingError as exc:
            await send_ephemeral(interaction, str(exc))
            return
        await self._launch(interaction, values["prompt"], images, options, source="context_menu", message_id=message_id)

    @property
    def _max_prompt(self) -> int:
        return self.bot.settings.max_prompt_length

    # --- reaction trigger ---------------------------------------------------------------------

    @commands.Cog.listener()
    async def on_raw_reaction_add(self, payload: discord.RawReactionActionEvent) -> None:
        if str(payload.emoji) != self.bot.settings.trigger_emoji or payload.guild_id is None:
            return
        if payload.member is None or payload.member.bot:
            return
        try:
            await self._reaction_trigger(payload, payload.member)
        except discord.HTTPException:
            log.exception("reaction trigger on message %s failed", payload.message_id)

    async def _reaction_trigger(self, payload: discord.RawReactionActionEvent, member: discord.Member) -> None:
        channel = self.bot.get_partial_messageable(payload.channel_id, guild_id=payload.guild_id)
        message = await channel.fetch_message(payload.message_id)
        images = images_of_message(message)
        if not images:
            return  # the emoji on a message without images is just an emoji
        prompt = message.content.strip() or await self._ask_for_prompt(message, member)
        if prompt is None:
            return
        origin = Origin(member, payload.channel_id, payload.guild_id, "reaction", message.id)
        try:
            request = build_request(prompt, images, JobOptions(), self.bot.settings)
            await self.launcher.from_message(request, origin)
        except UserFacingError as exc:
            await message.reply(f"{member.mention} {exc}", allowed_mentions=_only(member), delete_after=60)

    async def _ask_for_prompt(self, message: discord.Message, member: discord.Member) -> str | None:
        question = await message.reply(
            f"{member.mention} what should I do with these images? Send your prompt in this channel "
            f"within {PROMPT_WAIT_SECONDS // 60} minutes.",
            allowed_mentions=_only(member),
        )

        def is_answer(reply: discord.Message) -> bool:
            return reply.author.id == member.id and reply.channel.id == message.channel.id and bool(reply.content)

        try:
            answer = await self.bot.wait_for("message", check=is_answer, timeout=PROMPT_WAIT_SECONDS)
        except TimeoutError:
            await question.edit(content=f"{member.mention} no prompt arrived; react again to retry.")
            return None
        return str(answer.content)

    # --- result and status buttons ------------------------------------------------------------

    async def cancel_pressed(self, interaction: discord.Interaction[Any], job_id: str) -> None:
        job = self.bot.runner.live(job_id) or await self.bot.store.get(job_id)
        problem = self._cancel_problem(interaction, job)
        if problem or job is None:
            await send_ephemeral(interaction, problem or "I don't know this job any more.")
            return
        await interaction.response.defer(ephemeral=True, thinking=True)
        job.touch(cancel_requested=True)
        await self.bot.store.save(job)
        try:
            accepted = await self.bot.fal.cancel(job.handle)
        except FalError as exc:
            await interaction.followup.send(f"Could not cancel: {describe_failure(exc)}", ephemeral=True)
            return
        await interaction.followup.send(
            "Cancel requested. A job that already started may still finish; it will then be posted."
            if accepted else "Too late: the job already finished.",
            ephemeral=True,
        )  # fmt: skip

    def _cancel_problem(self, interaction: discord.Interaction[Any], job: Job | None) -> str | None:
        if job is None:
            return "I don't know this job any more."
        if interaction.user.id != job.user_id and not interaction.permissions.manage_messages:
            return f"Only <@{job.user_id}> or a moderator can cancel this job."
        if job.state not in (JobState.QUEUED, JobState.RUNNING):
            return "This job is already finished."
        return None

    async def reroll_pressed(self, interaction: discord.Interaction[Any], job_id: str) -> None:
        job = await self._stored_job(interaction, job_id)
        if job is None:
            return
        urls = await refresh_discord_urls(self.bot, job.request.image_urls)
        request = job.request.model_copy(update={"image_urls": urls, "seed": random.randint(0, MAX_SEED)})
        try:
            await self._launch_request(interaction, request, source="reroll", message_id=None)
        except UserFacingError as exc:
            await send_ephemeral(interaction, str(exc))

    async def edit_again_pressed(self, interaction: discord.Interaction[Any], job_id: str) -> None:
        job = await self._stored_job(interaction, job_id, need_result=True)
        if job is None or job.result is None:
            return
        on_values = functools.partial(self._edit_again_submitted, job=job)
        modal = PromptModal("Edit again", on_values, default_prompt=job.request.prompt, max_length=self._max_prompt,
                            image_count=len(job.result.images))  # fmt: skip
        await interaction.response.send_modal(modal)

    async def _edit_again_submitted(
        self, interaction: discord.Interaction[Any], values: dict[str, str], *, job: Job
    ) -> None:
        assert job.result is not None  # noqa: S101  # checked before the modal was sent
        try:
            which = parse_count(values.get("which", "1"), "Which result", len(job.result.images))
            options = JobOptions(num_images=parse_count(values["num_images"], "Number of results", 4),
                                 output_format=job.request.output_format)  # fmt: skip
        except UserFacingError as exc:
            await send_ephemeral(interaction, str(exc))
            return
        image = _as_input(job.result.images[which - 1])
        await self._launch(interaction, values["prompt"], [image], options, source="edit_again", use_pin=False)

    async def use_as_input_pressed(self, interaction: discord.Interaction[Any], job_id: str) -> None:
        job = await self._stored_job(interaction, job_id, need_result=True)
        if job is None or job.result is None:
            return
        image = job.result.images[0]
        await self.bot.store.pin_input(interaction.user.id, image.url, image.content_type, datetime.now(UTC))
        await send_ephemeral(
            interaction,
            "📌 Saved. Your next `/kontext` or *Edit with Kontext* starts from this image; add up to "
            f"{self.bot.settings.max_images - 1} more. It is kept for 24 hours.",
        )

    async def _stored_job(
        self, interaction: discord.Interaction[Any], job_id: str, *, need_result: bool = False
    ) -> Job | None:
        job = await self.bot.store.get(job_id)
        if job is None:
            await send_ephemeral(interaction, "I don't know this job any more.")
            return None
        if need_result and (job.result is None or not job.result.images):
            await send_ephemeral(interaction, "This job has no result image to use.")
            return None
        return job

    # --- /kontext-usage -----------------------------------------------------------------------

    @app_commands.command(name="kontext-usage", description="How many images you (and this server) used today")
    async def usage(self, interaction: discord.Interaction[Any]) -> None:
        is_admin = interaction.guild_id is not None and interaction.permissions.manage_guild
        mine, guild = await self.launcher.quotas.usage(
            datetime.now(UTC), user_id=interaction.user.id, guild_id=interaction.guild_id if is_admin else None
        )
        lines = [
            f"**You**: {mine.images_today} of {mine.images_limit} images today (≈{money(mine.cost_today)}), "
            f"{mine.active} job(s) running. Resets <t:{int(mine.resets_at.timestamp())}:R>.",
            f"Price: {money(self.launcher.quotas.cost(1))} per result image.",
        ]
        if guild is not None:
            lines.insert(1, f"**This server**: {guild.images_today} of {guild.images_limit} images today "
                            f"(≈{money(guild.cost_today)}).")  # fmt: skip
        await send_ephemeral(interaction, "\n".join(lines))

    async def cog_app_command_error(
        self, interaction: discord.Interaction[Any], error: app_commands.AppCommandError
    ) -> None:
        original = getattr(error, "original", error)
        if isinstance(original, UserFacingError):
            await send_ephemeral(interaction, str(original))
            return
        log.error("command %s failed", interaction.command and interaction.command.name, exc_info=original)
        await send_ephemeral(interaction, "Something went wrong on my side; it has been logged.")


def _only(member: discord.Member) -> discord.AllowedMentions:
    return discord.AllowedMentions(everyone=False, roles=False, users=[member])


def _as_input(image: OutputImage) -> ImageRef:
    return ImageRef(image.url, "result", content_type=image.content_type)


async def setup(bot: KontextBot) -> None:
    await bot.add_cog(Kontext(bot))
