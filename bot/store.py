"""Job storage in an embedded SQLite file (no server), behind the small `JobStore` interface.

The jobs table is also the ledger that quotas are counted from, so limits survive restarts.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiosqlite

from bot.fal import KontextInput, KontextOutput
from bot.jobs import Job, JobState
from bot.quota import UsageSnapshot

__all__ = ("SqliteJobStore",)

SCHEMA_VERSION = 1
SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    state TEXT NOT NULL,
    source TEXT NOT NULL,
    user_id INTEGER NOT NULL,
    guild_id INTEGER,
    channel_id INTEGER NOT NULL,
    request_json TEXT NOT NULL,
    num_images INTEGER NOT NULL,
    request_id TEXT NOT NULL,
    status_url TEXT NOT NULL,
    response_url TEXT NOT NULL,
    cancel_url TEXT NOT NULL,
    queue_position INTEGER,
    origin_message_id INTEGER,
    status_message_id INTEGER,
    thread_id INTEGER,
    result_json TEXT,
    error TEXT,
    cost_usd TEXT NOT NULL,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    delivery_started INTEGER NOT NULL DEFAULT 0,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS jobs_unfinished ON jobs (state) WHERE state NOT IN ('delivered', 'failed', 'cancelled');
CREATE INDEX IF NOT EXISTS jobs_by_user ON jobs (user_id, created_at);
CREATE INDEX IF NOT EXISTS jobs_by_guild ON jobs (guild_id, created_at);
CREATE TABLE IF NOT EXISTS pinned_inputs (
    user_id INTEGER PRIMARY KEY,
    url TEXT NOT NULL,
    content_type TEXT NOT NULL,
    pinned_at TEXT NOT NULL
);
"""

COLUMNS = (
    "id", "state", "source", "user_id", "guild_id", "channel_id", "request_json", "num_images", "request_id",
    "status_url", "response_url", "cancel_url", "queue_position", "origin_message_id", "status_message_id",
    "thread_id", "result_json", "error", "cost_usd", "cancel_requested", "delivery_started", "created_at",
    "updated_at",
)  # fmt: skip
SAVE_JOB = f"INSERT OR REPLACE INTO jobs ({', '.join(COLUMNS)}) VALUES ({', '.join('?' for _ in COLUMNS)})"  # noqa: S608
# Jobs count against quotas while running (reserved) and once delivered (paid); failed and cancelled ones do not.
USAGE_SNAPSHOT = """
SELECT
    (SELECT COUNT(*) FROM jobs WHERE user_id = :user AND state IN ('queued', 'running', 'succeeded')),
    (SELECT COALESCE(SUM(num_images), 0) FROM jobs WHERE user_id = :user AND created_at >= :since
        AND state IN ('queued', 'running', 'succeeded', 'delivered')),
    (SELECT COALESCE(SUM(num_images), 0) FROM jobs WHERE guild_id = :guild AND created_at >= :since
        AND state IN ('queued', 'running', 'succeeded', 'delivered')),
    (SELECT MAX(created_at) FROM jobs WHERE user_id = :user)
"""


