"""The runs: the real bot against the fakes (SSE, polling, load), fal's official client, and a cold start."""

from __future__ import annotations

import asyncio
import contextlib
import re
import tempfile
from collections import Counter
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import fal_client
import fal_client.client

from bench.metrics import CpuReport, RssReport, RssSampler, cpu_accounting, tcp_connections
from bench.world import (
    FAL_KEY,
    RunningBot,
    Startup,
    add_users,
    bench_prompt,
    bench_settings,
    input_image,
    jittered,
    kontext_payload,
    port_of,
    running_bot,
    started_fal,
    timed_fakes,
)
from bot.jobs import JobState
from tests.fakes.fake_discord import FakeDiscord
from tests.fakes.fake_fal import FakeFal, JobScript, Recorded

ENDPOINT = "fal-ai/flux-pro/kontext/max/multi"
STALL_SECONDS = 20.0  # no request to either fake for this long: the run is stuck, stop waiting
MONITOR_SECONDS = 0.25
TCP_EVERY = 4  # monitor ticks between reads of /proc/net/tcp (a few ms each with ~1000 sockets)
SETTLE_SECONDS = 0.5
_CALLBACK = re.compile(r"/interactions/\d+/(?P<token>[^/]+)/callback")


@dataclass(frozen=True)
class PhaseSpec:
    """One run of the real bot: how many /kontext, how fast, and how the fakes behave."""

    name: str  # a word: it is part of every prompt
    jobs: int
    script: JobScript  # each job gets it with step_seconds jittered by ±jitter/2
    dispatch_rate: float  # interactions per second
    jitter: float = 1.0
    use_stream: bool = True
    poll_interval: float = 1.0
    edit_interval: float = 1.5
    edit_rate: tuple[int, float] = (5, 5.0)
    ping_interval: float = 1.0
    fal_connections: int | None = None  # None: the production connector (bot.__main__.fal_connector)
    sample: bool = False  # book event-loop CPU to its owners (fakes / bot) during the jobs


@dataclass
class Peaks:
    active_jobs: int = 0  # JobRunner tasks (jobs fal accepted, not yet finished)
    open_streams: int = 0  # SSE connections open at the fake fal
    unfinished_at_fal: int = 0  # fal jobs not COMPLETED
    discord_connections: int = 0  # ESTABLISHED TCP connections to the fake Discord (discord.py's pool)
    fal_connections: int = 0  # ... and to the fake fal (the bot's aiohttp session)


@dataclass
class PhaseResult:
    spec: PhaseSpec
    discord: FakeDiscord
    fal: FakeFal
    startup: Startup
    prompts: list[str]
    token_of: dict[str, str] = field(default_factory=dict)  # interaction token by prompt
    dispatched_at: dict[str, float] = field(default_factory=dict)  # loop time of INTERACTION_CREATE by prompt
    states: Counter[str] = field(default_factory=Counter)  # stored jobs by state at the end
    wall: float = 0.0  # first dispatch → settled
    stalled: bool = False
    peaks: Peaks = field(default_factory=Peaks)
    memory: RssReport | None = None
    cpu: CpuReport | None = None


async def run_phase(spec: PhaseSpec) -> PhaseResult:
    """Start fresh fakes and a fresh bot, send `spec.jobs` /kontext, wait until all settled, stop."""
    with timed_fakes(), tempfile.TemporaryDirectory(prefix="kontext-bench-") as tmp:
        async with _world(spec, Path(tmp)) as (discord, fal, running):
            return await _drive(spec, discord, fal, running)


