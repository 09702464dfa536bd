"""The three ways to start a job: /kontext, the "Edit with Kontext" message menu, and the reaction.
Each one checks, extracts and hands over to the `Launcher`."""

from __future__ import annotations

import dataclasses
import functools
import logging
from collections.abc import Callable, Coroutine, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import discord
from discord import app_commands
from discord.ext import commands

from bot.fal import ModelSpec
from bot.i18n import N_, Np_, t, using_locale
from bot.quota import decide
from cogs.forms import EditForm, FormValues, image_room
from cogs.inputs import (
    ASPECT_RATIOS,
    GUIDANCE,
    NUM_IMAGES,
    OUTPUT_FORMATS,
    SAFETY_LEVELS,
    SEED,
    ImageRef,
    JobOptions,
    check_images,
    images_of_message,
)
from cogs.installs import anywhere
from cogs.launch import Draft, Launcher, Origin, launcher_of
from cogs.policy import thread_parent
from cogs.render import denial_text
from cogs.replies import UserFacingError, replying
from cogs.status import EDIT_ERRORS

if TYPE_CHECKING:
    from bot.bot import KontextBot

log = logging.getLogger(__name__)

PROMPT_WAIT_SECONDS = 120
NOTICE_SECONDS = 60
DESCRIPTION = N_("Edit or combine images with FLUX.1 Kontext [max] or another model")
Choice = app_commands.Choice


def parse_count(value: str, what: str, upper: int) -> int:
    try:
        number = int(value.strip() or "1")
    except ValueError:
        number = 0
    if not 1 <= number <= upper:
        raise UserFacingError(t("{what} must be a number from 1 to {upper}.", what=what, upper=upper))
    return number


def origin_of(interaction: discord.Interaction[Any], source: str, message_id: int | None = None) -> Origin:
    if interaction.channel_id is None:
        raise UserFacingError(t("I can't work in this kind of channel."))
    parent_id = interaction.channel.parent_id if isinstance(interaction.channel, discord.Thread) else None
    return Origin(interaction.user, interaction.channel_id, interaction.guild_id, source, message_id,
                  str(interaction.locale), parent_id)  # fmt: skip


KontextRun = Callable[
    [discord.Interaction[Any], str | None, tuple[ImageRef, ...], JobOptions, str | None], Coroutine[Any, Any, None]
]


def kontext_command(run: KontextRun, models: Sequence[ModelSpec]) -> app_commands.Command[Any, ..., None]:
    """/kontext, its `model` option offering `models`. Built per bot, since the enabled models are settings;
    the other options' ranges and choices are the widest any registered model allows (each model checks its own)."""

    @app_commands.rename(
        prompt=Np_("command", "prompt"), image1=Np_("command", "image1"), image2=Np_("command", "image2"),
        image3=Np_("command", "image3"), image4=Np_("command", "image4"), model=Np_("command", "model"),
        guidance_scale=Np_("command", "guidance_scale"), num_images=Np_("command", "num_images"),
        output_format=Np_("command", "output_format"), safety_tolerance=Np_("command", "safety_tolerance"),
        aspect_ratio=Np_("command", "aspect_ratio"), seed=Np_("command", "seed"),
    )  # fmt: skip
    @app_commands.describe(
        prompt=N_("What to change, e.g. 'put the hat from image 2 on the dog in image 1' (no images: a form asks)"),
        image1=N_("First image (PNG, JPEG or WebP)"), image2=N_("Second image"), image3=N_("Third image"),
        image4=N_("Fourth image"),
        guidance_scale=N_("How closely to follow the prompt (1-20, default 3.5; Kontext only)"),
        num_images=N_("How many results"), output_format=N_("File format of the results"),
        safety_tolerance=N_("1 is strictest, higher is more permissive (default 2)"),
        aspect_ratio=N_("Aspect ratio of the result"), seed=N_("Same seed + same inputs = same result"),
        model=N_("Which model makes the edit; each has its own price (see /kontext-usage)"),
    )  # fmt: skip
    @app_commands.choices(
        output_format=[Choice(name=value.upper(), value=value) for value in OUTPUT_FORMATS],
        safety_tolerance=[Choice(name=value, value=value) for value in SAFETY_LEVELS],
        aspect_ratio=[Choice(name=value, value=value) for value in ASPECT_RATIOS],
        model=[Choice(name=model.name, value=model.id) for model in models],
    )
    async def kontext(
        interaction: discord.Interaction[Any],
        prompt: str | None = None,
        image1: discord.Attachment | None = None,
        image2: discord.Attachment | None = None,
        image3: discord.Attachment | None = None,
        image4: discord.Attachment | None = None,
        model: str | None = None,
        guidance_scale: app_commands.Range[float, GUIDANCE[0], GUIDANCE[1]] | None = None,
        num_images: app_commands.Range[int, NUM_IMAGES[0], NUM_IMAGES[1]] | None = None,
        output_format: str | None = None,
        safety_tolerance: str | None = None,
        aspect_ratio: str | None = None,
        seed: app_commands.Range[int, SEED[0], SEED[1]] | None = None,
    ) -> None:
        images = tuple(ImageRef.from_attachment(a) for a in (image1, image2, image3, image4) if a is not None)
        options = JobOptions(guidance_scale, num_images, output_format, safety_tolerance, aspect_ratio, seed)
        await run(interaction, prompt, images, options, model)

    return anywhere(app_commands.Command(name=Np_("command", "kontext"), description=DESCRIPTION, callback=kontext))


