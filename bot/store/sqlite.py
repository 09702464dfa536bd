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

from bot.community import GuildSettings, GuildUsage, SettingChange, Spender, UserSettings
from bot.jobs.model import DEFAULT_ENDPOINT, Job
from bot.quota import Denial, UsageSnapshot, day_start, month_start
from bot.shards import ShardSet
from bot.store.base import StoreError
from bot.store.rows import (
    ACTIVE,
    BILLABLE,
    COLUMNS,
    change_from,
    change_values,
    dollars,
    guild_usage_of,
    job_from,
    job_values,
)

__all__ = ("SCHEMA_VERSION", "SqliteJobStore")

log = logging.getLogger(__name__)

SCHEMA_VERSION = 3
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
# Version 3: community settings (per server, with their change log; per user) and result messages users deleted.
COMMUNITY_TABLES = """
CREATE TABLE guild_settings (
    guild_id INTEGER PRIMARY KEY,
    settings_json TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE TABLE guild_setting_changes (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    guild_id INTEGER NOT NULL,
    user_id INTEGER NOT NULL,
    setting TEXT NOT NULL,
    old_json TEXT NOT NULL,
    new_json TEXT NOT NULL,
    changed_at TEXT NOT NULL
);
CREATE INDEX guild_setting_changes_by_guild ON guild_setting_changes (guild_id, id);
CREATE TABLE user_settings (
    user_id INTEGER PRIMARY KEY,
    settings_json TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE INDEX user_settings_by_time ON user_settings (updated_at);
CREATE TABLE deleted_results (
    job_id TEXT PRIMARY KEY,
    deleted_at TEXT NOT NULL
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
CREATE = JOBS_TABLE.format(name="jobs") + INDEXES + PINS_TABLE + COMMUNITY_TABLES
MIGRATIONS = {1: MIGRATE_1_TO_2, 2: COMMUNITY_TABLES}

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
    (SELECT MAX(created_at) FROM jobs WHERE user_id = :user),
    (SELECT COALESCE(SUM(num_images), 0) FROM jobs WHERE user_id = :user AND guild_id = :guild
        AND created_at >= :since AND state IN ({BILLABLE})),
    (SELECT TOTAL(CAST(cost_usd AS REAL)) FROM jobs WHERE guild_id = :guild AND created_at >= :month
        AND state IN ({BILLABLE}))
"""  # noqa: S608  # constants only
GUILD_USAGE = f"""
SELECT user_id, SUM(num_images) AS images, TOTAL(CAST(cost_usd AS REAL)) AS spend FROM jobs
WHERE guild_id = ? AND created_at >= ? AND state IN ({BILLABLE})
GROUP BY user_id ORDER BY spend DESC, images DESC, user_id
"""  # noqa: S608  # constants only
SAVE_GUILD_SETTINGS = "INSERT OR REPLACE INTO guild_settings (guild_id, settings_json, updated_at) VALUES (?, ?, ?)"
RECORD_CHANGE = (
    "INSERT INTO guild_setting_changes (guild_id, user_id, setting, old_json, new_json, changed_at) "
    "VALUES (?, ?, ?, ?, ?, ?)"
)
SETTING_CHANGES = "SELECT * FROM guild_setting_changes WHERE guild_id = ? ORDER BY id DESC LIMIT ?"
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

    async def jobs(self, *, user_id: int | None = None, limit: int = 100, offset: int = 0) -> list[Job]:
        """The newest jobs (of one user, if given), newest first, skipping the `offset` newest."""
        where, params = ("WHERE user_id = ?", (user_id,)) if user_id is not None else ("", ())
        sql = f"SELECT * FROM jobs {where} ORDER BY created_at DESC, id LIMIT ? OFFSET ?"  # noqa: S608
        async with self.db.execute(sql, (*params, limit, offset)) as cursor:
            return [_job(row) async for row in cursor]

    async def usage_snapshot(self, user_id: int, guild_id: int | None, now: datetime) -> UsageSnapshot:
        """Everything the limits need, in one query."""
        return await self._usage(user_id, guild_id, now)

    async def _usage(self, user_id: int, guild_id: int | None, now: datetime) -> UsageSnapshot:
        params = {"user": user_id, "guild": guild_id, "since": day_start(now).isoformat(),
                  "month": month_start(now).isoformat()}  # fmt: skip
        async with self.db.execute(USAGE_SNAPSHOT, params) as cursor:
            row = await cursor.fetchone()
        active, user_images, guild_images, last, member_images, spend = row if row else (0, 0, 0, None, 0, 0.0)
        return UsageSnapshot(int(active), int(user_images), int(guild_images), _aware(last) if last else None,
                             int(member_images), dollars(spend))  # fmt: skip

    async def guild_usage(self, guild_id: int, since: datetime, top: int = 5) -> GuildUsage:
        """The server's billable jobs since `since`: images, spend, and the `top` users by spend."""
        async with self.db.execute(GUILD_USAGE, (guild_id, since.isoformat())) as cursor:
            rows = [Spender(row[0], int(row[1]), dollars(row[2])) async for row in cursor]
        return guild_usage_of(rows, top)

    # --- community settings ---------------------------------------------------------------------

    async def all_guild_settings(self) -> dict[int, GuildSettings]:
        async with self.db.execute("SELECT guild_id, settings_json FROM guild_settings") as cursor:
            return {row[0]: GuildSettings.model_validate_json(row[1]) async for row in cursor}

    async def save_guild_settings(
        self, guild_id: int, settings: GuildSettings, changes: Sequence[SettingChange], now: datetime
    ) -> None:
        """The server's settings and the log of what changed, in one transaction."""
        records = [(RECORD_CHANGE, tuple(map(_sqlite_value, change_values(change)))) for change in changes]
        await self._transaction((SAVE_GUILD_SETTINGS, (guild_id, settings.model_dump_json(), now.isoformat())),
                                *records)  # fmt: skip

    async def setting_changes(self, guild_id: int, limit: int = 10) -> list[SettingChange]:
        """The server's newest setting changes, newest first."""
        async with self.db.execute(SETTING_CHANGES, (guild_id, limit)) as cursor:
            return [change_from({**dict(row), "changed_at": _aware(row["changed_at"])}) async for row in cursor]

    async def user_settings(self, user_id: int) -> UserSettings:
        async with self.db.execute("SELECT settings_json FROM user_settings WHERE user_id = ?", (user_id,)) as cursor:
            row = await cursor.fetchone()
        return UserSettings.model_validate_json(row[0]) if row else UserSettings()

    async def user_settings_since(self, since: datetime | None) -> dict[int, UserSettings]:
        """Personal defaults saved at or after `since` (all: None), by user."""
        sql = "SELECT user_id, settings_json FROM user_settings WHERE updated_at >= ?"
        async with self.db.execute(sql, (since.isoformat() if since else "",)) as cursor:
            return {row[0]: UserSettings.model_validate_json(row[1]) async for row in cursor}

    async def save_user_settings(self, user_id: int, settings: UserSettings, now: datetime) -> None:
        sql = "INSERT OR REPLACE INTO user_settings (user_id, settings_json, updated_at) VALUES (?, ?, ?)"
        await self._transaction((sql, (user_id, settings.model_dump_json(), now.isoformat())))

    async def mark_results_deleted(self, job_id: str, now: datetime) -> None:
        """The user deleted the job's result message(s)."""
        sql = "INSERT OR IGNORE INTO deleted_results (job_id, deleted_at) VALUES (?, ?)"
        await self._transaction((sql, (job_id, now.isoformat())))

    async def deleted_results(self, job_ids: Sequence[str]) -> set[str]:
        """Which of these jobs' result messages their users deleted."""
        if not job_ids:
            return set()
        marks = ", ".join("?" for _ in job_ids)
        sql = f"SELECT job_id FROM deleted_results WHERE job_id IN ({marks})"  # noqa: S608  # placeholders only
        async with self.db.execute(sql, tuple(job_ids)) as cursor:
            return {row[0] async for row in cursor}

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
