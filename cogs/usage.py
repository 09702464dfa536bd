"""/kontext-usage: what a user (and, for server managers, the server: today, this month's spend against its
budget, its top users) used, each job with its model and estimated cost, and the price of each model on offer."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import discord
from discord import app_commands
from discord.ext import commands

from bot.community import GuildUsage
from bot.i18n import N_, Np_, t, tn
from bot.jobs import BILLABLE_STATES, Job
from bot.quota import Limits, UsageSnapshot, day_start, month_start
from cogs.installs import anywhere
from cogs.render import model_name, money, price_text
from cogs.replies import replying, send_ephemeral

if TYPE_CHECKING:
    from bot.bot import KontextBot

JOBS_LISTED = 10  # the newest of today's jobs, one line each
TOP_USERS = 5


class Usage(commands.Cog):
    def __init__(self, bot: KontextBot) -> None:
        self.bot = bot

    @anywhere
    @app_commands.command(
        name=Np_("command", "kontext-usage"), description=N_("How many images you (and this server) used")
    )
    async def usage(self, interaction: discord.Interaction[Any]) -> None:
        async with replying(interaction):
            await interaction.response.defer(ephemeral=True, thinking=True)
            await send_ephemeral(interaction, await self._report(interaction))

    async def _report(self, interaction: discord.Interaction[Any]) -> str:
        now = datetime.now(UTC)
        usage = await self.bot.store.usage_snapshot(interaction.user.id, interaction.guild_id, now)
        jobs = await self._billable_today(interaction.user.id, now)
        limits = self.bot.guild_settings.effective(interaction.guild_id).limits(Limits.from_settings(self.bot.settings))
        resets = int((day_start(now) + timedelta(days=1)).timestamp())
        lines = [
            t("**You**: {used} of {limit} images today (≈{cost}), {active} job(s) running. Resets <t:{time}:R>.",
              used=usage.user_images, limit=limits.daily_user_images, cost=money(sum_costs(jobs)),
              active=usage.active_jobs, time=resets),
            *(_job_line(job) for job in jobs[:JOBS_LISTED]),
        ]  # fmt: skip
        if len(jobs) > JOBS_LISTED:
            lines.append(tn("…and {count} earlier job", "…and {count} earlier jobs", len(jobs) - JOBS_LISTED))
        lines[1:1] = await self._here(interaction, usage, limits, now)
        return "\n".join([*lines, *self._price_lines()])

    async def _here(self, interaction: discord.Interaction[Any], usage: UsageSnapshot, limits: Limits,
                    now: datetime) -> list[str]:  # fmt: skip
        """The server's own limit per member, and for server managers the server's usage."""
        guild_id = interaction.guild_id
        if guild_id is None:
            return []
        lines = []
        if limits.daily_member_images is not None:
            lines.append(t("Here: {used} of the {limit} images this server allows each member per day.",
                           used=usage.member_images, limit=limits.daily_member_images))  # fmt: skip
        if interaction.permissions.manage_guild:
            month = await self.bot.store.guild_usage(guild_id, month_start(now), top=TOP_USERS)
            lines += _server_lines(usage.guild_images, limits, month)
        return lines

    async def _billable_today(self, user_id: int, now: datetime) -> list[Job]:
        """The user's jobs of today that fal may bill, newest first."""
        since = day_start(now)
        limit = max(self.bot.settings.daily_images_per_user, JOBS_LISTED) + 1
        jobs = await self.bot.store.jobs(user_id=user_id, limit=limit)
        return [job for job in jobs if job.created_at >= since and job.state in BILLABLE_STATES]

    def _price_lines(self) -> list[str]:
        settings = self.bot.settings
        lines = [t("**Models** (est. price):")]
        for model in settings.models:
            params = {"model": model.name, "price": price_text(model)}
            if model.id == settings.default_model:
                lines.append(t("- {model}: {price} (default)", **params))
            else:
                lines.append(t("- {model}: {price}", **params))
        return lines


def sum_costs(jobs: list[Job]) -> Decimal:
    return sum((job.cost_usd for job in jobs), Decimal(0))


def _job_line(job: Job) -> str:
    params = {"time": int(job.created_at.timestamp()), "model": model_name(job.endpoint), "cost": money(job.cost_usd)}
    return tn("- <t:{time}:t> {model}: {count} image, est. {cost}",
              "- <t:{time}:t> {model}: {count} images, est. {cost}", job.num_images, **params)  # fmt: skip


async def setup(bot: KontextBot) -> None:
    await bot.add_cog(Usage(bot))


def _server_lines(images_today: int, limits: Limits, month: GuildUsage) -> list[str]:
    """For server managers: today's images, this month's spend (and budget), the users who spent most."""
    lines = [t("**This server**: {used} of {limit} images today.", used=images_today, limit=limits.daily_guild_images)]
    if limits.monthly_budget_usd is None:
        lines.append(t("This month: {images} images, ≈{spend} (no monthly budget).", images=month.images,
                       spend=money(month.spend)))  # fmt: skip
    else:
        lines.append(t("This month: {images} images, ≈{spend} of its {budget} budget.", images=month.images,
                       spend=money(month.spend), budget=money(limits.monthly_budget_usd)))  # fmt: skip
    if month.top:
        top = ", ".join(t("<@{user}> ≈{spend} ({images})", user=s.user_id, spend=money(s.spend), images=s.images)
                        for s in month.top)  # fmt: skip
        lines.append(t("Top users this month: {users}", users=top))
    return lines