class Triggers(commands.Cog):
    def __init__(self, bot: KontextBot) -> None:
        self.bot = bot
        self.kontext_command = kontext_command(self.kontext, bot.settings.models)
        self.edit_menu = anywhere(
            app_commands.ContextMenu(name=Np_("command", "Edit with Kontext"), callback=self.edit_with_kontext)
        )
        self._questions: set[tuple[int, int]] = set()  # (channel, member) whose reaction is being handled

    async def cog_load(self) -> None:
        self.bot.tree.add_command(self.kontext_command)
        self.bot.tree.add_command(self.edit_menu)

    async def cog_unload(self) -> None:
        self.bot.tree.remove_command(self.kontext_command.name)
        self.bot.tree.remove_command(self.edit_menu.name, type=self.edit_menu.type)

    @property
    def launcher(self) -> Launcher:
        return launcher_of(self.bot)

    # --- /kontext ---------------------------------------------------------------------------------

    async def kontext(
        self, interaction: discord.Interaction[Any], prompt: str | None, images: tuple[ImageRef, ...],
        options: JobOptions, model: str | None,
    ) -> None:  # fmt: skip
        async with replying(interaction):
            if not images:
                await self._open_form(interaction, prompt, options, model)
                return
            draft = Draft(prompt or "", images, options, use_pin=True, model=model)
            await self.launcher.from_interaction(interaction, draft, origin_of(interaction, "slash"))

    async def _open_form(
        self, interaction: discord.Interaction[Any], prompt: str | None, options: JobOptions, choice: str | None
    ) -> None:
        """Without images, the upload form is the first answer (after the checks that need no database)."""
        origin = origin_of(interaction, "slash")
        self.launcher.check_access(origin)
        model = self.launcher.model_for(choice, origin)
        on_values = functools.partial(self._form_submitted, options=options, model_id=model.id)
        results = options.num_images or self.bot.user_settings.get(origin.user.id).num_images or 1
        form = EditForm(t("New Kontext edit"), on_values, uploads=(1, image_room(self.bot.settings, model)),
                        default_prompt=prompt or "", max_length=self.bot.settings.max_prompt_length,
                        max_results=model.max_outputs, default_results=min(results, model.max_outputs))  # fmt: skip
        await interaction.response.send_modal(form)

    async def _form_submitted(
        self, interaction: discord.Interaction[Any], values: FormValues, *, options: JobOptions, model_id: str
    ) -> None:
        async with replying(interaction):
            origin = origin_of(interaction, "slash")
            model = self.launcher.model_for(model_id, origin)
            count = parse_count(values.num_images, t("Number of results"), model.max_outputs)
            draft = Draft(values.prompt, values.images, dataclasses.replace(options, num_images=count), use_pin=True,
                          model=model_id)  # fmt: skip
            await self.launcher.from_interaction(interaction, draft, origin)

    # --- "Edit with Kontext" message menu -----------------------------------------------------------

    async def edit_with_kontext(self, interaction: discord.Interaction[Any], message: discord.Message) -> None:
        async with replying(interaction):
            images = images_of_message(message)
            if not images:
                raise UserFacingError(t("That message has no images I can use (PNG, JPEG or WebP)."))
            origin = origin_of(interaction, "context_menu", message.id)
            self.launcher.check_access(origin)
            model = self.launcher.model_for(None, origin)
            check_images(images, self.bot.settings, model)  # before the user types a prompt for nothing
            on_values = functools.partial(self._menu_submitted, message_id=message.id, images=tuple(images))
            room = image_room(self.bot.settings, model) - len(images)
            form = EditForm(t("Edit with Kontext"), on_values, uploads=(0, room),
                            max_length=self.bot.settings.max_prompt_length, max_results=model.max_outputs)  # fmt: skip
            await interaction.response.send_modal(form)

    async def _menu_submitted(
        self, interaction: discord.Interaction[Any], values: FormValues, *, message_id: int,
        images: tuple[ImageRef, ...],
    ) -> None:  # fmt: skip
        async with replying(interaction):
            origin = origin_of(interaction, "context_menu", message_id)
            model = self.launcher.model_for(None, origin)
            count = parse_count(values.num_images, t("Number of results"), model.max_outputs)
            inputs = (*images, *values.images)
            draft = Draft(values.prompt, inputs, JobOptions(num_images=count), use_pin=True, model=model.id)
            await self.launcher.from_interaction(interaction, draft, origin)

    # --- reaction trigger -------------------------------------------------------------------------

    @commands.Cog.listener()
    async def on_raw_reaction_add(self, payload: discord.RawReactionActionEvent) -> None:
        member = payload.member
        if member is None or member.bot or not self.launcher.policy.is_trigger(payload.guild_id, str(payload.emoji)):
            return
        origin = Origin(member, payload.channel_id, payload.guild_id, "reaction", payload.message_id,
                        str(member.guild.preferred_locale), thread_parent(self.bot, payload.channel_id))  # fmt: skip
        try:
            self.launcher.check_access(origin)
            self.launcher.check_load()
        except UserFacingError:
            return  # outsiders get no answer at all; under overload a reaction (no interaction to answer) waits
        key = (payload.channel_id, member.id)
        if key in self._questions:
            return  # one reaction of theirs is being handled here (maybe asking); its answer would wake both
        self._questions.add(key)
        try:
            with using_locale(str(member.guild.preferred_locale)):
                await self._reaction_trigger(payload, member, origin)
        except EDIT_ERRORS:
            log.exception("reaction trigger on message %s failed", payload.message_id)
        finally:
            self._questions.discard(key)

    async def _reaction_trigger(
        self, payload: discord.RawReactionActionEvent, member: discord.Member, origin: Origin
    ) -> None:
        channel = self.bot.get_partial_messageable(payload.channel_id, guild_id=payload.guild_id)
        message = await channel.fetch_message(payload.message_id)
        images = images_of_message(message)
        if not images:
            return  # the emoji on a message without (visible) images is just an emoji
        try:
            await self._check_limits(member, origin)
            prompt = self._prompt_in(message) or await self._ask_for_prompt(message, member)
            if prompt is None:
                return
            model, request = self.launcher.check(Draft(prompt, tuple(images), JobOptions()), origin)
            await self.launcher.from_message(model, request, origin)
        except UserFacingError as exc:
            await _notice(message, member, str(exc))

    def _prompt_in(self, message: discord.Message) -> str:
        """A person's message text is the prompt; a bot's (our own results included) never is."""
        if message.author.bot:
            return ""
        me = self.bot.user
        return message.content.replace(f"<@{me.id}>", "").strip() if me else message.content.strip()

    async def _check_limits(self, member: discord.Member, origin: Origin) -> None:
        """The limits before a question is asked (admission checks them again, atomically)."""
        now = datetime.now(UTC)
        usage = await self.bot.store.usage_snapshot(member.id, member.guild.id, now)
        denial = decide(usage, self.launcher.limits_for(origin), 1, now, in_guild=True)
        if denial is not None:
            raise UserFacingError(denial_text(denial))

    async def _ask_for_prompt(self, message: discord.Message, member: discord.Member) -> str | None:
        if not self.bot.settings.message_content_intent:
            raise UserFacingError(t("I can't read messages here, so I can't take a prompt from the chat. Use the "
                                    "message menu instead: **Apps → Edit with Kontext**."))  # fmt: skip
        return await self._wait_for_prompt(message, member)

    async def _wait_for_prompt(self, message: discord.Message, member: discord.Member) -> str | None:
        question = await message.reply(
            t("{mention} what should I do with these images? Send your prompt in this channel within {minutes} "
              "minutes.", mention=member.mention, minutes=PROMPT_WAIT_SECONDS // 60),
            allowed_mentions=_only(member),
        )  # fmt: skip

        def is_answer(reply: discord.Message) -> bool:
            return reply.author.id == member.id and reply.channel.id == message.channel.id and bool(reply.content)

        try:
            answer = await self.bot.wait_for("message", check=is_answer, timeout=PROMPT_WAIT_SECONDS)
        except TimeoutError:
            await question.edit(content=t("{mention} no prompt arrived; react again to retry.", mention=member.mention))
            return None
        return str(answer.content)


async def _notice(message: discord.Message, member: discord.Member, text: str) -> None:
    """A short-lived reply for a member who has no interaction to be answered ephemerally."""
    await message.reply(f"{member.mention} {text}", allowed_mentions=_only(member), delete_after=NOTICE_SECONDS)


def _only(member: discord.Member) -> discord.AllowedMentions:
    return discord.AllowedMentions(everyone=False, roles=False, users=[member])


async def setup(bot: KontextBot) -> None:
    await bot.add_cog(Triggers(bot))
