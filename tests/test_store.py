"""SQLite store and the quotas counted from it (real files in tmp_path)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

from bot.fal import KontextInput, KontextOutput, OutputImage
from bot.jobs import Job, JobState
from bot.quota import Quotas, day_start
from bot.store import SqliteJobStore
from tests.conftest import SettingsFactory

NOW = datetime(2026, 11, 24, 15, 0, tzinfo=UTC)


def make_job(user_id: int = 1, *, guild_id: int = 10, images: int = 1, state: JobState = JobState.QUEUED,
             created_at: datetime = NOW) -> Job:  # fmt: skip
    request = KontextInput(prompt="p", image_urls=("https://x/a.png",), num_images=images)
    return Job(request=request, user_id=user_id, channel_id=5, guild_id=guild_id, source="slash", state=state,
               request_id=f"req-{user_id}", created_at=created_at, cost_usd=Decimal("0.08") * images)  # fmt: skip


async def test_a_job_survives_a_round_trip(store: SqliteJobStore):
    job = make_job(images=2)
    job.touch(
        state=JobState.SUCCEEDED, thread_id=77, delivery_started=True, queue_position=None,
        result=KontextOutput(images=(OutputImage(url="https://v3.fal.media/a.png", width=8, height=8),), seed=42,
                             has_nsfw_concepts=(True,)),
    )  # fmt: skip
    await store.save(job)

    loaded = await store.get(job.id)

    assert loaded == job


async def test_unfinished_lists_only_jobs_still_owed_to_the_user(store: SqliteJobStore):
    owed = [make_job(state=state) for state in (JobState.QUEUED, JobState.RUNNING, JobState.SUCCEEDED)]
    done = [make_job(state=state) for state in (JobState.DELIVERED, JobState.FAILED, JobState.CANCELLED)]
    for job in owed + done:
        await store.save(job)

    assert {job.id for job in await store.unfinished()} == {job.id for job in owed}


async def test_store_file_is_created_on_first_run_and_reopens(tmp_path: Path):
    path = tmp_path / "nested" / "dir" / "kontext.sqlite3"
    job = make_job()
    async with SqliteJobStore(path) as first:
        await first.save(job)
    async with SqliteJobStore(path) as second:
        assert (await second.get(job.id)) == job


async def test_quotas_count_running_and_delivered_images_but_not_failed(
    store: SqliteJobStore, make_settings: SettingsFactory
):
    quotas = Quotas(store, make_settings(daily_images_per_user=5, daily_images_per_guild=100,
                                         max_concurrent_jobs_per_user=10))  # fmt: skip
    for state, images in ((JobState.DELIVERED, 2), (JobState.RUNNING, 1), (JobState.FAILED, 4)):
        await store.save(make_job(images=images, state=state))
    await store.save(make_job(images=4, state=JobState.DELIVERED, created_at=NOW - timedelta(days=1)))

    assert await quotas.check(user_id=1, guild_id=10, images=2, now=NOW) is None
    denial = await quotas.check(user_id=1, guild_id=10, images=3, now=NOW)

    assert denial is not None and "3 of 5" in denial.reason
    assert denial.retry_at == day_start(NOW) + timedelta(days=1)


async def test_concurrency_cooldown_and_guild_limits(store: SqliteJobStore, make_settings: SettingsFactory):
    quotas = Quotas(store, make_settings(max_concurrent_jobs_per_user=1, cooldown_seconds=30,
                                         daily_images_per_guild=2))  # fmt: skip
    await store.save(make_job(user_id=1, state=JobState.RUNNING, created_at=NOW - timedelta(minutes=5)))
    await store.save(make_job(user_id=2, state=JobState.DELIVERED, created_at=NOW - timedelta(seconds=10)))

    busy = await quotas.check(user_id=1, guild_id=10, images=1, now=NOW)
    cooling = await quotas.check(user_id=2, guild_id=99, images=1, now=NOW)
    guild_full = await quotas.check(user_id=3, guild_id=10, images=1, now=NOW)

    assert busy is not None and "already have 1 job" in busy.reason
    assert cooling is not None and cooling.retry_at == NOW + timedelta(seconds=20)
    assert guild_full is not None and "This server has used 2 of 2" in guild_full.reason


async def test_pinned_input_expires_and_can_be_cleared(store: SqliteJobStore):
    await store.pin_input(1, "https://v3.fal.media/r.png", "image/png", NOW)

    assert await store.pinned_input(1, NOW - timedelta(hours=1)) == ("https://v3.fal.media/r.png", "image/png")
    assert await store.pinned_input(1, NOW + timedelta(seconds=1)) is None
    await store.unpin_input(1)
    assert await store.pinned_input(1, NOW - timedelta(hours=1)) is None
