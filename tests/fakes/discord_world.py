"""The fake Discord's world: users, guilds (with roles, members, channels), threads, DM channels, and what the bot
may do where (permissions, channels that refuse it, guilds it is not in).

Pure state and payload builders; no networking. ``FakeDiscord`` owns one ``World``.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import discord

from tests.fakes.discord_wire import (
    BOT_DM_APP_PERMS,
    BOT_PERMS,
    DM,
    EVERYONE_PERMS,
    GROUP_DM,
    PRIVATE_CHANNEL_APP_PERMS,
    PRIVATE_TYPES,
    THREAD_TYPES,
    ApiError,
    Json,
    access_error,
    iso,
    snowflake,
    user_object,
)

# What a refusal takes away from the bot in app_permissions (and in the bot role's overwrite on the channel).
_VIEW = discord.Permissions(view_channel=True).value
_WRITE = discord.Permissions(
    send_messages=True,
    send_messages_in_threads=True,
    create_public_threads=True,
    create_private_threads=True,
    add_reactions=True,
    attach_files=True,
    embed_links=True,
    read_message_history=True,
).value
REFUSAL_DENIES = {50001: _VIEW, 50013: _WRITE}
JOINED_AT = iso(1_700_000_000)


class Snowflakes:
    """Monotonic snowflake ids; ``at`` pins the timestamp part (for interactions created in the past)."""

    def __init__(self) -> None:
        self._counter = itertools.count(1)
        self._last = 0

    def new(self, at: datetime | None = None) -> int:
        increment = next(self._counter)
        if at is not None:
            return snowflake(at.timestamp(), increment)
        self._last = max(self._last + 1, snowflake(time.time(), increment))
        return self._last

    def on_shard(self, shard: int, shard_count: int) -> int:
        """A fresh id whose ``(id >> 22) % shard_count == shard`` (it moves the timestamp by < shard_count ms)."""
        base = self.new()
        millis = base >> 22
        millis += (shard - millis) % shard_count
        self._last = max(self._last, millis << 22 | 0x3FFFFF)
        return millis << 22 | (base & 0x3FFFFF)


@dataclass
class FakeGuild:
    """A guild of the fake world. ``bot_member=False``: only users installed the app; the gateway never announces
    it and the bot's REST calls about it answer 403 Missing Access."""

    id: int
    name: str
    owner_id: int
    roles: dict[int, Json]
    members: dict[int, Json]
    channel_ids: list[int] = field(default_factory=list)
    bot_member: bool = True
    locale: str = "en-US"
    bot_role_id: int | None = None
    text_channel_id: int = 0  # its first text channel

    def partial(self) -> Json:
        """The ``guild`` object Discord puts in interactions."""
        return {"id": str(self.id), "locale": self.locale, "features": []}


def role_object(role_id: int, name: str, permissions: int, position: int, *, managed: bool = False) -> Json:
    return {
        "id": str(role_id),
        "name": name,
        "permissions": str(permissions),
        "position": position,
        "color": 0,
        "hoist": False,
        "managed": managed,
        "mentionable": False,
        "flags": 0,
    }


def member_object(user: Json, roles: list[int]) -> Json:
    return {
        "user": user,
        "roles": [str(r) for r in roles],
        "flags": 0,
        "joined_at": JOINED_AT,
        "deaf": False,
        "mute": False,
        "nick": None,
        "avatar": None,
        "pending": False,
    }


