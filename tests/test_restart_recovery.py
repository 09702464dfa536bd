"""Paid jobs survive the bot being killed hard (SIGKILL) at the worst moments: each is delivered once."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from bot.jobs import Job, JobState
from bot.store import SqliteJobStore
from tests.bot_process import BotProcess, bot_environment
from tests.fakes.fake_discord import EPHEMERAL, FakeDiscord
from tests.fakes.fake_fal import FakeFal, JobScript
from tests.fakes.images import make_png
from tests.harness import RESULT_TEXT, Json, custom_ids, message_text

StartProcess = Callable[[], BotProcess]


@pytest.fixture
async def bot_processes(fake_discord: FakeDiscord, fake_fal: FakeFal, tmp_path: Path) -> AsyncIterator[StartProcess]:
    """Makes bot processes sharing one database; kills any still running at the end."""
    started: list[BotProcess] = []
    env = bot_environment(fake_discord, fake_fal, tmp_path / "kontext.sqlite3")

    def make() -> BotProcess:
        process = BotProcess(env, tmp_path)
        started.append(process)
        return process

    yield make
    for process in started:
        await process.kill()


async def run_kontext(discord: FakeDiscord) -> Json:
    image = discord.add_attachment("in.png", make_png(16, 16))
    options = [
        {"name": "prompt", "type": 3, "value": "paint it gold"},
        {"name": "image1", "type": 11, "value": image["id"]},
    ]
    payload = discord.slash("kontext", options, attachments=[image])
    await discord.interact(payload)
    return payload


def result_messages(discord: FakeDiscord) -> list[Json]:
    return [m for m in discord.messages.values() if RESULT_TEXT in message_text(m)]


async def stored_jobs(path: Path) -> list[Job]:
    async with SqliteJobStore(path) as store:
        return await store.jobs()


async def test_killed_while_queued_the_job_is_resumed_and_delivered_once(
    bot_processes: StartProcess, fake_discord: FakeDiscord, fake_fal: FakeFal, tmp_path: Path
):
    fake_fal.add_script(JobScript(queue_positions=(2,), hold=True))
    first = bot_processes()
    await first.start()
    payload = await run_kontext(fake_discord)
    await fake_discord.wait_for_message(lambda m: "2 jobs ahead" in m["content"], timeout=10)

    await first.kill()
    fake_fal.release(next(iter(fake_fal.jobs)))  # fal finishes the job while the bot is down
    second = bot_processes()
    await second.start()
    await fake_discord.wait_for_message(lambda m: "✅ Done" in m["content"], timeout=15)

    [message] = result_messages(fake_discord)
    assert fake_fal.count("submit") == 1
    [job] = await stored_jobs(tmp_path / "kontext.sqlite3")
    assert job.state is JobState.DELIVERED and job.id in str(message["components"])
    assert first.errors() == [] and second.errors() == []
    assert payload["token"] not in "".join(second.lines)  # the dead token is never used after the restart


async def test_killed_mid_delivery_the_results_are_not_posted_twice(
    bot_processes: StartProcess, fake_discord: FakeDiscord, fake_fal: FakeFal, tmp_path: Path
):
    fake_discord.delay_next("POST", r"/channels/\d+/messages", 60)  # stored at once, answered a minute later
    first = bot_processes()
    await first.start()
    await run_kontext(fake_discord)
    await fake_discord.wait_until(lambda: bool(result_messages(fake_discord)), timeout=10)

    await first.kill()  # Discord has the message; the bot never heard back
    second = bot_processes()
    await second.start()
    await fake_discord.wait_for_message(lambda m: "✅ Done" in m["content"], timeout=15)

    assert len(result_messages(fake_discord)) == 1
    assert fake_fal.count("submit") == 1
    [job] = await stored_jobs(tmp_path / "kontext.sqlite3")
    assert job.state is JobState.DELIVERED
    assert any("was already posted" in line for line in second.lines)


async def test_sigterm_stops_cleanly_and_the_next_start_finishes_the_job(
    bot_processes: StartProcess, fake_discord: FakeDiscord, fake_fal: FakeFal, tmp_path: Path
):
    fake_fal.add_script(JobScript(queue_positions=(1,), hold=True))
    first = bot_processes()
    await first.start()
    await run_kontext(fake_discord)
    await fake_discord.wait_for_message(lambda m: "1 job ahead" in m["content"], timeout=10)

    assert await first.terminate() == 0
    fake_fal.release(next(iter(fake_fal.jobs)))
    second = bot_processes()
    await second.start()
    await fake_discord.wait_for_message(lambda m: "✅ Done" in m["content"], timeout=15)

    assert len(result_messages(fake_discord)) == 1 and first.errors() == []


async def _kontext_in(discord: FakeDiscord, channel_id: int) -> Json:
    image = discord.add_attachment("in.png", make_png(16, 16))
    options = [{"name": "prompt", "type": 3, "value": "again"}, {"name": "image1", "type": 11, "value": image["id"]}]
    payload = discord.slash("kontext", options, attachments=[image], channel_id=channel_id)
    await discord.interact(payload)
    return payload


@pytest.mark.parametrize("second", ["reroll", "kontext-in-the-thread"])
async def test_killed_mid_delivery_inside_the_result_thread_posts_once(
    bot_processes: StartProcess, fake_discord: FakeDiscord, fake_fal: FakeFal, tmp_path: Path, second: str
):
    """The second job's status message is in the same thread as its results: it must never pass for them."""
    first = bot_processes()
    await first.start()
    await run_kontext(fake_discord)
    [result] = await _results(fake_discord, 1)
    thread_id = int(result["channel_id"])

    fake_discord.delay_next("POST", rf"/channels/{thread_id}/messages", 60)  # stored at once, answered late
    if second == "reroll":
        reroll = next(i for i in custom_ids(result)
                      if i.startswith("kontext:reroll:"))  # fmt: skip
        await fake_discord.interact(fake_discord.button(reroll, result))
    else:
        await _kontext_in(fake_discord, thread_id)
    await _results(fake_discord, 2)
    await first.kill()

    restarted = bot_processes()
    await restarted.start()
    await fake_discord.wait_until(lambda: _done_count(fake_discord) == 2, timeout=15)

    assert len(result_messages(fake_discord)) == 2 and fake_fal.count("submit") == 2
    jobs = await stored_jobs(tmp_path / "kontext.sqlite3")
    assert all(job.state is JobState.DELIVERED and len(job.result_message_ids) == 1 for job in jobs)
    assert restarted.errors() == []


