"""Job storage in PostgreSQL (asyncpg), behind the `Store` interface: one database for many processes.

Admission is one READ COMMITTED transaction that first takes transaction-scoped advisory locks on the
user and on the guild, always in the same order (so two admissions never deadlock), then counts,
decides and inserts. Any other admission for the same user or guild, in any process, waits for the
commit and then counts the new job: no two can take the last slot of a limit. Other writes only move
jobs towards their end, which can only lower the counts.

Errors leave this module as `StoreError` with the server's one-line message: asyncpg appends the
DETAIL line, which quotes row values, and the URL's password is never repeated.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

import asyncpg

from bot.community import GuildSettings, GuildUsage, SettingChange, Spender, UserSettings
from bot.jobs.model import Job
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

__all__ = ("SCHEMA_VERSION", "PostgresJobStore")

log = logging.getLogger(__name__)

CONNECT_TIMEOUT = 10.0
COMMAND_TIMEOUT = 60.0
MIGRATION_LOCK = 0x6B6F6E74_6578745F  # "kontext_": one migration at a time, whichever process starts first
# InternalClientError: the first use of a connection whose server process was ended (a server restart).
DATABASE_ERRORS = (asyncpg.PostgresError, asyncpg.InterfaceError, asyncpg.InternalClientError, OSError)

VERSION_TABLE = """
CREATE TABLE IF NOT EXISTS schema_version (
    version integer PRIMARY KEY,
    migrated_at timestamptz NOT NULL DEFAULT now()
)
"""
CREATE_V1 = f"""
CREATE TABLE jobs (
    id text PRIMARY KEY,
    state text NOT NULL,
    source text NOT NULL,
    user_id bigint NOT NULL,
    guild_id bigint,
    channel_id bigint NOT NULL,
    endpoint text NOT NULL,
    request_json jsonb NOT NULL,
    num_images integer NOT NULL,
    request_id text,
    queue_position integer,
    origin_message_id bigint,
    status_message_id bigint,
    thread_id bigint,
    result_json jsonb,
    result_message_ids bigint[] NOT NULL DEFAULT '{{}}',
    delivery_attempts integer NOT NULL DEFAULT 0,
    error text,
    cost_usd numeric NOT NULL,
    cancel_requested boolean NOT NULL DEFAULT false,
    locale text NOT NULL DEFAULT 'en-US',
    created_at timestamptz NOT NULL,
    updated_at timestamptz NOT NULL
);
CREATE INDEX jobs_unfinished ON jobs (created_at) WHERE state IN ({ACTIVE});
CREATE INDEX jobs_by_user ON jobs (user_id, created_at);
CREATE INDEX jobs_by_guild ON jobs (guild_id, created_at);
CREATE TABLE pinned_inputs (
    user_id bigint PRIMARY KEY,
    url text NOT NULL,
    content_type text NOT NULL,
    pinned_at timestamptz NOT NULL
);
"""
# SQLite's version 2 (endpoints, message ids, attempts) was this store's first schema already: the numbers agree
# from here on, so both stores are at the same version with the same tables.
SAME_AS_SQLITE_V2 = "SELECT 1"
# Version 3: community settings (per server, with their change log; per user) and result messages users deleted.
COMMUNITY_V3 = """
CREATE TABLE guild_settings (
    guild_id bigint PRIMARY KEY,
    settings_json jsonb NOT NULL,
    updated_at timestamptz NOT NULL
);
CREATE TABLE guild_setting_changes (
    id bigserial PRIMARY KEY,
    guild_id bigint NOT NULL,
    user_id bigint NOT NULL,
    setting text NOT NULL,
    old_json jsonb NOT NULL,
    new_json jsonb NOT NULL,
    changed_at timestamptz NOT NULL
);
CREATE INDEX guild_setting_changes_by_guild ON guild_setting_changes (guild_id, id);
CREATE TABLE user_settings (
    user_id bigint PRIMARY KEY,
    settings_json jsonb NOT NULL,
    updated_at timestamptz NOT NULL
);
CREATE INDEX user_settings_by_time ON user_settings (updated_at);
CREATE TABLE deleted_results (
    job_id text PRIMARY KEY,
    deleted_at timestamptz NOT NULL
);
"""
# Version 4: running totals of billable images and spend per member and per server and UTC day, kept by
# triggers in the transaction that inserts or refunds a job. An admission reads a few of their rows instead of
# summing every job of the day, and of the month for the budget.
USAGE_TOTALS_V4 = f"""
CREATE TABLE member_days (
    user_id bigint NOT NULL,
    day date NOT NULL,
    guild_id bigint NOT NULL,  -- 0: a DM
    images integer NOT NULL,
    PRIMARY KEY (user_id, day, guild_id)
);
CREATE TABLE guild_days (
    guild_id bigint NOT NULL,
    day date NOT NULL,
    images integer NOT NULL,
    spend numeric NOT NULL,
    PRIMARY KEY (guild_id, day)
);
CREATE INDEX jobs_active_by_user ON jobs (user_id) WHERE state IN ({ACTIVE});
CREATE FUNCTION count_usage() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    job jobs := CASE WHEN TG_OP = 'INSERT' THEN NEW ELSE OLD END;
    direction integer := CASE WHEN TG_OP = 'INSERT' THEN 1 ELSE -1 END;  -- an update here is a refund
    job_day date := (job.created_at AT TIME ZONE 'UTC')::date;
