"""The PostgreSQL store's own behaviour on a real server: schema versions and migrations, one clear line for
an unusable server, errors that never carry row values or the password. (What both stores share is in
test_store.py.)"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from bot.config import Settings
from bot.store import PostgresJobStore, SqliteJobStore, StoreError, open_store
from bot.store.postgres import SCHEMA_VERSION, describe_url, lock_keys
from tests.conftest import DISCORD_TOKEN, FAL_KEY
from tests.postgres import Cluster
from tests.test_store import make_job

ROOT = str(Path(__file__).resolve().parent.parent)


def with_password(url: str, password: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(netloc=f"{parts.username}:{password}@{parts.hostname}:{parts.port}"))


async def fetch(url: str, query: str) -> list[asyncpg.Record]:
    connection = await asyncpg.connect(url)
    try:
        return list(await connection.fetch(query))
    finally:
        await connection.close()


async def test_a_fresh_database_gets_the_schema_with_real_timestamps(postgres_url: str):
    async with PostgresJobStore(postgres_url) as store:
        await store.save(make_job())

    versions = await fetch(postgres_url, "SELECT version FROM schema_version")
    types = await fetch(
        postgres_url,
        "SELECT column_name, data_type FROM information_schema.columns WHERE table_name = 'jobs' "
        "AND column_name IN ('created_at', 'updated_at', 'user_id', 'cost_usd', 'result_message_ids')",
    )
    assert [row["version"] for row in versions] == list(range(1, SCHEMA_VERSION + 1))
    assert {row["column_name"]: row["data_type"] for row in types} == {
        "created_at": "timestamp with time zone", "updated_at": "timestamp with time zone", "user_id": "bigint",
        "cost_usd": "numeric", "result_message_ids": "ARRAY",
    }  # fmt: skip


async def test_processes_starting_together_migrate_once(postgres_url: str):
    stores = [PostgresJobStore(postgres_url) for _ in range(4)]

    await asyncio.gather(*(store.open() for store in stores))
    try:
        job = make_job()
        await stores[0].save(job)
        assert await stores[3].get(job.id) == job
    finally:
        await asyncio.gather(*(store.close() for store in stores))

    assert len(await fetch(postgres_url, "SELECT version FROM schema_version")) == SCHEMA_VERSION


async def test_a_newer_schema_is_refused_with_a_clear_message(postgres_url: str):
    async with PostgresJobStore(postgres_url):
        pass
    connection = await asyncpg.connect(postgres_url)
    await connection.execute("INSERT INTO schema_version (version) VALUES ($1)", SCHEMA_VERSION + 1)
    await connection.close()

    with pytest.raises(StoreError, match=rf"schema version {SCHEMA_VERSION + 1} is newer than this bot's"):
        await PostgresJobStore(postgres_url).open()


@pytest.mark.parametrize("problem", ["no server", "wrong password", "no database"])
async def test_an_unusable_server_is_one_line_that_never_shows_the_password(
    postgres_cluster: Cluster, postgres_url: str, problem: str
):
    url = {
        "no server": with_password(postgres_url, "hunter2-secret").replace(f":{postgres_cluster.port}/", ":9/"),
        "wrong password": with_password(postgres_url, "hunter2-secret"),
        "no database": with_password(postgres_cluster.url("missing_db"), postgres_cluster.password),
    }[problem]

    with pytest.raises(StoreError) as error:
        await PostgresJobStore(url).open()

    text = str(error.value)
    expected = {"no server": "127.0.0.1:9", "wrong password": "password authentication failed",
                "no database": 'database "missing_db" does not exist'}[problem]  # fmt: skip
    assert expected in text and text.startswith(describe_url(url)) and len(text.splitlines()) == 1
    assert "hunter2" not in text and postgres_cluster.password not in text
    assert error.value.__cause__ is None and error.value.__suppress_context__


async def test_an_error_never_carries_the_row_it_failed_on(postgres_url: str):
    """asyncpg appends PostgreSQL's DETAIL line, which quotes the failing row; it must not reach a log."""
    async with PostgresJobStore(postgres_url) as store:
        connection = await asyncpg.connect(postgres_url)
        await connection.execute("ALTER TABLE jobs ADD CONSTRAINT short_errors CHECK (length(error) < 20)")
        await connection.close()

        with pytest.raises(StoreError) as error:
            await store.save(make_job().update(error="a private reason that is long"))

    assert 'violates check constraint "short_errors"' in str(error.value)
    assert "private" not in str(error.value) and "DETAIL" not in str(error.value)


async def test_after_the_server_drops_its_connections_the_store_goes_on(postgres_cluster: Cluster, postgres_url: str):
    """A server restart or failover ends every connection: at most one call fails, as a StoreError (the runner
    keeps an unsaved job and saves it again), and the pool connects anew."""
    async with PostgresJobStore(postgres_url, pool_size=2) as store:
        await store.save(make_job())
        admin = await asyncpg.connect(postgres_cluster.url())
        ended = await admin.fetchval(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = $1",
            postgres_url.rsplit("/", 1)[1],
        )
        await admin.close()
        job, failures = make_job(), []
        for _ in range(2):
            try:
                await store.save(job)
            except StoreError as exc:
                failures.append(str(exc))

        assert ended >= 1 and len(failures) <= 1
        assert await store.get(job.id) == job


def test_database_url_selects_postgresql_and_its_absence_sqlite(tmp_path: Path):
    sqlite = Settings(_env_file=None, discord_token="t", fal_key="k", database_path=tmp_path / "db.sqlite3")
    postgres = Settings(_env_file=None, discord_token="t", fal_key="k",
                        database_url="postgresql://u:p@db.internal/kontext")  # fmt: skip

    assert isinstance(open_store(sqlite), SqliteJobStore)
    chosen = open_store(postgres)
    assert isinstance(chosen, PostgresJobStore) and chosen.name == "postgresql://u@db.internal:5432/kontext"


def test_admissions_take_their_locks_in_one_order():
    """Sorted keys: two admissions sharing a user and a guild can never each hold the lock the other waits for."""
    for user, guild in [(1, 2), (2, 1), (10**18, 7), (5, None)]:
        keys = lock_keys(user, guild)
        assert keys == sorted(keys) and len(set(keys)) == (1 if guild is None else 2)
        assert all(-(2**63) <= key < 2**63 for key in keys)


async def test_the_bot_stops_with_one_line_when_the_server_is_unreachable(tmp_path: Path):
    url = "postgresql://kontext:hunter2-secret@127.0.0.1:9/kontext"
    env = {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": ROOT, "DISCORD_TOKEN": DISCORD_TOKEN,
           "FAL_KEY": FAL_KEY, "DATABASE_URL": url, "DISCORD_API_URL": "http://127.0.0.1:9/api/v10",
           "HEARTBEAT_PATH": str(tmp_path / "beat")}  # fmt: skip
    started = time.monotonic()
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bot", env=env, cwd=tmp_path, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    output, _ = await asyncio.wait_for(process.communicate(), 30)

    lines = output.decode().strip().splitlines()
    assert process.returncode == 1 and time.monotonic() - started < 25
    assert len(lines) == 1 and "cannot use the database: postgresql://kontext@127.0.0.1:9/kontext" in lines[0]
    assert "hunter2" not in output.decode()
