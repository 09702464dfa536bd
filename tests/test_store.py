"""The job store on both real databases, SQLite (a file) and PostgreSQL (a server): round trips, the ledger
the limits count, atomic admission, shards. SQLite's file schema versions at the end; PostgreSQL's own
tests (its migrations, its errors) are in test_store_postgres.py."""

from __future__ import annotations

import asyncio
import itertools
import random
import sqlite3
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

import asyncpg
import pytest

from bot.fal import EditRequest, KontextOutput, OutputImage
from bot.jobs import ACTIVE_STATES, BILLABLE_STATES, TRANSITIONS, Job, JobState, ReplyToken
from bot.quota import DenialKind, Limits, UsageSnapshot, day_start, decide, month_start, next_month
from bot.shards import ShardSet, shard_of
from bot.store import SCHEMA_VERSION, SqliteJobStore, Store, StoreError
from tests.conftest import Database

NOW = datetime(2026, 11, 24, 15, 0, tzinfo=UTC)
LIMITS = Limits(max_concurrent=2, daily_user_images=20, daily_guild_images=200, cooldown=timedelta(0))

# The layout the first release wrote (schema version 1), kept here to test the migration from it.
SCHEMA_V1 = """
CREATE TABLE jobs (
    id TEXT PRIMARY KEY, state TEXT NOT NULL, source TEXT NOT NULL, user_id INTEGER NOT NULL, guild_id INTEGER,
    channel_id INTEGER NOT NULL, request_json TEXT NOT NULL, num_images INTEGER NOT NULL, request_id TEXT NOT NULL,
    status_url TEXT NOT NULL, response_url TEXT NOT NULL, cancel_url TEXT NOT NULL, queue_position INTEGER,
    origin_message_id INTEGER, status_message_id INTEGER, thread_id INTEGER, result_json TEXT, error TEXT,
    cost_usd TEXT NOT NULL, cancel_requested INTEGER NOT NULL DEFAULT 0, delivery_started INTEGER NOT NULL DEFAULT 0,
    created_at TEXT NOT NULL, updated_at TEXT NOT NULL
);
CREATE INDEX jobs_unfinished ON jobs (state) WHERE state NOT IN ('delivered', 'failed', 'cancelled');
CREATE TABLE pinned_inputs (user_id INTEGER PRIMARY KEY, url TEXT NOT NULL, content_type TEXT NOT NULL,
    pinned_at TEXT NOT NULL);
PRAGMA user_version = 1;
"""


@pytest.fixture
async def store(database: Database) -> AsyncIterator[Store]:
    async with database.store() as opened:
        yield opened


def make_job(user_id: int = 1, *, guild_id: int | None = 10, images: int = 1, state: JobState = JobState.QUEUED,
             created_at: datetime = NOW) -> Job:  # fmt: skip
    request = EditRequest(prompt="p", image_urls=("https://x/a.png",), num_images=images)
    return Job(request=request, user_id=user_id, channel_id=5, guild_id=guild_id, source="slash", state=state,
               request_id=f"req-{user_id}", created_at=created_at, cost_usd=Decimal("0.08") * images)  # fmt: skip


def verdict(job: Job, limits: Limits = LIMITS):
    def decide_for(usage: UsageSnapshot):
        return decide(usage, limits, job.num_images, job.created_at, in_guild=job.guild_id is not None)

    return decide_for


def write_v1_database(path: Path, rows: list[dict[str, object]]) -> None:
    with sqlite3.connect(path) as db:
        db.executescript(SCHEMA_V1)
        for row in rows:
            db.execute(
                f"INSERT INTO jobs ({', '.join(row)}) VALUES ({', '.join('?' for _ in row)})",  # noqa: S608  # test data
                list(row.values()),
            )


# A request as rows before the model registry stored it: Kontext [max] multi's own body.
KONTEXT_REQUEST_JSON = (
    '{"prompt":"old","image_urls":["https://x/a.png"],"seed":null,"guidance_scale":null,"num_images":2,'
    '"output_format":"jpeg","safety_tolerance":null,"aspect_ratio":null,"enhance_prompt":null}'
)


