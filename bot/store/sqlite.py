"""Job storage in an embedded SQLite file (no server), behind the `Store` interface.

The jobs table is also the ledger the limits are counted from, so they survive restarts. Every write
is its own `BEGIN IMMEDIATE` transaction, one at a time: an admission counts and inserts in one of
them, so no other admission (in this process or another one on the same file) can slip in between.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiosqlite

from bot.jobs.model import DEFAULT_ENDPOINT, Job
from bot.quota import Denial, UsageSnapshot
from bot.shards import ShardSet
from bot.store.base import StoreError
from bot.store.rows import ACTIVE, BILLABLE, COLUMNS, job_from, job_values

__all__ = ("SCHEMA_VERSION", "SqliteJobStore")

log = logging.getLogger(__name__)

SCHEMA_VERSION = 2
BUSY_TIMEOUT_MS = 10_000

JOBS_TABLE = """
CREATE TABLE {name} (
    id TEXT PRIMARY KEY,
    state TEXT NOT NULL,
    source TEXT NOT NULL,
    user_id INTEGER NOT NULL,
    guild_id INTEGER,
    channel_id INTEGER NOT NULL,
    endpoint TEXT NOT NULL,
    request_json TEXT NOT NULL,
    num_images INTEGER NOT NULL,
    request_id TEXT,
    queue_position INTEGER,
    origin_message_id INTEGER,
    status_message_id INTEGER,
    thread_id INTEGER,
    result_json TEXT,
    result_message_ids TEXT NOT NULL DEFAULT '[]',
    delivery_attempts INTEGER NOT NULL DEFAULT 0,
    error TEXT,
    cost_usd TEXT NOT NULL,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    locale TEXT NOT NULL DEFAULT 'en-US',
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
"""
INDEXES = """
CREATE INDEX jobs_unfinished ON jobs (state) WHERE state IN ('pending', 'queued', 'running', 'succeeded');
CREATE INDEX jobs_by_user ON jobs (user_id, created_at);
CREATE INDEX jobs_by_guild ON jobs (guild_id, created_at);
"""
PINS_TABLE = """
CREATE TABLE IF NOT EXISTS pinned_inputs (
    user_id INTEGER PRIMARY KEY,
    url TEXT NOT NULL,
    content_type TEXT NOT NULL,
    pinned_at TEXT NOT NULL
);
"""
# Version 1 stored fal's URLs with each job and had no endpoint, message ids or attempt count.
MIGRATE_1_TO_2 = f"""
{JOBS_TABLE.format(name="jobs_v2")}
INSERT INTO jobs_v2 (
    id, state, source, user_id, guild_id, channel_id, endpoint, request_json, num_images, request_id,
    queue_position, origin_message_id, status_message_id, thread_id, result_json, delivery_attempts, error,
    cost_usd, cancel_requested, created_at, updated_at)
SELECT id, state, source, user_id, guild_id, channel_id, '{DEFAULT_ENDPOINT}', request_json, num_images,
    NULLIF(request_id, ''), queue_position, origin_message_id, status_message_id, thread_id, result_json,
    delivery_started, error, cost_usd, cancel_requested, created_at, updated_at
FROM jobs;
DROP TABLE jobs;
ALTER TABLE jobs_v2 RENAME TO jobs;
{INDEXES}
"""  # noqa: S608  # constants only
CREATE = JOBS_TABLE.format(name="jobs") + INDEXES + PINS_TABLE
MIGRATIONS = {1: MIGRATE_1_TO_2}

# A cancel asked for by another process must survive this process saving its own copy of the job.
SAVE_JOB = (
    f"INSERT INTO jobs ({', '.join(COLUMNS)}) VALUES ({', '.join('?' for _ in COLUMNS)}) "  # noqa: S608
    f"ON CONFLICT (id) DO UPDATE SET {', '.join(f'{c} = excluded.{c}' for c in COLUMNS[1:])}, "
    "cancel_requested = MAX(jobs.cancel_requested, excluded.cancel_requested)"
)


USAGE_SNAPSHOT = f"""
SELECT
    (SELECT COUNT(*) FROM jobs WHERE user_id = :user AND state IN ({ACTIVE})),
    (SELECT COALESCE(SUM(num_images), 0) FROM jobs WHERE user_id = :user AND created_at >= :since
        AND state IN ({BILLABLE})),
    (SELECT COALESCE(SUM(num_images), 0) FROM jobs WHERE guild_id = :guild AND created_at >= :since
        AND state IN ({BILLABLE})),
    (SELECT MAX(created_at) FROM jobs WHERE user_id = :user)
"""  # noqa: S608  # constants only
UNFINISHED = f"SELECT * FROM jobs WHERE state IN ({ACTIVE}) ORDER BY created_at"  # noqa: S608
# A guild's shard is (guild_id >> 22) % count; DMs (no guild) belong to shard 0.
UNFINISHED_ON_SHARDS = f"""
SELECT * FROM jobs WHERE state IN ({ACTIVE})
    AND (COALESCE(guild_id, 0) >> 22) % :count IN (SELECT value FROM json_each(:ids))
ORDER BY created_at
"""  # noqa: S608  # constants only


class SqliteJobStore:
    """`Store` on SQLite, with the queries the limits need."""

    def __init__(self, path: Path | str) -> None:
        self._path = Path(path)
        self._db: aiosqlite.Connection | None = None
        self._write = asyncio.Lock()

    async def open(self) -> None:
        if str(self._path) != ":memory:":
            self._path.parent.mkdir(parents=True, exist_ok=True)
        db = await aiosqlite.connect(self._path, isolation_level=None)  # transactions are explicit
        try:
            await self._prepare(db)
        except (sqlite3.Error, StoreError) as exc:
            await db.close()  # its thread would keep the process alive
            raise exc if isinstance(exc, StoreError) else StoreError(f"{self._path}: {exc}") from None
        self._db = db

    async def _prepare(self, db: aiosqlite.Connection) -> None:
        db.row_factory = aiosqlite.Row
        await db.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        await db.execute("PRAGMA journal_mode=WAL")
        await db.execute("PRAGMA synchronous=FULL")  # the commit that records a paid job must survive a power cut
        version = await _user_version(db)
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"{self._path}: schema version {version} is newer than this bot's ({SCHEMA_VERSION}); "
                "run the newer bot or restore a backup"
            )
        if version == 0 and await _has_table(db, "jobs"):
            version = 1  # written before the version was recorded
        await self._upgrade(db, version)

    async def _upgrade(self, db: aiosqlite.Connection, version: int) -> None:
        if version == SCHEMA_VERSION:
            return
        script = CREATE if version == 0 else "\n".join(MIGRATIONS[v] for v in range(version, SCHEMA_VERSION))
        try:
            await db.executescript(f"BEGIN IMMEDIATE;\n{script}\n{PINS_TABLE}\nPRAGMA user_version={SCHEMA_VERSION};")
            await db.execute("COMMIT")
        except sqlite3.Error:
            if db.in_transaction:
                await db.execute("ROLLBACK")
            raise
        if version:
            log.info("migrated %s from schema version %d to %d", self._path, version, SCHEMA_VERSION)

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

    # --- writes: one transaction at a time ----------------------------------------------------

    async def _transaction(self, *statements: tuple[str, Any]) -> None:
        async with self._write:
            await self.db.execute("BEGIN IMMEDIATE")
            try:
                for sql, params in statements:
                    await self.db.execute(sql, params)
            except BaseException:
                await self.db.execute("ROLLBACK")
                raise
            await self.db.execute("COMMIT")

    async def admit(self, job: Job, decide: Callable[[UsageSnapshot], Denial | None]) -> Denial | None:
        """Count the user's usage, ask `decide`, and store `job` if it said yes — all in one transaction."""
        async with self._write:
            await self.db.execute("BEGIN IMMEDIATE")
            try:
                denial = decide(await self._usage(job.user_id, job.guild_id, job.created_at))
                if denial is None:
                    await self.db.execute(SAVE_JOB, _row(job))
            except BaseException:
                await self.db.execute("ROLLBACK")
                raise
            await self.db.execute("COMMIT")
        return denial

    async def save(self, job: Job) -> None:
        await self._transaction((SAVE_JOB, _row(job)))

    async def save_many(self, jobs: Sequence[Job]) -> None:
        """Save several jobs in one transaction (the runner batches the saves of one loop tick)."""
        async with self._write:
            await self.db.execute("BEGIN IMMEDIATE")
            try:
                await self.db.executemany(SAVE_JOB, [_row(job) for job in jobs])
            except BaseException:
                await self.db.execute("ROLLBACK")
                raise
            await self.db.execute("COMMIT")

    async def request_cancel(self, job_id: str) -> None:
        """Mark a job cancelled-by-request, whichever process follows it."""
        await self._transaction(("UPDATE jobs SET cancel_requested = 1 WHERE id = ?", (job_id,)))

    async def pin_input(self, user_id: int, url: str, content_type: str, now: datetime) -> None:
        """Remember an image as the first input of the user's next job ("Use as input")."""
        sql = "INSERT OR REPLACE INTO pinned_inputs VALUES (?, ?, ?, ?)"
        await self._transaction((sql, (user_id, url, content_type, now.isoformat())))

    async def unpin_input(self, user_id: int) -> None:
        await self._transaction(("DELETE FROM pinned_inputs WHERE user_id = ?", (user_id,)))

    # --- reads --------------------------------------------------------------------------------

    async def get(self, job_id: str) -> Job | None:
        async with self.db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)) as cursor:
            row = await cursor.fetchone()
        return _job(row) if row else None

    async def unfinished(self, shards: ShardSet | None = None) -> list[Job]:
        """Jobs not finished yet, oldest first: all, or those of guilds on `shards` (DMs: shard 0)."""
        if shards is None:
            query, params = UNFINISHED, {}
        else:
            query, params = UNFINISHED_ON_SHARDS, {"count": shards.count, "ids": json.dumps(sorted(shards.ids))}
        async with self.db.execute(query, params) as cursor:
            return [_job(row) async for row in cursor]

    async def jobs(self, *, user_id: int | None = None, limit: int = 100) -> list[Job]:
        """The newest jobs (of one user, if given), newest first."""
        where, params = ("WHERE user_id = ?", (user_id, limit)) if user_id is not None else ("", (limit,))
        sql = f"SELECT * FROM jobs {where} ORDER BY created_at DESC LIMIT ?"  # noqa: S608
        async with self.db.execute(sql, params) as cursor:
            return [_job(row) async for row in cursor]

    async def usage_snapshot(self, user_id: int, guild_id: int | None, now: datetime) -> UsageSnapshot:
        """Everything the limits need, in one query."""
        return await self._usage(user_id, guild_id, now)

    async def _usage(self, user_id: int, guild_id: int | None, now: datetime) -> UsageSnapshot:
        since = now.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
        params = {"user": user_id, "guild": guild_id, "since": since.isoformat()}
        async with self.db.execute(USAGE_SNAPSHOT, params) as cursor:
            row = await cursor.fetchone()
        active, user_images, guild_images, last = row if row else (0, 0, 0, None)  # always one row, in fact
        return UsageSnapshot(int(active), int(user_images), int(guild_images), _aware(last) if last else None)

    async def pinned_input(self, user_id: int, since: datetime) -> tuple[str, str] | None:
        query = "SELECT url, content_type FROM pinned_inputs WHERE user_id = ? AND pinned_at >= ?"
        async with self.db.execute(query, (user_id, since.isoformat())) as cursor:
            row = await cursor.fetchone()
        return (row[0], row[1]) if row else None


async def _user_version(db: aiosqlite.Connection) -> int:
    async with db.execute("PRAGMA user_version") as cursor:
        row = await cursor.fetchone()
    return int(row[0]) if row else 0


async def _has_table(db: aiosqlite.Connection, name: str) -> bool:
    async with db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (name,)) as cursor:
        return await cursor.fetchone() is not None


def _row(job: Job) -> tuple[Any, ...]:
    return tuple(_sqlite_value(value) for value in job_values(job))


def _sqlite_value(value: Any) -> Any:
    """SQLite has no timestamp, decimal, boolean or array: ISO text, text, 0/1 and JSON text."""
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, list):
        return json.dumps(value)
    return value


def _job(row: aiosqlite.Row) -> Job:
    values = dict(zip(row.keys(), row, strict=True))
    values["result_message_ids"] = json.loads(values["result_message_ids"])
    values["created_at"], values["updated_at"] = _aware(values["created_at"]), _aware(values["updated_at"])
    return job_from(values)


def _aware(text: str) -> datetime:
    value = datetime.fromisoformat(text)
    return value if value.tzinfo else value.replace(tzinfo=UTC)
