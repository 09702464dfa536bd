"""`python -m bot` started before the network is up: one line per try and a backoff, never a traceback; a wrong
token still stops it at once."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import discord
import pytest

from bot import startup
from tests.bot_process import BotProcess, bot_environment, free_port
from tests.conftest import DISCORD_TOKEN
from tests.fakes.fake_discord import FakeDiscord
from tests.fakes.fake_fal import FakeFal


def unreachable_discord(port: int) -> dict[str, str]:
    return {
        "DISCORD_API_URL": f"http://127.0.0.1:{port}/api/v10",
        "DISCORD_GATEWAY_URL": f"ws://127.0.0.1:{port}/gateway/",
    }


async def healthz(line: str) -> int:
    base = line.split("health on ", 1)[1].removesuffix("/healthz")
    async with aiohttp.ClientSession() as http, http.get(f"{base}/healthz") as response:
        return response.status


def tracebacks(bot: BotProcess) -> list[str]:
    return [line for line in bot.lines if "Traceback" in line or " ERROR " in line]


@pytest.fixture
async def bots(fake_discord: FakeDiscord, fake_fal: FakeFal) -> AsyncIterator[list[BotProcess]]:
    """The test's bot processes, killed at its end before the fakes stop: a process still connecting to a fake
    that shuts down leaves it an accepted socket never closed (a ResourceWarning that failed a later test)."""
    started: list[BotProcess] = []
    yield started
    for bot in started:
        await bot.kill()


async def test_discord_unreachable_at_start_is_waited_for(
    bots: list[BotProcess], fake_discord: FakeDiscord, fake_fal: FakeFal, tmp_path: Path
):
    port = free_port()
    env = bot_environment(
        fake_discord, fake_fal, tmp_path / "db.sqlite3", METRICS_PORT="0", **unreachable_discord(port)
    )
    bot = BotProcess(env, tmp_path)
    bots.append(bot)
    await bot.launch()
    [health] = await bot.wait_for_lines("health on http://")

    tries = await bot.wait_for_lines("Discord unreachable (Cannot connect to host 127.0.0.1", count=3)
    assert await healthz(health) == 503
    async with FakeDiscord(port=port) as discord:  # the network comes up
        await bot.wait_for_lines("ready as")
        assert await healthz(health) == 200
        assert await bot.terminate() == 0

    assert all("WARNING" in line and "; retrying in " in line for line in tries)
    delays = [float(line.rsplit("retrying in ", 1)[1].removesuffix("s")) for line in tries]
    assert delays == sorted(delays) and delays[0] < delays[-1]  # backing off
    assert discord.identify_payloads and tracebacks(bot) == []


async def test_sigterm_while_waiting_for_discord_stops_the_bot_cleanly(
    bots: list[BotProcess], fake_discord: FakeDiscord, fake_fal: FakeFal, tmp_path: Path
):
    """The wait between tries (here a minute) does not hold up a stop: docker stop gives 30 s before SIGKILL."""
    env = bot_environment(
        fake_discord, fake_fal, tmp_path / "db.sqlite3", RETRY_BASE_SECONDS="60", **unreachable_discord(free_port())
    )
    bot = BotProcess(env, tmp_path)
    bots.append(bot)
    await bot.launch()
    [waiting] = await bot.wait_for_lines("Discord unreachable")

    assert "retrying in 60.0s" in waiting
    assert await bot.terminate() == 0
    assert tracebacks(bot) == []


async def test_a_gateway_unreachable_at_first_is_waited_for_too(
    bots: list[BotProcess], fake_discord: FakeDiscord, fake_fal: FakeFal, tmp_path: Path
):
    """REST answers but the gateway does not: discord.py retries the shard's connection; each failed try is one
    line, not a traceback."""
    env = bot_environment(fake_discord, fake_fal, tmp_path / "db.sqlite3")
    env["DISCORD_GATEWAY_URL"] = f"ws://127.0.0.1:{free_port()}/gateway/"
    bot = BotProcess(env, tmp_path)
    bots.append(bot)
    await bot.launch()

    tries = await bot.wait_for_lines("(gateway unreachable:", count=2, timeout=30)  # discord.py waits 5 s a try

    assert all("WARNING" in line and "(gateway unreachable: Cannot connect to host" in line for line in tries)
    assert bot._process is not None and bot._process.returncode is None  # still trying
    assert tracebacks(bot) == []


async def test_fal_unreachable_at_start_is_retried_while_the_bot_runs(
    bots: list[BotProcess], fake_discord: FakeDiscord, fake_fal: FakeFal, tmp_path: Path
):
    env = bot_environment(
        fake_discord, fake_fal, tmp_path / "db.sqlite3", FAL_QUEUE_URL=f"http://127.0.0.1:{free_port()}"
    )
    bot = BotProcess(env, tmp_path)
    bots.append(bot)
    await bot.start()

    tries = await bot.wait_for_lines("fal unreachable at http://127.0.0.1:", count=2)

    assert all("WARNING" in line and "; retrying in " in line for line in tries)
    assert tracebacks(bot) == []


async def test_fal_reachable_at_start_says_whether_the_key_is_accepted(
    bots: list[BotProcess], fake_discord: FakeDiscord, fake_fal: FakeFal, tmp_path: Path
):
    good = BotProcess(bot_environment(fake_discord, fake_fal, tmp_path / "a.sqlite3"), tmp_path)
    bad = BotProcess(bot_environment(fake_discord, fake_fal, tmp_path / "b.sqlite3", FAL_KEY="wrong:key"), tmp_path)
    bots.extend((good, bad))
    await good.start()
    await bad.start()

    assert await good.wait_for_lines(f"fal at {fake_fal.base_url} accepts the key")
    [refused] = await bad.wait_for_lines(f"fal at {fake_fal.base_url} refused FAL_KEY (HTTP 401")
    assert " ERROR " in refused and "python -m bot check" in refused
    assert {r.kind for r in fake_fal.requests} == {"status"}  # free questions only
    assert all(r.status in (401, 404) for r in fake_fal.requests)


async def test_a_wrong_token_still_stops_the_bot_at_once(
    bots: list[BotProcess], fake_discord: FakeDiscord, fake_fal: FakeFal, tmp_path: Path
):
    fake_discord.token = "the-real-token"
    bot = BotProcess(bot_environment(fake_discord, fake_fal, tmp_path / "db.sqlite3"), tmp_path)
    bots.append(bot)
    await bot.launch()

    assert await bot.exited() == 1
    assert any("Discord refused DISCORD_TOKEN" in line for line in bot.lines), bot.lines
    assert [r.path for r in fake_discord.requests] == ["/users/@me"]  # tried once, not retried
    assert not any("Traceback" in line or "unreachable" in line for line in bot.lines)


async def test_a_login_retried_until_discord_is_up_keeps_the_bound_on_its_connections(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
):
    """A failed login closes its session and connector; the next try gets a fresh connector with the same bound,
    not discord.py's unbounded default."""
    port = free_port()
    monkeypatch.setattr(discord.http.Route, "BASE", f"http://127.0.0.1:{port}/api/v10")
    client = discord.Client(intents=discord.Intents.none(), connector=aiohttp.TCPConnector(limit=3))
    caplog.set_level(logging.WARNING, "bot.startup")
    login = asyncio.create_task(startup.login(client, DISCORD_TOKEN, first_delay=0.02, stop=asyncio.Event()))
    await asyncio.sleep(0.3)  # tries at 0, 0.02, 0.06, 0.14 s
    assert sum("Discord unreachable" in record.getMessage() for record in caplog.records) >= 3

    async with FakeDiscord(port=port) as fake:  # the network comes up
        assert await asyncio.wait_for(login, 5)
        channels = [fake.add_channel(fake.guild_id, f"c{n}")["id"] for n in range(12)]  # a rate-limit bucket each
        for _ in channels:
            fake.delay_next("GET", r"/channels/\d+", 0.2)
        await asyncio.gather(*(client.http.get_channel(channel) for channel in channels))
        await client.close()

    assert 1 < fake.peak_connections <= 3
