"""Cost and abuse limits. The decision is a pure function of what the store counted; the store runs it
inside the same transaction that records the job, so no two admissions can both take the last slot."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from enum import StrEnum

from bot.config import Settings

__all__ = ("Denial", "DenialKind", "Limits", "Usage", "UsageSnapshot", "day_start", "decide")


@dataclass(frozen=True, slots=True)
class UsageSnapshot:
    """What the store counts for one user (and their guild) since the start of the day."""

    active_jobs: int
    user_images: int
    guild_images: int
    last_created: datetime | None


@dataclass(frozen=True, slots=True)
class Limits:
    """The limits one admission is checked against."""

    max_concurrent: int
    daily_user_images: int
    daily_guild_images: int
    cooldown: timedelta

    @classmethod
    def from_settings(cls, settings: Settings) -> Limits:
        return cls(
            max_concurrent=settings.max_concurrent_jobs_per_user,
            daily_user_images=settings.daily_images_per_user,
            daily_guild_images=settings.daily_images_per_guild,
            cooldown=timedelta(seconds=settings.cooldown_seconds),
        )


class DenialKind(StrEnum):
    CONCURRENCY = "concurrency"
    COOLDOWN = "cooldown"
    USER_DAILY = "user_daily"
    GUILD_DAILY = "guild_daily"


@dataclass(frozen=True, slots=True)
class Denial:
    """Why a job may not start: which limit, how much is used, and when that changes (None: not by waiting)."""

    kind: DenialKind
    limit: int
    used: int
    retry_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class Usage:
    active: int
    images_today: int
    images_limit: int
    cost_today: Decimal
    resets_at: datetime


def day_start(now: datetime) -> datetime:
    return now.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)


def decide(usage: UsageSnapshot, limits: Limits, images: int, now: datetime, *, in_guild: bool) -> Denial | None:
    """The first limit a new job of `images` images would break, or None."""
    tomorrow = day_start(now) + timedelta(days=1)
    if usage.active_jobs >= limits.max_concurrent:
        return Denial(DenialKind.CONCURRENCY, limits.max_concurrent, usage.active_jobs)
    # No cooldown, no wait: another process may have admitted a job made a moment after this one.
    ready = usage.last_created + limits.cooldown if usage.last_created and limits.cooldown else None
    if ready is not None and ready > now:
        return Denial(DenialKind.COOLDOWN, int(limits.cooldown.total_seconds()), 0, ready)
    if usage.user_images + images > limits.daily_user_images:
        return Denial(DenialKind.USER_DAILY, limits.daily_user_images, usage.user_images, tomorrow)
    if in_guild and usage.guild_images + images > limits.daily_guild_images:
        return Denial(DenialKind.GUILD_DAILY, limits.daily_guild_images, usage.guild_images, tomorrow)
    return None
