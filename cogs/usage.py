"""/kontext-usage: what a user (and, for server managers, the server) used today."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import discord
from discord import app_commands
from discord.ext import commands

from bot.i18n import t
from bot.quota import Limits, day_start
from cogs.render import money
from cogs.replies import replying, send_ephemeral

if TYPE_CHECKING:
    from bot.bot import KontextBot


class Usage(commands.Cog):
    def __init__(self, bot: KontextBot) -> None:
        self.bot = bot

    @app_commands.command(name="kontext-usage", description="How many images you (and this server) used today")
    async def usage(self, interaction: discord.Interaction[Any]) -> None:
        async with replying(interaction):
            await interaction.response.defer(ephemeral=True, thinking=True)
            await send_ephemeral(interaction, await self._report(interaction))

    async def _report(self, interaction: discord.Interaction[Any]) -> str:
        now = datetime.now(UTC)
        is_admin = interaction.guild_id is not None and interaction.permissions.manage_guild
        usage = await self.bot.store.usage_snapshot(interaction.user.id, interaction.guild_id, now)
        limits, price = Limits.from_settings(self.bot.settings), self.bot.settings.price_per_image_usd
        resets = int((day_start(now) + timedelta(days=1)).timestamp())
        lines = [
            t("**You**: {used} of {limit} images today (≈{cost}), {active} job(s) running. Resets <t:{time}:R>.",
              used=usage.user_images, limit=limits.daily_user_images, cost=money(price * usage.user_images),
              active=usage.active_jobs, time=resets),
            t("Price: {price} per result image.", price=money(price)),
        ]  # fmt: skip
        if is_admin:
            lines.insert(1, t("**This server**: {used} of {limit} images today (≈{cost}).", used=usage.guild_images,
                              limit=limits.daily_guild_images, cost=money(price * usage.guild_images)))  # fmt: skip
        return "\n".join(lines)


async def setup(bot: KontextBot) -> None:
    await bot.add_cog(Usage(bot))