BEGIN
    INSERT INTO member_days VALUES (job.user_id, job_day, coalesce(job.guild_id, 0), direction * job.num_images)
        ON CONFLICT (user_id, day, guild_id) DO UPDATE SET images = member_days.images + EXCLUDED.images;
    INSERT INTO guild_days
        VALUES (coalesce(job.guild_id, 0), job_day, direction * job.num_images, direction * job.cost_usd)
        ON CONFLICT (guild_id, day) DO UPDATE
        SET images = guild_days.images + EXCLUDED.images, spend = guild_days.spend + EXCLUDED.spend;
    RETURN NULL;
END
$$;
CREATE TRIGGER usage_on_insert AFTER INSERT ON jobs FOR EACH ROW
WHEN (NEW.state IN ({BILLABLE})) EXECUTE FUNCTION count_usage();
CREATE TRIGGER usage_on_refund AFTER UPDATE OF state ON jobs FOR EACH ROW
WHEN (OLD.state IN ({BILLABLE}) AND NEW.state NOT IN ({BILLABLE})) EXECUTE FUNCTION count_usage();
INSERT INTO member_days
SELECT user_id, (created_at AT TIME ZONE 'UTC')::date, coalesce(guild_id, 0), sum(num_images)
FROM jobs WHERE state IN ({BILLABLE}) GROUP BY 1, 2, 3;
INSERT INTO guild_days
SELECT coalesce(guild_id, 0), (created_at AT TIME ZONE 'UTC')::date, sum(num_images), sum(cost_usd)
FROM jobs WHERE state IN ({BILLABLE}) GROUP BY 1, 2;
"""  # noqa: S608  # constants only
# Version 5: the interaction token of a job that can answer only through it (`ReplyToken`), while it runs.
REPLY_V5 = "ALTER TABLE jobs ADD COLUMN reply_token text, ADD COLUMN reply_ephemeral boolean NOT NULL DEFAULT false"
# MIGRATIONS[n] takes the schema from version n to n + 1, in one transaction.
MIGRATIONS = (CREATE_V1, SAME_AS_SQLITE_V2, COMMUNITY_V3, USAGE_TOTALS_V4, REPLY_V5)
SCHEMA_VERSION = len(MIGRATIONS)

# A cancel asked for by another process must survive this process saving its own copy of the job.
_UPDATES = ", ".join(f"{c} = EXCLUDED.{c}" for c in COLUMNS[1:] if c != "cancel_requested")
SAVE_JOB = (
    f"INSERT INTO jobs ({', '.join(COLUMNS)}) VALUES ({', '.join(f'${i}' for i in range(1, len(COLUMNS) + 1))}) "  # noqa: S608
    f"ON CONFLICT (id) DO UPDATE SET {_UPDATES}, cancel_requested = jobs.cancel_requested OR EXCLUDED.cancel_requested"
)
USAGE_SNAPSHOT = f"""
SELECT
    (SELECT count(*) FROM jobs WHERE user_id = $1 AND state IN ({ACTIVE})),
    (SELECT coalesce(sum(images), 0) FROM member_days WHERE user_id = $1 AND day = $3),
    (SELECT coalesce(sum(images), 0) FROM guild_days WHERE guild_id = $2 AND day = $3),
    (SELECT max(created_at) FROM jobs WHERE user_id = $1),
    (SELECT coalesce(sum(images), 0) FROM member_days WHERE user_id = $1 AND day = $3 AND guild_id = $2),
    (SELECT coalesce(sum(spend), 0) FROM guild_days WHERE guild_id = $2 AND day >= $4)
