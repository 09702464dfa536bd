"""One process per shard: a second `python -m bot` for shards another process runs waits, and takes over only
when that one is gone, so no job is followed and delivered by two processes.

Real child processes against the fakes, on SQLite (one process per database file) and on a real PostgreSQL
(advisory locks per shard and per shard count, on a connection of the claim's own).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import asyncpg
import pytest

from bot.jobs import JobState
from bot.store import PostgresJobStore, SqliteJobStore
from bot.store.claims import SHARD_SPACE
from tests.bot_process import READY_LINE, BotProcess, bot_environment
from tests.fakes.fake_discord import FakeDiscord
from tests.fakes.fake_fal import FakeFal, JobScript
from tests.fakes.images import make_png
from tests.harness import RESULT_TEXT, Json, message_text

MakeProcess = Callable[..., BotProcess]
WAITING = "waiting for it to stop"


@pytest.fixture
async def processes(fake_discord: FakeDiscord, fake_fal: FakeFal, tmp_path: Path) -> AsyncIterator[MakeProcess]:
    """`processes(**env)`: a bot process (not started) on the test's SQLite file unless `env` says otherwise;
    every one still running is killed at the end."""
    made: list[BotProcess] = []

    def make(**env: str) -> BotProcess:
        process = BotProcess(bot_environment(fake_discord, fake_fal, tmp_path / "kontext.sqlite3", **env), tmp_path)
        made.append(process)
        return process

    yield make
    for number, process in enumerate(made):
        await process.kill()
        print(f"--- process {number} ---", *process.lines[-30:], sep="\n")  # noqa: T201  # shown on failure


def kontext(discord: FakeDiscord) -> Json:
    image = discord.add_attachment("in.png", make_png(16, 16))
    options = [
        {"name": "prompt", "type": 3, "value": "paint it gold"},
        {"name": "image1", "type": 11, "value": image["id"]},
    ]
    return discord.slash("kontext", options, attachments=[image])


def result_messages(discord: FakeDiscord) -> list[Json]:
    return [m for m in discord.messages.values() if RESULT_TEXT in message_text(m)]


async def queued_job_then_second_process_waits(
    first: BotProcess, second: BotProcess, discord: FakeDiscord, fal: FakeFal
) -> str:
    """`first` runs and takes a job that fal holds in its queue; `second` starts and must wait for `first`
    without connecting to Discord. Returns the waiting line."""
    fal.default_script = JobScript(queue_positions=(1,), hold=True)
    await first.start()
    await discord.interact(kontext(discord))
    await discord.wait_for_message(lambda m: "1 job ahead" in m["content"], timeout=10)
    await second.launch()
    waiting = await second.wait_for_line(WAITING)
    assert len(discord.identify_payloads) == 1  # only the first process is on the gateway
    return waiting


async def test_sqlite_a_second_process_waits_and_takes_the_job_over_once_the_first_is_gone(
    processes: MakeProcess, fake_discord: FakeDiscord, fake_fal: FakeFal, tmp_path: Path
):
    first, second = processes(), processes()
    waiting = await queued_job_then_second_process_waits(first, second, fake_discord, fake_fal)
    assert "kontext.sqlite3 is in use by another bot process" in waiting and f"pid {first.pid}" in waiting

    await first.kill()  # SIGKILL: the kernel lets the lock go
    await second.wait_for_line(READY_LINE)
    await second.wait_for_line("resumed 1 unfinished job(s)")
    fake_fal.release(next(iter(fake_fal.jobs)))
    await fake_discord.wait_for_message(lambda m: "✅ Done" in m["content"], timeout=15)

    assert len(result_messages(fake_discord)) == 1 and fake_fal.count("submit") == 1
    async with SqliteJobStore(tmp_path / "kontext.sqlite3") as store:
        [job] = await store.jobs()
    assert job.state is JobState.DELIVERED
    assert first.errors() == [] and second.errors() == []


async def test_sqlite_a_process_stopped_while_it_waits_exits_cleanly(processes: MakeProcess):
    first, second = processes(), processes()
    await first.start()
    await second.launch()
    await second.wait_for_line(WAITING)
    assert await second.terminate() == 0
    assert second.errors() == [] and READY_LINE not in "\n".join(second.lines)


async def test_postgres_a_second_process_for_the_same_shard_waits_and_resumes_the_job_once(
    processes: MakeProcess, fake_discord: FakeDiscord, fake_fal: FakeFal, postgres_url: str
):
    env = {"DATABASE_URL": postgres_url, "SHARD_COUNT": "2", "SHARD_IDS": "1"}  # the fake's main guild: shard 1
    first, second = processes(**env), processes(**env)
    waiting = await queued_job_then_second_process_waits(first, second, fake_discord, fake_fal)
    assert "shard 1 of 2 is run by another process (kontext-bot shards 1 of 2" in waiting

    assert await first.terminate() == 0  # a rolling restart: the new process was started before the old stopped
    await second.wait_for_line("shards 1 of 2 are free: starting")
    await second.wait_for_line("resumed 1 unfinished job(s)")
    fake_fal.release(next(iter(fake_fal.jobs)))
    await fake_discord.wait_for_message(lambda m: "✅ Done" in m["content"], timeout=15)

    assert len(result_messages(fake_discord)) == 1 and fake_fal.count("submit") == 1
    async with PostgresJobStore(postgres_url) as store:
        [job] = await store.jobs()
    assert job.state is JobState.DELIVERED
    assert first.errors() == [] and second.errors() == []


async def test_postgres_a_process_with_another_shard_count_waits(
    processes: MakeProcess, fake_discord: FakeDiscord, postgres_url: str
):
    """Shard 0 of 2 and shard 0 of 1 hold different servers' events, but the one of 1 holds all of them."""
    sharded = processes(DATABASE_URL=postgres_url, SHARD_COUNT="2", SHARD_IDS="0")
    await sharded.start()
    single = processes(DATABASE_URL=postgres_url)
    await single.launch()
    waiting = await single.wait_for_line(WAITING)
    assert "with SHARD_COUNT=2 runs on" in waiting and "this one has SHARD_COUNT=1" in waiting

    other_shard = processes(DATABASE_URL=postgres_url, SHARD_COUNT="2", SHARD_IDS="1")
    await other_shard.start()  # the same count, another shard: no wait
    assert len(fake_discord.identify_payloads) == 2

    await sharded.terminate()
    await other_shard.terminate()
    await single.wait_for_line(READY_LINE)
    assert not [line for p in (sharded, single, other_shard) for line in p.errors()]


