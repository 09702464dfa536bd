"""Cost and abuse limits. The decision is a pure function of what the store counted; the store runs it
inside the same transaction that records the job, so no two admissions can both take the last slot."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from enum import StrEnum

from bot.config import Settings

__all__ = (
    "Denial",
    "DenialKind",
    "Limits",
    "Usage",
    "UsageSnapshot",
    "day_start",
    "decide",
    "month_start",
    "next_month",
)


@dataclass(frozen=True, slots=True)
class UsageSnapshot:
    """What the store counts for one user (and their guild) since the start of the day; the guild's spend since
    the start of the month."""

    active_jobs: int
    user_images: int
    guild_images: int
    last_created: datetime | None
    member_images: int = 0  # the user's images in this guild today
    guild_spend: Decimal = Decimal(0)  # the estimated cost of the guild's billable jobs this month


@dataclass(frozen=True, slots=True)
class Limits:
    """The limits one admission is checked against."""

    max_concurrent: int
    daily_user_images: int
    daily_guild_images: int
    cooldown: timedelta
    daily_member_images: int | None = None  # a server's own limit per member (in that server); None: none
    monthly_budget_usd: Decimal | None = None  # a server's spend per calendar month (UTC); None: no budget

    @classmethod
    def from_settings(cls, settings: Settings) -> Limits:
        return cls(
            max_concurrent=settings.max_concurrent_jobs_per_user,
            daily_user_images=settings.daily_images_per_user,
            daily_guild_images=settings.daily_images_per_guild,
            cooldown=timedelta(seconds=settings.cooldown_seconds),
            monthly_budget_usd=settings.monthly_budget_per_guild_usd,
        )


class DenialKind(StrEnum):
    CONCURRENCY = "concurrency"
    COOLDOWN = "cooldown"
    USER_DAILY = "user_daily"
    MEMBER_DAILY = "member_daily"
    GUILD_DAILY = "guild_daily"
    BUDGET = "budget"


@dataclass(frozen=True, slots=True)
class Denial:
    """Why a job may not start: which limit, how much is used, and when that changes (None: not by waiting).
    A budget's limit and use are dollars, with the job's own estimate in `cost`."""

    kind: DenialKind
    limit: int | Decimal
    used: int | Decimal
    retry_at: datetime | None = None
    cost: Decimal = Decimal(0)


@dataclass(frozen=True, slots=True)
class Usage:
    active: int
    images_today: int
    images_limit: int
    cost_today: Decimal
    resets_at: datetime


def day_start(now: datetime) -> datetime:
    return now.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)


def month_start(now: datetime) -> datetime:
    return day_start(now).replace(day=1)


def next_month(now: datetime) -> datetime:
    start = month_start(now)
    return start.replace(year=start.year + 1, month=1) if start.month == 12 else start.replace(month=start.month + 1)


def decide(
    usage: UsageSnapshot, limits: Limits, images: int, now: datetime, *, in_guild: bool, cost: Decimal = Decimal(0)
) -> Denial | None:
    """The first limit a new job of `images` images, estimated at `cost`, would break, or None."""
    tomorrow = day_start(now) + timedelta(days=1)
    if usage.active_jobs >= limits.max_concurrent:
        return Denial(DenialKind.CONCURRENCY, limits.max_concurrent, usage.active_jobs)
    # No cooldown, no wait: another process may have admitted a job made a moment after this one.
    ready = usage.last_created + limits.cooldown if usage.last_created and limits.cooldown else None
    if ready is not None and ready > now:
        return Denial(DenialKind.COOLDOWN, int(limits.cooldown.total_seconds()), 0, ready)
    if usage.user_images + images > limits.daily_user_images:
        return Denial(DenialKind.USER_DAILY, limits.daily_user_images, usage.user_images, tomorrow)
    return _guild_denial(usage, limits, images, now, cost) if in_guild else None


def _guild_denial(usage: UsageSnapshot, limits: Limits, images: int, now: datetime, cost: Decimal) -> Denial | None:
    """The server's own limits: per member, per day, and its monthly budget (never exceeded, even by one job)."""
    tomorrow = day_start(now) + timedelta(days=1)
    member_limit = limits.daily_member_images
    if member_limit is not None and usage.member_images + images > member_limit:
        return Denial(DenialKind.MEMBER_DAILY, member_limit, usage.member_images, tomorrow)
    if usage.guild_images + images > limits.daily_guild_images:
        return Denial(DenialKind.GUILD_DAILY, limits.daily_guild_images, usage.guild_images, tomorrow)
    budget = limits.monthly_budget_usd
    if budget is not None and usage.guild_spend + cost > budget:
        return Denial(DenialKind.BUDGET, budget, usage.guild_spend, next_month(now), cost)
    return None
