"""/kontext-admin: a server's own settings, for members with Manage Server.

The command's default permission (Manage Server) is only what Discord shows by default; a server's admins can
give it to anyone, so every subcommand checks the member's permissions again when it runs. Those permissions
come with the interaction, computed by Discord for that member and channel: a client cannot claim others.

A server's settings live in the database and in this process's `bot.guild_settings`, which this cog loads at
start and changes (see `GuildSettingsCache` for why that stays right with several processes). Each change is
checked against the operator's ceilings before anything is answered, then saved with its log entry (who, when,
old → new) in one transaction, and applies at once.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import discord
from discord import app_commands
from discord.ext import commands

from bot.community import SETTING_NAMES, GuildSettings, SettingChange, bounds
from bot.config import NsfwPolicy
from bot.fal import MODELS
from bot.i18n import N_, Np_, t
from bot.quota import month_start
from cogs.admin_texts import LABELS, NSFW_LABELS, change_lines, label, show_lines, value_text
from cogs.render import money
from cogs.replies import UserFacingError, replying, send_ephemeral

if TYPE_CHECKING:
    from bot.bot import KontextBot

__all__ = ("ServerAdmin", "require_manage_server")

log = logging.getLogger(__name__)

CHANGES_SHOWN = 15
MAX_LISTED = 25  # channels or roles in one server's list
Choice = app_commands.Choice
Updates = dict[str, Any]
Proposal = Callable[[GuildSettings], Updates]
ACTIONS = [Choice(name=N_("add"), value="add"), Choice(name=N_("remove"), value="remove")]
ACTION_TEXT = N_("Add or remove")


def require_manage_server(interaction: discord.Interaction[Any]) -> int:
    """The server's id, if the member may change its settings; else `UserFacingError` saying who can."""
    if interaction.guild_id is None:
        raise UserFacingError(t("Server settings can only be changed in a server."))
    if not interaction.permissions.manage_guild:
        raise UserFacingError(t("Only members with the **Manage Server** permission can see and change my "
                                "settings for this server. The bot's operator sets the defaults and the limits "
                                "above them."))  # fmt: skip
    return interaction.guild_id


