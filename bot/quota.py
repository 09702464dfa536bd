"""Cost and abuse limits, counted from the stored jobs so a restart resets nothing."""

from __future__ import annotations

import asyncio
from collections import Counter, defaultdict
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Protocol

from bot.config import Settings

__all__ = ("QuotaDenied", "QuotaExceeded", "Quotas", "Usage", "UsageSnapshot", "day_start")


@dataclass(frozen=True, slots=True)
class UsageSnapshot:
    """What the store counts for one user (and their guild) since the start of the day."""

    active_jobs: int
    user_images: int
    guild_images: int
    last_created: datetime | None


class UsageSource(Protocol):
    async def usage_snapshot(self, user_id: int, guild_id: int | None, since: datetime) -> UsageSnapshot: ...


@dataclass(frozen=True, slots=True)
class QuotaDenied:
    """Why a job may not start, and when that changes (None: not by waiting)."""

    reason: str
    retry_at: datetime | None = None


class QuotaExceeded(Exception):
    def __init__(self, denial: QuotaDenied) -> None:
        super().__init__(denial.reason)
        self.denial = denial


@dataclass(frozen=True, slots=True)
class Usage:
    active: int
    images_today: int
    images_limit: int
    cost_today: Decimal
    resets_at: datetime


def day_start(now: datetime) -> datetime:
    return now.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)


class Quotas:
    """Checks a new job of `images` images against every configured limit."""

    def __init__(self, store: UsageSource, settings: Settings) -> None:
        self._store = store
        self._settings = settings
        # Jobs admitted but not stored yet (their submit is on its way) count as if stored.
        self._held_jobs: Counter[int] = Counter()
        self._held_images: Counter[tuple[str, int | None]] = Counter()
        self._user_locks: defaultdict[int, asyncio.Lock] = defaultdict(asyncio.Lock)

    def cost(self, images: int) -> Decimal:
        return self._settings.price_per_image_usd * images

    @asynccontextmanager
    async def reserve(self, *, user_id: int, guild_id: int | None, images: int, now: datetime) -> AsyncIterator[None]:
        """Admit a job (or raise `QuotaExceeded`) and hold its place until the block ends, by which time it
        is stored or failed. The user's lock makes a double click wait for the first click's check; users
        never wait for each other (two members of one guild at the same instant may overshoot the guild's
        daily limit by one job, which beats making every member queue behind one lock)."""
        keys = (("user", user_id), ("guild", guild_id))
        async with self._user_locks[user_id]:
            denial = await self.check(user_id=user_id, guild_id=guild_id, images=images, now=now)
            if denial:
                raise QuotaExceeded(denial)
            self._held_jobs[user_id] += 1
            self._held_images.update({key: images for key in keys})
        try:
            yield
        finally:
            self._release(user_id, keys, images)

    def _release(self, user_id: int, keys: tuple[tuple[str, int | None], ...], images: int) -> None:
        self._held_jobs[user_id] -= 1
        self._held_images.subtract({key: images for key in keys})
        if not self._held_jobs[user_id]:
            del self._held_jobs[user_id]
            if user_id in self._user_locks and not self._user_locks[user_id].locked():
                del self._user_locks[user_id]

    async def check(self, *, user_id: int, guild_id: int | None, images: int, now: datetime) -> QuotaDenied | None:
        usage = await self._store.usage_snapshot(user_id, guild_id, day_start(now))
        return (
            self._concurrency(user_id, usage)
            or self._cooldown(user_id, usage, now)
            or self._daily(images, now, usage.user_images + self._held_images[("user", user_id)], guild=False)
            or (self._daily(images, now, usage.guild_images + self._held_images[("guild", guild_id)], guild=True)
                if guild_id else None)
        )  # fmt: skip

    async def usage(self, now: datetime, *, user_id: int, guild_id: int | None = None) -> tuple[Usage, Usage | None]:
        """Today's usage of a user, and of their guild when `guild_id` is given."""
        since = day_start(now)
        snapshot = await self._store.usage_snapshot(user_id, guild_id, since)
        resets = since + timedelta(days=1)
        mine = Usage(snapshot.active_jobs, snapshot.user_images, self._settings.daily_images_per_user,
                     self.cost(snapshot.user_images), resets)  # fmt: skip
        guild = Usage(0, snapshot.guild_images, self._settings.daily_images_per_guild,
                      self.cost(snapshot.guild_images), resets)  # fmt: skip
        return mine, guild if guild_id is not None else None

    def _concurrency(self, user_id: int, usage: UsageSnapshot) -> QuotaDenied | None:
        limit = self._settings.max_concurrent_jobs_per_user
        if usage.active_jobs + self._held_jobs[user_id] >= limit:
            return QuotaDenied(f"You already have {limit} job(s) running; wait for one to finish.")
        return None

    def _cooldown(self, user_id: int, usage: UsageSnapshot, now: datetime) -> QuotaDenied | None:
        last = now if self._held_jobs[user_id] else usage.last_created
        ready = last + timedelta(seconds=self._settings.cooldown_seconds) if last else None
        if ready and ready > now:
            return QuotaDenied("You are on cooldown.", ready)
        return None

    def _daily(self, images: int, now: datetime, used: int, *, guild: bool) -> QuotaDenied | None:
        limit = self._settings.daily_images_per_guild if guild else self._settings.daily_images_per_user
        if used + images <= limit:
            return None
        who = "This server has" if guild else "You have"
        return QuotaDenied(f"{who} used {used} of {limit} images today.", day_start(now) + timedelta(days=1))
