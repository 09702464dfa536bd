"""The bench's world: the real bot built as in tests/harness.py, against FakeDiscord + FakeFal on loopback.

Nothing in bot/, cogs/ or tests/ is changed. Two bench-only additions, both applied from here:
  * `TimedJob` (a FakeJob subclass installed with a MonkeyPatch) stamps every state change with
    `loop.time()`, the clock FakeDiscord's `Recorded.time` uses;
  * `TimedRecords` replaces `FakeFal.requests` with a list that stamps each appended request.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from bot.__main__ import fal_client, fal_connector
from bot.bot import KontextBot
from bot.config import Settings
from bot.store import SqliteJobStore
from tests.fakes import fake_fal
from tests.fakes.fake_discord import FakeDiscord, Json, run_client
from tests.fakes.fake_fal import FakeFal, FakeJob, JobScript, Recorded, State
from tests.fakes.images import make_png

FAL_KEY = "fake-key:secret"
DISCORD_TOKEN = "fake-discord-token.XYZ123"
FIRST_BENCH_USER = 2_000_000_000_000_000_000
LISTEN_BACKLOG = 4096  # Linux caps it at net.core.somaxconn

log = logging.getLogger(__name__)


# -- timestamps on the fakes ------------------------------------------------------------------


class TimedJob(FakeJob):
    """A FakeJob whose `times[i]` is the loop time at which `history[i]` happened."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.times: list[float] = []

    def advance(self, state: State, position: int | None = None) -> None:
        self.times.append(asyncio.get_running_loop().time())
        super().advance(state, position)


class TimedRecords(list[Recorded]):
    """FakeFal.requests with `times[i]` = loop time at which request i was recorded (after its body was read)."""

    def __init__(self) -> None:
        super().__init__()
        self.times: list[float] = []

    def append(self, item: Recorded) -> None:
        self.times.append(asyncio.get_running_loop().time())
        super().append(item)


class WideTCPSite(web.TCPSite):
    """aiohttp's TCPSite with a listen backlog of LISTEN_BACKLOG instead of 128."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("backlog", LISTEN_BACKLOG)
        super().__init__(*args, **kwargs)


@contextmanager
def timed_fakes() -> Iterator[pytest.MonkeyPatch]:
    """Fakes started inside this block create TimedJobs and listen with a wide backlog (real Discord and fal
    edges never drop connection attempts; with aiohttp's 128 a burst of new connections from discord.py's
    unlimited pool overflows the fake's accept queue and TCP retransmits the SYN 1 s, 3 s, 7 s later).
    Yields the MonkeyPatch for more patches."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(fake_fal, "FakeJob", TimedJob)
        patch.setattr(web, "TCPSite", WideTCPSite)
        yield patch


def jittered(script: JobScript, count: int, jitter: float, seed: int = 7) -> list[JobScript]:
    """`count` copies of `script` with step_seconds spread uniformly over ±jitter/2 (seeded): jobs that all
    changed state at the same phase of their lifetime would make polling latency one repeated value."""
    rng = random.Random(seed)
    step = script.step_seconds
    return [replace(script, step_seconds=step + jitter * (rng.random() - 0.5)) for _ in range(count)]


@asynccontextmanager
async def started_fal(scripts: list[JobScript], *, ping_interval: float) -> AsyncIterator[FakeFal]:
    """A FakeFal whose jobs take `scripts` in submit order (then the last one)."""
    async with FakeFal(key=FAL_KEY, ping_interval=ping_interval) as fal:
        fal.requests = TimedRecords()
        for script in scripts:
            fal.add_script(script)
        fal.default_script = scripts[-1]
        yield fal


def port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1].split("/")[0])


def timed_job(fal: FakeFal, request_id: str) -> TimedJob:
    job = fal.jobs[request_id]
    assert isinstance(job, TimedJob), "FakeFal was not started inside timed_fakes()"
    return job


def request_times(fal: FakeFal) -> list[float]:
    assert isinstance(fal.requests, TimedRecords)
    return fal.requests.times


# -- settings, users, interactions ---------------------------------------------------------------


