"""The community tables on both real databases, SQLite and PostgreSQL: server settings and their change log,
personal defaults, what the server limits and budget count, paging a user's jobs, deleted results, and the
migration of a database from the release before (schema version 2 on SQLite, 1 on PostgreSQL) to version 3."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from datetime import timedelta
from decimal import Decimal

import asyncpg
import pytest

from bot.community import GuildSettings, SettingChange, UserSettings
from bot.config import NsfwPolicy
from bot.jobs import Job, JobState
from bot.quota import Denial, DenialKind, Limits, UsageSnapshot, decide, month_start
from bot.store import SCHEMA_VERSION, Store, postgres, sqlite
from bot.store.rows import COLUMNS, job_values
from tests.conftest import Database
from tests.test_store import NOW, make_job


@pytest.fixture
async def store(database: Database) -> AsyncIterator[Store]:
    async with database.store() as opened:
        yield opened


def priced(job: Job, limits: Limits):
    """The runner's verdict: the job's images and its estimated cost."""

    def decide_for(usage: UsageSnapshot) -> Denial | None:
        return decide(usage, limits, job.num_images, job.created_at, in_guild=job.guild_id is not None,
                      cost=job.cost_usd)  # fmt: skip

    return decide_for


def change(setting: str, old: object, new: object, *, user_id: int = 7, minutes: int = 0) -> SettingChange:
    return SettingChange(10, user_id, setting, old, new, NOW + timedelta(minutes=minutes))


# --- server settings and their log ---------------------------------------------------------------


async def test_server_settings_and_their_changes_survive_a_reopen(database: Database):
    chosen = GuildSettings(channel_ids=(5, 6), daily_member_images=3, nsfw_policy=NsfwPolicy.WITHHOLD,
                           monthly_budget_usd=Decimal("12.50"), model_ids=("kontext-pro-multi",))  # fmt: skip
    async with database.store() as first:
        first_change = [change("daily_member_images", None, 5)]
        await first.save_guild_settings(10, GuildSettings(daily_member_images=5), first_change, NOW)
        await first.save_guild_settings(10, chosen, [change("daily_member_images", 5, 3, user_id=8, minutes=1),
                                                     change("channel_ids", [], ["5", "6"], user_id=8, minutes=1)],
                                        NOW)  # fmt: skip
        await first.save_guild_settings(11, GuildSettings(reaction_trigger=False), [], NOW)

    async with database.store() as second:
        settings = await second.all_guild_settings()
        log = await second.setting_changes(10, limit=2)

    assert settings == {10: chosen, 11: GuildSettings(reaction_trigger=False)}
    assert [(c.setting, c.user_id, c.old, c.new) for c in log] == [
        ("channel_ids", 8, [], ["5", "6"]), ("daily_member_images", 8, 5, 3),
    ]  # fmt: skip
    assert log[0].changed_at == NOW + timedelta(minutes=1)


async def test_personal_defaults_are_none_until_saved(store: Store):
    assert await store.user_settings(1) == UserSettings()

    await store.save_user_settings(1, UserSettings(aspect_ratio="16:9", num_images=2), NOW)
    await store.save_user_settings(1, UserSettings(aspect_ratio="16:9", num_images=3, model="seedream-v4-edit"), NOW)

    assert await store.user_settings(1) == UserSettings(aspect_ratio="16:9", num_images=3, model="seedream-v4-edit")
    assert await store.user_settings(2) == UserSettings()


# --- what the server's limits count -------------------------------------------------------------------


async def test_a_member_counts_only_this_server_and_the_spend_only_this_month(store: Store):
    await store.save(make_job(images=2, state=JobState.DELIVERED))  # guild 10, $0.16
    await store.save(make_job(images=3, guild_id=20, state=JobState.DELIVERED))  # another server
    await store.save(make_job(images=1, guild_id=None, state=JobState.DELIVERED))  # a DM
    await store.save(make_job(user_id=2, images=4, state=JobState.UNDELIVERABLE))  # another member, $0.32
    await store.save(make_job(user_id=2, images=4, state=JobState.FAILED))  # never billed
    last_month = month_start(NOW) - timedelta(seconds=1)
    await store.save(make_job(images=4, state=JobState.DELIVERED, created_at=last_month))

    usage = await store.usage_snapshot(1, 10, NOW)

    assert (usage.user_images, usage.member_images, usage.guild_images) == (6, 2, 6)
    assert usage.guild_spend == Decimal("0.48")
    assert (await store.usage_snapshot(1, None, NOW)).guild_spend == 0


async def test_two_stores_never_spend_past_a_server_budget_together(database: Database):
    limits = Limits(max_concurrent=50, daily_user_images=50, daily_guild_images=50, cooldown=timedelta(0),
                    monthly_budget_usd=Decimal("0.40"))  # five jobs of $0.08  # fmt: skip
    async with database.store() as one, database.store() as two:
        jobs = [make_job(user_id=user, state=JobState.PENDING) for user in range(20, 32)]
        stores = [one, two] * 6

        verdicts = await asyncio.gather(
            *(s.admit(job, priced(job, limits)) for s, job in zip(stores, jobs, strict=True))
        )

        assert sum(denial is None for denial in verdicts) == 5
        assert {d.kind for d in verdicts if d is not None} == {DenialKind.BUDGET}
        assert (await one.usage_snapshot(20, 10, NOW)).guild_spend == Decimal("0.40")


async def test_server_usage_names_the_biggest_spenders(store: Store):
    for user, images in [(1, 1), (2, 3), (3, 2), (2, 1)]:
        await store.save(make_job(user_id=user, images=images, state=JobState.DELIVERED))
    await store.save(make_job(user_id=4, images=4, state=JobState.CANCELLED))

    usage = await store.guild_usage(10, month_start(NOW), top=2)

    assert (usage.images, usage.spend) == (7, Decimal("0.56"))
    assert [(s.user_id, s.images, s.spend) for s in usage.top] == [(2, 4, Decimal("0.32")), (3, 2, Decimal("0.16"))]


# --- history --------------------------------------------------------------------------------------------


async def test_a_users_jobs_come_in_pages_newest_first(store: Store):
    jobs = [make_job(created_at=NOW + timedelta(minutes=i)) for i in range(5)]
    for job in [*jobs, make_job(user_id=2)]:
        await store.save(job)

    pages = [await store.jobs(user_id=1, limit=2, offset=offset) for offset in (0, 2, 4)]

    assert [[job.id for job in page] for page in pages] == [[jobs[4].id, jobs[3].id], [jobs[2].id, jobs[1].id],
                                                            [jobs[0].id]]  # fmt: skip


async def test_deleted_results_are_remembered(store: Store):
    await store.mark_results_deleted("a" * 32, NOW)
    await store.mark_results_deleted("a" * 32, NOW)  # twice is once

    assert await store.deleted_results(["a" * 32, "b" * 32]) == {"a" * 32}
    assert await store.deleted_results([]) == set()


# --- the migration from the release before ----------------------------------------------------------------


# The job columns of that release: all but the reply token's (version 5).
OLD_COLUMNS = COLUMNS[: COLUMNS.index("reply_token")]


async def write_previous_release(database: Database, job_row: tuple[object, ...]) -> None:
    """The schema the release before wrote, with one job in it."""
    row = job_row[: len(OLD_COLUMNS)]
    if database.kind == "sqlite":
        old = sqlite.JOBS_TABLE.format(name="jobs") + sqlite.INDEXES + sqlite.PINS_TABLE + "PRAGMA user_version = 2;"
        with sqlite3.connect(database.location) as db:
            db.executescript(old)
            db.execute(f"INSERT INTO jobs ({', '.join(OLD_COLUMNS)}) VALUES ({', '.join('?' * len(row))})", row)  # noqa: S608
        return
    conn = await asyncpg.connect(database.location)
    try:
        await conn.execute(postgres.VERSION_TABLE)
        await conn.execute(postgres.CREATE_V1)
        await conn.execute("INSERT INTO schema_version (version) VALUES (1)")
        places = ", ".join(f"${i}" for i in range(1, len(row) + 1))
        await conn.execute(f"INSERT INTO jobs ({', '.join(OLD_COLUMNS)}) VALUES ({places})", *row)  # noqa: S608
    finally:
        await conn.close()


async def test_a_database_of_the_release_before_is_migrated_and_keeps_its_jobs(database: Database):
    job = make_job(state=JobState.DELIVERED)
    values = sqlite._row(job) if database.kind == "sqlite" else job_values(job)
    await write_previous_release(database, values)

    async with database.store() as store:
        assert await store.get(job.id) == job
        await store.save_guild_settings(10, GuildSettings(cooldown_seconds=30), [change("cooldown_seconds", None, 30)],
                                        NOW)  # fmt: skip
        await store.save_user_settings(1, UserSettings(output_format="png"), NOW)
        assert (await store.all_guild_settings())[10].cooldown_seconds == 30
        assert (await store.user_settings(1)).output_format == "png"
    assert SCHEMA_VERSION == postgres.SCHEMA_VERSION == 5
