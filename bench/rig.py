"""The load bench's rig: the fakes (and the driver) in this process, the bot in processes of its own, started as
users start it (`python -m bot`), so every CPU and memory figure read from /proc is the bot's own."""

from __future__ import annotations

import asyncio
import gc
import itertools
import json
import os
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from bench.world import FIRST_BENCH_USER, jittered, started_fal, timed_fakes
from tests.bot_process import BotProcess, bot_environment
from tests.fakes.fake_discord import FakeDiscord, Json, message_text
from tests.fakes.fake_fal import FakeFal, JobScript
from tests.fakes.images import make_png

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE_KIB = os.sysconf("SC_PAGESIZE") // 1024

# Production settings, except the addresses and the limits: every bench user may run jobs.
BOT_SETTINGS = {
    "POLL_INTERVAL_SECONDS": "1.0",
    "STATUS_EDIT_INTERVAL_SECONDS": "1.5",
    "RETRY_BASE_SECONDS": "2.0",
    "COOLDOWN_SECONDS": "0",
    "DAILY_IMAGES_PER_USER": "1000000",
    "DAILY_IMAGES_PER_GUILD": "100000000",
    "MAX_CONCURRENT_JOBS_PER_USER": "1000",
    "LOG_LEVEL": "INFO",
}


@dataclass
class Rig:
    discord: FakeDiscord
    fal: FakeFal
    bots: list[BotProcess]
    users: list[int]
    channels: list[int]  # interactions go to these in turn (one per guild: each guild's shard)
    image: Json
    # The fakes keep every message and request; rescanning all of them a few times a second starved the fakes
    # at the end of long runs (their jobs looked undelivered). These count only what arrived since last time.
    _messages_seen: int = 0
    _results: int = 0
    _requests_seen: int = 0
    _answers: int = 0

    def delivered(self) -> int:
        """Result messages posted so far."""
        messages = self.discord.messages
        new = itertools.islice(messages.values(), self._messages_seen, None)
        self._results += sum(1 for message in new if is_result(message_text(message)))
        self._messages_seen = len(messages)
        return self._results

    def answered(self) -> int:
        """Interaction callbacks answered so far (whatever the answer)."""
        requests = self.discord.requests
        new = requests[self._requests_seen :]
        self._answers += sum(1 for rec in new if rec.path.endswith("/callback") and rec.status)
        self._requests_seen = len(requests)
        return self._answers

    def cpu_seconds(self) -> float:
        """CPU time (user + system, every thread) of the bot processes so far."""
        return sum(self.cpu_split())

    def cpu_split(self) -> tuple[float, float]:
        """(user, system) CPU seconds of the bot processes so far."""
        user = system = 0.0
        for bot in self.bots:
            fields = Path(f"/proc/{bot.pid}/stat").read_text().rsplit(")", 1)[1].split()
            user, system = user + int(fields[11]) / CLOCK_TICKS, system + int(fields[12]) / CLOCK_TICKS
        return user, system

    def rss_kib(self) -> int:
        return sum(int(Path(f"/proc/{bot.pid}/statm").read_text().split()[1]) * PAGE_KIB for bot in self.bots)


@asynccontextmanager
async def fakes(script: JobScript, *, jobs: int, jitter: float) -> AsyncIterator[tuple[FakeDiscord, FakeFal]]:
    """Fresh fakes whose fal jobs follow `script`, each with its step jittered."""
    with timed_fakes():
        async with FakeDiscord(edit_rate=(5, 5.0)) as discord, started_fal(
            jittered(script, jobs, jitter), ping_interval=1.0
        ) as fal, frozen_history():  # fmt: skip
            yield discord, fal


@asynccontextmanager
async def frozen_history(every: float = 1.0) -> AsyncIterator[None]:
    """The fakes keep every request and message: the bench's heap only grows, and each full collection scans
    all of it (2 s pauses after 10 minutes), stalling the fakes as no real Discord or fal stalls. Freezing what
    exists every second leaves the collector only the new objects."""

    async def freeze() -> None:
        while True:
            await asyncio.sleep(every)
            gc.freeze()

    task = asyncio.create_task(freeze())
    try:
        yield
    finally:
        task.cancel()
        gc.unfreeze()


