"""Job storage in an embedded SQLite file (no server), behind the `Store` interface.

The jobs table is also the ledger the limits are counted from, so they survive restarts. Every write
is its own `BEGIN IMMEDIATE` transaction: an admission counts and inserts in one of them, so no other
admission (in this process or another one on the same file) can slip in between.

All database work runs on one thread of its own, a whole transaction per hand-off: each hand-off back to
the event loop costs a wake-up, so a transaction is one hand-off, not one per statement.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import sqlite3
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

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

SCHEMA_VERSION = 5
BUSY_TIMEOUT_MS = 10_000


def _micros(row: str) -> str:
    return f"CAST(ROUND(CAST({row}.cost_usd AS REAL) * 1000000) AS INTEGER)"


def _add_usage(row: str, sign: str) -> str:
    """Trigger statements adding (sign "") or taking back (sign "-") the job `row` in the daily totals."""
    day, guild = f"date({row}.created_at)", f"COALESCE({row}.guild_id, 0)"  # date(): in UTC, whatever the offset
    images, micros = f"{sign}{row}.num_images", f"{sign}{_micros(row)}"
    return f"""
    INSERT INTO member_days VALUES ({row}.user_id, {day}, {guild}, {images})
        ON CONFLICT DO UPDATE SET images = images + excluded.images;
    INSERT INTO guild_days VALUES ({guild}, {day}, {images}, {micros})
        ON CONFLICT DO UPDATE SET images = images + excluded.images,
            spend_micros = spend_micros + excluded.spend_micros;
"""  # noqa: S608  # our own SQL fragments


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
# Version 4: running totals of billable images (and spend, in micro-dollars: exact) per member and per server
# and UTC day, kept by triggers in the transaction that inserts or refunds a job. An admission reads a few of
# their rows instead of summing every job of the day, and of the month for the budget.
USAGE_TOTALS = f"""
CREATE TABLE member_days (
    user_id INTEGER NOT NULL,
    day TEXT NOT NULL,
    guild_id INTEGER NOT NULL,  -- 0: a DM
    images INTEGER NOT NULL,
    PRIMARY KEY (user_id, day, guild_id)
) WITHOUT ROWID;
CREATE TABLE guild_days (
    guild_id INTEGER NOT NULL,
    day TEXT NOT NULL,
    images INTEGER NOT NULL,
    spend_micros INTEGER NOT NULL,
    PRIMARY KEY (guild_id, day)
) WITHOUT ROWID;
CREATE INDEX jobs_active_by_user ON jobs (user_id) WHERE state IN ({ACTIVE});
CREATE TRIGGER usage_on_insert AFTER INSERT ON jobs WHEN NEW.state IN ({BILLABLE}) BEGIN
    {_add_usage("NEW", "")}
END;
CREATE TRIGGER usage_on_refund AFTER UPDATE OF state ON jobs
WHEN OLD.state IN ({BILLABLE}) AND NEW.state NOT IN ({BILLABLE}) BEGIN
    {_add_usage("OLD", "-")}