"""  # noqa: S608  # constants only
GUILD_USAGE = f"""
SELECT user_id, sum(num_images) AS images, sum(cost_usd) AS spend FROM jobs
WHERE guild_id = $1 AND created_at >= $2 AND state IN ({BILLABLE})
GROUP BY user_id ORDER BY spend DESC, images DESC, user_id
"""  # noqa: S608  # constants only
SAVE_GUILD_SETTINGS = (
    "INSERT INTO guild_settings (guild_id, settings_json, updated_at) VALUES ($1, $2, $3) "
    "ON CONFLICT (guild_id) DO UPDATE SET settings_json = EXCLUDED.settings_json, updated_at = EXCLUDED.updated_at"
)
RECORD_CHANGE = (
    "INSERT INTO guild_setting_changes (guild_id, user_id, setting, old_json, new_json, changed_at) "
    "VALUES ($1, $2, $3, $4, $5, $6)"
)
SETTING_CHANGES = "SELECT * FROM guild_setting_changes WHERE guild_id = $1 ORDER BY id DESC LIMIT $2"
SAVE_USER_SETTINGS = (
    "INSERT INTO user_settings (user_id, settings_json, updated_at) VALUES ($1, $2, $3) "
    "ON CONFLICT (user_id) DO UPDATE SET settings_json = EXCLUDED.settings_json, updated_at = EXCLUDED.updated_at"
)
# A guild's shard is (guild_id >> 22) % count; DMs (no guild) belong to shard 0. $1 NULL: every shard.
UNFINISHED = f"""
SELECT * FROM jobs WHERE state IN ({ACTIVE})
    AND ($1::integer IS NULL OR (coalesce(guild_id, 0) >> 22) % $1 = ANY($2::integer[]))
