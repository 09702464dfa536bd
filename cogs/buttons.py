"""What the job buttons do: Cancel on the status message; Reroll, Edit again and Use as input under a
result. The job behind a button is looked up by the id in its custom_id."""

from __future__ import annotations

import functools
import logging
import random
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import discord
from discord.ext import commands

from bot.fal import ModelSpec, OutputImage, find_model
from bot.i18n import t
from bot.jobs import CancelOutcome, CancelResult, Job
from bot.messages import describe_failure
from cogs.forms import EditForm, FormValues, image_room
from cogs.inputs import ImageRef, JobOptions
from cogs.launch import Draft, Launcher, launcher_of, take_back
from cogs.refresh import refresh_discord_urls
from cogs.replies import UserFacingError, replying, send_ephemeral
from cogs.triggers import origin_of, parse_count
from cogs.views import BUTTONS, HANDLER_COG

if TYPE_CHECKING:
    from bot.bot import KontextBot

log = logging.getLogger(__name__)


class ResultButtons(commands.Cog, name=HANDLER_COG):
    def __init__(self, bot: KontextBot) -> None:
        self.bot = bot

    async def cog_load(self) -> None:
        self.bot.add_dynamic_items(*BUTTONS)

    async def cog_unload(self) -> None:
        self.bot.remove_dynamic_items(*BUTTONS)

    @property
    def launcher(self) -> Launcher:
        return launcher_of(self.bot)

    async def job_button(self, interaction: discord.Interaction[Any], action: str, job_id: str) -> None:
        handlers = {"cancel": self._cancel, "reroll": self._reroll, "edit": self._edit_again, "use": self._use_as_input}
        async with replying(interaction):
            await handlers[action](interaction, job_id)

    async def _job(self, job_id: str, *, need_result: bool = False) -> Job:
        job = await self.bot.runner.lookup(job_id)
        if job is None:
            raise UserFacingError(t("I don't know this job any more."))
        if need_result and (job.result is None or not job.result.images):
            raise UserFacingError(t("This job has no result image to use."))
        return job

    # --- Cancel ---------------------------------------------------------------------------------

    async def _cancel(self, interaction: discord.Interaction[Any], job_id: str) -> None:
        await interaction.response.defer(ephemeral=True, thinking=True)
        job = await self._job(job_id)
        if interaction.user.id != job.user_id and not interaction.permissions.manage_messages:
            raise UserFacingError(t("Only <@{user}> or a moderator can cancel this job.", user=job.user_id))
        result = await self.bot.runner.request_cancel(job_id)
        await send_ephemeral(interaction, _cancel_text(result))

    # --- Reroll ---------------------------------------------------------------------------------

    async def _reroll(self, interaction: discord.Interaction[Any], job_id: str) -> None:
        """The same model, inputs and options with a new seed; answered first, since it needs the store."""
        await interaction.response.defer(thinking=True)
        try:
            job = await self._job(job_id)
            if interaction.user.id != job.user_id and not interaction.permissions.manage_messages:
                raise UserFacingError(_not_yours(job))
            model = _model_of(job)
            urls = await refresh_discord_urls(self.bot, job.request.image_urls)
            update: dict[str, Any] = {"image_urls": urls}
            seeds = model.option("seed")
            if seeds is not None and seeds.span is not None:
                update["seed"] = random.randint(int(seeds.span[0]), int(seeds.span[1]))
            request = job.request.model_copy(update=update)
            await self.launcher.from_request(interaction, request, model.id, origin_of(interaction, "reroll"))
        except UserFacingError as exc:
            await take_back(interaction, str(exc))

    # --- Edit again -----------------------------------------------------------------------------

    async def _edit_again(self, interaction: discord.Interaction[Any], job_id: str) -> None:
        """A modal must be the first answer, so this reads the job first (from memory when it is recent). The
        form takes more images to combine with the result."""
        job = await self._job(job_id, need_result=True)
        assert job.result is not None  # noqa: S101  # checked by _job
        model = _model_of(job)
        on_values = functools.partial(self._edit_again_submitted, job=job)
        form = EditForm(
            t("Edit again"), on_values, uploads=(0, image_room(self.bot.settings, model) - 1),
            default_prompt=job.request.prompt, max_length=self.bot.settings.max_prompt_length,
            image_count=len(job.result.images), max_results=model.max_outputs,
        )  # fmt: skip
        await interaction.response.send_modal(form)

    async def _edit_again_submitted(
        self, interaction: discord.Interaction[Any], values: FormValues, *, job: Job
    ) -> None:
        async with replying(interaction):
            model = _model_of(job)  # an edit of a result stays on the model that made it
            images = job.result.images if job.result else ()
            which = parse_count(values.which, t("Which result"), len(images))
            count = parse_count(values.num_images, t("Number of results"), model.max_outputs)
            options = JobOptions(num_images=count, output_format=job.request.output_format)
            inputs = (_as_input(images[which - 1]), *values.images)
            draft = Draft(values.prompt, inputs, options, model=model.id)
            await self.launcher.from_interaction(interaction, draft, origin_of(interaction, "edit_again"))

    # --- Use as input ---------------------------------------------------------------------------

    async def _use_as_input(self, interaction: discord.Interaction[Any], job_id: str) -> None:
        await interaction.response.defer(ephemeral=True, thinking=True)
        job = await self._job(job_id, need_result=True)
        assert job.result is not None  # noqa: S101  # checked by _job
        image = job.result.images[0]
        await self.bot.store.pin_input(interaction.user.id, image.url, image.content_type, datetime.now(UTC))
        await send_ephemeral(interaction, t(
            "📌 Saved. Your next `/kontext` or *Edit with Kontext* starts from this image; add up to {more} more. "
            "It is kept for 24 hours.", more=self.bot.settings.max_images - 1))  # fmt: skip


def _not_yours(job: Job) -> str:
    """Reroll repeats the requester's inputs (maybe private uploads) at the presser's cost: theirs, or a mod's."""
    return t(
        "Only <@{user}> or a moderator can reroll this: it repeats their inputs. "
        "**Edit again** starts your own edit from the result.",
        user=job.user_id,
    )


def _model_of(job: Job) -> ModelSpec:
    model = find_model(job.endpoint)
    if model is None:
        raise UserFacingError(t("The model of this job is not available any more."))
    return model


def _as_input(image: OutputImage) -> ImageRef:
    pixels = image.width * image.height if image.width and image.height else None
    return ImageRef(image.url, "result", content_type=image.content_type, pixels=pixels)


def _cancel_text(result: CancelResult) -> str:
    match result.outcome:
        case CancelOutcome.UNKNOWN:
            return t("I don't know this job any more.")
        case CancelOutcome.FINISHED:
            return t("This job is already finished.")
        case CancelOutcome.REQUESTED:
            return t("Cancel requested. A job that already started may still finish; it will then be posted.")
        case CancelOutcome.TOO_LATE:
            return t("Too late: the job already finished.")
        case CancelOutcome.FAILED:
            return t("Could not cancel: {reason}", reason=describe_failure(result.error))


async def setup(bot: KontextBot) -> None:
    await bot.add_cog(ResultButtons(bot))