class ServerAdmin(commands.Cog):
    admin = app_commands.Group(
        name=Np_("command", "kontext-admin"), description=N_("This server's settings for the bot (Manage Server)"),
        default_permissions=discord.Permissions(manage_guild=True), guild_only=True,
        allowed_contexts=app_commands.AppCommandContext(guild=True),
        allowed_installs=app_commands.AppInstallationType(guild=True),
    )  # fmt: skip

    def __init__(self, bot: KontextBot) -> None:
        self.bot = bot
        self.settings = bot.settings
        self._locks: defaultdict[int, asyncio.Lock] = defaultdict(asyncio.Lock)

    async def cog_load(self) -> None:
        count = await self.bot.guild_settings.load(self.bot.store, self.settings.shards)
        log.info("loaded the settings of %d server(s)", count)

    # --- reading ----------------------------------------------------------------------------------

    @admin.command(name=Np_("command", "show"), description=N_("The settings in force here, and where each comes from"))
    async def show(self, interaction: discord.Interaction[Any]) -> None:
        async with replying(interaction):
            guild_id = require_manage_server(interaction)
            await interaction.response.defer(ephemeral=True, thinking=True)
            now = datetime.now(UTC)
            usage = await self.bot.store.guild_usage(guild_id, month_start(now))
            changes = await self.bot.store.setting_changes(guild_id, limit=5)
            lines = show_lines(self.settings, self.bot.guild_settings.effective(guild_id), usage.spend)
            lines += [t("**Last changes** (`/kontext-admin changes` lists more):"),
                      *change_lines(changes, self.settings)]  # fmt: skip
            await send_ephemeral(interaction, "\n".join(lines))

    @admin.command(name=Np_("command", "changes"), description=N_("Who changed which setting, when, from what to what"))
    async def changes(self, interaction: discord.Interaction[Any]) -> None:
        async with replying(interaction):
            guild_id = require_manage_server(interaction)
            await interaction.response.defer(ephemeral=True, thinking=True)
            changes = await self.bot.store.setting_changes(guild_id, limit=CHANGES_SHOWN)
            lines = [t("**Setting changes in this server**, newest first:"), *change_lines(changes, self.settings)]
            await send_ephemeral(interaction, "\n".join(lines))

    # --- where and who --------------------------------------------------------------------------------

    @admin.command(
        name=Np_("command", "channels"),
        description=N_("Add or remove a channel where I work (none listed: everywhere)"),
    )
    @app_commands.rename(action=Np_("command", "action"), channel=Np_("command", "channel"))
    @app_commands.describe(action=ACTION_TEXT, channel=N_("A channel of this server"))
    @app_commands.choices(action=ACTIONS)
    async def channels(
        self, interaction: discord.Interaction[Any], action: str, channel: app_commands.AppCommandChannel
    ) -> None:
        await self._update(interaction, lambda old: {"channel_ids": _listed("channel_ids", old, action, channel.id)})

    @admin.command(
        name=Np_("command", "roles"),
        description=N_("Add or remove a role whose members may use me (none listed: everyone)"),
    )
    @app_commands.rename(action=Np_("command", "action"), role=Np_("command", "role"))
    @app_commands.describe(action=ACTION_TEXT, role=N_("A role of this server"))
    @app_commands.choices(action=ACTIONS)
    async def roles(self, interaction: discord.Interaction[Any], action: str, role: discord.Role) -> None:
        await self._update(interaction, lambda old: {"role_ids": _listed("role_ids", old, action, role.id)})

    # --- limits -----------------------------------------------------------------------------------------

    @admin.command(
        name=Np_("command", "limits"),
        description=N_("Images per day (server, member) and the cooldown, within the operator's"),
    )
    @app_commands.rename(
        daily_server=Np_("command", "daily_server"), daily_member=Np_("command", "daily_member"),
        cooldown_seconds=Np_("command", "cooldown_seconds"),
    )  # fmt: skip
    @app_commands.describe(
        daily_server=N_("Images per day for the whole server"),
        daily_member=N_("Images per day for each member, here"),
        cooldown_seconds=N_("Seconds between two jobs of a member"),
    )  # fmt: skip
    async def limits(
        self, interaction: discord.Interaction[Any], daily_server: int | None = None, daily_member: int | None = None,
        cooldown_seconds: int | None = None,
    ) -> None:  # fmt: skip
        given = {"daily_guild_images": daily_server, "daily_member_images": daily_member,
                 "cooldown_seconds": cooldown_seconds}  # fmt: skip
        await self._update(interaction, lambda old: self._numbers({k: v for k, v in given.items() if v is not None}))

    @admin.command(
        name=Np_("command", "safety"),
        description=N_("The highest safety_tolerance a job may ask for (1 is the strictest)"),
    )
    @app_commands.rename(max_tolerance=Np_("command", "max_tolerance"))
    @app_commands.describe(max_tolerance=N_("1 is the strictest; at most the bot operator's limit"))
    async def safety(self, interaction: discord.Interaction[Any], max_tolerance: int) -> None:
        await self._update(interaction, lambda old: self._numbers({"max_safety_tolerance": max_tolerance}))

    @admin.command(
        name=Np_("command", "budget"), description=N_("What this server may spend per month (UTC), in US dollars")
    )
    @app_commands.rename(usd=Np_("command", "usd"))
    @app_commands.describe(usd=N_("US dollars per month, e.g. 20; at most the bot operator's limit"))
    async def budget(self, interaction: discord.Interaction[Any], usd: float) -> None:
        amount = Decimal(str(round(usd, 2))) if usd == usd else Decimal(-1)  # NaN is no amount
        await self._update(interaction, lambda old: self._numbers({"monthly_budget_usd": amount}))

    # --- results, trigger, models --------------------------------------------------------------------------

    @admin.command(
        name=Np_("command", "nsfw"), description=N_("What happens to results the safety filter flags as NSFW")
    )
    @app_commands.rename(policy=Np_("command", "policy"))
    @app_commands.describe(policy=N_("Where flagged results are shown, and how"))
    @app_commands.choices(policy=[Choice(name=label_, value=p.value) for p, label_ in NSFW_LABELS.items()])
    async def nsfw(self, interaction: discord.Interaction[Any], policy: str) -> None:
        await self._update(interaction, lambda old: {"nsfw_policy": self._nsfw(policy)})

    @admin.command(name=Np_("command", "reaction"), description=N_("The reaction trigger: on or off, and its emoji"))
    @app_commands.rename(enabled=Np_("command", "enabled"), emoji=Np_("command", "emoji"))
    @app_commands.describe(
        enabled=N_("Whether reacting to a message with images starts an edit"),
        emoji=N_("The emoji that starts an edit, e.g. 🎨 or a custom emoji of this server"),
    )
    async def reaction(
        self, interaction: discord.Interaction[Any], enabled: bool | None = None, emoji: str | None = None
    ) -> None:
        updates: Updates = {} if enabled is None else {"reaction_trigger": enabled}
        await self._update(
            interaction, lambda old: updates | ({} if emoji is None else {"trigger_emoji": _emoji(emoji)})
        )

    @admin.command(
        name=Np_("command", "models"),
        description=N_("Allow or disallow a model here (none disallowed: all the bot offers)"),
    )
    @app_commands.rename(action=Np_("command", "action"), model=Np_("command", "model"))
    @app_commands.describe(action=N_("Allow (add) or disallow (remove)"), model=N_("One of the models the bot offers"))
    @app_commands.choices(action=ACTIONS, model=[Choice(name=m.name, value=m.id) for m in MODELS])
    async def models(self, interaction: discord.Interaction[Any], action: str, model: str) -> None:
        await self._update(interaction, lambda old: {"model_ids": self._models(old, action, model)})

    @admin.command(name=Np_("command", "reset"), description=N_("Put one setting back to the operator's default"))
    @app_commands.rename(setting=Np_("command", "setting"))
    @app_commands.describe(setting=N_("The setting to put back"))
    @app_commands.choices(setting=[Choice(name=text, value=name) for name, text in LABELS.items()])
    async def reset(self, interaction: discord.Interaction[Any], setting: str) -> None:
        await self._update(interaction, lambda old: _default_of(setting))

    # --- one change -----------------------------------------------------------------------------------------

    async def _update(self, interaction: discord.Interaction[Any], proposal: Proposal) -> None:
        """Check the member and the new values (refusals come before anything is answered), answer, then save the
        settings with their log and use them at once."""
        async with replying(interaction):
            guild_id = require_manage_server(interaction)
            async with self._locks[guild_id]:
                old = self.bot.guild_settings.get(guild_id)
                updates = proposal(old)
                if not updates:
                    raise UserFacingError(t("Give at least one value to change."))
                await interaction.response.defer(ephemeral=True, thinking=True)
                changes = await self._save(guild_id, interaction.user.id, old, updates)
            await send_ephemeral(interaction, self._confirmation(changes, updates, old))

    async def _save(self, guild_id: int, user_id: int, old: GuildSettings, updates: Updates) -> list[SettingChange]:
        new = old
        for name, value in updates.items():
            new = new.with_value(name, value)
        now = datetime.now(UTC)
        changes = [SettingChange(guild_id, user_id, name, old.value(name), new.value(name), now)
                   for name in updates if old.value(name) != new.value(name)]  # fmt: skip
        if changes:
            await self.bot.store.save_guild_settings(guild_id, new, changes, now)
            self.bot.guild_settings.put(guild_id, new)
            log.info("guild %s: user %s changed %s", guild_id, user_id, ", ".join(c.setting for c in changes))
        return changes

    def _confirmation(self, changes: list[SettingChange], updates: Updates, old: GuildSettings) -> str:
        if not changes:
            name = next(iter(updates))
            return t("Nothing changed: **{label}** is already {value}.", label=label(name),
                     value=value_text(name, old.value(name), self.settings))  # fmt: skip
        lines = [t("Saved; it applies at once:"), *change_lines(changes, self.settings)]
        return "\n".join(lines)

    # --- checks against the operator's ceilings --------------------------------------------------------------

    def _numbers(self, values: dict[str, Any]) -> Updates:
        for name, value in values.items():
            low, high = bounds(self.settings, name)
            if high is not None and value > high:
                raise UserFacingError(t("**{label}** can be at most {limit} here: that is the bot operator's limit, "
                                        "and a server can only tighten it.", label=label(name),
                                        limit=_bound_text(name, high)))  # fmt: skip
            if value < low:
                raise UserFacingError(t("**{label}** must be at least {limit} here: that is the bot operator's "
                                        "minimum, and a server can only tighten it.", label=label(name),
                                        limit=_bound_text(name, low)))  # fmt: skip
        return values

    def _nsfw(self, value: str) -> str:
        try:
            policy = NsfwPolicy(value)
        except ValueError:
            raise UserFacingError(t("There is no such policy.")) from None
        operator = self.settings.nsfw_policy
        if policy.strictness < operator.strictness:
            raise UserFacingError(t("The bot's operator has flagged results {policy}; a server can only choose a "
                                    "stricter policy.", policy=t(NSFW_LABELS[operator])))  # fmt: skip
        return policy.value

    def _models(self, old: GuildSettings, action: str, model: str) -> tuple[str, ...]:
        enabled = self.settings.enabled_models
        if len(enabled) < 2:
            raise UserFacingError(t("The bot offers only one model here, so there is nothing to choose."))
        if model not in enabled:
            raise UserFacingError(t("The bot's operator does not offer that model."))
        current = old.model_ids or enabled
        chosen = (*current, model) if action == "add" else tuple(m for m in current if m != model)
        if not chosen:
            raise UserFacingError(t("At least one model must stay allowed."))
        allowed = tuple(m for m in enabled if m in chosen)
        return () if allowed == enabled else allowed


