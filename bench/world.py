"""The fakes as the load bench runs them: timed fal jobs, a wide listen backlog, many users, and the
/kontext payloads it dispatches. Nothing under tests/ is changed; the patches are applied from here."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import replace
from typing import Any

import pytest
from aiohttp import web

from tests.fakes import fake_fal
from tests.fakes.fake_discord import FakeDiscord, Json
from tests.fakes.fake_fal import FakeFal, FakeJob, JobScript, State

FAL_KEY = "fake-key:secret"
FIRST_BENCH_USER = 2_000_000_000_000_000_000
LISTEN_BACKLOG = 4096  # Linux caps it at net.core.somaxconn


class TimedJob(FakeJob):
    """A FakeJob whose `times[i]` is the loop time at which `history[i]` happened."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.times: list[float] = []

    def advance(self, state: State, position: int | None = None) -> None:
        self.times.append(asyncio.get_running_loop().time())
        super().advance(state, position)


class WideTCPSite(web.TCPSite):
    """aiohttp's TCPSite with a listen backlog of LISTEN_BACKLOG instead of 128."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("backlog", LISTEN_BACKLOG)
        super().__init__(*args, **kwargs)


@contextmanager
def timed_fakes() -> Iterator[pytest.MonkeyPatch]:
    """Fakes started inside this block create TimedJobs and listen with a wide backlog: real Discord and fal
    never drop connection attempts, but a burst of new connections overflows aiohttp's 128 and TCP then
    retransmits the SYN 1 s, 3 s, 7 s later — a fake's artifact, not the bot's."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(fake_fal, "FakeJob", TimedJob)
        patch.setattr(web, "TCPSite", WideTCPSite)
        yield patch


def jittered(script: JobScript, count: int, jitter: float, seed: int = 7) -> list[JobScript]:
    """`count` copies of `script` with step_seconds spread uniformly over ±jitter/2 (seeded), so the jobs
    don't all change state at the same moment."""
    rng = random.Random(seed)
    step = script.step_seconds
    return [replace(script, step_seconds=step + jitter * (rng.random() - 0.5)) for _ in range(count)]


@asynccontextmanager
async def started_fal(scripts: list[JobScript], *, ping_interval: float) -> AsyncIterator[FakeFal]:
    """A FakeFal whose jobs take `scripts` in submit order (then the last one)."""
    async with FakeFal(key=FAL_KEY, ping_interval=ping_interval) as fal:
        for script in scripts:
            fal.add_script(script)
        fal.default_script = scripts[-1]
        yield fal


def bench_prompt(phase: str, index: int) -> str:
    """A prompt that identifies its job in fal's input, in status texts and in the result message."""
    return f"bench {phase} job {index:05d} make it blue"


def kontext_payload(discord: FakeDiscord, prompt: str, image: Json, user_id: int, channel_id: int) -> Json:
    """INTERACTION_CREATE for `/kontext prompt image1`, shaped like tests.harness.Harness.kontext."""
    options: list[Json] = [
        {"name": "prompt", "type": 3, "value": prompt},
        {"name": "image1", "type": 11, "value": image["id"]},
    ]
    return discord.slash("kontext", options, attachments=[image], user_id=user_id, channel_id=channel_id)
