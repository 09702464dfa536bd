"""Shedding load: past its bounds the bot refuses new requests at once instead of letting them expire."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import discord
import pytest
from discord.gateway import DiscordWebSocket

import bot.bot as bot_module
from bot.overload import LoadGuard, LoopMonitor
from tests.conftest import StartBot
from tests.fakes.fake_discord import FakeDiscord


async def test_the_monitor_sees_a_blocked_loop_and_forgets_it_later():
    monitor = LoopMonitor(interval=0.01, window=0.2)
    monitor.start()
    try:
        await asyncio.sleep(0.05)
        assert monitor.lag < 0.1
        time.sleep(0.3)  # noqa: ASYNC251  # the point: block the loop as a CPU-bound burst would
        await asyncio.sleep(0.02)
        assert monitor.lag >= 0.25
        await asyncio.sleep(0.4)
        assert monitor.lag < 0.1
    finally:
        monitor.stop()


def test_the_guard_refuses_past_its_bounds_and_counts_it():
    monitor = LoopMonitor()
    guard = LoadGuard(monitor, max_admitting=1, max_lag=0.25)

    assert guard.busy_for() is None
    with guard.admission():
        assert guard.busy_for() == 5
    assert guard.busy_for() is None and guard.shed == 1


async def test_a_request_past_the_admission_bound_is_told_to_come_back_and_costs_nothing(start_bot: StartBot):
    async with start_bot(max_admitting=1) as harness:
        harness.discord.delay_next("POST", r"/interactions/\d+/[^/]+/callback", 1.0)  # the first answer is slow
        first = await harness.kontext("first")
        await harness.discord.wait_until(lambda: harness.bot.load_guard.admitting == 1)

        await harness.kontext("second")
        await harness.discord.wait_until(lambda: bool(harness.ephemeral_replies()))

        assert "very busy right now" in harness.ephemeral_replies()[0] and "about 5 s" in harness.ephemeral_replies()[0]
        assert "✅ Done" in await harness.final_status(first["token"])
        assert harness.fal.count("submit") == 1 and harness.bot.load_guard.shed == 1


async def test_a_heartbeat_acked_before_its_sender_resumes_measures_the_round_trip(
    start_bot: StartBot, fake_discord: FakeDiscord, monkeypatch: pytest.MonkeyPatch
):
    """discord.py 2.7.1 records a heartbeat's send time on its keep-alive thread once the send is done. On a
    busy loop that thread resumes late, the ACK of a fast gateway is handled first, and the latency is the whole
    interval ("Can't keep up, websocket is 41.3s behind" in the bench; the health check stops beating). Here
    the thread resumes 50 ms after each send, heartbeats go every 0.2 s: the latency must stay a round trip."""
    send_heartbeat = DiscordWebSocket.send_heartbeat

    async def resumed_late(self: DiscordWebSocket, data: Any) -> None:
        await send_heartbeat(self, data)
        await asyncio.sleep(0.05)  # the ACK arrives and is handled meanwhile

    monkeypatch.setattr(DiscordWebSocket, "send_heartbeat", resumed_late)
    fake_discord.gateway.heartbeat_interval_ms = 200
    async with start_bot() as harness:
        latencies = []
        for _ in range(200):
            await asyncio.sleep(0.01)
            latencies.append(harness.bot.latency)

    assert sum(frame.get("op") == 1 for frame in fake_discord.gateway_frames) >= 8
    assert max(latency for latency in latencies if latency != float("inf")) < 0.1


@pytest.mark.parametrize("bound", [2, 5])
async def test_connections_to_discord_stay_within_the_bound_however_many_requests_wait(
    start_bot: StartBot, fake_discord: FakeDiscord, bound: int
):
    """discord.py's own pool has no bound: with Discord slow to answer, every waiting request opened a
    connection of its own (about 290 under the load bench). Twenty answers held 0.2 s each queue on the bound
    instead (plus the gateway's connection) and still all leave within Discord's 3 s."""
    async with start_bot(discord_max_connections=bound, max_concurrent_jobs_per_user=20) as harness:
        fake_discord.peak_connections = 0
        for _ in range(20):
            fake_discord.delay_next("POST", r"/interactions/\d+/[^/]+/callback", 0.2)

        await asyncio.gather(*(harness.kontext(f"n{i}") for i in range(20)))
        await fake_discord.wait_until(lambda: len(fake_discord.callbacks()) == 20, 10)
        await harness.finish_jobs()

        assert 1 < fake_discord.peak_connections <= bound + 1  # + the gateway's
        assert [callback.status for callback in fake_discord.callbacks()] == [200] * 20  # none refused as late
        assert not harness.ephemeral_replies()


async def test_idle_rate_limit_buckets_are_dropped_on_the_next_sweep(
    start_bot: StartBot, monkeypatch: pytest.MonkeyPatch
):
    """discord.py keeps each job's buckets (its result thread's, ...) 300 s: at 50 jobs/s that was ~20 MB of RSS
    growth during the soak. A sweep (at most every RATE_LIMIT_SWEEP_SECONDS) drops every idle one."""
    monkeypatch.setattr(bot_module, "RATE_LIMIT_SWEEP_SECONDS", 0.0)
    monkeypatch.setattr(bot_module, "RATE_LIMIT_IDLE_SECONDS", 0.2)
    async with start_bot(max_concurrent_jobs_per_user=10) as harness:
        await asyncio.gather(*(harness.kontext(f"n{i}") for i in range(6)))
        await harness.discord.wait_until(lambda: harness.fal.count("submit") == 6)
        await harness.finish_jobs()
        before = dict(harness.bot.http._buckets)
        await asyncio.sleep(0.3)
        pause_ended = asyncio.get_running_loop().time()

        await harness.kontext("one more")  # makes new buckets, which sweeps
        await harness.discord.wait_until(lambda: harness.fal.count("submit") == 7)
        await harness.finish_jobs()

        assert len(before) >= 6  # a thread of its own for each job's results
        survivors = harness.bot.http._buckets.values()
        assert all(bucket._last_request >= pause_ended for bucket in survivors)
        assert not any(bucket in before.values() for bucket in survivors if bucket._last_request < pause_ended)


async def test_only_an_exhausted_bucket_is_kept_however_idle(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(bot_module, "RATE_LIMIT_IDLE_SECONDS", 0.0)
    http = discord.http.HTTPClient(asyncio.get_running_loop())
    exhausted, spare, past = (http.get_ratelimit(key) for key in ("exhausted", "spare", "past"))
    now = asyncio.get_running_loop().time()
    exhausted.remaining, exhausted.expires = 0, now + 60  # Discord said: nothing more for a minute
    spare.remaining, spare.expires = 3, now + 60  # three more this minute: a new bucket learns that again
    past.remaining, past.expires = 0, now - 1  # the window is over
    await asyncio.sleep(0.01)

    bot_module.drop_idle_buckets(http)

    assert list(http._buckets) == ["exhausted"]
