"""The community rules a launch follows on top of the operator's: the server's settings (`/kontext-admin`) and
the user's personal defaults (`/kontext-settings`).

Everything here answers from memory, since the launcher asks before the interaction is answered: a server's
settings from `bot.guild_settings` (see `GuildSettingsCache` for why a per-process cache stays right), a user's
defaults from `bot.user_settings` (see `UserSettingsCache`: every process refreshes them every few seconds).
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import discord

from bot.community import FAL_DEFAULT_SAFETY_TOLERANCE, Effective
from bot.fal import EditRequest, ModelSpec
from bot.i18n import t
from bot.quota import Limits
from cogs.inputs import JobOptions
from cogs.replies import UserFacingError

if TYPE_CHECKING:
    from bot.bot import KontextBot
    from cogs.launch import Origin

__all__ = ("LaunchPolicy", "same_emoji", "thread_parent")

log = logging.getLogger(__name__)

CHANNELS_SHOWN = 10


class LaunchPolicy:
    """What one launch may do in its server, and the defaults it takes from its user."""

    def __init__(self, bot: KontextBot) -> None:
        self.bot = bot

    def effective(self, guild_id: int | None) -> Effective:
        return self.bot.guild_settings.effective(guild_id)

    # --- where, and who ---------------------------------------------------------------------------

    def check_origin(self, origin: Origin) -> None:
        """The server's channels and roles; raises `UserFacingError` saying who decides."""
        if origin.guild_id is None:
            return
        rules = self.effective(origin.guild_id)
        if rules.channel_ids and not {origin.channel_id, origin.parent_id} & set(rules.channel_ids):
            channels = " ".join(f"<#{channel}>" for channel in rules.channel_ids[:CHANNELS_SHOWN])
            raise UserFacingError(t("I don't work in this channel. This server's admins (Manage Server) chose where "
                                    "I work: {channels}", channels=channels))  # fmt: skip
        roles = {role.id for role in getattr(origin.user, "roles", ())}
        if rules.role_ids and not roles & set(rules.role_ids):
            mentions = " ".join(f"<@&{role}>" for role in rules.role_ids)
            raise UserFacingError(t("This server lets only members with one of these roles use me: {roles}. Its "
                                    "admins (Manage Server) choose them.", roles=mentions))  # fmt: skip

    # --- which model --------------------------------------------------------------------------------

    def models(self, origin: Origin) -> tuple[str, ...]:
        """The models this server allows (of the ones the operator enabled)."""
        return self.effective(origin.guild_id).model_ids

    def check_model(self, origin: Origin, model_id: str) -> None:
        allowed = self.models(origin)
        if model_id not in allowed:
            names = ", ".join(self.bot.settings.model(m).name for m in allowed)
            raise UserFacingError(t("This server allows only these models: {names}. Its admins (Manage Server) "
                                    "choose them.", names=names))  # fmt: skip

    def personal_model(self, origin: Origin) -> str | None:
        """The user's default model (a `Launcher.defaults` hook)."""
        return self.bot.user_settings.get(origin.user.id).model

    # --- the request --------------------------------------------------------------------------------

    def fill_options(self, origin: Origin, model: ModelSpec, options: JobOptions) -> JobOptions:
        """The user's defaults where the command set nothing and the model takes the value; the rest stays."""
        mine = self.bot.user_settings.get(origin.user.id)
        filled: dict[str, Any] = {}
        for name in ("aspect_ratio", "output_format", "num_images"):
            value, option = getattr(mine, name), model.option(name)
            if getattr(options, name) is None and value is not None and option is not None and option.allows(value):
                filled[name] = value
        return replace(options, **filled) if filled else options

    def narrow(self, origin: Origin, model: ModelSpec, request: EditRequest) -> EditRequest:
        """The highest safety_tolerance in force: a higher one is refused; none asked for, and fal's default is
        above it, the highest allowed is sent."""
        highest = self.effective(origin.guild_id).max_safety_tolerance
        option = model.option("safety_tolerance")
        if option is None:
            return request  # a model without the option keeps fal's own checker on (see the registry)
        asked = request.safety_tolerance
        if asked is not None and int(asked) > highest:
            raise UserFacingError(t("safety_tolerance can be at most {highest} here (1 is the strictest). This "
                                    "server's admins (Manage Server) set that, within the bot operator's limit.",
                                    highest=highest))  # fmt: skip
        if asked is None and highest < FAL_DEFAULT_SAFETY_TOLERANCE:
            return request.model_copy(update={"safety_tolerance": str(highest)})
        return request

    def limits(self, guild_id: int | None, operator: Limits) -> Limits:
        return self.effective(guild_id).limits(operator) if guild_id is not None else operator

    # --- the reaction trigger ---------------------------------------------------------------------------

    def is_trigger(self, guild_id: int | None, emoji: str) -> bool:
        rules = self.effective(guild_id)
        return rules.reaction_trigger and same_emoji(emoji, rules.trigger_emoji)


def same_emoji(given: str, wanted: str) -> bool:
    """Equal but for the emoji presentation selector (U+FE0F), which keyboards add or leave out."""
    return given.replace("\ufe0f", "") == wanted.replace("\ufe0f", "")


def thread_parent(bot: discord.Client, channel_id: int) -> int | None:
    """The channel a (cached) thread belongs to, for the server's channel list; None for anything else."""
    channel = bot.get_channel(channel_id)
    return channel.parent_id if isinstance(channel, discord.Thread) else None
