"""The bot class: holds the shared services, loads the cogs, syncs commands, runs its gateway shards."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Any

import aiohttp
import discord
from discord.ext import commands

from bot.community import GuildSettingsCache, UserSettingsCache
from bot.config import Settings
from bot.fal import FalClient
from bot.i18n import preload
from bot.jobs import JobRunner
from bot.metrics import Metrics, ObservedFal
from bot.overload import LoadGuard, LoopMonitor
from bot.store import Store
from bot.translator import CatalogTranslator

__all__ = ("REQUIRED_PERMISSIONS", "KontextBot", "invite_url")

log = logging.getLogger(__name__)

EXTENSIONS = (
    "cogs.launch", "cogs.triggers", "cogs.buttons", "cogs.usage", "cogs.errors", "cogs.admin", "cogs.personal",
    "cogs.history",
)  # fmt: skip
HEARTBEAT_SECONDS = 15.0
REQUIRED_PERMISSIONS = discord.Permissions(
    view_channel=True,
    send_messages=True,
    send_messages_in_threads=True,
    create_public_threads=True,
    attach_files=True,
    embed_links=True,
    read_message_history=True,
)


def invite_url(application_id: int) -> str:
    return discord.utils.oauth_url(
        application_id, permissions=REQUIRED_PERMISSIONS, scopes=("bot", "applications.commands")
    )


# Gateway events the bot never uses; with the guild messages intent on, every edit in every server (the bot's own
# status edits included) arrives as MESSAGE_UPDATE, and parsing them was a tenth of the bot's CPU under load.
# Threads are not cached either: each job makes one, and the cache would only grow (a thread is fetched when a
# job runs in one).
UNUSED_EVENTS = (
    "MESSAGE_UPDATE", "MESSAGE_DELETE", "MESSAGE_DELETE_BULK", "MESSAGE_REACTION_REMOVE",
    "MESSAGE_REACTION_REMOVE_ALL", "MESSAGE_REACTION_REMOVE_EMOJI", "MESSAGE_POLL_VOTE_ADD",
    "MESSAGE_POLL_VOTE_REMOVE", "THREAD_CREATE", "THREAD_UPDATE", "THREAD_LIST_SYNC", "THREAD_MEMBER_UPDATE",
    "THREAD_MEMBERS_UPDATE",
)  # fmt: skip


RATE_LIMIT_SWEEP_SECONDS = 10.0
RATE_LIMIT_IDLE_SECONDS = 30.0  # a status is edited every few seconds while its job runs
RATE_LIMIT_LOGGERS = ("discord.http", "discord.webhook.async_")  # where discord.py reports the 429s it waits out


def _ignore(data: Any) -> None:
    return None


def sweep_rate_limits_rarely(http: discord.http.HTTPClient) -> None:
    """discord.py keeps a rate-limit bucket 300 s after its last request, and once it has 256 it scans all of
    them each time it makes a new one. Every job makes new buckets (its interaction token, its thread): under
    load each job scanned thousands, and at 50 jobs/s they held ~20 MB (the soak's RSS grew 17 % in 10 min).
    Sweep at most every RATE_LIMIT_SWEEP_SECONDS instead, dropping buckets idle for RATE_LIMIT_IDLE_SECONDS."""
    last = float("-inf")

    def sweep_rarely() -> None:
        nonlocal last
        now = time.monotonic()
        if now - last >= RATE_LIMIT_SWEEP_SECONDS:
            last = now
            drop_idle_buckets(http)

    http._try_clear_expired_ratelimits = sweep_rarely  # type: ignore[method-assign]


def drop_idle_buckets(http: discord.http.HTTPClient) -> None:
    """Idle buckets with nothing in flight or waiting, and not exhausted: a new bucket for the same route sends
    one request and learns the rest from Discord's headers, as this one did."""
    now = asyncio.get_running_loop().time()  # the clock discord.py's Ratelimit keeps
    idle = [key for key, bucket in http._buckets.items() if _idle(bucket, now)]
    for key in idle:
        del http._buckets[key]


def _idle(bucket: discord.http.Ratelimit, now: float) -> bool:
    exhausted = bucket.remaining <= 0 and bucket.expires is not None and now <= bucket.expires
    return (
        now - bucket._last_request >= RATE_LIMIT_IDLE_SECONDS
        and bucket.outgoing == 0
        and not bucket._pending_requests
        and not bucket._sleeping.locked()  # waiting out a limit
        and not exhausted  # a new bucket would not know it must wait
    )


class _KeepAliveTimedBeforeSending(discord.gateway.KeepAliveHandler):
    """discord.py 2.7.1 notes a heartbeat's send time on its keep-alive thread once the send is done. When the
    loop handles the ACK first (a fast gateway, a busy loop), `latency` becomes the whole interval ("Can't keep
    up, ... 41.3s behind") and the health check stops beating. This notes the time before sending, as
    discord.py does since #10448 (drop it once the locked release has that)."""

    def get_payload(self) -> dict[str, Any]:
        self._last_send = time.perf_counter()
        return super().get_payload()


def time_heartbeats_before_sending() -> None:
    discord.gateway.KeepAliveHandler = _KeepAliveTimedBeforeSending  # type: ignore[misc]  # looked up per HELLO


def bot_intents(*, message_content: bool) -> discord.Intents:
    """Guilds and reactions (the reaction trigger); guild messages and their content only when the bot may
    read a prompt from the chat, which is all it reads messages for."""
    intents = discord.Intents.none()
    intents.guilds = True
    intents.guild_reactions = True
    intents.guild_messages = message_content
    intents.message_content = message_content
    return intents


def discord_connector(settings: Settings) -> aiohttp.TCPConnector:
    """discord.py's pool for REST and the gateway: DISCORD_MAX_CONNECTIONS plus one per shard of this process
    (its default has no bound: hundreds of connections under load)."""
    shards = len(settings.shard_ids) if settings.shard_ids is not None else settings.shard_count
    return aiohttp.TCPConnector(limit=settings.discord_max_connections + shards)


class KontextBot(commands.AutoShardedBot):
    """Services are made once in `__main__` and handed in; cogs read them from here.

    Runs the gateway shards SHARD_IDS (default: all) of SHARD_COUNT (default: 1, one connection as an
    unsharded bot has). Several processes, each with its own shards, share one PostgreSQL store.
    """

    def __init__(
        self,
        *,
        settings: Settings,
        session: aiohttp.ClientSession,
        fal: FalClient,
        store: Store,
        metrics: Metrics | None = None,
        **options: Any,
    ) -> None:
        self.metrics = metrics or Metrics()
        options.setdefault("intents", bot_intents(message_content=settings.message_content_intent))
        options.setdefault("max_messages", None)  # no message cache: the bot never looks a message up in it
        if settings.shard_ids is not None:
            options.setdefault("shard_ids", list(settings.shard_ids))
        options.setdefault("connector", discord_connector(settings))
        super().__init__(
            shard_count=settings.shard_count,
            command_prefix=(),  # no text commands: everything is an app command
            help_command=None,
            allowed_mentions=discord.AllowedMentions.none(),
            **options,
        )
        self.settings = settings
        self.session = session
        self.fal = fal
        self.store = store
        self.guild_settings = GuildSettingsCache(settings)  # each server's /kontext-admin settings (cogs/admin.py)
        self.user_settings = UserSettingsCache()  # each user's /kontext-settings defaults (cogs/personal.py)
        self.runner = JobRunner(
            ObservedFal(fal, self.metrics), store, job_timeout=settings.job_timeout_seconds,
            retry_seconds=settings.retry_base_seconds, observer=self.metrics,
        )  # fmt: skip
        self._heartbeat: asyncio.Task[None] | None = None
        self.loop_monitor = LoopMonitor()
        self._rate_limits = self.metrics.rate_limit_counter()
        self.load_guard = LoadGuard(
            self.loop_monitor, max_admitting=settings.max_admitting, max_lag=settings.max_loop_lag_seconds
        )

    def _parse_only_what_is_used(self) -> None:
        """Skip discord.py's parsing of unused events, and of new messages while no one waits for an answer
        (the reaction trigger's question is the only reader of messages)."""
        parsers = self._connection.parsers
        for event in UNUSED_EVENTS:
            parsers[event] = _ignore
        parse_create = parsers["MESSAGE_CREATE"]
        parsers["MESSAGE_CREATE"] = lambda data: parse_create(data) if self._listeners.get("message") else None

    async def on_message(self, message: discord.Message, /) -> None:
        """Messages are only read as answers to the reaction trigger's question (`wait_for`), never as commands."""

    async def setup_hook(self) -> None:
        self.loop_monitor.start()
        self._parse_only_what_is_used()
        time_heartbeats_before_sending()
        for name in RATE_LIMIT_LOGGERS:
            logging.getLogger(name).addFilter(self._rate_limits)
        sweep_rate_limits_rarely(self.http)
        await self._set_translator()
        for extension in EXTENSIONS:
            if extension not in self.extensions:  # a login retried after a network error runs this again
                await self.load_extension(extension)
        await self._sync_commands()
        if self.application_id:
            log.info("invite the bot with: %s", invite_url(self.application_id))

    async def _set_translator(self) -> None:
        """The catalogs, read now; the commands' localizations come from them when they are synced."""
        if self.tree.translator is None:  # a login retried after a network error runs setup_hook again
            log.info("read %d message catalog(s)", await asyncio.to_thread(preload))
            await self.tree.set_translator(CatalogTranslator())

    async def _sync_commands(self) -> None:
        if self.settings.shards is not None and 0 not in self.settings.shards.ids:
            return  # the process that runs shard 0 syncs them for every process
        guild_id = self.settings.dev_guild_id
        if guild_id is None:
            synced = await self.tree.sync()
            log.info("synced %d global command(s)", len(synced))
            return
        guild = discord.Object(guild_id)
        self.tree.copy_global_to(guild=guild)
        synced = await self.tree.sync(guild=guild)
        log.info("synced %d command(s) to dev guild %s", len(synced), guild_id)

    def gateway_connected(self) -> bool:
        """Ready, and the gateway connection is open (False while it reconnects): `/healthz`."""
        shards = self.shards.values()
        return self.is_ready() and not self.is_closed() and bool(shards) and not any(s.is_closed() for s in shards)

    async def on_ready(self) -> None:
        shards = self.settings.shards
        where = f"shard(s) {shards}" if shards else f"all {self.shard_count} shard(s)"
        log.info("ready as %s in %d guild(s) on %s", self.user, len(self.guilds), where)
        if self.settings.heartbeat_path and self._heartbeat is None:
            self._heartbeat = asyncio.create_task(self._beat(self.settings.heartbeat_path), name="heartbeat")

    async def _beat(self, path: Path) -> None:
        """Touch `path` while the gateway is connected, for the container's health check."""
        await asyncio.to_thread(path.parent.mkdir, parents=True, exist_ok=True)
        while not self.is_closed():
            if self.is_ready() and not self.is_ws_ratelimited() and self.latency < HEARTBEAT_SECONDS:
                await asyncio.to_thread(path.touch)
            await asyncio.sleep(HEARTBEAT_SECONDS)

    async def close(self) -> None:
        if self._heartbeat is not None:
            self._heartbeat.cancel()
        self.loop_monitor.stop()
        for name in RATE_LIMIT_LOGGERS:
            logging.getLogger(name).removeFilter(self._rate_limits)
        await self.runner.close()
        await super().close()