class SqliteJobStore:
    """`JobStore` on SQLite, with the queries the quota checks need."""

    def __init__(self, path: Path | str) -> None:
        self._path = Path(path)
        self._db: aiosqlite.Connection | None = None

    async def open(self) -> None:
        if str(self._path) != ":memory:":
            self._path.parent.mkdir(parents=True, exist_ok=True)
        self._db = await aiosqlite.connect(self._path)
        self._db.row_factory = aiosqlite.Row
        await self._db.execute("PRAGMA journal_mode=WAL")
        await self._db.execute("PRAGMA synchronous=NORMAL")
        await self._db.executescript(SCHEMA)
        await self._db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        await self._db.commit()

    async def close(self) -> None:
        if self._db is not None:
            await self._db.close()
            self._db = None

    async def __aenter__(self) -> SqliteJobStore:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def db(self) -> aiosqlite.Connection:
        if self._db is None:
            raise RuntimeError("store is not open")
        return self._db

    async def save(self, job: Job) -> None:
        await self.db.execute(SAVE_JOB, _row(job))
        await self.db.commit()

    async def get(self, job_id: str) -> Job | None:
        async with self.db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)) as cursor:
            row = await cursor.fetchone()
        return _job(row) if row else None

    async def unfinished(self) -> list[Job]:
        async with self.db.execute(
            "SELECT * FROM jobs WHERE state IN ('queued', 'running', 'succeeded') ORDER BY created_at"
        ) as cursor:
            return [_job(row) async for row in cursor]

    async def usage_snapshot(self, user_id: int, guild_id: int | None, since: datetime) -> UsageSnapshot:
        """Everything the quota check needs, in one query."""
        params = {"user": user_id, "guild": guild_id, "since": since.isoformat()}
        async with self.db.execute(USAGE_SNAPSHOT, params) as cursor:
            row = await cursor.fetchone()
        active, user_images, guild_images, last = row if row else (0, 0, 0, None)  # always one row, in fact
        return UsageSnapshot(int(active), int(user_images), int(guild_images), _aware(last) if last else None)

    async def pin_input(self, user_id: int, url: str, content_type: str, now: datetime) -> None:
        """Remember an image as the first input of the user's next job ("Use as input")."""
        await self.db.execute(
            "INSERT OR REPLACE INTO pinned_inputs VALUES (?, ?, ?, ?)", (user_id, url, content_type, now.isoformat())
        )
        await self.db.commit()

    async def pinned_input(self, user_id: int, since: datetime) -> tuple[str, str] | None:
        query = "SELECT url, content_type FROM pinned_inputs WHERE user_id = ? AND pinned_at >= ?"
        async with self.db.execute(query, (user_id, since.isoformat())) as cursor:
            row = await cursor.fetchone()
        return (row[0], row[1]) if row else None

    async def unpin_input(self, user_id: int) -> None:
        await self.db.execute("DELETE FROM pinned_inputs WHERE user_id = ?", (user_id,))
        await self.db.commit()


def _row(job: Job) -> tuple[Any, ...]:
    return (
        job.id, job.state.value, job.source, job.user_id, job.guild_id, job.channel_id,
        job.request.model_dump_json(), job.request.num_images, job.request_id, job.status_url, job.response_url,
        job.cancel_url, job.queue_position, job.origin_message_id, job.status_message_id, job.thread_id,
        job.result.model_dump_json() if job.result else None, job.error, str(job.cost_usd),
        int(job.cancel_requested), int(job.delivery_started), job.created_at.isoformat(), job.updated_at.isoformat(),
    )  # fmt: skip


def _job(row: aiosqlite.Row) -> Job:
    return Job(
        id=row["id"],
        state=JobState(row["state"]),
        source=row["source"],
        user_id=row["user_id"],
        guild_id=row["guild_id"],
        channel_id=row["channel_id"],
        request=KontextInput.model_validate(json.loads(row["request_json"])),
        request_id=row["request_id"],
        status_url=row["status_url"],
        response_url=row["response_url"],
        cancel_url=row["cancel_url"],
        queue_position=row["queue_position"],
        origin_message_id=row["origin_message_id"],
        status_message_id=row["status_message_id"],
        thread_id=row["thread_id"],
        result=KontextOutput.model_validate_json(row["result_json"]) if row["result_json"] else None,
        error=row["error"],
        cost_usd=Decimal(row["cost_usd"]),
        cancel_requested=bool(row["cancel_requested"]),
        delivery_started=bool(row["delivery_started"]),
        created_at=_aware(row["created_at"]),
        updated_at=_aware(row["updated_at"]),
    )


def _aware(text: str) -> datetime:
    value = datetime.fromisoformat(text)
    return value if value.tzinfo else value.replace(tzinfo=UTC)
