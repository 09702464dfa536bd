"""`python -m bot` at DEBUG with LOG_FORMAT=json, through a delivered job: every line of the job carries its ids.

The ids come from the job owner (`JobRunner`) binding them with `bot.log.log_context` / `bind`.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.bot_process import BotProcess, bot_environment
from tests.fakes.fake_discord import FakeDiscord
from tests.fakes.fake_fal import FakeFal
from tests.fakes.images import make_png


@pytest.fixture
async def bot(fake_discord: FakeDiscord, fake_fal: FakeFal, tmp_path: Path) -> AsyncIterator[BotProcess]:
    env = bot_environment(fake_discord, fake_fal, tmp_path / "kontext.sqlite3", LOG_LEVEL="DEBUG", LOG_FORMAT="json")
    process = BotProcess(env, tmp_path)
    await process.start()
    yield process
    await process.kill()


async def deliver_one_job(discord: FakeDiscord) -> dict[str, object]:
    image = discord.add_attachment("in.png", make_png(16, 16))
    options = [
        {"name": "prompt", "type": 3, "value": "make it blue"},
        {"name": "image1", "type": 11, "value": image["id"]},
    ]
    payload = discord.slash("kontext", options, attachments=[image])
    await discord.interact(payload)

    def done(message: dict[str, object]) -> bool:
        metadata = message.get("interaction_metadata")
        mine = isinstance(metadata, dict) and metadata.get("id") == payload["id"]
        return mine and "✅ Done" in str(message["content"])

    await discord.wait_for_message(done, timeout=15)
    return payload


async def test_every_line_of_a_job_carries_its_ids(bot: BotProcess, fake_discord: FakeDiscord):
    payload = await deliver_one_job(fake_discord)
    assert await bot.terminate() == 0

    entries = [json.loads(line) for line in bot.lines]
    [accepted] = [e["message"] for e in entries if "accepted by fal as" in e["message"]]
    match = re.search(r"job (\w+) accepted by fal as (\S+)", accepted)
    assert match
    job_id, request_id = match.groups()
    about_the_job = [e for e in entries if job_id in e["message"] or request_id in e["message"]]
    assert about_the_job and all(e.get("job_id") == job_id for e in about_the_job), about_the_job
    assert all(e.get("guild_id") == payload["guild_id"] and "user_id" in e for e in about_the_job)
    # discord.py's own lines, logged from the job's tasks, carry the ids too: the status edits and the delivery.
    library = [e for e in entries if e["logger"].startswith("discord.") and e.get("job_id") == job_id]
    assert any("/messages" in e["message"] and e.get("request_id") == request_id for e in library), library