ORDER BY created_at
"""  # noqa: S608  # constants only
JOBS = "SELECT * FROM jobs WHERE $1::bigint IS NULL OR user_id = $1 ORDER BY created_at DESC, id LIMIT $2 OFFSET $3"
PIN = (
    "INSERT INTO pinned_inputs (user_id, url, content_type, pinned_at) VALUES ($1, $2, $3, $4) "
    "ON CONFLICT (user_id) DO UPDATE SET url = EXCLUDED.url, content_type = EXCLUDED.content_type, "
    "pinned_at = EXCLUDED.pinned_at"
)


class PostgresJobStore:
    """`Store` on a PostgreSQL server, through a pool of `pool_size` connections."""

    def __init__(self, url: str, *, pool_size: int = 10) -> None:
        self._url = url
        self._pool_size = pool_size
        self._pool: asyncpg.Pool | None = None
        self.name = describe_url(url)

    async def open(self) -> None:
        try:
            pool = await asyncpg.create_pool(
                self._url, min_size=1, max_size=self._pool_size, timeout=CONNECT_TIMEOUT,
                command_timeout=COMMAND_TIMEOUT, server_settings={"application_name": "kontext-bot"},
            )  # fmt: skip
        except (*DATABASE_ERRORS, ValueError, OverflowError, TimeoutError) as exc:  # a bad URL, no server
            raise StoreError(f"{self.name}: {self._problem(exc)}") from None
        try:
            await self._migrate(pool)
        except BaseException:
            await pool.close()
            raise
        self._pool = pool

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    async def __aenter__(self) -> PostgresJobStore:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def pool(self) -> asyncpg.Pool:
        if self._pool is None:
            raise RuntimeError("store is not open")
        return self._pool

    # --- schema -------------------------------------------------------------------------------

    async def _migrate(self, pool: asyncpg.Pool) -> None:
        async with self._translated(), pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK)
            await conn.execute(VERSION_TABLE)
            version = await conn.fetchval("SELECT coalesce(max(version), 0) FROM schema_version")
            if version > SCHEMA_VERSION:
                raise StoreError(
                    f"{self.name}: schema version {version} is newer than this bot's ({SCHEMA_VERSION}); "
                    "run the newer bot or restore a backup"
                )
            for step in range(version, SCHEMA_VERSION):
                await conn.execute(MIGRATIONS[step])
                await conn.execute("INSERT INTO schema_version (version) VALUES ($1)", step + 1)
        if 0 < version < SCHEMA_VERSION:
            log.info("migrated %s from schema version %d to %d", self.name, version, SCHEMA_VERSION)

    # --- writes ---------------------------------------------------------------------------------

    async def admit(self, job: Job, decide: Callable[[UsageSnapshot], Denial | None]) -> Denial | None:
        """Count the user's usage, ask `decide`, and store `job` if it said yes — all in one transaction that
        holds the user's and the guild's locks, so no other admission for either can interleave."""
        async with self._connection() as conn, conn.transaction(isolation="read_committed"):
            for key in lock_keys(job.user_id, job.guild_id):
                await conn.execute("SELECT pg_advisory_xact_lock($1)", key)
            # READ COMMITTED: this statement sees every admission that held the locks before.
            denial = decide(await _usage(conn, job.user_id, job.guild_id, job.created_at))
            if denial is None:
                await conn.execute(SAVE_JOB, *job_values(job))
        return denial

    async def save(self, job: Job) -> None:
        async with self._connection() as conn:
            await conn.execute(SAVE_JOB, *job_values(job))

    async def save_many(self, jobs: Sequence[Job]) -> None:
        """Save several jobs in one transaction (the runner batches the saves of one loop tick)."""
        async with self._connection() as conn, conn.transaction():
            await conn.executemany(SAVE_JOB, [job_values(job) for job in jobs])

    async def request_cancel(self, job_id: str) -> None:
        """Mark a job cancelled-by-request, whichever process follows it."""
        async with self._connection() as conn:
            await conn.execute("UPDATE jobs SET cancel_requested = true WHERE id = $1", job_id)

    async def pin_input(self, user_id: int, url: str, content_type: str, now: datetime) -> None:
        """Remember an image as the first input of the user's next job ("Use as input")."""
        async with self._connection() as conn:
            await conn.execute(PIN, user_id, url, content_type, now)

    async def unpin_input(self, user_id: int) -> None:
        async with self._connection() as conn:
            await conn.execute("DELETE FROM pinned_inputs WHERE user_id = $1", user_id)

    # --- reads ----------------------------------------------------------------------------------

    async def get(self, job_id: str) -> Job | None:
        async with self._connection() as conn:
            row = await conn.fetchrow("SELECT * FROM jobs WHERE id = $1", job_id)
        return job_from(row) if row else None

    async def unfinished(self, shards: ShardSet | None = None) -> list[Job]:
        """Jobs not finished yet, oldest first: all, or those of guilds on `shards` (DMs: shard 0)."""
        count, ids = (None, None) if shards is None else (shards.count, sorted(shards.ids))
        async with self._connection() as conn:
            return [job_from(row) for row in await conn.fetch(UNFINISHED, count, ids)]

    async def jobs(self, *, user_id: int | None = None, limit: int = 100, offset: int = 0) -> list[Job]:
        """The newest jobs (of one user, if given), newest first, skipping the `offset` newest."""
        async with self._connection() as conn:
            return [job_from(row) for row in await conn.fetch(JOBS, user_id, limit, offset)]

    async def usage_snapshot(self, user_id: int, guild_id: int | None, now: datetime) -> UsageSnapshot:
        """Everything the limits need, in one query."""
        async with self._connection() as conn:
            return await _usage(conn, user_id, guild_id, now)

    async def pinned_input(self, user_id: int, since: datetime) -> tuple[str, str] | None:
        query = "SELECT url, content_type FROM pinned_inputs WHERE user_id = $1 AND pinned_at >= $2"
        async with self._connection() as conn:
            row = await conn.fetchrow(query, user_id, since)
        return (row["url"], row["content_type"]) if row else None

    async def guild_usage(self, guild_id: int, since: datetime, top: int = 5) -> GuildUsage:
        """The server's billable jobs since `since`: images, spend, and the `top` users by spend."""
        async with self._connection() as conn:
            rows = await conn.fetch(GUILD_USAGE, guild_id, since)
        return guild_usage_of([Spender(row["user_id"], int(row["images"]), dollars(row["spend"])) for row in rows], top)

    # --- community settings ---------------------------------------------------------------------

    async def all_guild_settings(self) -> dict[int, GuildSettings]:
        async with self._connection() as conn:
            rows = await conn.fetch("SELECT guild_id, settings_json FROM guild_settings")
        return {row["guild_id"]: GuildSettings.model_validate_json(row["settings_json"]) for row in rows}

    async def save_guild_settings(
        self, guild_id: int, settings: GuildSettings, changes: Sequence[SettingChange], now: datetime
    ) -> None:
        """The server's settings and the log of what changed, in one transaction."""
        async with self._connection() as conn, conn.transaction():
            await conn.execute(SAVE_GUILD_SETTINGS, guild_id, settings.model_dump_json(), now)
            await conn.executemany(RECORD_CHANGE, [change_values(change) for change in changes])

    async def setting_changes(self, guild_id: int, limit: int = 10) -> list[SettingChange]:
        """The server's newest setting changes, newest first."""
        async with self._connection() as conn:
            return [change_from(row) for row in await conn.fetch(SETTING_CHANGES, guild_id, limit)]

    async def user_settings(self, user_id: int) -> UserSettings:
        async with self._connection() as conn:
            text = await conn.fetchval("SELECT settings_json FROM user_settings WHERE user_id = $1", user_id)
        return UserSettings.model_validate_json(text) if text else UserSettings()

    async def user_settings_since(self, since: datetime | None) -> dict[int, UserSettings]:
        """Personal defaults saved at or after `since` (all: None), by user."""
        sql = "SELECT user_id, settings_json FROM user_settings WHERE $1::timestamptz IS NULL OR updated_at >= $1"
        async with self._connection() as conn:
            rows = await conn.fetch(sql, since)
        return {row["user_id"]: UserSettings.model_validate_json(row["settings_json"]) for row in rows}

    async def save_user_settings(self, user_id: int, settings: UserSettings, now: datetime) -> None:
        async with self._connection() as conn:
            await conn.execute(SAVE_USER_SETTINGS, user_id, settings.model_dump_json(), now)

    async def mark_results_deleted(self, job_id: str, now: datetime) -> None:
        """The user deleted the job's result message(s)."""
        sql = "INSERT INTO deleted_results (job_id, deleted_at) VALUES ($1, $2) ON CONFLICT (job_id) DO NOTHING"
        async with self._connection() as conn:
            await conn.execute(sql, job_id, now)

    async def deleted_results(self, job_ids: Sequence[str]) -> set[str]:
        """Which of these jobs' result messages their users deleted."""
        sql = "SELECT job_id FROM deleted_results WHERE job_id = ANY($1::text[])"
        async with self._connection() as conn:
            return {row["job_id"] for row in await conn.fetch(sql, list(job_ids))}

    # --- plumbing -------------------------------------------------------------------------------

    @asynccontextmanager
    async def _connection(self) -> AsyncIterator[Any]:
        async with self._translated(), self.pool.acquire() as conn:
            yield conn

    @asynccontextmanager
    async def _translated(self) -> AsyncIterator[None]:
        try:
            yield
        except DATABASE_ERRORS as exc:
            raise StoreError(f"{self.name}: {self._problem(exc)}") from None

    def _problem(self, exc: BaseException) -> str:
        return problem_of(exc, self._url)