def v1_row(job_id: str, state: str, **changes: object) -> dict[str, object]:
    row: dict[str, object] = {
        "id": job_id, "state": state, "source": "slash", "user_id": 7, "guild_id": 10, "channel_id": 5,
        "request_json": KONTEXT_REQUEST_JSON, "num_images": 2, "request_id": f"req-{job_id}",
        "status_url": "https://old.example/fal-ai/flux-pro/requests/x/status", "response_url": "https://old.example/r",
        "cancel_url": "https://old.example/c", "cost_usd": "0.16", "delivery_started": 0,
        "created_at": NOW.isoformat(), "updated_at": NOW.isoformat(),
    }  # fmt: skip
    row.update(changes)
    return row


# --- round trips ---------------------------------------------------------------------------------


async def test_a_job_survives_a_round_trip(store: Store):
    result = KontextOutput(images=(OutputImage(url="https://v3.fal.media/a.png", width=8, height=8),), seed=42,
                           has_nsfw_concepts=(True,))  # fmt: skip
    job = make_job(images=2, state=JobState.RUNNING).advance(
        JobState.SUCCEEDED, thread_id=77, result=result, result_message_ids=(11, 12), delivery_attempts=2,
        locale="zh-CN",
    )  # fmt: skip
    await store.save(job)

    assert await store.get(job.id) == job


async def test_a_reply_token_is_stored_while_the_job_runs_and_not_once_it_ended(store: Store, database: Database):
    job = replace(make_job(), reply=ReplyToken("interaction-token-secret", ephemeral=True))
    await store.save(job)
    assert await store.get(job.id) == job
    assert "interaction-token-secret" not in repr(job)

    ended = job.advance(JobState.RUNNING).advance(JobState.SUCCEEDED).advance(JobState.DELIVERED)
    await store.save(ended)
    assert (await store.get(job.id)) == replace(ended, reply=None)
    assert "interaction-token-secret" not in await raw_rows(database)


async def raw_rows(database: Database) -> str:
    """Every job row as the database holds it, as text."""
    if database.kind == "sqlite":
        with sqlite3.connect(database.location) as db:
            return repr(db.execute("SELECT * FROM jobs").fetchall())
    connection = await asyncpg.connect(database.location)
    try:
        return repr(await connection.fetch("SELECT * FROM jobs"))
    finally:
        await connection.close()


async def test_unfinished_lists_only_jobs_still_owed_to_the_user(store: Store):
    owed = [make_job(state=s) for s in (JobState.PENDING, JobState.QUEUED, JobState.RUNNING, JobState.SUCCEEDED)]
    done = [make_job(state=s) for s in JobState if s.finished]
    for job in owed + done:
        await store.save(job)

    assert {job.id for job in await store.unfinished()} == {job.id for job in owed}


async def test_each_process_finds_only_the_unfinished_jobs_of_its_shards(store: Store):
    guilds = [(i << 22) + 7 for i in range(6)]  # on shards 0, 1, 2, 0, 1, 2 of 3
    jobs = [make_job(guild_id=guild) for guild in guilds] + [make_job(guild_id=None)]  # a DM: shard 0
    for job in [*jobs, make_job(guild_id=guilds[0], state=JobState.DELIVERED)]:
        await store.save(job)

    found = {ids: await store.unfinished(ShardSet(frozenset(ids), 3)) for ids in [(0,), (1, 2), (0, 1, 2)]}

    assert [job.guild_id for job in found[(0,)]] == [guilds[0], guilds[3], None]  # oldest first
    assert {job.guild_id for job in found[(1, 2)]} == {guilds[1], guilds[2], guilds[4], guilds[5]}
    assert {job.id for job in found[(0, 1, 2)]} == {job.id for job in jobs} == {j.id for j in await store.unfinished()}
    assert all(shard_of(job.guild_id, 3) == 0 for job in found[(0,)])


async def test_a_store_reopens_with_its_jobs(database: Database):
    job = make_job()
    async with database.store() as first:
        await first.save(job)
    async with database.store() as second:
        assert (await second.get(job.id)) == job


async def test_store_file_is_created_on_first_run(tmp_path: Path):
    path = tmp_path / "nested" / "dir" / "kontext.sqlite3"
    async with SqliteJobStore(path) as store:
        await store.save(make_job())
    assert path.is_file()


