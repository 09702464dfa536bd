"""/kontext-settings: a user's personal defaults (aspect ratio, output format, number of results, and the model
where the operator offers a choice), used wherever a command does not say otherwise, in every server.

They are kept in `bot.user_settings` so a launch can use them before answering; this cog loads them at start and
reads the changes other processes made every few seconds (see `UserSettingsCache`)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import discord
from discord import app_commands
from discord.ext import commands

from bot.community import UserSettings
from bot.fal import ModelSpec, find_model
from bot.i18n import N_, Np_, t
from cogs.inputs import ASPECT_RATIOS, NUM_IMAGES, OUTPUT_FORMATS
from cogs.installs import anywhere
from cogs.replies import UserFacingError, replying, send_ephemeral

if TYPE_CHECKING:
    from bot.bot import KontextBot

__all__ = ("PersonalSettings",)

log = logging.getLogger(__name__)

DEFAULT = "default"  # the choice that clears one default
Choice = app_commands.Choice
Given = dict[str, Any]
Run = Callable[[discord.Interaction[Any], Given, bool], Coroutine[Any, Any, None]]
DESCRIBE = {
    "aspect_ratio": N_("Your default aspect ratio"), "output_format": N_("Your default file format"),
    "num_images": N_("Your default number of results (0: the model's default)"),
    "model": N_("Your default model"), "reset": N_("Clear all your defaults first"),
}  # fmt: skip
NAMES = {
    "aspect_ratio": Np_("command", "aspect_ratio"), "output_format": Np_("command", "output_format"),
    "num_images": Np_("command", "num_images"), "model": Np_("command", "model"), "reset": Np_("command", "reset"),
}  # fmt: skip


def _choices(values: Sequence[str], default_name: str) -> list[Choice[str]]:
    return [Choice(name=default_name, value=DEFAULT), *(Choice(name=value, value=value) for value in values)]


def settings_command(run: Run, models: Sequence[ModelSpec]) -> app_commands.Command[Any, ..., None]:
    """/kontext-settings; its `model` option only where the operator enables more than one model."""
    choices: dict[str, list[Choice[str]]] = {
        "aspect_ratio": _choices(ASPECT_RATIOS, N_("the model's default")),
        "output_format": _choices(OUTPUT_FORMATS, N_("the model's default")),
    }

    async def without_model(
        interaction: discord.Interaction[Any], aspect_ratio: str | None = None, output_format: str | None = None,
        num_images: app_commands.Range[int, 0, NUM_IMAGES[1]] | None = None, reset: bool = False,
    ) -> None:  # fmt: skip
        await run(interaction, {"aspect_ratio": aspect_ratio, "output_format": output_format,
                                "num_images": num_images}, reset)  # fmt: skip

    async def with_model(
        interaction: discord.Interaction[Any], aspect_ratio: str | None = None, output_format: str | None = None,
        num_images: app_commands.Range[int, 0, NUM_IMAGES[1]] | None = None, model: str | None = None,
        reset: bool = False,
    ) -> None:  # fmt: skip
        await run(interaction, {"aspect_ratio": aspect_ratio, "output_format": output_format,
                                "num_images": num_images, "model": model}, reset)  # fmt: skip

    callback: Callable[..., Coroutine[Any, Any, None]] = without_model
    if len(models) > 1:
        choices["model"] = [Choice(name=N_("the server's default"), value=DEFAULT),
                            *(Choice(name=m.name, value=m.id) for m in models)]  # fmt: skip
        callback = with_model
    options = [name for name in DESCRIBE if name != "model" or len(models) > 1]
    callback = app_commands.choices(**choices)(callback)
    callback = app_commands.describe(**{name: DESCRIBE[name] for name in options})(callback)
    callback = app_commands.rename(**{name: NAMES[name] for name in options})(callback)
    name, description = Np_("command", "kontext-settings"), N_("Your own defaults for new edits")
    return anywhere(app_commands.Command(name=name, description=description, callback=callback))


class PersonalSettings(commands.Cog):
    def __init__(self, bot: KontextBot) -> None:
        self.bot = bot
        self.command = settings_command(self.run, bot.settings.models)
        self._refresher: asyncio.Task[None] | None = None

    async def cog_load(self) -> None:
        self.bot.tree.add_command(self.command)
        count = await self.bot.user_settings.refresh(self.bot.store, datetime.now(UTC))
        log.info("loaded the personal defaults of %d user(s)", count)
        self._refresher = asyncio.create_task(self._refresh_forever(), name="refresh-user-settings")

    async def cog_unload(self) -> None:
        self.bot.tree.remove_command(self.command.name)
        if self._refresher is not None:
            self._refresher.cancel()

    async def _refresh_forever(self) -> None:
        """Changes made in other processes (a user's servers may be on other shards)."""
        while True:
            await asyncio.sleep(self.bot.user_settings.REFRESH_SECONDS)
            try:
                await self.bot.user_settings.refresh(self.bot.store, datetime.now(UTC))
            except Exception:  # the database is away: the defaults in memory stay, and the next look tries again
                log.warning("could not read changed personal defaults", exc_info=True)

    async def run(self, interaction: discord.Interaction[Any], given: Given, reset: bool) -> None:
        """Check the values (before answering), answer, then read, change and save the user's defaults."""
        async with replying(interaction):
            changes = self._checked({name: value for name, value in given.items() if value is not None})
            await interaction.response.defer(ephemeral=True, thinking=True)
            user_id = interaction.user.id
            current = await self.bot.store.user_settings(user_id)  # maybe changed in another process a moment ago
            new = (UserSettings() if reset else current).model_copy(update=changes)
            if new != current:
                await self.bot.store.save_user_settings(user_id, new, datetime.now(UTC))
            self.bot.user_settings.put(user_id, new)
            await send_ephemeral(interaction, self._text(new, saved=new != current))

    def _checked(self, given: Given) -> Given:
        """The values as stored (None: cleared); a value no command offers (a crafted one) is refused."""
        allowed: dict[str, Sequence[Any]] = {
            "aspect_ratio": ASPECT_RATIOS, "output_format": OUTPUT_FORMATS,
            "num_images": range(NUM_IMAGES[1] + 1), "model": self.bot.settings.enabled_models,
        }  # fmt: skip
        for name, value in given.items():
            if value != DEFAULT and value not in allowed[name]:
                raise UserFacingError(t("That value is not valid here: {value}", value=value))
        return {name: None if value in (DEFAULT, 0) else value for name, value in given.items()}

    def _text(self, mine: UserSettings, *, saved: bool) -> str:
        default = t("the model's default")
        lines = [t("Saved.") if saved else t("Your defaults are unchanged."),
                 t("**Your defaults** apply in every server, wherever a command doesn't say otherwise and the model "
                   "takes them:"),
                 t("- Aspect ratio: {value}", value=mine.aspect_ratio or default),
                 t("- Output format: {value}", value=mine.output_format or default),
                 t("- Number of results: {value}", value=mine.num_images or default)]  # fmt: skip
        if len(self.bot.settings.enabled_models) > 1:
            model = find_model(mine.model) if mine.model else None
            name = model.name if model is not None else t("the server's default")
            lines.append(t("- Model: {value}", value=name))
        lines.append(t("Change one with `/kontext-settings`, or clear them all with `reset: True`. Only you can "
                       "change them; a server's own limits still apply."))  # fmt: skip
        return "\n".join(lines)


async def setup(bot: KontextBot) -> None:
    await bot.add_cog(PersonalSettings(bot))