def problem_of(exc: BaseException, url: str) -> str:
    """The error's first line: no DETAIL (row values), no password."""
    text = exc.args[0] if exc.args and isinstance(exc.args[0], str) else str(exc)
    line = (text.splitlines() or [type(exc).__name__])[0]
    password = _password(url)
    return line.replace(password, "***") if password else line


async def _usage(conn: Any, user_id: int, guild_id: int | None, now: datetime) -> UsageSnapshot:
    row = await conn.fetchrow(USAGE_SNAPSHOT, user_id, guild_id, day_start(now).date(), month_start(now).date())
    active, user_images, guild_images, last, member_images, spend = row
    return UsageSnapshot(int(active), int(user_images), int(guild_images), last, int(member_images), dollars(spend))


def lock_keys(user_id: int, guild_id: int | None) -> list[int]:
    """The advisory lock keys of an admission, in the one order every admission takes them."""
    names = [f"kontext:user:{user_id}"] + ([] if guild_id is None else [f"kontext:guild:{guild_id}"])
    return sorted(_lock_key(name) for name in names)


def _lock_key(name: str) -> int:
    """A signed 64-bit key; a collision only makes two admissions wait for each other."""
    return int.from_bytes(hashlib.blake2b(name.encode(), digest_size=8).digest(), "big", signed=True)


def _password(url: str) -> str | None:
    try:
        return urlsplit(url).password
    except ValueError:
        return None


def describe_url(url: str) -> str:
    """postgresql://user@host:port/db: the database named without its password."""
    try:
        parts = urlsplit(url)
        host = f"{parts.hostname or 'localhost'}:{parts.port or 5432}"
    except ValueError:
        return "the PostgreSQL database in DATABASE_URL"
    user = f"{parts.username}@" if parts.username else ""
    return f"postgresql://{user}{host}{parts.path or '/'}"