async def test_a_cancel_asked_elsewhere_survives_a_save_of_an_older_copy(store: Store):
    job = make_job()
    await store.save(job)

    await store.request_cancel(job.id)  # e.g. another process handled the click
    await store.save(job.update(queue_position=3))  # the owner saves its copy, which never saw the cancel

    stored = await store.get(job.id)
    assert stored is not None and stored.cancel_requested and stored.queue_position == 3


async def test_pinned_input_expires_and_can_be_cleared(store: Store):
    await store.pin_input(1, "https://v3.fal.media/r.png", "image/png", NOW)

    assert await store.pinned_input(1, NOW - timedelta(hours=1)) == ("https://v3.fal.media/r.png", "image/png")
    assert await store.pinned_input(1, NOW + timedelta(seconds=1)) is None
    await store.unpin_input(1)
    assert await store.pinned_input(1, NOW - timedelta(hours=1)) is None


# --- the ledger the limits count -----------------------------------------------------------------


async def test_usage_counts_what_fal_may_bill_and_what_still_runs(store: Store):
    billed = {JobState.DELIVERED: 1, JobState.UNDELIVERABLE: 2, JobState.TIMED_OUT: 3, JobState.UNCONFIRMED: 4}
    running = {JobState.PENDING: 2, JobState.RUNNING: 3}
    for state, images in {**billed, **running}.items():
        await store.save(make_job(images=images, state=state))
    for state in (JobState.FAILED, JobState.CANCELLED):
        await store.save(make_job(images=4, state=state))  # never billed
    await store.save(make_job(images=4, state=JobState.DELIVERED, created_at=NOW - timedelta(days=1)))
    await store.save(make_job(user_id=2, images=4, state=JobState.DELIVERED))

    usage = await store.usage_snapshot(1, 10, NOW)

    assert usage.active_jobs == 2
    assert usage.user_images == 10 + 5
    assert usage.guild_images == usage.user_images + 4
    assert usage.last_created == NOW


def expected_usage(jobs: list[Job], user_id: int, guild_id: int | None, now: datetime) -> UsageSnapshot:
    """The snapshot recounted from the jobs themselves: what the stores' running totals must always equal."""
    today, month = day_start(now), month_start(now)
    billed = [job for job in jobs if job.state in BILLABLE_STATES]
    mine = [job for job in billed if job.user_id == user_id and today <= job.created_at < today + timedelta(days=1)]
    server = [job for job in billed if job.guild_id == guild_id and guild_id is not None]
    return UsageSnapshot(
        active_jobs=sum(job.user_id == user_id and job.state in ACTIVE_STATES for job in jobs),
        user_images=sum(job.num_images for job in mine),
        guild_images=sum(job.num_images for job in server if today <= job.created_at < today + timedelta(days=1)),
        last_created=max((job.created_at for job in jobs if job.user_id == user_id), default=None),
        member_images=sum(job.num_images for job in mine if job.guild_id == guild_id and guild_id is not None),
        guild_spend=sum((job.cost_usd for job in server if month <= job.created_at < next_month(now)), Decimal(0)),
    )


def random_jobs(chance: random.Random, count: int) -> list[Job]:
    """Jobs of 3 users in 2 servers and DMs, made today, yesterday, this month (its first minute too) and last
    month, some written with other UTC offsets, many within a minute of a UTC midnight."""
    jobs = []
    for _ in range(count):
        days = chance.choice([0, 0, 0, 1, 9, 23, 30])  # NOW - 23 days: the 1st of the month
        created = NOW - timedelta(days=days, minutes=chance.choice([0, 14 * 60 + 59, 15 * 60 + 1]))
        offset = timezone(timedelta(hours=chance.choice([0, -8, 5.5])))
        job = make_job(chance.randint(1, 3), guild_id=chance.choice([10, 11, None]), images=chance.randint(1, 4),
                       state=JobState.PENDING, created_at=created.astimezone(offset))  # fmt: skip
        jobs.append(replace(job, cost_usd=chance.choice([Decimal("0.04"), Decimal("0.045"), Decimal("0.08")])))
    return jobs