async def _results(discord: FakeDiscord, count: int) -> list[Json]:
    await discord.wait_until(lambda: len(result_messages(discord)) >= count, timeout=10)
    return sorted(result_messages(discord), key=lambda m: int(m["id"]))


def _done_count(discord: FakeDiscord) -> int:
    return sum("✅ Done" in m["content"] for m in discord.messages.values())


@pytest.mark.parametrize("external_apps", [True, False])
async def test_killed_while_queued_a_user_install_job_is_delivered_through_its_stored_token(
    bot_processes: StartProcess, fake_discord: FakeDiscord, fake_fal: FakeFal, tmp_path: Path, external_apps: bool
):
    """Where only the user installed the app the interaction's token is all the bot has (no channel, no thread):
    stored with the job while it runs, it lets the restarted bot show the status and post the results as the
    interaction's followups (private ones where the server turned off external apps); never logged, and gone
    from the database once the job ended."""
    fake_fal.add_script(JobScript(queue_positions=(2,), hold=True))
    first = bot_processes()
    await first.start()
    image = fake_discord.add_attachment("in.png", make_png(16, 16))
    options = [
        {"name": "prompt", "type": 3, "value": "paint it gold"},
        {"name": "image1", "type": 11, "value": image["id"]},
    ]
    payload = fake_discord.slash("kontext", options, attachments=[image], channel_id=fake_discord.external_channel_id,
                                 user_install=True, external_apps=external_apps)  # fmt: skip
    await fake_discord.interact(payload)
    await fake_discord.wait_for_message(lambda m: "2 jobs ahead" in m["content"], timeout=10)

    await first.kill()
    fake_fal.release(next(iter(fake_fal.jobs)))
    requests_before = len(fake_discord.requests)
    second = bot_processes()
    await second.start()
    await fake_discord.wait_for_message(lambda m: "✅ Done" in m["content"], timeout=15)

    [result] = result_messages(fake_discord)
    [followup] = [r for r in fake_discord.requests if r.method == "POST" and r.path.endswith(f"/{payload['token']}")]
    assert followup.status == 200 and bool(int(result.get("flags", 0)) & EPHEMERAL) is not external_apps
    after = fake_discord.requests[requests_before:]
    assert not [r for r in after if r.path.startswith("/channels/")]  # the channel was never tried
    [job] = await stored_jobs(tmp_path / "kontext.sqlite3")
    assert job.state is JobState.DELIVERED and job.reply is None and fake_fal.count("submit") == 1
    assert payload["token"] not in "\n".join(first.lines + second.lines)
    assert first.errors() == [] and second.errors() == []