class World:
    """Users, guilds and channels. Channel ids are unique across guilds, threads and DMs."""

    def __init__(self, ids: Snowflakes, bot_user_id: int) -> None:
        self.ids = ids
        self.bot_user_id = bot_user_id
        self.users: dict[int, Json] = {}
        self.guilds: dict[int, FakeGuild] = {}
        self.channels: dict[int, Json] = {}  # every channel, thread and DM channel that exists
        self.threads: dict[int, Json] = {}
        self.refusals: dict[int, int] = {}  # channel id -> 50001 / 50013 for the bot's REST calls
        self.removed_channels: dict[int, Json] = {}
        self.private_members: dict[int, list[int]] = {}  # DM / group DM channel id -> user ids, bot included

    # ------------------------------------------------------------------------------------- users

    def add_user(self, user_id: int, name: str, *, bot: bool = False) -> Json:
        self.users[user_id] = user_object(user_id, name, bot=bot)
        return self.users[user_id]

    # ------------------------------------------------------------------------------------ guilds

    def add_guild(
        self,
        guild_id: int,
        name: str,
        owner_id: int,
        *,
        member_ids: list[int],
        bot_member: bool = True,
        bot_role_id: int | None = None,
        locale: str = "en-US",
    ) -> FakeGuild:
        """A guild with @everyone, the bot's managed role (if the bot is a member) and ``member_ids`` as members."""
        roles = {guild_id: role_object(guild_id, "@everyone", EVERYONE_PERMS, 0)}
        members = {uid: member_object(self.users[uid], []) for uid in member_ids if uid != self.bot_user_id}
        guild = FakeGuild(guild_id, name, owner_id, roles, members, bot_member=bot_member, locale=locale)
        if bot_member:
            guild.bot_role_id = bot_role_id or self.ids.new()
            roles[guild.bot_role_id] = role_object(guild.bot_role_id, "Kontext", BOT_PERMS, 2, managed=True)
            members[self.bot_user_id] = member_object(self.users[self.bot_user_id], [guild.bot_role_id])
        self.guilds[guild_id] = guild
        return guild

    def add_role(
        self, guild: FakeGuild, role_id: int, name: str, permissions: int, members: list[int], *, position: int
    ) -> None:
        guild.roles[role_id] = role_object(role_id, name, permissions, position)
        for user_id in members:
            guild.members[user_id]["roles"].append(str(role_id))

    def guild_or_error(self, guild_id: int, *, for_bot: bool = True) -> FakeGuild:
        guild = self.guilds.get(guild_id)
        if guild is None:
            raise ApiError(404, 10004, "Unknown Guild")
        if for_bot and not guild.bot_member:
            raise access_error(50001)
        return guild

    def guild_of(self, channel: Json) -> FakeGuild | None:
        guild_id = channel.get("guild_id")
        return self.guilds.get(int(guild_id)) if guild_id else None

    def guild_payload(self, guild: FakeGuild) -> Json:
        """The full guild object as sent in GUILD_CREATE."""
        channels = [self.channels[c] for c in guild.channel_ids if c in self.channels]
        threads = [t for t in self.threads.values() if t.get("guild_id") == str(guild.id)]
        return {
            **self._guild_fields(guild),
            "channels": channels,
            "threads": threads,
            "members": list(guild.members.values()),
            "member_count": len(guild.members),
            "large": False,
            "unavailable": False,
            "joined_at": JOINED_AT,
            "voice_states": [],
            "presences": [],
            "stage_instances": [],
            "guild_scheduled_events": [],
            "soundboard_sounds": [],
        }

    def guild_rest_payload(self, guild: FakeGuild) -> Json:
        """GET /guilds/{id}: the guild without the gateway-only lists."""
        return self._guild_fields(guild)

    @staticmethod
    def _guild_fields(guild: FakeGuild) -> Json:
        return {
            "id": str(guild.id),
            "name": guild.name,
            "owner_id": str(guild.owner_id),
            "icon": None,
            "features": [],
            "roles": list(guild.roles.values()),
            "emojis": [],
            "stickers": [],
            "preferred_locale": guild.locale,
            "premium_tier": 0,
            "verification_level": 0,
            "default_message_notifications": 0,
            "explicit_content_filter": 0,
            "mfa_level": 0,
            "nsfw_level": 0,
            "system_channel_flags": 0,
        }

    # ---------------------------------------------------------------------------------- channels

    def add_channel(self, guild: FakeGuild, channel_id: int, name: str, kind: int = 0, *, nsfw: bool = False) -> Json:
        channel = self.channel_object(guild.id, channel_id, name, kind, len(guild.channel_ids), nsfw=nsfw)
        self.channels[channel_id] = channel
        guild.channel_ids.append(channel_id)
        if kind == 0 and not guild.text_channel_id:
            guild.text_channel_id = channel_id
        return channel

    @staticmethod
    def channel_object(guild_id: int, channel_id: int, name: str, kind: int, position: int, *, nsfw: bool) -> Json:
        return {
            "id": str(channel_id),
            "type": kind,
            "guild_id": str(guild_id),
            "name": name,
            "position": position,
            "permission_overwrites": [],
            "nsfw": nsfw,
            "topic": None,
            "rate_limit_per_user": 0,
            "parent_id": None,
            "last_message_id": None,
            "flags": 0,
        }

    def thread_object(self, parent: Json, thread_id: int, name: str, kind: int, owner_id: int, **extra: Any) -> Json:
        archive = int(extra.pop("auto_archive_duration", None) or 1440)
        base = self.channel_object(int(parent["guild_id"]), thread_id, name, kind, 0, nsfw=parent.get("nsfw", False))
        base.pop("permission_overwrites")  # threads take their parent's
        return {
            **base,
            "parent_id": parent["id"],
            "owner_id": str(owner_id),
            "message_count": 0,
            "total_message_sent": 0,
            "member_count": 1,
            "applied_tags": [],
            "thread_metadata": {
                "archived": False,
                "auto_archive_duration": archive,
                "archive_timestamp": iso(),
                "locked": False,
                "create_timestamp": iso(),
            },
            **extra,
        }

    def store_thread(self, thread: Json) -> None:
        thread_id = int(thread["id"])
        self.threads[thread_id] = self.channels[thread_id] = thread

    def dm_channel(self, user_ids: list[int]) -> Json:
        """The DM (two users) or group DM between ``user_ids``; the same ids give the same channel. ``recipients``
        lists everyone but the bot, as the bot sees it."""
        wanted = sorted(set(user_ids))
        for channel_id, members in self.private_members.items():
            if members == wanted and channel_id in self.channels:
                return self.channels[channel_id]
        channel_id = self.ids.new()
        recipients = [self.users[u] for u in wanted if u != self.bot_user_id]
        kind = DM if len(wanted) == 2 else GROUP_DM
        channel: Json = {"id": str(channel_id), "type": kind, "last_message_id": None, "flags": 0}
        channel["recipients"] = recipients
        self.channels[channel_id] = channel
        self.private_members[channel_id] = wanted
        return channel

    def channel(self, channel_id: int) -> Json:
        if (channel := self.channels.get(channel_id)) is None:
            raise access_error(10003)
        return channel

    def partial_channel(self, channel: Json, permissions: int) -> Json:
        """The partial channel of interactions from guilds the bot is not in (receiving-and-responding.mdx)."""
        keys = ("id", "name", "type", "guild_id", "position", "nsfw", "parent_id", "flags", "rate_limit_per_user")
        partial = {k: channel[k] for k in keys if k in channel}
        partial.update(topic=channel.get("topic"), last_message_id=channel.get("last_message_id"))
        partial["permissions"] = str(permissions)
        if "thread_metadata" in channel:
            partial["thread_metadata"] = channel["thread_metadata"]
        return partial

    def remove_channel(self, channel_id: int) -> Json:
        channel = self.channel(channel_id)
        del self.channels[channel_id]
        self.threads.pop(channel_id, None)
        self.removed_channels[channel_id] = channel
        return channel

    # ------------------------------------------------------------------------- bot access and perms

    def refuse(self, channel_id: int, code: int) -> None:
        """Make the bot's REST calls on the channel (and its threads) answer 403 ``code``; the bot role gets a
        matching deny overwrite so ``app_permissions`` and discord.py's own permission math agree."""
        if code not in REFUSAL_DENIES:
            raise ValueError("code must be 50001 (Missing Access) or 50013 (Missing Permissions)")
        channel = self.channel(channel_id)
        self.refusals[channel_id] = code
        guild = self.guild_of(channel)
        if guild is not None and guild.bot_role_id and "permission_overwrites" in channel:
            overwrites = [o for o in channel["permission_overwrites"] if o["id"] != str(guild.bot_role_id)]
            deny = {"id": str(guild.bot_role_id), "type": 0, "allow": "0", "deny": str(REFUSAL_DENIES[code])}
            channel["permission_overwrites"] = [*overwrites, deny]

    def allow(self, channel_id: int) -> None:
        self.refusals.pop(channel_id, None)
        channel = self.channels.get(channel_id) or {}
        guild = self.guild_of(channel) if channel else None
        if guild is not None and "permission_overwrites" in channel:
            kept = [o for o in channel["permission_overwrites"] if o["id"] != str(guild.bot_role_id)]
            channel["permission_overwrites"] = kept

    def check_bot_access(self, channel_id: int) -> Json:
        """The channel, or the error Discord gives the bot for it: 10003 gone, 403 refused / not its guild / not
        its DM."""
        channel = self.channel(channel_id)
        for link in self._channel_chain(channel):
            if (code := self.refusals.get(int(link["id"]))) is not None:
                raise access_error(code)
        guild = self.guild_of(channel)
        if guild is not None and not guild.bot_member:
            raise access_error(50001)
        if channel["type"] in PRIVATE_TYPES and not self.bot_is_recipient(channel):
            raise access_error(50001)
        return channel

    def bot_is_recipient(self, channel: Json) -> bool:
        return self.bot_user_id in self.private_members.get(int(channel["id"]), [])

    def _channel_chain(self, channel: Json) -> list[Json]:
        """The channel and, for a thread, its parent."""
        parent_id = channel.get("parent_id")
        if channel["type"] in THREAD_TYPES and parent_id and (parent := self.channels.get(int(parent_id))):
            return [channel, parent]
        return [channel]

    def permissions(self, guild: FakeGuild, user_id: int, channel: Json | None = None) -> int:
        """Guild permissions of the member, with the channel's (or a thread's parent's) overwrites applied."""
        if user_id == guild.owner_id:
            return discord.Permissions.all().value
        roles = [str(guild.id), *guild.members[user_id]["roles"]]
        value = 0
        for role_id in roles:
            value |= int(guild.roles[int(role_id)]["permissions"])
        if value & discord.Permissions(administrator=True).value:
            return discord.Permissions.all().value
        if channel is not None:
            value = self._apply_overwrites(value, self._channel_chain(channel)[-1], roles, user_id)
        return value

    @staticmethod
    def _apply_overwrites(value: int, channel: Json, roles: list[str], user_id: int) -> int:
        overwrites = {o["id"]: o for o in channel.get("permission_overwrites", [])}
        for target in [roles[0], *roles[1:], str(user_id)]:  # @everyone, then roles, then the member
            if (overwrite := overwrites.get(target)) is not None:
                value = value & ~int(overwrite["deny"]) | int(overwrite["allow"])
        return value

    def app_permissions(self, channel: Json) -> int:
        """``app_permissions`` of an interaction from ``channel``."""
        if channel["type"] in PRIVATE_TYPES:
            return BOT_DM_APP_PERMS if self.bot_is_recipient(channel) else PRIVATE_CHANNEL_APP_PERMS
        guild = self.guild_of(channel)
        if guild is None or not guild.bot_member:
            return PRIVATE_CHANNEL_APP_PERMS  # undocumented for guilds without the bot; the private-channel value
        value = self.permissions(guild, self.bot_user_id, channel)
        for link in self._channel_chain(channel):
            value &= ~REFUSAL_DENIES.get(self.refusals.get(int(link["id"]), 0), 0)
        return value