@pytest.mark.parametrize("seed", [1, 2])
async def test_the_running_totals_equal_a_recount_after_any_admissions_and_transitions(store: Store, seed: int):
    """Admissions, saves of new jobs, and every kind of transition (refunds: failed and cancelled) in a random
    order; then each user's and server's snapshot equals the one recounted from the jobs."""
    chance, generous = random.Random(seed), Limits(10**6, 10**6, 10**6, timedelta(0))
    jobs = {job.id: job for job in random_jobs(chance, 60)}
    for job in jobs.values():
        if chance.random() < 0.5:
            assert await store.admit(job, verdict(job, generous)) is None
        else:
            await store.save(job)
    for _ in range(150):
        job = chance.choice(list(jobs.values()))
        if TRANSITIONS[job.state]:
            jobs[job.id] = job.advance(chance.choice(sorted(TRANSITIONS[job.state])))
            await store.save_many([jobs[job.id]])

    for user_id, guild_id in itertools.product([1, 2, 3], [10, 11, None]):
        assert await store.usage_snapshot(user_id, guild_id, NOW) == expected_usage(
            list(jobs.values()), user_id, guild_id, NOW
        )


async def test_the_cooldown_counts_from_the_latest_job_whatever_offset_its_time_was_written_with(store: Store):
    india = timezone(timedelta(hours=5, minutes=30))
    earlier = make_job(created_at=datetime(2026, 11, 24, 20, 0, tzinfo=india))  # 14:30 UTC
    later = make_job(created_at=datetime(2026, 11, 24, 14, 45, tzinfo=UTC))
    await store.save_many([earlier, later])

    assert (await store.usage_snapshot(1, 10, NOW)).last_created == later.created_at


def test_no_transition_makes_a_refunded_job_billable_again():
    """The totals take a job back when it leaves the billable states; nothing may ever bring it back."""
    for state, following in TRANSITIONS.items():
        if state not in BILLABLE_STATES:
            assert not following & BILLABLE_STATES, state


async def test_upgrading_to_running_totals_counts_the_jobs_already_stored(database: Database):
    jobs = [
        job.advance(JobState.FAILED) if i % 4 == 0 else job for i, job in enumerate(random_jobs(random.Random(3), 40))
    ]
    async with database.store() as store:
        await store.save_many(jobs)
    await as_schema_version_3(database)

    async with database.store() as store:
        for user_id, guild_id in itertools.product([1, 2, 3], [10, 11, None]):
            assert await store.usage_snapshot(user_id, guild_id, NOW) == expected_usage(jobs, user_id, guild_id, NOW)


async def as_schema_version_3(database: Database) -> None:
    """Takes the database back to version 3, which had no running totals (nor the reply columns of version 5)."""
    await as_schema_version_4(database)
    drop = ["DROP TRIGGER usage_on_insert", "DROP TRIGGER usage_on_refund", "DROP TABLE member_days",
            "DROP TABLE guild_days", "DROP INDEX jobs_active_by_user"]  # fmt: skip
    in_postgres = [f"{statement} ON jobs" for statement in drop[:2]] + drop[2:]
    in_postgres += ["DROP FUNCTION count_usage", "DELETE FROM schema_version WHERE version = 4"]
    await run_script(database, [*drop, "PRAGMA user_version = 3"], in_postgres)


async def as_schema_version_4(database: Database) -> None:
    """Takes the database back to version 4: jobs without the interaction token of version 5."""
    drop = ["ALTER TABLE jobs DROP COLUMN reply_token", "ALTER TABLE jobs DROP COLUMN reply_ephemeral"]
    await run_script(
        database, [*drop, "PRAGMA user_version = 4"], [*drop, "DELETE FROM schema_version WHERE version = 5"]
    )


async def run_script(database: Database, sqlite_statements: list[str], postgres_statements: list[str]) -> None:
    """The statements of the test database's dialect, in order."""
    if database.kind == "sqlite":
        with sqlite3.connect(database.location) as db:
            db.executescript(";".join(sqlite_statements))
        return
    connection = await asyncpg.connect(database.location)
    try:
        await connection.execute(";".join(postgres_statements))
    finally:
        await connection.close()


async def test_upgrading_to_version_5_keeps_the_jobs_with_no_reply_token(database: Database):
    jobs = random_jobs(random.Random(5), 10)
    async with database.store() as store:
        await store.save_many(jobs)
    await as_schema_version_4(database)

    async with database.store() as store:
        assert await store.jobs(limit=100) == sorted(jobs, key=lambda job: (-job.created_at.timestamp(), job.id))
        assert all(job.reply is None for job in await store.jobs())


