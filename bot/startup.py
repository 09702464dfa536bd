"""Starting without a network: Discord and fal that cannot be reached yet are waited for, one line per try.

A wrong token still stops the bot at once (`discord.LoginFailure` is not retried); a wrong fal key is
logged once as an error, and the bot runs on (its jobs then fail with a clear message).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import aiohttp
import discord

from bot.doctor import UNREACHABLE, FalStatus, Verdict, describe, probe_fal

__all__ = ("OneLineReconnects", "backoff", "login", "watch_fal")

log = logging.getLogger("bot")

MAX_DELAY_SECONDS = 60.0


def backoff(first: float, attempt: int) -> float:
    """`first`, doubling with each attempt (1-based), at most a minute."""
    return float(min(first * 2 ** (attempt - 1), MAX_DELAY_SECONDS))


async def login(client: discord.Client, token: str, *, first_delay: float, stop: asyncio.Event) -> bool:
    """Log in, waiting out an unreachable Discord; False when `stop` was set first."""
    attempt = 0
    while not stop.is_set():
        try:
            await client.login(token)
            return True
        except UNREACHABLE as exc:
            attempt += 1
            delay = backoff(first_delay, attempt)
            log.warning("Discord unreachable (%s); retrying in %.1fs", describe(exc), delay)
            await _drop_session(client)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), delay)
    return False


async def _drop_session(client: discord.Client) -> None:
    """Each login opens a session that owns its connector; close both, and give the next try a fresh
    connector with the same bound (without one discord.py would make an unbounded pool)."""
    bound = client.http.connector
    await client.http.close()
    if bound is not discord.utils.MISSING:
        client.http.connector = aiohttp.TCPConnector(limit=bound.limit)


async def watch_fal(fal: FalStatus, endpoint: str, *, where: str, first_delay: float) -> None:
    """Ask fal (for free) whether the key is accepted, until it answers; log the verdict once."""
    attempt = 0
    while (probe := await probe_fal(fal, endpoint)).verdict is Verdict.UNAVAILABLE:
        attempt += 1
        delay = backoff(first_delay, attempt)
        log.warning("fal unreachable at %s (%s); retrying in %.1fs", where, probe.detail, delay)
        await asyncio.sleep(delay)
    if probe.verdict is Verdict.ACCEPTED:
        log.info("fal at %s accepts the key", where)
    elif probe.verdict is Verdict.REFUSED:
        log.error("fal at %s refused FAL_KEY (%s); jobs fail until it is fixed (python -m bot check)", where,
                  probe.detail)  # fmt: skip
    else:
        log.warning("fal at %s answered unexpectedly (%s); python -m bot check", where, probe.detail)


RECONNECT_MESSAGES = ("Attempting a reconnect", "Failed to connect for shard_id")  # discord.client, discord.shard


class OneLineReconnects(logging.Filter):
    """discord.py logs every failed gateway (re)connect at ERROR with a traceback, though it only means the
    network is down; this makes each one a single WARNING line."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and str(record.msg).startswith(RECONNECT_MESSAGES):
            reason = describe(record.exc_info[1]) if record.exc_info[1] else "?"
            record.msg, record.args = f"{record.getMessage()} (gateway unreachable: {reason})", ()
            record.exc_info = record.exc_text = None
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True
