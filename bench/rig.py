"""The load bench's rig: the fakes (and the driver) in this process, the bot in its own, started as users
start it (`python -m bot`), so every CPU and memory figure read from /proc is the bot's own."""

from __future__ import annotations

import asyncio
import os
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

from bench.world import add_users, jittered, started_fal, timed_fakes
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
    bot: BotProcess
    users: list[int]
    image: Json
    pid: int
    extra_env: dict[str, str] = field(default_factory=dict)

    def cpu_seconds(self) -> float:
        """The bot process's CPU time (user + system, every thread) so far."""
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS

    def rss_kib(self) -> int:
        return int(Path(f"/proc/{self.pid}/statm").read_text().split()[1]) * PAGE_KIB


@asynccontextmanager
async def rig(script: JobScript, *, jobs: int, jitter: float, users: int, env: dict[str, str] | None = None,
              ) -> AsyncIterator[Rig]:  # fmt: skip
    """Fresh fakes, a fresh database and a fresh bot process; killed at the end."""
    with timed_fakes(), tempfile.TemporaryDirectory(prefix="kontext-bench-") as tmp:
        async with FakeDiscord(edit_rate=(5, 5.0)) as discord, started_fal(
            jittered(script, jobs, jitter), ping_interval=1.0
        ) as fal:  # fmt: skip
            bench_users = add_users(discord, users)
            settings = {**BOT_SETTINGS, **(env or {})}
            environment = bot_environment(discord, fal, Path(tmp) / "kontext.sqlite3", **settings)
            process = BotProcess(environment, Path(tmp))
            await process.start(timeout=30)
            try:
                image = discord.add_attachment("in.png", make_png(32, 32))
                yield Rig(discord, fal, process, bench_users, image, process.pid, settings)
            finally:
                await process.kill()


async def sample(rig_: Rig, samples: list[tuple[float, int, int]], stop: asyncio.Event, every: float = 0.5) -> None:
    """(time, RSS KiB, jobs in flight) every `every` seconds until `stop` is set."""
    loop = asyncio.get_running_loop()
    while not stop.is_set():
        samples.append((loop.time(), rig_.rss_kib(), in_flight(rig_)))
        try:
            await asyncio.wait_for(stop.wait(), every)
        except TimeoutError:
            continue


def in_flight(rig_: Rig) -> int:
    """Jobs fal accepted whose results are not posted yet."""
    return max(len(rig_.fal.jobs) - delivered_count(rig_.discord), 0)


def delivered_count(discord: FakeDiscord) -> int:
    return sum(1 for m in discord.messages.values() if "here is your edit" in message_text(m))


def wall() -> str:
    return time.strftime("%H:%M:%S")