END;
INSERT INTO member_days SELECT user_id, date(created_at), COALESCE(guild_id, 0), SUM(num_images)
FROM jobs WHERE state IN ({BILLABLE}) GROUP BY 1, 2, 3;
INSERT INTO guild_days SELECT COALESCE(guild_id, 0), date(created_at), SUM(num_images), SUM({_micros("jobs")})
FROM jobs WHERE state IN ({BILLABLE}) GROUP BY 1, 2;
"""  # noqa: S608  # constants only
# Version 5: the interaction token of a job that can answer only through it (`ReplyToken`), while it runs.
REPLY_COLUMNS = """
ALTER TABLE jobs ADD COLUMN reply_token TEXT;
ALTER TABLE jobs ADD COLUMN reply_ephemeral INTEGER NOT NULL DEFAULT 0;
"""
CREATE = JOBS_TABLE.format(name="jobs") + INDEXES + PINS_TABLE + COMMUNITY_TABLES + USAGE_TOTALS + REPLY_COLUMNS
MIGRATIONS = {1: MIGRATE_1_TO_2, 2: COMMUNITY_TABLES, 3: USAGE_TOTALS, 4: REPLY_COLUMNS}

# A cancel asked for by another process must survive this process saving its own copy of the job.
SAVE_JOB = (
    f"INSERT INTO jobs ({', '.join(COLUMNS)}) VALUES ({', '.join('?' for _ in COLUMNS)}) "  # noqa: S608
    f"ON CONFLICT (id) DO UPDATE SET {', '.join(f'{c} = excluded.{c}' for c in COLUMNS[1:])}, "
    "cancel_requested = MAX(jobs.cancel_requested, excluded.cancel_requested)"
)


USAGE_SNAPSHOT = f"""
SELECT
    (SELECT COUNT(*) FROM jobs WHERE user_id = :user AND state IN ({ACTIVE})),
    (SELECT COALESCE(SUM(images), 0) FROM member_days WHERE user_id = :user AND day = :day),
    (SELECT COALESCE(SUM(images), 0) FROM guild_days WHERE guild_id = :guild AND day = :day),
    (SELECT MAX(created_at) FROM jobs WHERE user_id = :user),
    (SELECT COALESCE(SUM(images), 0) FROM member_days WHERE user_id = :user AND day = :day AND guild_id = :guild),
    (SELECT COALESCE(SUM(spend_micros), 0) FROM guild_days WHERE guild_id = :guild AND day >= :month)
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
        self._executor: ThreadPoolExecutor | None = None
        self._conn: sqlite3.Connection | None = None  # used on the executor's thread only

    async def open(self) -> None:
        if str(self._path) != ":memory:":
            await asyncio.to_thread(self._path.parent.mkdir, parents=True, exist_ok=True)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite")
        try:
            await self._run(self._open_and_upgrade)
        except (sqlite3.Error, StoreError) as exc:
            await self.close()
            raise exc if isinstance(exc, StoreError) else StoreError(f"{self._path}: {exc}") from None

    async def close(self) -> None:
        if self._executor is None:
            return
        await self._run(self._close_connection)
        self._executor.shutdown(wait=True)
        self._executor = None

    async def __aenter__(self) -> SqliteJobStore:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _run(self, work: Callable[..., Any], *args: Any) -> Any:
        if self._executor is None:
            raise RuntimeError("store is not open")
        return await asyncio.get_running_loop().run_in_executor(self._executor, functools.partial(work, *args))

    # --- on the database thread ---------------------------------------------------------------

    @property
    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            raise RuntimeError("store is not open")
        return self._conn

    def _open_and_upgrade(self) -> None:
        conn = sqlite3.connect(self._path, isolation_level=None)  # transactions are explicit
        self._conn = conn
        conn.row_factory = sqlite3.Row
        conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")  # the commit that records a paid job must survive a power cut
        version = int(conn.execute("PRAGMA user_version").fetchone()[0])
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"{self._path}: schema version {version} is newer than this bot's ({SCHEMA_VERSION}); "
                "run the newer bot or restore a backup"
            )
        has_jobs = conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'jobs'").fetchone()
        self._upgrade(conn, 1 if version == 0 and has_jobs else version)  # 1: written before versions were kept

    def _upgrade(self, conn: sqlite3.Connection, version: int) -> None:
        if version == SCHEMA_VERSION:
            return
        script = CREATE if version == 0 else "\n".join(MIGRATIONS[v] for v in range(version, SCHEMA_VERSION))
        try:
            conn.executescript(f"BEGIN IMMEDIATE;\n{script}\n{PINS_TABLE}\nPRAGMA user_version={SCHEMA_VERSION};")
            conn.execute("COMMIT")
        except sqlite3.Error:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        if version:
            log.info("migrated %s from schema version %d to %d", self._path, version, SCHEMA_VERSION)

    def _close_connection(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _write(self, work: Callable[[sqlite3.Connection], Any]) -> Any:
        """`work` in one `BEGIN IMMEDIATE` transaction (the file's write lock, across processes too)."""
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            result = work(db)
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")
        return result

    def _admit(self, job: Job, decide: Callable[[UsageSnapshot], Denial | None]) -> Denial | None:
        def count_decide_insert(db: sqlite3.Connection) -> Denial | None:
            denial = decide(_usage(db, job.user_id, job.guild_id, job.created_at))
            if denial is None:
                db.execute(SAVE_JOB, _row(job))
            return denial

        return self._write(count_decide_insert)  # type: ignore[no-any-return]

    # --- the interface ------------------------------------------------------------------------

    async def admit(self, job: Job, decide: Callable[[UsageSnapshot], Denial | None]) -> Denial | None:
        """Count the user's usage, ask `decide`, and store `job` if it said yes — all in one transaction."""
        return await self._run(self._admit, job, decide)  # type: ignore[no-any-return]

    async def save(self, job: Job) -> None:
        await self.save_many([job])

    async def save_many(self, jobs: Sequence[Job]) -> None:
        """Save several jobs in one transaction (the runner batches the saves of one loop tick)."""
        rows = [_row(job) for job in jobs]
        await self._execute(SAVE_JOB, rows, many=True)

    async def request_cancel(self, job_id: str) -> None:
        """Mark a job cancelled-by-request, whichever process follows it."""
        sql = "UPDATE jobs SET cancel_requested = 1 WHERE id = ?"
        await self._execute(sql, (job_id,))

    async def pin_input(self, user_id: int, url: str, content_type: str, now: datetime) -> None:
        """Remember an image as the first input of the user's next job ("Use as input")."""
        sql, params = (
            "INSERT OR REPLACE INTO pinned_inputs VALUES (?, ?, ?, ?)",
            (user_id, url, content_type, now.isoformat()),
        )
        await self._execute(sql, params)

    async def unpin_input(self, user_id: int) -> None:
        await self._execute("DELETE FROM pinned_inputs WHERE user_id = ?", (user_id,))

    async def get(self, job_id: str) -> Job | None:
        rows = await self._read("SELECT * FROM jobs WHERE id = ?", (job_id,))
        return _job(rows[0]) if rows else None

    async def unfinished(self, shards: ShardSet | None = None) -> list[Job]:
        """Jobs not finished yet, oldest first: all, or those of guilds on `shards` (DMs: shard 0)."""
        if shards is None:
            return [_job(row) for row in await self._read(UNFINISHED, {})]
        params = {"count": shards.count, "ids": json.dumps(sorted(shards.ids))}
        return [_job(row) for row in await self._read(UNFINISHED_ON_SHARDS, params)]

    async def jobs(self, *, user_id: int | None = None, limit: int = 100, offset: int = 0) -> list[Job]:
        """The newest jobs (of one user, if given), newest first, skipping the `offset` newest."""
        where, params = ("WHERE user_id = ?", (user_id,)) if user_id is not None else ("", ())
        sql = f"SELECT * FROM jobs {where} ORDER BY created_at DESC, id LIMIT ? OFFSET ?"  # noqa: S608
        return [_job(row) for row in await self._read(sql, (*params, limit, offset))]

    async def usage_snapshot(self, user_id: int, guild_id: int | None, now: datetime) -> UsageSnapshot:
        """Everything the limits need, in one query."""
        return await self._run(lambda: _usage(self._db, user_id, guild_id, now))  # type: ignore[no-any-return]

    async def guild_usage(self, guild_id: int, since: datetime, top: int = 5) -> GuildUsage:
        """The server's billable jobs since `since`: images, spend, and the `top` users by spend."""
        rows = await self._read(GUILD_USAGE, (guild_id, since.isoformat()))
        return guild_usage_of([Spender(row[0], int(row[1]), dollars(row[2])) for row in rows], top)

    # --- community settings ---------------------------------------------------------------------

    async def all_guild_settings(self) -> dict[int, GuildSettings]:
        rows = await self._read("SELECT guild_id, settings_json FROM guild_settings", ())
        return {row[0]: GuildSettings.model_validate_json(row[1]) for row in rows}

    async def save_guild_settings(
        self, guild_id: int, settings: GuildSettings, changes: Sequence[SettingChange], now: datetime
    ) -> None:
        """The server's settings and the log of what changed, in one transaction."""
        row = (guild_id, settings.model_dump_json(), now.isoformat())
        records = [tuple(map(_sqlite_value, change_values(change))) for change in changes]

        def save(db: sqlite3.Connection) -> None:
            db.execute(SAVE_GUILD_SETTINGS, row)
            db.executemany(RECORD_CHANGE, records)

        await self._run(self._write, save)

    async def setting_changes(self, guild_id: int, limit: int = 10) -> list[SettingChange]:
        """The server's newest setting changes, newest first."""
        rows = await self._read(SETTING_CHANGES, (guild_id, limit))
        return [change_from({**dict(row), "changed_at": _aware(row["changed_at"])}) for row in rows]

    async def user_settings(self, user_id: int) -> UserSettings:
        rows = await self._read("SELECT settings_json FROM user_settings WHERE user_id = ?", (user_id,))
        return UserSettings.model_validate_json(rows[0][0]) if rows else UserSettings()

    async def user_settings_since(self, since: datetime | None) -> dict[int, UserSettings]:
        """Personal defaults saved at or after `since` (all: None), by user."""
        sql = "SELECT user_id, settings_json FROM user_settings WHERE updated_at >= ?"
        rows = await self._read(sql, (since.isoformat() if since else "",))
        return {row[0]: UserSettings.model_validate_json(row[1]) for row in rows}

    async def save_user_settings(self, user_id: int, settings: UserSettings, now: datetime) -> None:
        sql = "INSERT OR REPLACE INTO user_settings (user_id, settings_json, updated_at) VALUES (?, ?, ?)"
        params = (user_id, settings.model_dump_json(), now.isoformat())
        await self._execute(sql, params)

    async def mark_results_deleted(self, job_id: str, now: datetime) -> None:
        """The user deleted the job's result message(s)."""
        sql = "INSERT OR IGNORE INTO deleted_results (job_id, deleted_at) VALUES (?, ?)"
        await self._execute(sql, (job_id, now.isoformat()))

    async def deleted_results(self, job_ids: Sequence[str]) -> set[str]:
        """Which of these jobs' result messages their users deleted."""
        if not job_ids:
            return set()
        marks = ", ".join("?" for _ in job_ids)
        sql = f"SELECT job_id FROM deleted_results WHERE job_id IN ({marks})"  # noqa: S608  # placeholders only
        return {row[0] for row in await self._read(sql, tuple(job_ids))}

    async def pinned_input(self, user_id: int, since: datetime) -> tuple[str, str] | None:
        query = "SELECT url, content_type FROM pinned_inputs WHERE user_id = ? AND pinned_at >= ?"
        rows = await self._read(query, (user_id, since.isoformat()))
        return (rows[0][0], rows[0][1]) if rows else None

    async def schema_version(self) -> int:
        rows = await self._read("PRAGMA user_version", ())
        return int(rows[0][0])

    async def _execute(self, sql: str, params: Any, *, many: bool = False) -> None:
        """One write statement (`many`: once per row of `params`) in its own transaction.

        The cursor is closed here, on the database thread. A cursor that got out would be finalized wherever
        its last reference dies, on the event loop's thread, and finalizing resets its statement: a cached
        statement this thread may be running at that moment (SQLite: "bad parameter or other API misuse")."""

        def execute(db: sqlite3.Connection) -> None:
            (db.executemany if many else db.execute)(sql, params).close()

        await self._run(self._write, execute)

    async def _read(self, sql: str, params: Any) -> list[sqlite3.Row]:
        return await self._run(lambda: self._db.execute(sql, params).fetchall())  # type: ignore[no-any-return]


def _usage(db: sqlite3.Connection, user_id: int, guild_id: int | None, now: datetime) -> UsageSnapshot:
    params = {"user": user_id, "guild": guild_id, "day": day_start(now).date().isoformat(),
              "month": month_start(now).date().isoformat()}  # fmt: skip
    active, user_images, guild_images, last, member_images, micros = db.execute(USAGE_SNAPSHOT, params).fetchone()
    return UsageSnapshot(int(active), int(user_images), int(guild_images), _aware(last) if last else None,
                         int(member_images), Decimal(micros).scaleb(-6))  # fmt: skip


def _row(job: Job) -> tuple[Any, ...]:
    return tuple(_sqlite_value(value) for value in job_values(job))


def _sqlite_value(value: Any) -> Any:
    """SQLite has no timestamp, decimal, boolean or array: ISO text, text, 0/1 and JSON text."""
    if isinstance(value, datetime):  # in UTC, so that the text sorts as the time does
        return value.astimezone(UTC).isoformat()
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, list):
        return json.dumps(value)
    return value


def _job(row: sqlite3.Row) -> Job:
    values = dict(zip(row.keys(), row, strict=True))
    values["result_message_ids"] = json.loads(values["result_message_ids"])
    values["created_at"], values["updated_at"] = _aware(values["created_at"]), _aware(values["updated_at"])
    return job_from(values)


def _aware(text: str) -> datetime:
    value = datetime.fromisoformat(text)
    return value if value.tzinfo else value.replace(tzinfo=UTC)