def test_decide_names_the_first_limit_and_when_it_lifts():
    limits = Limits(max_concurrent=1, daily_user_images=5, daily_guild_images=8, cooldown=timedelta(seconds=30))
    tomorrow = day_start(NOW) + timedelta(days=1)

    def verdict_for(**usage: object):
        snapshot = UsageSnapshot(**{"active_jobs": 0, "user_images": 0, "guild_images": 0, "last_created": None,
                                    **usage})  # type: ignore[arg-type]  # fmt: skip
        return decide(snapshot, limits, 2, NOW, in_guild=True)

    assert verdict_for() is None
    busy = verdict_for(active_jobs=1)
    cooling = verdict_for(last_created=NOW - timedelta(seconds=10))
    mine = verdict_for(user_images=4)
    server = verdict_for(guild_images=7)
    assert busy is not None and busy.kind is DenialKind.CONCURRENCY and busy.retry_at is None
    assert (
        cooling is not None and cooling.kind is DenialKind.COOLDOWN and cooling.retry_at == NOW + timedelta(seconds=20)
    )
    assert mine is not None and (mine.kind, mine.used, mine.limit, mine.retry_at) == (
        DenialKind.USER_DAILY,
        4,
        5,
        tomorrow,
    )
    assert server is not None and server.kind is DenialKind.GUILD_DAILY
    assert decide(UsageSnapshot(0, 0, 7, None), limits, 2, NOW, in_guild=False) is None  # DMs have no server limit


# --- atomic admission ------------------------------------------------------------------------------


@pytest.mark.parametrize("rounds", [range(10)])
async def test_simultaneous_admissions_never_overshoot_the_concurrency_limit(store: Store, rounds: range):
    for round_number in rounds:
        jobs = [make_job(user_id=100 + round_number, state=JobState.PENDING) for _ in range(20)]

        verdicts = await asyncio.gather(*(store.admit(job, verdict(job)) for job in jobs))

        admitted = [job for job, denial in zip(jobs, verdicts, strict=True) if denial is None]
        assert len(admitted) == LIMITS.max_concurrent
        assert {d.kind for d in verdicts if d is not None} == {DenialKind.CONCURRENCY}
        assert (await store.usage_snapshot(100 + round_number, 10, NOW)).active_jobs == LIMITS.max_concurrent


async def test_simultaneous_admissions_never_overshoot_a_daily_limit(store: Store):
    limits = Limits(max_concurrent=10, daily_user_images=20, daily_guild_images=4, cooldown=timedelta(0))
    jobs = [make_job(user_id=user, state=JobState.PENDING) for user in range(6)]  # six members of one server

    verdicts = await asyncio.gather(*(store.admit(job, verdict(job, limits)) for job in jobs))

    assert sum(denial is None for denial in verdicts) == 4
    assert (await store.usage_snapshot(0, 10, NOW)).guild_images == 4


async def test_two_stores_on_one_database_admit_atomically(database: Database):
    """Two processes on one database: the transaction (and its locks), not an in-process lock, keeps the limit."""
    async with database.store() as one, database.store() as two:
        jobs = [make_job(user_id=5, state=JobState.PENDING) for _ in range(12)]
        stores = [one, two] * 6

        verdicts = await asyncio.gather(*(s.admit(job, verdict(job)) for s, job in zip(stores, jobs, strict=True)))

        assert sum(denial is None for denial in verdicts) == LIMITS.max_concurrent