def bench_settings(fal: FakeFal, discord: FakeDiscord, database: Path, **overrides: Any) -> Settings:
    """Production defaults (status edits every 1.5 s, polls every 1.0 s, SSE on, 30 s timeouts) except
    the addresses and the quotas, which are opened up so a thousand jobs are never refused."""
    values: dict[str, Any] = {
        "discord_token": DISCORD_TOKEN,
        "fal_key": FAL_KEY,
        "fal_queue_url": fal.base_url,
        "fal_result_hosts": ("127.0.0.1",),
        "discord_api_url": discord.api_url,
        "database_path": database,
        "cooldown_seconds": 0.0,
        "daily_images_per_user": 1_000_000,
        "daily_images_per_guild": 1_000_000,
        "max_concurrent_jobs_per_user": 1_000,
    }
    values.update(overrides)
    return Settings(_env_file=None, **values)


def add_users(discord: FakeDiscord, count: int) -> list[int]:
    """Members the fake knows (bench-only: fills FakeDiscord's private user tables)."""
    ids = [FIRST_BENCH_USER + i for i in range(count)]
    for user_id in ids:
        user = {"id": str(user_id), "username": f"u{user_id}", "discriminator": "0", "avatar": None}
        discord._users[user_id] = user
        discord._members[user_id] = discord._member(user, [])
    return ids


def input_image(discord: FakeDiscord) -> Json:
    return discord.add_attachment("in.png", make_png(32, 32))


def bench_prompt(phase: str, index: int) -> str:
    """A prompt that identifies its job in fal's input, in status texts and in the result message."""
    return f"bench {phase} job {index:05d} make it blue"


def kontext_payload(discord: FakeDiscord, prompt: str, image: Json, user_id: int) -> Json:
    """INTERACTION_CREATE for `/kontext prompt image1`, shaped like tests.harness.Harness.kontext."""
    options: list[Json] = [
        {"name": "prompt", "type": 3, "value": prompt},
        {"name": "image1", "type": 11, "value": image["id"]},
    ]
    return discord.slash("kontext", options, attachments=[image], user_id=user_id)


# -- the bot ------------------------------------------------------------------------------------


@dataclass
class Startup:
    """Loop times of one start: before KontextBot(), after login(), at on_ready."""

    constructed: float
    logged_in: float = 0.0
    ready: float = 0.0
    guild_ready_timeout: float = 0.05

    @property
    def login_seconds(self) -> float:
        return self.logged_in - self.constructed

    @property
    def total_seconds(self) -> float:
        return self.ready - self.constructed


@dataclass
class RunningBot:
    bot: KontextBot
    store: SqliteJobStore
    settings: Settings
    startup: Startup


@asynccontextmanager
async def running_bot(
    settings: Settings,
    discord: FakeDiscord,
    *,
    guild_ready_timeout: float = 0.05,
    fal_connections: int | None = None,
) -> AsyncIterator[RunningBot]:
    """KontextBot as `bot.__main__` builds it: real aiohttp session with the production connector (unless
    `fal_connections` is given), real SQLite store, the real fal client factory."""
    connector = fal_connector(settings) if fal_connections is None else aiohttp.TCPConnector(limit=fal_connections)
    with pytest.MonkeyPatch.context() as patch:
        discord.patch_discord(patch)
        async with (
            aiohttp.ClientSession(connector=connector) as session,
            SqliteJobStore(settings.database_path) as store,
        ):
            loop = asyncio.get_running_loop()
            startup = Startup(constructed=loop.time(), guild_ready_timeout=guild_ready_timeout)
            bot = KontextBot(
                settings=settings, session=session, fal=fal_client(session, settings), store=store,
                guild_ready_timeout=guild_ready_timeout,
            )  # fmt: skip
            _stamp_startup(bot, startup)
            async with run_client(bot, discord, token=DISCORD_TOKEN):
                yield RunningBot(bot, store, settings, startup)
    if discord.unhandled:
        log.error("the fake Discord saw requests it does not handle: %s", discord.unhandled[:5])


def _stamp_startup(bot: KontextBot, startup: Startup) -> None:
    loop = asyncio.get_running_loop()
    original_login = bot.login

    async def login(token: str) -> None:
        await original_login(token)
        startup.logged_in = loop.time()

    async def on_ready() -> None:
        if not startup.ready:
            startup.ready = loop.time()

    bot.login = login  # type: ignore[method-assign]
    bot.add_listener(on_ready, "on_ready")