async def test_postgres_a_claim_whose_connection_is_ended_is_made_again(
    processes: MakeProcess, fake_discord: FakeDiscord, postgres_url: str
):
    process = processes(DATABASE_URL=postgres_url)
    await process.start()
    conn = await asyncpg.connect(postgres_url)
    try:
        assert await end_claim_holders(conn) == 1  # as a database restart or a failover would
    finally:
        await conn.close()

    await process.wait_for_line("claimed shards 0 of 1 again", timeout=20)
    await fake_discord.interact(kontext(fake_discord))
    await fake_discord.wait_until(lambda: len(result_messages(fake_discord)) == 1, timeout=15, what="a result")
    assert process.errors() == []


async def test_postgres_a_process_whose_shards_were_taken_over_stops(
    processes: MakeProcess, fake_discord: FakeDiscord, fake_fal: FakeFal, postgres_url: str
):
    """The claim's connection ends and another process gets the shard first: the process stops (exit status
    1) instead of running it next to that one; its job is then delivered once, by the next process."""
    fake_fal.default_script = JobScript(queue_positions=(1,), hold=True)
    first = processes(DATABASE_URL=postgres_url)
    await first.start()
    await fake_discord.interact(kontext(fake_discord))
    await fake_discord.wait_for_message(lambda m: "1 job ahead" in m["content"], timeout=10)

    async with shard_taken_over(postgres_url):
        assert await first.exited(timeout=20) == 1
        second = processes(DATABASE_URL=postgres_url)
        await second.launch()
        await second.wait_for_line("shard 0 of 1 is run by another process (an intruder, from 127.0.0.1)")
    await second.wait_for_line("resumed 1 unfinished job(s)")
    fake_fal.release(next(iter(fake_fal.jobs)))
    await fake_discord.wait_for_message(lambda m: "✅ Done" in m["content"], timeout=15)

    assert len(result_messages(fake_discord)) == 1 and fake_fal.count("submit") == 1
    assert any("shards 0 of 1 were taken over: shard 0 of 1 is run by another process (an intruder, from" in line
               for line in first.lines)  # fmt: skip
    assert second.errors() == []


@asynccontextmanager
async def shard_taken_over(url: str) -> AsyncIterator[None]:
    """End the connection that holds shard 0, with this one already queued for the shard's lock (one round
    trip: the server hands it over as the old holder lets go, before the process can claim it again); let the
    shard go at the end."""
    conn = await asyncpg.connect(url, server_settings={"application_name": "an intruder", "lock_timeout": "5s"})
    try:
        both = (f"SELECT pg_terminate_backend(pid) FROM pg_locks WHERE locktype = 'advisory' AND granted "  # noqa: S608
                f"AND objsubid = 2 AND classid = {SHARD_SPACE}; SELECT pg_advisory_lock({SHARD_SPACE}, 0)")  # fmt: skip
        await conn.execute(both)  # two statements, one round trip (no parameters in that protocol)
        yield
    finally:
        await conn.close()


async def end_claim_holders(conn: asyncpg.Connection) -> int:
    """End the server side of the connections that hold shard claims, as a database restart would; how many."""
    rows = await conn.fetch("SELECT pg_terminate_backend(pid, 5000) FROM pg_locks WHERE locktype = 'advisory' "
                            "AND granted AND objsubid = 2 AND classid = $1::bigint::oid AND pid <> pg_backend_pid() "
                            "GROUP BY pid", SHARD_SPACE)  # fmt: skip
    return sum(bool(row[0]) for row in rows)