async def _drive(spec: PhaseSpec, discord: FakeDiscord, fal: FakeFal, running: RunningBot) -> PhaseResult:
    result = PhaseResult(spec, discord, fal, running.startup, [bench_prompt(spec.name, i) for i in range(spec.jobs)])
    users = add_users(discord, spec.jobs)
    loop = asyncio.get_running_loop()
    monitor = asyncio.create_task(_monitor(running, discord, fal, result.peaks))
    rss = RssSampler()
    rss.start()
    started = loop.time()
    try:
        with _accounting(spec.sample) as cpu:
            result.token_of, result.dispatched_at = await _dispatch(discord, result.prompts, users, spec.dispatch_rate)
            result.stalled = await _wait_settled(running, discord, fal, spec.jobs)
    finally:
        monitor.cancel()
    result.wall = loop.time() - started
    await asyncio.sleep(SETTLE_SECONDS)  # let the last "✅ Done" edits land
    result.memory, result.cpu = rss.stop(), (cpu[0] if cpu else None)
    result.states = await _states(running)
    return result


def _accounting(enabled: bool) -> contextlib.AbstractContextManager[list[CpuReport]]:
    return cpu_accounting() if enabled else contextlib.nullcontext([])


@asynccontextmanager
async def _world(spec: PhaseSpec, tmp: Path) -> AsyncIterator[tuple[FakeDiscord, FakeFal, RunningBot]]:
    async with (
        FakeDiscord(edit_rate=spec.edit_rate) as discord,
        started_fal(jittered(spec.script, spec.jobs, spec.jitter), ping_interval=spec.ping_interval) as fal,
    ):
        settings = bench_settings(
            fal, discord, tmp / "kontext.sqlite3", use_status_stream=spec.use_stream,
            poll_interval_seconds=spec.poll_interval, status_edit_interval_seconds=spec.edit_interval,
        )  # fmt: skip
        async with running_bot(settings, discord, fal_connections=spec.fal_connections) as running:
            yield discord, fal, running


async def _dispatch(
    discord: FakeDiscord, prompts: list[str], users: list[int], rate: float
) -> tuple[dict[str, str], dict[str, float]]:
    """Send one /kontext per prompt (each from its own user) on a fixed schedule of `rate` per second."""
    loop = asyncio.get_running_loop()
    image = input_image(discord)
    token_of: dict[str, str] = {}
    dispatched_at: dict[str, float] = {}
    start = loop.time()
    for index, (prompt, user_id) in enumerate(zip(prompts, users, strict=True)):
        delay = start + index / rate - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        payload = kontext_payload(discord, prompt, image, user_id)
        token_of[prompt] = payload["token"]
        dispatched_at[prompt] = loop.time()
        await discord.interact(payload)
    return token_of, dispatched_at


class Callbacks:
    """Interaction callbacks FakeDiscord received so far, read incrementally."""

    def __init__(self, discord: FakeDiscord) -> None:
        self._discord = discord
        self._seen = 0
        self.answered: set[str] = set()  # tokens with any callback attempt
        self.accepted = 0  # callbacks answered 200 that are not ephemeral: each is a job being launched

    def update(self) -> None:
        records = self._discord.requests
        for rec in records[self._seen :]:
            match = _CALLBACK.fullmatch(rec.path)
            if match is None:
                continue
            self.answered.add(match["token"])
            ephemeral = isinstance(rec.json, dict) and (rec.json.get("data") or {}).get("flags", 0) & 64
            self.accepted += rec.status == 200 and not ephemeral
        self._seen = len(records)


async def _wait_settled(running: RunningBot, discord: FakeDiscord, fal: FakeFal, jobs: int) -> bool:
    """Wait until every interaction was answered, every launched job is stored and finished, and the runner
    is idle; True if the run stalled instead (no request to either fake for STALL_SECONDS)."""
    loop = asyncio.get_running_loop()
    callbacks = Callbacks(discord)
    seen, last_change = -1, loop.time()
    while True:
        callbacks.update()
        states = await _states(running)
        finished = sum(n for state, n in states.items() if JobState(state).finished)
        launched = len(callbacks.answered) >= jobs and finished >= callbacks.accepted
        if launched and running.bot.runner.active == 0:
            return False
        activity = len(discord.requests) + len(fal.requests)
        if activity != seen:
            seen, last_change = activity, loop.time()
        elif loop.time() - last_change > STALL_SECONDS:
            return True
        await asyncio.sleep(0.2)