async def test_two_stores_never_overshoot_a_guild_or_a_user_daily_limit_together(database: Database):
    """Members of one server on two processes share its daily images; one member's jobs share theirs."""
    limits = Limits(max_concurrent=50, daily_user_images=3, daily_guild_images=7, cooldown=timedelta(0))
    async with database.store() as one, database.store() as two:
        members = [make_job(user_id=user, state=JobState.PENDING) for user in range(20, 30)]  # guild 10
        alone = [make_job(user_id=99, guild_id=None, state=JobState.PENDING) for _ in range(8)]  # in DMs
        jobs = members + alone
        stores = [one, two] * (len(jobs) // 2)

        verdicts = await asyncio.gather(
            *(s.admit(job, verdict(job, limits)) for s, job in zip(stores, jobs, strict=True))
        )

        admitted = [job for job, denial in zip(jobs, verdicts, strict=True) if denial is None]
        assert sum(job.guild_id == 10 for job in admitted) == 7
        assert sum(job.user_id == 99 for job in admitted) == 3
        assert (await one.usage_snapshot(20, 10, NOW)).guild_images == 7
        assert (await two.usage_snapshot(99, None, NOW)).user_images == 3


async def test_without_a_cooldown_a_job_made_just_before_an_admitted_one_is_admitted(store: Store):
    """Two processes make a user's jobs at nearly the same time and admit them in either order: the later-made
    job may be admitted first. With no cooldown that must not read as "on cooldown"."""
    later, earlier = (
        make_job(state=JobState.PENDING, created_at=NOW + timedelta(milliseconds=5)),
        make_job(state=JobState.PENDING, created_at=NOW),
    )

    assert await store.admit(later, verdict(later)) is None
    assert await store.admit(earlier, verdict(earlier)) is None


async def test_a_refused_admission_stores_nothing(store: Store):
    first, second = make_job(images=3, state=JobState.PENDING), make_job(images=3, state=JobState.PENDING)
    limits = Limits(max_concurrent=5, daily_user_images=5, daily_guild_images=100, cooldown=timedelta(0))

    assert await store.admit(first, verdict(first, limits)) is None
    denial = await store.admit(second, verdict(second, limits))

    assert denial is not None and denial.kind is DenialKind.USER_DAILY
    assert await store.get(second.id) is None


# --- schema versions ---------------------------------------------------------------------------------


async def test_a_version_1_database_is_migrated_and_keeps_its_jobs(tmp_path: Path):
    path = tmp_path / "old.sqlite3"
    write_v1_database(path, [v1_row("a" * 32, "queued"), v1_row("b" * 32, "succeeded", delivery_started=1,
                                                                    thread_id=99)])  # fmt: skip

    async with SqliteJobStore(path) as store:
        queued, delivering = await store.get("a" * 32), await store.get("b" * 32)
        version = await store.schema_version()

    assert version == SCHEMA_VERSION
    assert queued is not None and queued.state is JobState.QUEUED and queued.request_id == f"req-{'a' * 32}"
    assert queued.endpoint == "fal-ai/flux-pro/kontext/max/multi" and queued.num_images == 2
    assert queued.model.id == "kontext-max-multi" and queued.payload() == {
        "prompt": "old", "image_urls": ["https://x/a.png"], "num_images": 2, "output_format": "jpeg",
    }  # fmt: skip
    assert delivering is not None and delivering.delivery_attempts == 1 and delivering.thread_id == 99
    assert delivering.result_message_ids == ()  # unknown: the delivery looks before it posts


async def test_a_newer_database_is_refused_with_a_clear_message(tmp_path: Path):
    path = tmp_path / "future.sqlite3"
    with sqlite3.connect(path) as db:
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")

    with pytest.raises(StoreError, match=rf"future\.sqlite3: schema version {SCHEMA_VERSION + 1} is newer"):
        await SqliteJobStore(path).open()


async def test_a_file_that_is_not_a_database_is_refused_and_closed(tmp_path: Path):
    path = tmp_path / "garbage.sqlite3"
    path.write_bytes(bytes(range(256)) * 64)

    with pytest.raises(StoreError, match=r"garbage\.sqlite3: file is not a database"):
        await SqliteJobStore(path).open()


# --- SQLite's thread ---------------------------------------------------------------------------------


async def test_saves_racing_on_the_database_thread_never_fail(tmp_path: Path):
    """A cursor that left the database thread was finalized on the event loop's thread, resetting its cached
    statement while the database thread ran it again: under load, saves failed now and then with "bad parameter
    or other API misuse" (about one in 200 here). Every write now closes its cursor where it ran."""
    jobs = [make_job(user_id=user, state=JobState.PENDING) for user in range(200)]
    failures: list[BaseException] = []

    async def save_repeatedly(store: SqliteJobStore, job: Job) -> None:
        for _ in range(25):
            try:
                await store.save_many([job])
                await store.request_cancel(job.id)
            except sqlite3.Error as exc:
                failures.append(exc)

    async with SqliteJobStore(tmp_path / "jobs.sqlite3") as store:
        await asyncio.gather(*(save_repeatedly(store, job) for job in jobs))

    assert failures == []