def add_users(discord: FakeDiscord, count: int, guild_ids: Sequence[int] | None = None) -> list[int]:
    """Members of the given guilds (the main one by default), one per job: no user limit is ever in the way."""
    ids = [FIRST_BENCH_USER + i for i in range(count)]
    for user_id in ids:
        discord.add_user(user_id, f"u{user_id}", guild_ids=guild_ids)
    return ids


@asynccontextmanager
async def bots(discord: FakeDiscord, fal: FakeFal, envs: Sequence[dict[str, str]], *, database: str | None = None,
               ) -> AsyncIterator[list[BotProcess]]:  # fmt: skip
    """One `python -m bot` per env, started one after another (as Discord wants shards to identify); killed at
    the end. Without a `database` URL each runs on a SQLite file of its own."""
    with tempfile.TemporaryDirectory(prefix="kontext-bench-") as tmp:
        started: list[BotProcess] = []
        try:
            for number, env in enumerate(envs):
                started.append(await _start(discord, fal, Path(tmp), number, env, database))
            yield started
        finally:
            for process in started:
                await (process.terminate() if os.environ.get("BENCH_CPROFILE") else process.kill())


async def _start(discord: FakeDiscord, fal: FakeFal, tmp: Path, number: int, env: dict[str, str],
                 database: str | None) -> BotProcess:  # fmt: skip
    settings = {**BOT_SETTINGS, "HEARTBEAT_PATH": str(tmp / f"beat{number}"), **env}
    if database is not None:
        settings["DATABASE_URL"] = database
    environment = bot_environment(discord, fal, tmp / f"kontext{number}.sqlite3", **settings)
    chosen = {**os.environ, **env}  # the run's own choice first (bench.compare), else the bench's environment
    if root := chosen.get("BENCH_BOT_ROOT"):  # compare another checkout (e.g. an older commit)
        environment["PYTHONPATH"] = root
        # Older versions matched hosts without their port, newer ones with it: name both.
        environment["FAL_RESULT_HOSTS"] = json.dumps(["127.0.0.1", fal.authority])
    process = BotProcess(environment, tmp)
    process.python = chosen.get("BENCH_BOT_PYTHON", process.python)
    if profile := os.environ.get("BENCH_CPROFILE"):  # a developer's tool: where the bot's time goes
        process.python_args = ("-m", "cProfile", "-o", f"{profile}.{number}", "-m", "bot")
    await process.start(timeout=30)
    return process


@asynccontextmanager
async def rig(script: JobScript, *, jobs: int, jitter: float, users: int, env: dict[str, str] | None = None,
              ) -> AsyncIterator[Rig]:  # fmt: skip
    """Fresh fakes, a fresh database and one fresh bot process."""
    async with fakes(script, jobs=jobs, jitter=jitter) as (discord, fal), bots(discord, fal, [env or {}]) as bot:
        bench_users = add_users(discord, users)
        image = discord.add_attachment("in.png", make_png(32, 32))
        yield Rig(discord, fal, bot, bench_users, [discord.channel_id], image)


async def sample(rig_: Rig, samples: list[tuple[float, int, int]], stop: asyncio.Event, every: float = 0.5) -> None:
    """(time, RSS KiB, jobs in flight) every `every` seconds until `stop` is set."""
    loop = asyncio.get_running_loop()
    while not stop.is_set():
        samples.append((loop.time(), rig_.rss_kib(), in_flight(rig_)))
        try:
            await asyncio.wait_for(stop.wait(), every)
        except TimeoutError:
            continue


def is_result(text: str) -> bool:
    """Whether a message's text is a job's result post."""
    return "here is your edit" in text


def in_flight(rig_: Rig) -> int:
    """Jobs fal accepted whose results are not posted yet."""
    return max(len(rig_.fal.jobs) - rig_.delivered(), 0)


def wall() -> str:
    return time.strftime("%H:%M:%S")