async def _states(running: RunningBot) -> Counter[str]:
    async with running.store.db.execute("SELECT state, COUNT(*) FROM jobs GROUP BY state") as cursor:
        return Counter({str(row[0]): int(row[1]) for row in await cursor.fetchall()})


async def _monitor(running: RunningBot, discord: FakeDiscord, fal: FakeFal, peaks: Peaks) -> None:
    ports = port_of(discord.base_url), port_of(fal.base_url)
    seen, tick = 0, 0
    streams: list[Recorded] = []  # SSE requests still open (Recorded.status stays 0 until answered)
    while True:
        tick += 1
        peaks.active_jobs = max(peaks.active_jobs, running.bot.runner.active)
        streams = [rec for rec in streams if rec.status == 0]
        streams += [rec for rec in fal.requests[seen:] if rec.kind == "stream" and rec.status == 0]
        seen = len(fal.requests)
        peaks.open_streams = max(peaks.open_streams, len(streams))
        unfinished = sum(1 for job in fal.jobs.values() if job.state != "COMPLETED")
        peaks.unfinished_at_fal = max(peaks.unfinished_at_fal, unfinished)
        if tick % TCP_EVERY == 1:
            to_discord, to_fal = tcp_connections(*ports)
            peaks.discord_connections = max(peaks.discord_connections, to_discord)
            peaks.fal_connections = max(peaks.fal_connections, to_fal)
        await asyncio.sleep(MONITOR_SECONDS)


# -- fal's official Python client ------------------------------------------------------------------


@dataclass
class OfficialResult:
    fal: FakeFal
    prompts: dict[float, list[str]]  # by polling interval
    errors: list[str]  # calls that raised


async def run_official(
    intervals: list[float], jobs: int, script: JobScript, *, stagger: float, jitter: float
) -> OfficialResult:
    """fal_client.AsyncClient.subscribe (polling; it never uses SSE) against a FakeFal with the same script.

    on_queue_update is given, as a bot showing queue positions would: subscribe then polls /status until
    COMPLETED, and handle.get() polls once more before fetching the result."""
    with timed_fakes() as patch:
        async with started_fal(jittered(script, jobs * len(intervals), jitter), ping_interval=1.0) as fal:
            patch.setattr(fal_client.client, "QUEUE_URL_FORMAT", fal.base_url + "/")
            client = fal_client.AsyncClient(key=FAL_KEY)
            prompts = {iv: [bench_prompt(f"official{round(iv * 1000)}ms", i) for i in range(jobs)] for iv in intervals}
            calls = [
                _later(i * stagger / jobs, _subscribe(client, prompt, interval))
                for interval in intervals
                for i, prompt in enumerate(prompts[interval])
            ]
            try:
                outcomes = await asyncio.gather(*calls, return_exceptions=True)
            finally:
                await (await client._client).aclose()
    errors = [f"{type(out).__name__}: {out}" for out in outcomes if isinstance(out, BaseException)]
    return OfficialResult(fal, prompts, errors)


async def _later(delay: float, call: Awaitable[Any]) -> Any:
    await asyncio.sleep(delay)
    return await call


async def _subscribe(client: Any, prompt: str, interval: float) -> Any:
    async def on_queue_update(status: Any) -> None:
        return None

    arguments = {"prompt": prompt, "image_urls": ["https://example.invalid/in.png"]}
    return await client.subscribe(
        ENDPOINT, arguments, with_logs=True, interval=interval, on_queue_update=on_queue_update
    )


# -- a cold start with discord.py's default guild_ready_timeout ---------------------------------------


async def measure_start(guild_ready_timeout: float) -> Startup:
    """Start the bot with no jobs and stop it; the timings of that start."""
    with timed_fakes(), tempfile.TemporaryDirectory(prefix="kontext-bench-") as tmp:
        async with FakeDiscord() as discord, started_fal([JobScript()], ping_interval=1.0) as fal:
            settings = bench_settings(fal, discord, Path(tmp) / "kontext.sqlite3")
            async with running_bot(settings, discord, guild_ready_timeout=guild_ready_timeout) as running:
                return running.startup
