"""Shedding load: past its bounds the bot refuses new requests at once instead of letting them expire."""

from __future__ import annotations

import asyncio
import time

from bot.overload import LoadGuard, LoopMonitor
from tests.conftest import StartBot


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
