"""The store interface the bot uses, whichever database is behind it."""

from __future__ import annotations

from datetime import datetime
from typing import Protocol, Self

from bot.jobs import Job
from bot.jobs.ports import JobStore
from bot.shards import ShardSet

__all__ = ("Store", "StoreError")


class StoreError(Exception):
    """The database cannot be used; the message names it (never its password) and the problem."""


class Store(JobStore, Protocol):
    """`JobStore` plus opening, listing and the pinned inputs. `async with` opens and closes it."""

    async def open(self) -> None: ...
    async def close(self) -> None: ...
    async def __aenter__(self) -> Self: ...
    async def __aexit__(self, *exc: object) -> None: ...
    async def unfinished(self, shards: ShardSet | None = None) -> list[Job]: ...
    async def jobs(self, *, user_id: int | None = None, limit: int = 100) -> list[Job]: ...
    async def pin_input(self, user_id: int, url: str, content_type: str, now: datetime) -> None: ...
    async def unpin_input(self, user_id: int) -> None: ...
    async def pinned_input(self, user_id: int, since: datetime) -> tuple[str, str] | None: ...
