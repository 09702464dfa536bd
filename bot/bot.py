"""The bot class: holds the shared services, loads the cogs, syncs commands, runs its gateway shards."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import aiohttp
import discord
from discord.ext import commands

from bot.config import Settings
from bot.fal import FalClient
from bot.jobs import JobRunner
from bot.store import Store

__all__ = ("REQUIRED_PERMISSIONS", "KontextBot", "invite_url")

log = logging.getLogger(__name__)

EXTENSIONS = ("cogs.launch", "cogs.triggers", "cogs.buttons", "cogs.usage", "cogs.errors")
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


def bot_intents(*, message_content: bool) -> discord.Intents:
    """Guilds and reactions (the reaction trigger); guild messages and their content only when the bot may
    read a prompt from the chat, which is all it reads messages for."""
    intents = discord.Intents.none()
    intents.guilds = True
    intents.guild_reactions = True
    intents.guild_messages = message_content
    intents.message_content = message_content
    return intents


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
        **options: Any,
    ) -> None:
        options.setdefault("intents", bot_intents(message_content=settings.message_content_intent))
        if settings.shard_ids is not None:
            options.setdefault("shard_ids", list(settings.shard_ids))
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
        self.runner = JobRunner(
            fal, store, job_timeout=settings.job_timeout_seconds, retry_seconds=settings.retry_base_seconds
        )
        self._heartbeat: asyncio.Task[None] | None = None

    async def on_message(self, message: discord.Message, /) -> None:
        """Messages are only read as answers to the reaction trigger's question (`wait_for`), never as commands."""

    async def setup_hook(self) -> None:
        for extension in EXTENSIONS:
            await self.load_extension(extension)
        await self._sync_commands()
        if self.application_id:
            log.info("invite the bot with: %s", invite_url(self.application_id))

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
        await self.runner.close()
        await super().close()