def _listed(name: str, old: GuildSettings, action: str, item_id: int) -> tuple[int, ...]:
    """A channel or role list with one added or removed; emptying it is a reset, not a removal."""
    current: tuple[int, ...] = getattr(old, name)
    if action == "add":
        if len(current) >= MAX_LISTED and item_id not in current:
            raise UserFacingError(t("A list holds at most {count} entries.", count=MAX_LISTED))
        return current if item_id in current else (*current, item_id)
    if item_id not in current:
        raise UserFacingError(t("That is not in the list of **{label}**.", label=label(name)))
    if len(current) == 1:
        raise UserFacingError(t("That is the last one in the list of **{label}**. To lift the restriction, use "
                                "`/kontext-admin reset`.", label=label(name)))  # fmt: skip
    return tuple(item for item in current if item != item_id)


def _default_of(name: str) -> Updates:
    if name not in SETTING_NAMES:
        raise UserFacingError(t("There is no such setting."))
    return {name: GuildSettings.model_fields[name].default}


def _reaction(given: Updates) -> Updates:
    if "trigger_emoji" in given:
        given["trigger_emoji"] = _emoji(given["trigger_emoji"])
    return given


def _emoji(text: str) -> str:
    """A Unicode emoji, or a custom one as Discord writes it (<:name:id>)."""
    value = text.strip()
    partial = discord.PartialEmoji.from_str(value)
    if partial.id is not None:
        return str(partial)
    if not value or len(value) > 16 or any(c.isspace() for c in value) or value.isascii():
        raise UserFacingError(t("That is not an emoji. Give one emoji, e.g. 🖌️, or a custom emoji of this server."))
    return value


def _bound_text(name: str, value: Decimal) -> str:
    if name == "monthly_budget_usd":
        return money(value)
    if name == "cooldown_seconds":
        return t("{seconds} s", seconds=int(value))
    return str(int(value))


async def setup(bot: KontextBot) -> None:
    await bot.add_cog(ServerAdmin(bot))
