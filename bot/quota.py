"""Cost and abuse limits, counted from the stored jobs so a restart resets nothing."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Protocol

from bot.config import Settings

__all__ = ("QuotaDenied", "QuotaExceeded", "Quotas", "Usage", "day_start")


class UsageSource(Protocol):
    async def active_count(self, user_id: int) -> int: ...
    async def images_since(
        self, since: datetime, *, user_id: int | None = None, guild_id: int | None = None
    ) -> int: ...
    async def last_created(self, user_id: int) -> datetime | None: ...


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
        # Jobs admitted but not yet stored (their submit is on its way): counted as if stored.
        self._held_jobs: Counter[int] = Counter()
        self._held_images: Counter[tuple[str, int | None]] = Counter()
        self._lock = asyncio.Lock()

    @asynccontextmanager
    async def reserve(self, *, user_id: int, guild_id: int | None, images: int, now: datetime) -> AsyncIterator[None]:
        """Admit a job (or raise `QuotaExceeded`) and hold its place until the block ends, by which time
        it is stored or failed. Checking and holding under one lock stops a double click slipping through."""
        keys = (("user", user_id), ("guild", guild_id))
        async with self._lock:
            denial = await self.check(user_id=user_id, guild_id=guild_id, images=images, now=now)
            if denial:
                raise QuotaExceeded(denial)
            self._held_jobs[user_id] += 1
            self._held_images.update({key: images for key in keys})
        try:
            yield
        finally:
            self._held_jobs[user_id] -= 1
            self._held_images.subtract({key: images for key in keys})

    def cost(self, images: int) -> Decimal:
        return self._settings.price_per_image_usd * images

    async def check(self, *, user_id: int, guild_id: int | None, images: int, now: datetime) -> QuotaDenied | None:
        for denial in (
            await self._concurrency(user_id),
            await self._cooldown(user_id, now),
            await self._daily(images, now, user_id=user_id),
            await self._daily(images, now, guild_id=guild_id) if guild_id else None,
        ):
            if denial:
                return denial
        return None

    async def usage(self, now: datetime, *, user_id: int | None = None, guild_id: int | None = None) -> Usage:
        since = day_start(now)
        images = await self._store.images_since(since, user_id=user_id, guild_id=guild_id)
        limit = self._settings.daily_images_per_user if user_id is not None else self._settings.daily_images_per_guild
        active = await self._store.active_count(user_id) if user_id is not None else 0
        return Usage(active, images, limit, self.cost(images), since + timedelta(days=1))

    async def _concurrency(self, user_id: int) -> QuotaDenied | None:
        limit = self._settings.max_concurrent_jobs_per_user
        if await self._store.active_count(user_id) + self._held_jobs[user_id] >= limit:
            return QuotaDenied(f"You already have {limit} job(s) running; wait for one to finish.")
        return None

    async def _cooldown(self, user_id: int, now: datetime) -> QuotaDenied | None:
        last = now if self._held_jobs[user_id] else await self._store.last_created(user_id)
        ready = last + timedelta(seconds=self._settings.cooldown_seconds) if last else None
        if ready and ready > now:
            return QuotaDenied("You are on cooldown.", ready)
        return None

    async def _daily(
        self, images: int, now: datetime, *, user_id: int | None = None, guild_id: int | None = None
    ) -> QuotaDenied | None:
        limit = self._settings.daily_images_per_user if user_id else self._settings.daily_images_per_guild
        used = await self._store.images_since(day_start(now), user_id=user_id, guild_id=guild_id)
        used += self._held_images[("user", user_id) if user_id else ("guild", guild_id)]
        if used + images <= limit:
            return None
        who = "You have" if user_id else "This server has"
        return QuotaDenied(f"{who} used {used} of {limit} images today.", day_start(now) + timedelta(days=1))
