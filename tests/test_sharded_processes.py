"""Two `python -m bot` processes, shards 0 and 1 of 2, on one PostgreSQL database, against the fakes.

The main guild of the fake Discord is on shard 1 of 2; `guild0` is on shard 0. Each process gets only its
shard's events, so it starts, follows and resumes the jobs of its own guilds, while the limits are counted
across both in the shared database.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from bot.jobs import Job, JobState
from bot.store import PostgresJobStore
from tests.bot_process import BotProcess, bot_environment
from tests.fakes.fake_discord import FakeDiscord, FakeGuild
from tests.fakes.fake_fal import FakeFal, JobScript
from tests.fakes.images import make_png
from tests.harness import RESULT_TEXT, Json, custom_ids, message_text

StartShard = Callable[..., Awaitable[BotProcess]]
DONE = "✅ Done"


@pytest.fixture
def guild0(fake_discord: FakeDiscord) -> FakeGuild:
    """A guild on shard 0 of 2 (the fake's main guild is on shard 1), there before any process connects."""
    return fake_discord.add_guild("Shard zero", shard=0, shard_count=2)


@pytest.fixture
async def start_shard(
    fake_discord: FakeDiscord, fake_fal: FakeFal, postgres_url: str, tmp_path: Path
) -> AsyncIterator[StartShard]:
    """`await start_shard(1, **env)` starts `python -m bot` on shard 1 of 2 (or `shard=None, SHARD_COUNT="1"`)
    against the shared database. At the end every process still running is killed, and none may have logged
    an error."""
    started: list[BotProcess] = []

    async def start(shard: int | None, **env: str) -> BotProcess:
        extra = {"DATABASE_URL": postgres_url, "SHARD_COUNT": "2", "HEARTBEAT_PATH": str(tmp_path / f"beat{shard}")}
        extra |= {"SHARD_IDS": str(shard)} if shard is not None else {}
        process = BotProcess(bot_environment(fake_discord, fake_fal, tmp_path / "unused.sqlite3", **extra | env),
                             tmp_path)  # fmt: skip
        started.append(process)
        await process.start()
        return process

    yield start
    for number, process in enumerate(started):
        await process.kill()
        print(f"--- process {number} ---", *process.lines[-40:], sep="\n")  # noqa: T201  # shown on failure
    assert [process.errors() for process in started] == [[] for _ in started]


def slash_kontext(discord: FakeDiscord, channel_id: int, prompt: str, user_id: int | None = None) -> Json:
    image = discord.add_attachment("in.png", make_png(16, 16))
    options = [{"name": "prompt", "type": 3, "value": prompt}, {"name": "image1", "type": 11, "value": image["id"]}]
    return discord.slash("kontext", options, attachments=[image], channel_id=channel_id,
                         user_id=user_id or discord.owner_id)  # fmt: skip


async def interact_all(discord: FakeDiscord, payloads: list[Json]) -> None:
    """Dispatch every interaction at once: each process admits its own, at the same time as the other."""
    await asyncio.gather(*(discord.interact(payload) for payload in payloads))


def result_messages(discord: FakeDiscord) -> list[Json]:
    return [m for m in discord.messages.values() if RESULT_TEXT in message_text(m)]


def done_count(discord: FakeDiscord) -> int:
    return sum(DONE in m["content"] for m in discord.messages.values())


def ephemeral_replies(discord: FakeDiscord) -> list[str]:
    """Texts only the user saw (followups with the ephemeral flag): here, the refusals."""
    return [str(r.json["content"]) for r in discord.requests
            if r.method == "POST" and r.path.startswith("/webhooks/") and isinstance(r.json, dict)
            and r.json.get("flags", 0) & 64 and r.status < 300]  # fmt: skip


async def stored_jobs(url: str) -> list[Job]:
    async with PostgresJobStore(url) as store:
        return await store.jobs()


async def stored_job(url: str, job_id: str) -> Job:
    async with PostgresJobStore(url) as store:
        job = await store.get(job_id)
    assert job is not None
    return job


def handled_by(process: BotProcess, job: Job) -> bool:
    return any(f"job {job.id} accepted by fal" in line for line in process.lines)


async def test_two_processes_each_deliver_the_jobs_of_their_own_shard_exactly_once(
    start_shard: StartShard, fake_discord: FakeDiscord, fake_fal: FakeFal, guild0: FakeGuild, postgres_url: str
):
    shard0, shard1 = await start_shard(0), await start_shard(1)
    users = (fake_discord.owner_id, fake_discord.other_user_id)
    channels = (guild0.text_channel_id, fake_discord.channel_id)
    payloads = [slash_kontext(fake_discord, channel, f"edit {i}", user) for i, channel in enumerate(channels)
                for user in users]  # fmt: skip

    await interact_all(fake_discord, payloads)
    await fake_discord.wait_until(lambda: done_count(fake_discord) == 4, timeout=20, what="four jobs done")

    jobs = await stored_jobs(postgres_url)
    assert len(jobs) == 4 and fake_fal.count("submit") == 4 and len(result_messages(fake_discord)) == 4
    assert all(job.state is JobState.DELIVERED and len(job.result_message_ids) == 1 for job in jobs)
    assert all(handled_by(shard0 if job.guild_id == guild0.id else shard1, job) for job in jobs)
    assert not any(handled_by(shard1 if job.guild_id == guild0.id else shard0, job) for job in jobs)


async def test_a_killed_shard_process_resumes_only_its_own_jobs_when_it_starts_again(
    start_shard: StartShard, fake_discord: FakeDiscord, fake_fal: FakeFal, guild0: FakeGuild, postgres_url: str
):
    fake_fal.default_script = JobScript(queue_positions=(1,), hold=True)
    first0, first1 = await start_shard(0), await start_shard(1)
    await interact_all(fake_discord, [slash_kontext(fake_discord, guild0.text_channel_id, "on zero"),
                                      slash_kontext(fake_discord, fake_discord.channel_id, "on one")])  # fmt: skip
    await fake_discord.wait_until(lambda: sum("1 job ahead" in m["content"] for m in fake_discord.messages.values())
                                  == 2, timeout=15, what="both jobs queued")  # fmt: skip
    [on_zero] = [job for job in await stored_jobs(postgres_url) if job.guild_id == guild0.id]
    [on_one] = [job for job in await stored_jobs(postgres_url) if job.guild_id == fake_discord.guild_id]

    await first1.kill()  # SIGKILL in the middle of its job
    assert on_one.request_id is not None and on_zero.request_id is not None
    fake_fal.release(on_one.request_id)  # fal finishes it while no process runs shard 1
    await first0.kill()
    second0 = await start_shard(0)  # shard 0 comes back first: it must leave shard 1's job alone
    await second0.wait_for_line("resumed 1 unfinished job(s)")
    fake_fal.release(on_zero.request_id)
    await fake_discord.wait_until(lambda: done_count(fake_discord) == 1, timeout=15, what="shard 0's job done")
    assert (await stored_job(postgres_url, on_one.id)).state is JobState.QUEUED  # still waiting for shard 1

    second1 = await start_shard(1)
    await fake_discord.wait_until(lambda: done_count(fake_discord) == 2, timeout=15, what="shard 1's job done")

    jobs = await stored_jobs(postgres_url)
    assert fake_fal.count("submit") == 2 and len(result_messages(fake_discord)) == 2
    assert all(job.state is JobState.DELIVERED and len(job.result_message_ids) == 1 for job in jobs)
    assert any("resumed 1 unfinished job(s)" in line for line in second1.lines)


async def test_one_user_hits_the_concurrency_limit_across_both_processes(
    start_shard: StartShard, fake_discord: FakeDiscord, fake_fal: FakeFal, guild0: FakeGuild, postgres_url: str
):
    fake_fal.default_script = JobScript(queue_positions=(1,), hold=True)  # every admitted job keeps running
    await start_shard(0, MAX_CONCURRENT_JOBS_PER_USER="2")
    await start_shard(1, MAX_CONCURRENT_JOBS_PER_USER="2")
    payloads = [slash_kontext(fake_discord, channel, f"try {i}") for i in range(3)
                for channel in (guild0.text_channel_id, fake_discord.channel_id)]  # fmt: skip

    await interact_all(fake_discord, payloads)
    await fake_discord.wait_until(lambda: len(ephemeral_replies(fake_discord)) == 4, timeout=15, what="4 refusals")

    jobs = await stored_jobs(postgres_url)
    assert len(jobs) == 2 and all(job.user_id == fake_discord.owner_id for job in jobs)
    assert all("You already have 2 jobs running" in text for text in ephemeral_replies(fake_discord))
    await fake_discord.wait_until(lambda: fake_fal.count("submit") == 2, timeout=10, what="two submits")


async def test_simultaneous_admissions_in_both_processes_never_overshoot_a_daily_limit(
    start_shard: StartShard, fake_discord: FakeDiscord, fake_fal: FakeFal, guild0: FakeGuild, postgres_url: str
):
    limits = {"DAILY_IMAGES_PER_USER": "3", "MAX_CONCURRENT_JOBS_PER_USER": "10"}
    await start_shard(0, **limits)
    await start_shard(1, **limits)
    payloads = [slash_kontext(fake_discord, channel, f"image {i}") for i in range(4)
                for channel in (guild0.text_channel_id, fake_discord.channel_id)]  # fmt: skip

    await interact_all(fake_discord, payloads)
    await fake_discord.wait_until(lambda: len(ephemeral_replies(fake_discord)) == 5, timeout=15, what="5 refusals")
    await fake_discord.wait_until(lambda: done_count(fake_discord) == 3, timeout=15, what="three jobs done")

    jobs = await stored_jobs(postgres_url)
    assert len(jobs) == 3 and all(job.state is JobState.DELIVERED for job in jobs)
    assert fake_fal.count("submit") == 3 and len(result_messages(fake_discord)) == 3
    assert all("You have used" in text and "of 3 images today" in text for text in ephemeral_replies(fake_discord))


async def test_a_button_works_in_whichever_process_runs_its_guild_now(
    start_shard: StartShard, fake_discord: FakeDiscord, fake_fal: FakeFal, postgres_url: str
):
    """A result delivered by a one-process bot; then the bot is split into two shard processes, and the
    Reroll under that result is clicked: the process that now runs the guild finds the job in the database."""
    single = await start_shard(None, SHARD_COUNT="1")
    await fake_discord.interact(slash_kontext(fake_discord, fake_discord.channel_id, "before the split"))
    await fake_discord.wait_until(lambda: len(result_messages(fake_discord)) == 1, timeout=15, what="a result")
    assert await single.terminate() == 0
    await start_shard(0)
    shard1 = await start_shard(1)

    [result] = result_messages(fake_discord)
    reroll = next(i for i in custom_ids(result)
                  if i.startswith("kontext:reroll:"))  # fmt: skip
    await fake_discord.interact(fake_discord.button(reroll, result))
    await fake_discord.wait_until(lambda: len(result_messages(fake_discord)) == 2, timeout=15, what="the reroll")

    first, second = sorted(await stored_jobs(postgres_url), key=lambda job: job.created_at)
    assert second.source == "reroll" and second.request.prompt == first.request.prompt
    assert handled_by(shard1, second) and not handled_by(single, second)
    assert first.state is JobState.DELIVERED and fake_fal.count("submit") == 2
