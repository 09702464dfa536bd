"""A fake Discord on 127.0.0.1 for end-to-end tests of a real, unmodified discord.py client.

One aiohttp app serves REST under ``/api/v10``, the websocket gateway at ``/gateway/`` and attachment
bytes under ``/cdn/``. ``FakeDiscord.patch_discord`` points discord.py at it by setting
``discord.http.Route.BASE`` and ``DiscordWebSocket.DEFAULT_GATEWAY``; nothing else in discord.py is
touched. Every REST request is recorded (``FakeDiscord.requests``) and the state the bot changed
(messages, threads, synced commands) is kept for assertions. The wire formats follow what discord.py
2.7 reads, including its pitfalls (exact ``application/json`` content type, ``Via`` on 429s, ...).

Sections: records and errors / world builders / test-facing builders / REST plumbing / REST
handlers (startup, channels, interactions and webhooks) / rate limits / gateway / ``run_client``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import io
import itertools
import json
import logging
import math
import mimetypes
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Self
from urllib.parse import quote

import discord
import pytest
import yarl
from aiohttp import BodyPartReader, WSMsgType, hdrs, web
from PIL import Image

__all__ = ("FakeDiscord", "Recorded", "UploadedFile", "run_client")

log = logging.getLogger(__name__)

Json = dict[str, Any]

API_PREFIX = "/api/v10"
DISCORD_EPOCH_MS = 1_420_070_400_000
TOKEN_LIFETIME = 15 * 60.0
HEARTBEAT_INTERVAL_MS = 41_250
MAX_FILES = 10
MAX_CONTENT = 2000
DEFAULT_RETRY_AFTER = 0.1
READY_TIMEOUT = 10.0
POLL_INTERVAL = 0.02
RATE_LIMIT_BODY = "You are being rate limited."
VIA = {"Via": "1.1 google"}

# Message flags and permission values used below.
SUPPRESS_EMBEDS = 1 << 2
EPHEMERAL = 1 << 6
LOADING = 1 << 7
COMPONENTS_V2 = 1 << 15
SETTABLE_FLAGS = SUPPRESS_EMBEDS | EPHEMERAL | (1 << 12) | COMPONENTS_V2  # 1 << 12: suppress notifications
EVERYONE_PERMS = discord.Permissions(
    view_channel=True,
    send_messages=True,
    read_message_history=True,
    add_reactions=True,
    attach_files=True,
    embed_links=True,
    use_application_commands=True,
    create_public_threads=True,
    send_messages_in_threads=True,
).value
MOD_PERMS = discord.Permissions(manage_messages=True).value
BOT_PERMS = EVERYONE_PERMS | discord.Permissions(manage_threads=True, manage_messages=True).value

_CALLBACK_PATH = re.compile(r"/interactions/\d+/[^/]+/callback")
_CDN_PATH = re.compile(r"/cdn/(?:media/)?attachments/(?P<channel>\d+)/(?P<att>\d+)/[^/]+")
_USER_MENTION = re.compile(r"<@!?(\d+)>")


# --------------------------------------------------------------------------------------------------
# Records and errors
# --------------------------------------------------------------------------------------------------


@dataclass
class UploadedFile:
    """One file part of a multipart request, byte for byte."""

    field: str
    filename: str
    content_type: str
    data: bytes = dataclasses.field(repr=False)

    @property
    def size(self) -> int:
        return len(self.data)


@dataclass
class Recorded:
    """One request the fake answered. ``path`` is below ``/api/v10`` (CDN downloads keep ``/cdn/...``)."""

    method: str
    path: str
    query: dict[str, str]
    json: Any = None
    files: list[UploadedFile] = field(default_factory=list)
    status: int = 0
    time: float = 0.0


class ApiError(Exception):
    """An error answer in Discord's JSON shape, raised from anywhere inside a handler."""

    def __init__(self, status: int, code: int, message: str, *, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(f"{status} {code} {message}")
        self.status = status
        self.body: Any = {"code": code, "message": message}
        self.headers = dict(headers or {})

    def response(self) -> web.Response:
        return _json(self.body, self.status, self.headers)


def _json(body: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> web.Response:
    # Exactly "application/json": discord.py compares the header verbatim and ignores "; charset=...".
    return web.Response(status=status, body=json.dumps(body).encode(), content_type="application/json", headers=headers)


def _no_content() -> web.Response:
    return web.Response(status=204)


def _too_many(retry_after: float, headers: Mapping[str, str] | None = None) -> web.Response:
    body = {"message": RATE_LIMIT_BODY, "retry_after": retry_after, "global": False}
    return _json(body, 429, {**VIA, **(headers or {})})


def _invalid_form(message: str = "Invalid Form Body") -> ApiError:
    return ApiError(400, 50035, message)


@dataclass
class _Failure:
    method: str
    pattern: re.Pattern[str]
    status: int
    body: Any
    headers: dict[str, str]
    times: int

    def response(self) -> web.Response:
        if self.status == 429 and self.body is None:
            return _too_many(DEFAULT_RETRY_AFTER, self.headers)
        if isinstance(self.body, str):
            return web.Response(status=self.status, text=self.body, content_type="text/html", headers=self.headers)
        body = self.body if self.body is not None else {"code": 0, "message": f"{self.status}: injected failure"}
        headers = {**VIA, **self.headers} if self.status == 429 else self.headers
        return _json(body, self.status, headers)


@dataclass
class _Interaction:
    """Server-side state of one interaction token."""

    id: int
    token: str
    type: int  # 2 application command, 3 component, 5 modal submit
    message_type: int  # type of the messages it creates
    channel_id: int
    metadata: Json
    created_at: float  # epoch seconds, from the snowflake like discord.py's Interaction.created_at
    message_id: int | None = None  # the component's message, for callback types 6 and 7
    dispatched_at: float | None = None  # loop.time() of interact()
    callback_type: int | None = None
    original_id: int | None = None
    message_ids: set[int] = field(default_factory=set)

    def expired(self) -> bool:
        return time.time() >= self.created_at + TOKEN_LIFETIME


@dataclass
class _Window:
    start: float
    count: int = 0


@dataclass
class _Session:
    id: str
    seq: int = 0
    log: list[Json] = field(default_factory=list)
    ws: web.WebSocketResponse | None = None


@dataclass
class _Call:
    rec: Recorded
    params: dict[str, str]

    @property
    def body(self) -> Json:
        return self.rec.json if isinstance(self.rec.json, dict) else {}

    def id(self, name: str) -> int:
        return int(self.params[name])


_Handler = Callable[[_Call], Awaitable[web.Response]]


# --------------------------------------------------------------------------------------------------
# Small pure helpers
# --------------------------------------------------------------------------------------------------


def _snowflake(epoch_seconds: float, increment: int) -> int:
    return ((int(epoch_seconds * 1000) - DISCORD_EPOCH_MS) << 22) | (increment & 0x3FFFFF)


def _snowflake_time(snowflake: int) -> float:
    return ((snowflake >> 22) + DISCORD_EPOCH_MS) / 1000


def _iso(epoch_seconds: float | None = None) -> str:
    return datetime.fromtimestamp(time.time() if epoch_seconds is None else epoch_seconds, UTC).isoformat()


def _user(user_id: int, name: str, *, bot: bool = False) -> Json:
    user: Json = {"id": str(user_id), "username": name, "global_name": name, "discriminator": "0", "avatar": None}
    if bot:
        user["bot"] = True
    return user


def _image_size(data: bytes) -> tuple[int, int] | None:
    try:
        with Image.open(io.BytesIO(data)) as image:
            return image.size
    except Exception:  # not an image (or one Pillow cannot read): Discord then omits width/height
        return None


def _upload_index(field_name: str) -> int | None:
    match = re.fullmatch(r"files\[(\d+)\]", field_name)
    return int(match[1]) if match else None


def _embed_problem(embed: Json) -> str | None:
    fields = embed.get("fields") or []
    parts = [embed.get("title"), embed.get("description"), (embed.get("footer") or {}).get("text")]
    parts += (
        [(embed.get("author") or {}).get("name")] + [f.get("name") for f in fields] + [f.get("value") for f in fields]
    )
    if len(embed.get("title") or "") > 256 or len(embed.get("description") or "") > 4096 or len(fields) > 25:
        return "embed field too long"
    if sum(len(p or "") for p in parts) > 6000:
        return "embed size exceeds maximum size of 6000"
    return None


def _validate_message(message: Json) -> None:
    """Discord's checks on a message about to be created or after an edit."""
    if len(message["content"]) > MAX_CONTENT:
        raise _invalid_form(f"content: Must be {MAX_CONTENT} or fewer in length.")
    if len(message["embeds"]) > 10:
        raise _invalid_form("embeds: Must be 10 or fewer in length.")
    if any(problem := _embed_problem(e) for e in message["embeds"]):
        raise _invalid_form(f"embeds: {problem}")
    keys = ("content", "embeds", "attachments", "components", "poll", "sticker_items")
    if not any(message.get(key) for key in keys):
        raise ApiError(400, 50006, "Cannot send an empty message")


# --------------------------------------------------------------------------------------------------
# FakeDiscord
# --------------------------------------------------------------------------------------------------


class FakeDiscord:
    """Fake Discord REST + gateway + CDN. Use ``async with FakeDiscord() as fake: fake.patch_discord(mp)``."""

    app_id = 1_000_000_000_000_000_001
    bot_user_id = 1_000_000_000_000_000_002
    guild_id = 1_000_000_000_000_000_010
    channel_id = 1_000_000_000_000_000_020
    nsfw_channel_id = 1_000_000_000_000_000_021
    forum_channel_id = 1_000_000_000_000_000_022
    forum_or_no_thread_channel_id = forum_channel_id
    mod_role_id = 1_000_000_000_000_000_030
    bot_role_id = 1_000_000_000_000_000_031
    owner_id = 1_000_000_000_000_000_040
    other_user_id = 1_000_000_000_000_000_041
    mod_user_id = 1_000_000_000_000_000_042

    def __init__(
        self,
        *,
        ack_deadline: float = 3.0,
        attachment_size_limit: int = 10 * 1024 * 1024,
        edit_rate: tuple[int, float] = (5, 5.0),
    ) -> None:
        self.ack_deadline = ack_deadline
        self.attachment_size_limit = attachment_size_limit
        self.edit_rate = edit_rate
        self.threads_allowed = True
        self.base_url = self.api_url = self.gateway_url = ""

        self.requests: list[Recorded] = []
        self.unhandled: list[str] = []
        self.messages: dict[int, Json] = {}  # created by the bot over REST (incl. interaction responses)
        self.user_messages: dict[int, Json] = {}  # added by the test with add_message()
        self.deleted_messages: dict[int, Json] = {}
        self.threads: dict[int, Json] = {}
        self.commands: dict[int | None, list[Json]] = {}  # last sync, by guild id (None = global)
        self.identify_payloads: list[Json] = []
        self.resume_payloads: list[Json] = []
        self.gateway_frames: list[Json] = []  # everything the clients sent on the gateway
        self.rate_limited = 0
        self.ready = asyncio.Event()

        self._counter = itertools.count(1)
        self._last_id = 0
        self._command_ids: dict[tuple[int | None, str, int], int] = {}
        self._channel_log: dict[int, list[int]] = {}
        self._files: dict[int, tuple[bytes, str]] = {}  # CDN bytes and content type by attachment id
        self._attachment_objects: dict[int, Json] = {}
        self._expired_files: set[int] = set()
        self._interactions: dict[str, _Interaction] = {}
        self._failures: list[_Failure] = []
        self._delays: list[tuple[str, re.Pattern[str], float]] = []
        self._closing = asyncio.Event()
        self._windows: dict[tuple[str, str], _Window] = {}
        self._sessions: dict[str, _Session] = {}
        self._sockets: set[web.WebSocketResponse] = set()
        self._changed = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self._users, self._members, self._roles, self._channels = self._build_world()
        self._routes = self._build_routes()

    # ---------------------------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        app = web.Application(client_max_size=2**31)
        app.router.add_route("*", API_PREFIX + "/{tail:.*}", self._handle_api)
        app.router.add_get("/gateway/", self._handle_gateway)
        app.router.add_get("/cdn/{tail:.*}", self._handle_cdn)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=2.0)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        port = self._runner.addresses[0][1]
        self.base_url = f"http://127.0.0.1:{port}"
        self.api_url = self.base_url + API_PREFIX
        self.gateway_url = f"ws://127.0.0.1:{port}/gateway/"

    async def close(self) -> None:
        self._closing.set()  # ends delay_next() waits
        for ws in list(self._sockets):
            await ws.close(code=1001)
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def patch_discord(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Point discord.py's REST base and default gateway at this fake (undone by monkeypatch)."""
        monkeypatch.setattr(discord.http.Route, "BASE", self.api_url)
        monkeypatch.setattr(discord.gateway.DiscordWebSocket, "DEFAULT_GATEWAY", yarl.URL(self.gateway_url))

    # ------------------------------------------------------------------------------ world builders

    def _build_world(self) -> tuple[dict[int, Json], dict[int, Json], dict[int, Json], dict[int, Json]]:
        users = {
            self.bot_user_id: _user(self.bot_user_id, "Kontext", bot=True),
            self.owner_id: _user(self.owner_id, "owner"),
            self.other_user_id: _user(self.other_user_id, "member"),
            self.mod_user_id: _user(self.mod_user_id, "moderator"),
        }
        roles = {
            self.guild_id: self._role(self.guild_id, "@everyone", EVERYONE_PERMS, 0),
            self.mod_role_id: self._role(self.mod_role_id, "Mods", EVERYONE_PERMS | MOD_PERMS, 1),
            self.bot_role_id: self._role(self.bot_role_id, "Kontext", BOT_PERMS, 2, managed=True),
        }
        role_of = {self.mod_user_id: [self.mod_role_id], self.bot_user_id: [self.bot_role_id]}
        members = {uid: self._member(user, role_of.get(uid, [])) for uid, user in users.items()}
        channels = {
            self.channel_id: self._channel(self.channel_id, "general", 0, 0),
            self.nsfw_channel_id: self._channel(self.nsfw_channel_id, "after-dark", 0, 1, nsfw=True),
            self.forum_channel_id: self._channel(self.forum_channel_id, "gallery", 15, 2),
        }
        return users, members, roles, channels

    @staticmethod
    def _role(role_id: int, name: str, permissions: int, position: int, *, managed: bool = False) -> Json:
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

    def _member(self, user: Json, roles: list[int]) -> Json:
        return {
            "user": user,
            "roles": [str(r) for r in roles],
            "flags": 0,
            "joined_at": _iso(1_700_000_000),
            "deaf": False,
            "mute": False,
            "nick": None,
            "avatar": None,
            "pending": False,
        }

    def _channel(self, channel_id: int, name: str, kind: int, position: int, *, nsfw: bool = False) -> Json:
        return {
            "id": str(channel_id),
            "type": kind,
            "guild_id": str(self.guild_id),
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

    def _permissions(self, user_id: int) -> int:
        if user_id == self.owner_id:
            return discord.Permissions.all().value
        permissions = 0
        for role_id in [str(self.guild_id), *self._members[user_id]["roles"]]:
            permissions |= int(self._roles[int(role_id)]["permissions"])
        return permissions

    def guild_payload(self) -> Json:
        """The full guild object as sent in GUILD_CREATE."""
        return {
            "id": str(self.guild_id),
            "name": "Fake Guild",
            "owner_id": str(self.owner_id),
            "icon": None,
            "features": [],
            "roles": list(self._roles.values()),
            "emojis": [],
            "stickers": [],
            "channels": [c for c in self._channels.values() if int(c["id"]) not in self.threads],
            "threads": list(self.threads.values()),
            "members": list(self._members.values()),
            "member_count": len(self._members),
            "large": False,
            "unavailable": False,
            "joined_at": _iso(1_700_000_000),
            "preferred_locale": "en-US",
            "premium_tier": 0,
            "verification_level": 0,
            "default_message_notifications": 0,
            "explicit_content_filter": 0,
            "mfa_level": 0,
            "nsfw_level": 0,
            "system_channel_flags": 0,
            "voice_states": [],
            "presences": [],
            "stage_instances": [],
            "guild_scheduled_events": [],
            "soundboard_sounds": [],
        }

    def _app_info(self) -> Json:
        return {
            "id": str(self.app_id),
            "name": "Kontext",
            "icon": None,
            "description": "",
            "rpc_origins": [],
            "bot_public": True,
            "bot_require_code_grant": False,
            "owner": self._users[self.owner_id],
            "verify_key": "0" * 64,
            "team": None,
            "flags": 0,
            "bot": self._users[self.bot_user_id],
        }

    def _new_id(self, at: datetime | None = None) -> int:
        increment = next(self._counter)
        if at is not None:
            return _snowflake(at.timestamp(), increment)
        self._last_id = max(self._last_id + 1, _snowflake(time.time(), increment))
        return self._last_id

    def _message(self, channel_id: int, author_id: int, **fields: Any) -> Json:
        channel = self._channel_or_404(channel_id)
        message: Json = {
            "id": str(self._new_id()),
            "channel_id": str(channel_id),
            "author": self._users[author_id],
            "content": "",
            "timestamp": _iso(),
            "edited_timestamp": None,
            "tts": False,
            "mention_everyone": False,
            "mentions": [],
            "mention_roles": [],
            "attachments": [],
            "embeds": [],
            "pinned": False,
            "type": 0,
            "flags": 0,
            "components": [],
        }
        if "guild_id" in channel:
            message["guild_id"] = channel["guild_id"]
        return {**message, **fields}

    def _new_attachment(
        self, channel_id: int, filename: str, data: bytes, content_type: str | None, **extra: Any
    ) -> Json:
        att_id = self._new_id()
        self._files[att_id] = (data, content_type or "application/octet-stream")
        path = f"attachments/{channel_id}/{att_id}/{quote(filename)}"
        signature = f"ex={int(time.time()) + 86400:x}&is={int(time.time()):x}&hm={att_id:x}"
        attachment: Json = {
            "id": str(att_id),
            "filename": filename,
            "size": len(data),
            "url": f"{self.base_url}/cdn/{path}?{signature}&",
            "proxy_url": f"{self.base_url}/cdn/media/{path}?{signature}&",
        }
        if content_type is not None:
            attachment["content_type"] = content_type
        attachment.update({k: v for k, v in extra.items() if v is not None})
        self._attachment_objects[att_id] = attachment
        return attachment

    # ------------------------------------------------------------------------ test-facing builders

    def add_attachment(
        self,
        filename: str,
        data: bytes,
        content_type: str | None = "image/png",
        *,
        width: int | None = 64,
        height: int | None = 64,
        size: int | None = None,
    ) -> Json:
        """Serve ``data`` from the fake CDN and return the Discord attachment object pointing at it."""
        attachment = self._new_attachment(self.channel_id, filename, data, content_type, width=width, height=height)
        if size is not None:
            attachment["size"] = size
        return attachment

    def expire_attachment(self, attachment: Json) -> None:
        """Make the attachment's URLs answer 404 until refreshed through POST /attachments/refresh-urls."""
        self._expired_files.add(int(attachment["id"]))

    def add_message(
        self,
        channel_id: int,
        *,
        content: str = "",
        author_id: int | None = None,
        attachments: Sequence[Json] = (),
        embeds: Sequence[Json] = (),
        referenced_message_id: int | None = None,
    ) -> Json:
        """A message by a user (default: the owner), fetchable over REST and listed in the history."""
        message = self._message(
            channel_id, author_id or self.owner_id, content=content, attachments=list(attachments), embeds=list(embeds)
        )
        if referenced_message_id is not None:
            message.update(self._reply_fields(channel_id, {"message_id": str(referenced_message_id)}))
        self._store(message, by_bot=False)
        return message

    def slash(
        self,
        name: str,
        options: list[Json],
        *,
        attachments: Sequence[Json] = (),
        user_id: int | None = None,
        channel_id: int | None = None,
        created_at: datetime | None = None,
    ) -> Json:
        """INTERACTION_CREATE data for a chat-input command; attachment options are resolved."""
        data = self._command_data(name, 1)
        data["options"] = options
        resolved = {a["id"]: {**a, "ephemeral": True} for a in [*attachments, *self._option_attachments(options)]}
        if resolved:
            data["resolved"] = {"attachments": resolved}
        return self._interaction(2, data, user_id, channel_id or self.channel_id, created_at, 20)

    def message_command(
        self, name: str, message: Json, *, user_id: int | None = None, created_at: datetime | None = None
    ) -> Json:
        """INTERACTION_CREATE data for a message context menu on ``message`` (its current state is sent)."""
        message = self._find_message(int(message["id"])) or message
        data = self._command_data(name, 3)
        data.update(target_id=message["id"], resolved={"messages": {message["id"]: message}})
        return self._interaction(2, data, user_id, int(message["channel_id"]), created_at, 23)

    def button(self, custom_id: str, message: Json, *, user_id: int | None = None) -> Json:
        """INTERACTION_CREATE data for a button press on ``message`` (its current state is sent)."""
        message = self._find_message(int(message["id"])) or message
        data = {"custom_id": custom_id, "component_type": 2}
        return self._interaction(3, data, user_id, int(message["channel_id"]), None, 0, message=message)

    def modal_submit(
        self,
        custom_id: str,
        values: Mapping[str, str],
        *,
        user_id: int | None = None,
        created_at: datetime | None = None,
        channel_id: int | None = None,
        message: Json | None = None,
    ) -> Json:
        """INTERACTION_CREATE data for submitting the modal ``custom_id`` with text input ``values``."""
        rows = [{"type": 1, "components": [{"type": 4, "custom_id": k, "value": v}]} for k, v in values.items()]
        data = {"custom_id": custom_id, "components": rows}
        channel = channel_id or (int(message["channel_id"]) if message else self.channel_id)
        return self._interaction(5, data, user_id, channel, created_at, 0, message=message)

    def reaction_add(self, message: Json, emoji: str, *, user_id: int | None = None) -> Json:
        """MESSAGE_REACTION_ADD data (not dispatched) and the reaction counted on the stored message."""
        user = user_id or self.owner_id
        name, _, emoji_id = emoji.partition(":")
        self._react(int(message["id"]), emoji, delta=1, me=False)
        return {
            "user_id": str(user),
            "channel_id": message["channel_id"],
            "message_id": message["id"],
            "guild_id": str(self.guild_id),
            "emoji": {"id": emoji_id or None, "name": name},
            "member": self._members[user],
            "message_author_id": message["author"]["id"],
            "burst": False,
            "burst_colors": [],
            "type": 0,
        }

    def _command_data(self, name: str, kind: int) -> Json:
        for guild_id, commands in sorted(self.commands.items(), key=lambda kv: kv[0] is None):
            for command in commands:
                if command["name"] == name and command.get("type", 1) == kind:
                    data: Json = {"id": command["id"], "name": name, "type": kind}
                    if guild_id is not None:
                        data["guild_id"] = str(guild_id)
                    return data
        return {"id": str(self._new_id()), "name": name, "type": kind}  # never synced: the bot won't know it

    def _option_attachments(self, options: Iterable[Json]) -> list[Json]:
        found = []
        for option in options:
            found += self._option_attachments(option.get("options", []))
            if option.get("type") == 11 and (known := self._attachment_objects.get(int(option["value"]))):
                found.append(known)
        return found

    def _interaction(
        self,
        itype: int,
        data: Json,
        user_id: int | None,
        channel_id: int,
        created_at: datetime | None,
        message_type: int,
        *,
        message: Json | None = None,
    ) -> Json:
        iid = self._new_id(created_at or datetime.now(UTC))
        user = user_id or self.owner_id
        payload: Json = {
            "id": str(iid),
            "application_id": str(self.app_id),
            "type": itype,
            "token": f"fake-interaction-token-{iid}",
            "version": 1,
            "attachment_size_limit": self.attachment_size_limit,
            "guild_id": str(self.guild_id),
            "channel_id": str(channel_id),
            "channel": self._channel_or_404(channel_id),
            "member": {**self._members[user], "permissions": str(self._permissions(user))},
            "app_permissions": str(BOT_PERMS),
            "locale": "en-US",
            "guild_locale": "en-US",
            "entitlements": [],
            "authorizing_integration_owners": {"0": str(self.guild_id)},
            "context": 0,
            "data": data,
        }
        if message is not None:
            payload["message"] = message
        metadata = {
            "id": str(iid),
            "type": itype,
            "user": self._users[user],
            "authorizing_integration_owners": payload["authorizing_integration_owners"],
        }
        self._interactions[payload["token"]] = _Interaction(
            id=iid,
            token=payload["token"],
            type=itype,
            message_type=message_type,
            channel_id=channel_id,
            metadata=metadata,
            created_at=_snowflake_time(iid),
            message_id=int(message["id"]) if message else None,
        )
        return payload

    # ---------------------------------------------------------------------- test-facing actions

    async def dispatch(self, event: str, data: Json) -> None:
        """Send a gateway DISPATCH to every session (queued for replay if its socket is down)."""
        if not self._sessions:
            raise RuntimeError(f"cannot dispatch {event}: no client has identified on the gateway")
        await self._broadcast(event, data)

    async def interact(self, payload: Json) -> None:
        """Dispatch INTERACTION_CREATE and start the acknowledgement clock (``ack_deadline``)."""
        self._interactions[payload["token"]].dispatched_at = self._now()
        await self.dispatch("INTERACTION_CREATE", payload)

    def fail_next(
        self,
        method: str,
        path_regex: str,
        status: int,
        body: Any = None,
        *,
        headers: dict[str, str] | None = None,
        times: int = 1,
    ) -> None:
        """Answer the next ``times`` matching requests with ``status`` (429s get ``Via`` + ``retry_after``)."""
        pattern = re.compile(path_regex)
        self._failures.append(_Failure(method.upper(), pattern, status, body, dict(headers or {}), times))

    def delay_next(self, method: str, path_regex: str, seconds: float) -> None:
        """Handle the next matching request at once (the message exists) but answer only ``seconds`` later:
        the client is left not knowing whether it worked, as when a process dies mid-request."""
        self._delays.append((method.upper(), re.compile(path_regex), seconds))

    async def _delay_answer(self, rec: Recorded) -> None:
        for delay in self._delays:
            method, pattern, seconds = delay
            if method == rec.method and pattern.fullmatch(rec.path):
                self._delays.remove(delay)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._closing.wait(), seconds)
                return

    async def drop_gateway(self, code: int = 4000, *, resumable: bool = True) -> None:
        """Close every gateway socket from the server side; discord.py reconnects and RESUMEs.

        With ``resumable=False`` the sessions are forgotten: the RESUME gets INVALID_SESSION and the client
        identifies again (READY, GUILD_CREATE and ``on_ready`` a second time).
        """
        sessions = list(self._sessions.values())
        if not resumable:
            self._sessions.clear()
        for session in sessions:
            ws, session.ws = session.ws, None
            if ws is not None:
                await ws.close(code=code, message=b"dropped by the fake")

    # ------------------------------------------------------------------------ test-facing queries

    def channel_messages(self, channel_id: int) -> list[Json]:
        """Live, non-ephemeral messages in the channel (bot's and test-added), oldest first."""
        return [m for mid in self._channel_log.get(channel_id, []) if (m := self._find_message(mid))]

    def callbacks(self) -> list[Recorded]:
        """Recorded interaction callbacks, in order."""
        return [r for r in self.requests if _CALLBACK_PATH.fullmatch(r.path)]

    def modal_custom_id(self) -> str:
        """custom_id of the latest modal the bot opened (type-9 callback)."""
        for rec in reversed(self.callbacks()):
            if rec.json and rec.json.get("type") == 9:
                return str(rec.json["data"]["custom_id"])
        raise LookupError("the bot has not opened a modal")

    async def wait_until(self, condition: Callable[[], bool], timeout: float = 5.0, what: str = "condition") -> None:
        """Wait until ``condition()`` holds: re-checked after every request and gateway frame, and every 20 ms."""
        try:
            async with asyncio.timeout(timeout):
                while not condition():
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._changed.wait(), POLL_INTERVAL)
        except TimeoutError:
            recent = "\n".join(f"  {r.status} {r.method} {r.path}" for r in self.requests[-15:])
            raise TimeoutError(f"{what} not met within {timeout}s; last requests:\n{recent}") from None

    async def wait_for(self, predicate: Callable[[Recorded], bool], timeout: float = 5.0) -> Recorded:
        """The first recorded request (past or future) matching ``predicate``."""
        found: list[Recorded] = []

        def check() -> bool:
            found.extend(r for r in self.requests if predicate(r))
            return bool(found)

        await self.wait_until(check, timeout, "wait_for(request)")
        return found[0]

    async def wait_for_message(self, predicate: Callable[[Json], bool], timeout: float = 5.0) -> Json:
        """A bot-created message (current state) matching ``predicate``."""
        found: list[Json] = []

        def check() -> bool:
            found.extend(m for m in self.messages.values() if predicate(m))
            return bool(found)

        await self.wait_until(check, timeout, "wait_for_message")
        return found[0]

    @staticmethod
    def _now() -> float:
        return asyncio.get_running_loop().time()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    # ---------------------------------------------------------------------------- REST plumbing

    def _build_routes(self) -> list[tuple[str, re.Pattern[str], _Handler]]:
        app, channel = r"/applications/(?P<app>\d+)(?:/guilds/(?P<guild>\d+))?", r"/channels/(?P<channel>\d+)"
        message, hook = channel + r"/messages/(?P<message>\d+)", r"/webhooks/(?P<app>\d+)/(?P<token>[^/]+)"
        reaction, hook_message = (
            message + r"/reactions/(?P<emoji>[^/]+)",
            hook + r"/messages/(?P<message>@original|\d+)",
        )
        table: list[tuple[str, str, _Handler]] = [
            ("GET", r"/users/@me", self._get_me),
            ("GET", r"/users/(?P<user>\d+)", self._get_user),
            ("GET", r"/oauth2/applications/@me", self._get_app),
            ("GET", r"/gateway(?:/bot)?", self._get_gateway),
            ("PUT", app + "/commands", self._put_commands),
            ("GET", app + "/commands", self._get_commands),
            ("GET", r"/guilds/(?P<guild>\d+)", self._get_guild),
            ("GET", r"/guilds/(?P<guild>\d+)/channels", self._get_guild_channels),
            ("GET", r"/guilds/(?P<guild>\d+)/members/(?P<user>\d+)", self._get_member),
            ("GET", channel, self._get_channel),
            ("POST", channel + "/typing", self._post_typing),
            ("GET", channel + "/messages", self._get_history),
            ("POST", channel + "/messages", self._post_message),
            ("POST", channel + "/threads", self._post_thread),
            ("GET", message, self._get_message),
            ("PATCH", message, self._patch_message),
            ("DELETE", message, self._delete_message),
            ("POST", message + "/threads", self._post_message_thread),
            ("PUT", reaction + "/@me", self._put_reaction),
            ("DELETE", reaction + r"/(?P<user>@me|\d+)", self._delete_reaction),
            ("POST", r"/attachments/refresh-urls", self._refresh_urls),
            ("POST", r"/interactions/(?P<iid>\d+)/(?P<token>[^/]+)/callback", self._post_callback),
            ("POST", hook, self._post_followup),
            ("GET", hook_message, self._get_webhook_message),
            ("PATCH", hook_message, self._patch_webhook_message),
            ("DELETE", hook_message, self._delete_webhook_message),
        ]
        return [(method, re.compile(pattern), handler) for method, pattern, handler in table]

    async def _handle_api(self, request: web.Request) -> web.StreamResponse:
        rec = Recorded(request.method, request.path.removeprefix(API_PREFIX), dict(request.query))
        rec.time = self._now()
        try:
            response = await self._answer(request, rec)
        except ApiError as exc:
            response = exc.response()
        except Exception as exc:
            log.exception("fake Discord failed on %s %s", rec.method, rec.path)
            self.unhandled.append(f"{rec.method} {rec.path}: {exc!r}")
            response = _json({"code": 0, "message": "500: Internal Server Error"}, 500)
        rec.status = response.status
        self.requests.append(rec)
        self._notify()
        return response

    async def _answer(self, request: web.Request, rec: Recorded) -> web.Response:
        rec.json, rec.files = await _read_body(request)
        if (failure := self._take_failure(rec)) is not None:
            return failure.response()
        handler, params = self._route(rec.method, rec.path)
        if handler is None:
            self.unhandled.append(f"{rec.method} {rec.path}")
            return _json({"code": 0, "message": "404: Not Found"}, 404)
        if not rec.path.startswith(("/interactions/", "/webhooks/")) and "Authorization" not in request.headers:
            raise ApiError(401, 0, "401: Unauthorized")
        self._check_uploads(rec.files)
        headers = self._take_rate_limit(rec)
        response = await handler(_Call(rec, params))
        response.headers.update(headers)
        if self._delays:
            self.requests.append(rec)  # visible while the answer is held back
            self._notify()
            await self._delay_answer(rec)
            self.requests.remove(rec)
        return response

    def _route(self, method: str, path: str) -> tuple[_Handler | None, dict[str, str]]:
        for route_method, pattern, handler in self._routes:
            if route_method == method and (match := pattern.fullmatch(path)):
                return handler, {k: v for k, v in match.groupdict().items() if v is not None}
        return None, {}

    def _take_failure(self, rec: Recorded) -> _Failure | None:
        for failure in self._failures:
            if failure.method == rec.method and failure.pattern.search(rec.path):
                failure.times -= 1
                if failure.times <= 0:
                    self._failures.remove(failure)
                return failure
        return None

    def _check_uploads(self, files: list[UploadedFile]) -> None:
        if any(f.size > self.attachment_size_limit for f in files):
            raise ApiError(413, 40005, "Request entity too large")
        if len(files) > MAX_FILES:
            raise ApiError(400, 30015, f"Maximum number of attachments in a message reached ({MAX_FILES})")

    async def _handle_cdn(self, request: web.Request) -> web.StreamResponse:
        rec = Recorded("GET", request.path, dict(request.query), time=self._now())
        match = _CDN_PATH.fullmatch(request.path)
        att_id = int(match["att"]) if match else 0
        stored = self._files.get(att_id)
        if stored is None or (att_id in self._expired_files and request.query.get("refreshed") != "1"):
            response = web.Response(status=404, text="This content is no longer available.")
        else:
            response = web.Response(body=stored[0], content_type=stored[1])
        rec.status = response.status
        self.requests.append(rec)
        self._notify()
        return response

    # -------------------------------------------------------------------- REST: startup and guild

    async def _get_me(self, call: _Call) -> web.Response:
        return _json(self._users[self.bot_user_id])

    async def _get_user(self, call: _Call) -> web.Response:
        if (user := self._users.get(call.id("user"))) is None:
            raise ApiError(404, 10013, "Unknown User")
        return _json(user)

    async def _get_app(self, call: _Call) -> web.Response:
        return _json(self._app_info())

    async def _get_gateway(self, call: _Call) -> web.Response:
        limit = {"total": 1000, "remaining": 999, "reset_after": 0, "max_concurrency": 1}
        return _json({"url": self.gateway_url, "shards": 1, "session_start_limit": limit})

    async def _put_commands(self, call: _Call) -> web.Response:
        guild_id = call.id("guild") if "guild" in call.params else None
        if call.id("app") != self.app_id or (guild_id is not None and guild_id != self.guild_id):
            raise ApiError(403, 50001, "Missing Access")
        if not isinstance(call.rec.json, list):
            raise _invalid_form()
        self.commands[guild_id] = [self._command(guild_id, c) for c in call.rec.json]
        return _json(self.commands[guild_id])

    def _command(self, guild_id: int | None, command: Json) -> Json:
        key = (guild_id, command["name"], command.get("type", 1))
        command_id = self._command_ids.setdefault(key, self._new_id())  # ids are stable across syncs
        defaults: Json = {"type": 1, "description": "", "options": [], "default_member_permissions": None}
        echoed = {**defaults, **command, "id": str(command_id), "application_id": str(self.app_id)}
        echoed["version"] = str(self._new_id())
        if guild_id is not None:
            echoed["guild_id"] = str(guild_id)
        return echoed

    async def _get_commands(self, call: _Call) -> web.Response:
        return _json(self.commands.get(call.id("guild") if "guild" in call.params else None, []))

    async def _get_guild(self, call: _Call) -> web.Response:
        self._guild_or_404(call.id("guild"))
        guild = self.guild_payload()
        return _json({k: v for k, v in guild.items() if k not in ("channels", "threads", "members")})

    async def _get_guild_channels(self, call: _Call) -> web.Response:
        return _json(self._guild_or_404(call.id("guild"))["channels"])

    async def _get_member(self, call: _Call) -> web.Response:
        self._guild_or_404(call.id("guild"))
        if (member := self._members.get(call.id("user"))) is None:
            raise ApiError(404, 10007, "Unknown Member")
        return _json(member)

    def _guild_or_404(self, guild_id: int) -> Json:
        if guild_id != self.guild_id:
            raise ApiError(404, 10004, "Unknown Guild")
        return self.guild_payload()

    async def _refresh_urls(self, call: _Call) -> web.Response:
        urls = call.body.get("attachment_urls")
        if not isinstance(urls, list):
            raise _invalid_form("attachment_urls: This field is required")
        refreshed = [{"original": u, "refreshed": u + ("&" if "?" in u else "?") + "refreshed=1"} for u in urls]
        return _json({"refreshed_urls": refreshed})

    # --------------------------------------------------------------------------- REST: channels

    def _channel_or_404(self, channel_id: int) -> Json:
        if (channel := self._channels.get(channel_id)) is None:
            raise ApiError(404, 10003, "Unknown Channel")
        return channel

    def _find_message(self, message_id: int) -> Json | None:
        return self.messages.get(message_id) or self.user_messages.get(message_id)

    def _channel_message(self, channel_id: int, message_id: int) -> Json:
        self._channel_or_404(channel_id)
        message = self._find_message(message_id)
        if message is None or message["channel_id"] != str(channel_id) or message["flags"] & EPHEMERAL:
            raise ApiError(404, 10008, "Unknown Message")
        return message

    def _store(self, message: Json, *, by_bot: bool) -> None:
        message_id = int(message["id"])
        target = self.user_messages if message_id in self.user_messages or not by_bot else self.messages
        is_new = message_id not in target
        target[message_id] = message
        if is_new and not message["flags"] & EPHEMERAL:
            channel_id = int(message["channel_id"])
            self._channel_log.setdefault(channel_id, []).append(message_id)
            if (thread := self.threads.get(channel_id)) is not None:
                thread["message_count"] += 1
                thread["total_message_sent"] += 1

    async def _get_channel(self, call: _Call) -> web.Response:
        return _json(self._channel_or_404(call.id("channel")))

    async def _post_typing(self, call: _Call) -> web.Response:
        self._channel_or_404(call.id("channel"))
        return _no_content()

    async def _get_history(self, call: _Call) -> web.Response:
        self._channel_or_404(call.id("channel"))
        query = call.rec.query
        limit = int(query.get("limit", 50))
        if not 1 <= limit <= 100:
            raise _invalid_form("limit: int value should be less than or equal to 100.")
        ids = sorted(self._channel_log.get(call.id("channel"), []))
        if "before" in query:
            ids = [i for i in ids if i < int(query["before"])][-limit:]
        elif "after" in query:
            ids = [i for i in ids if i > int(query["after"])][:limit]
        elif "around" in query:
            pivot = int(query["around"])
            ids = [i for i in ids if i < pivot][-(limit // 2) :] + [i for i in ids if i >= pivot][: limit - limit // 2]
        else:
            ids = ids[-limit:]
        return _json([self._find_message(i) for i in reversed(ids)])  # newest first, like Discord

    async def _get_message(self, call: _Call) -> web.Response:
        return _json(self._channel_message(call.id("channel"), call.id("message")))

    async def _post_message(self, call: _Call) -> web.Response:
        channel = self._channel_or_404(call.id("channel"))
        if channel["type"] in (4, 15, 16):
            raise ApiError(400, 50008, "Cannot send messages in a non-text channel")
        message = await self._create_message(call.id("channel"), call.body, call.rec.files)
        return _json(message)

    async def _patch_message(self, call: _Call) -> web.Response:
        message = self._channel_message(call.id("channel"), call.id("message"))
        if message["author"]["id"] != str(self.bot_user_id):
            raise ApiError(403, 50005, "Cannot edit a message authored by another user")
        return _json(await self._edit_message(message, call.body, call.rec.files))

    async def _delete_message(self, call: _Call) -> web.Response:
        await self._remove_message(self._channel_message(call.id("channel"), call.id("message")))
        return _no_content()

    async def _post_message_thread(self, call: _Call) -> web.Response:
        channel = self._channel_or_404(call.id("channel"))
        if channel["type"] not in (0, 5):
            raise ApiError(400, 50024, "Cannot execute action on this channel type")
        message = self._channel_message(call.id("channel"), call.id("message"))
        if not self.threads_allowed:
            raise ApiError(403, 50013, "Missing Permissions")
        if call.id("message") in self.threads:
            raise ApiError(400, 160004, "A thread has already been created for this message")
        thread = await self._create_thread(channel, call.body, thread_id=call.id("message"), kind=11)
        self._store({**message, "thread": thread}, by_bot=message["author"]["id"] == str(self.bot_user_id))
        return _json(thread, 201)

    async def _post_thread(self, call: _Call) -> web.Response:
        channel = self._channel_or_404(call.id("channel"))
        if channel["type"] not in (0, 5, 15):
            raise ApiError(400, 50024, "Cannot execute action on this channel type")
        if not self.threads_allowed:
            raise ApiError(403, 50013, "Missing Permissions")
        is_forum = channel["type"] == 15
        thread = await self._create_thread(channel, call.body, thread_id=self._new_id(), kind=11 if is_forum else 12)
        if is_forum:  # a forum post starts with a message whose id is the thread id
            starter = call.body.get("message") or {}
            await self._create_message(int(thread["id"]), starter, call.rec.files, message_id=int(thread["id"]))
            return _json({**thread, "message": self._find_message(int(thread["id"]))}, 201)
        return _json(thread, 201)

    async def _create_thread(self, parent: Json, body: Json, *, thread_id: int, kind: int) -> Json:
        name = body.get("name")
        if not isinstance(name, str) or not 1 <= len(name) <= 100:
            raise _invalid_form("name: Must be between 1 and 100 in length.")
        archive = int(body.get("auto_archive_duration") or 1440)
        thread: Json = {
            **self._channel(thread_id, name, int(body.get("type", kind)), 0),
            "parent_id": parent["id"],
            "owner_id": str(self.bot_user_id),
            "message_count": 0,
            "total_message_sent": 0,
            "member_count": 1,
            "rate_limit_per_user": int(body.get("rate_limit_per_user") or 0),
            "thread_metadata": {
                "archived": False,
                "auto_archive_duration": archive,
                "archive_timestamp": _iso(),
                "locked": False,
                "create_timestamp": _iso(),
            },
        }
        self.threads[thread_id] = self._channels[thread_id] = thread
        await self._broadcast("THREAD_CREATE", {**thread, "newly_created": True})
        return thread

    async def _put_reaction(self, call: _Call) -> web.Response:
        self._channel_message(call.id("channel"), call.id("message"))
        self._react(call.id("message"), call.params["emoji"], delta=1, me=True)
        return _no_content()

    async def _delete_reaction(self, call: _Call) -> web.Response:
        self._channel_message(call.id("channel"), call.id("message"))
        self._react(call.id("message"), call.params["emoji"], delta=-1, me=call.params["user"] == "@me")
        return _no_content()

    def _react(self, message_id: int, emoji: str, *, delta: int, me: bool) -> None:
        message = self._find_message(message_id)
        if message is None:
            return
        name, _, emoji_id = emoji.partition(":")
        reactions = [dict(r) for r in message.get("reactions", [])]
        entry = next((r for r in reactions if r["emoji"]["name"] == name), None)
        if entry is None:
            entry = {"emoji": {"id": emoji_id or None, "name": name}, "count": 0, "me": False}
            reactions.append(entry)
        entry["count"] += delta
        entry["me"] = (delta > 0) if me else entry["me"]
        entry["count_details"] = {"burst": 0, "normal": entry["count"]}
        message["reactions"] = [r for r in reactions if r["count"] > 0]

    # ----------------------------------------------------------------- REST: message contents

    async def _create_message(
        self,
        channel_id: int,
        payload: Json,
        files: list[UploadedFile],
        *,
        message_id: int | None = None,
        **fields: Any,
    ) -> Json:
        """Build, validate, store and announce a message the bot sends (channel, callback or webhook)."""
        message = self._message(channel_id, self.bot_user_id, **fields)
        if message_id is not None:
            message["id"] = str(message_id)
        content = str(payload.get("content") or "")
        message.update(
            content=content,
            tts=bool(payload.get("tts", False)),
            embeds=[{"type": "rich", **e} for e in payload.get("embeds") or []],
            components=payload.get("components") or [],
            flags=int(payload.get("flags") or 0) & SETTABLE_FLAGS | message["flags"],
            attachments=self._attachments(channel_id, payload, files, []),
            **self._mentions(content, payload.get("allowed_mentions")),
        )
        if payload.get("nonce") is not None:
            message["nonce"] = payload["nonce"]
        if payload.get("message_reference"):
            message.update(self._reply_fields(channel_id, payload["message_reference"]))
        if not message["flags"] & LOADING:
            _validate_message(message)
        self._store(message, by_bot=True)
        await self._announce("MESSAGE_CREATE", message)
        return message

    async def _edit_message(self, message: Json, payload: Json, files: list[UploadedFile]) -> Json:
        edited = {**message, "edited_timestamp": _iso(), "flags": message["flags"] & ~LOADING}
        if "content" in payload:
            edited["content"] = str(payload["content"] or "")
            edited.update(self._mentions(edited["content"], payload.get("allowed_mentions")))
        if "embeds" in payload:
            edited["embeds"] = [{"type": "rich", **e} for e in payload["embeds"] or []]
        if "components" in payload:
            edited["components"] = payload["components"] or []
        if payload.get("flags") is not None:
            new_flags = int(payload["flags"])  # suppress-embeds can be toggled; components v2 only switched on
            edited["flags"] = edited["flags"] & ~SUPPRESS_EMBEDS | new_flags & (SUPPRESS_EMBEDS | COMPONENTS_V2)
        if "attachments" in payload or files:
            edited["attachments"] = self._attachments(
                int(message["channel_id"]), payload, files, message["attachments"]
            )
        _validate_message(edited)
        self._store(edited, by_bot=True)
        await self._announce("MESSAGE_UPDATE", edited)
        return edited

    async def _remove_message(self, message: Json) -> None:
        message_id, channel_id = int(message["id"]), int(message["channel_id"])
        self.messages.pop(message_id, None)
        self.user_messages.pop(message_id, None)
        self.deleted_messages[message_id] = message
        if message_id in self._channel_log.get(channel_id, []):
            self._channel_log[channel_id].remove(message_id)
        event = {"id": message["id"], "channel_id": message["channel_id"], "guild_id": str(self.guild_id)}
        if not message["flags"] & EPHEMERAL:
            await self._broadcast("MESSAGE_DELETE", event)

    async def _announce(self, event: str, message: Json) -> None:
        if not message["flags"] & EPHEMERAL:
            await self._broadcast(event, message)

    def _attachments(
        self, channel_id: int, payload: Json, files: list[UploadedFile], existing: list[Json]
    ) -> list[Json]:
        """New attachment list: kept ``existing`` ones named in ``payload["attachments"]`` plus the uploads."""
        uploads = {index: f for f in files if (index := _upload_index(f.field)) is not None}
        specs = payload.get("attachments")
        if specs is None:
            return existing + [self._upload(channel_id, f, {}) for f in uploads.values()]
        kept = {a["id"]: a for a in existing}
        result = []
        for spec in specs:
            if (upload := uploads.pop(int(spec["id"]), None)) is not None:
                result.append(self._upload(channel_id, upload, spec))
            elif str(spec["id"]) in kept:
                result.append(kept[str(spec["id"])])
            else:
                raise _invalid_form(f"attachments: unknown attachment {spec['id']}")
        return result + [self._upload(channel_id, f, {}) for f in uploads.values()]

    def _upload(self, channel_id: int, upload: UploadedFile, spec: Json) -> Json:
        filename = str(spec.get("filename") or upload.filename)
        content_type = mimetypes.guess_type(filename)[0] or upload.content_type
        size = _image_size(upload.data)
        extra = {"width": size[0], "height": size[1]} if size else {}
        attachment = self._new_attachment(channel_id, filename, upload.data, content_type, **extra)
        if spec.get("description"):
            attachment["description"] = spec["description"]
        return attachment

    def _mentions(self, content: str, allowed: Json | None) -> Json:
        ids = {int(i) for i in _USER_MENTION.findall(content)}
        everyone = "@everyone" in content or "@here" in content
        if allowed is not None:
            parse, users = allowed.get("parse") or [], {int(u) for u in allowed.get("users") or []}
            ids = {i for i in ids if "users" in parse or i in users}
            everyone = everyone and "everyone" in parse
        return {"mentions": [self._users[i] for i in sorted(ids) if i in self._users], "mention_everyone": everyone}

    def _reply_fields(self, channel_id: int, reference: Json) -> Json:
        target = self._find_message(int(reference["message_id"]))
        if target is None or target["channel_id"] != str(reference.get("channel_id") or channel_id):
            if reference.get("fail_if_not_exists", True):
                raise _invalid_form("message_reference: Unknown message")
            return {}
        ref = {
            "type": 0,
            "message_id": target["id"],
            "channel_id": target["channel_id"],
            "guild_id": str(self.guild_id),
        }
        return {"type": 19, "message_reference": ref, "referenced_message": target}

    # ------------------------------------------------------------- REST: interactions, webhooks

    def _callback_interaction(self, call: _Call) -> _Interaction:
        inter = self._interactions.get(call.params["token"])
        if inter is None or inter.id != call.id("iid") or inter.expired():
            raise ApiError(404, 10062, "Unknown interaction")
        if inter.callback_type is not None:
            raise ApiError(400, 40060, "Interaction has already been acknowledged.")
        late = inter.dispatched_at is not None and self._now() - inter.dispatched_at > self.ack_deadline
        if late:
            raise ApiError(404, 10062, "Unknown interaction")
        return inter

    async def _post_callback(self, call: _Call) -> web.Response:
        inter = self._callback_interaction(call)
        kind, data = int(call.body.get("type", 0)), call.body.get("data") or {}
        if kind not in (4, 5, 6, 7, 9) or (kind in (6, 7) and inter.message_id is None):
            raise ApiError(400, 40043, "Interaction has invalid type for this response")  # approximate code
        if kind == 9 and (inter.type == 5 or not {"custom_id", "title", "components"} <= data.keys()):
            raise _invalid_form("data: modal needs custom_id, title and components")
        inter.callback_type = kind  # before any await, so a racing second callback sees it
        try:
            message = await self._callback_message(inter, kind, data, call.rec.files)
        except ApiError:
            inter.callback_type = None
            raise
        return _json(self._callback_body(inter, kind, message))

    async def _callback_message(
        self, inter: _Interaction, kind: int, data: Json, files: list[UploadedFile]
    ) -> Json | None:
        if kind in (4, 5):
            flags = (LOADING if kind == 5 else 0) | (int(data.get("flags") or 0) & EPHEMERAL)
            message = await self._create_message(
                inter.channel_id,
                data if kind == 4 else {},
                files,
                type=inter.message_type,
                flags=flags,
                webhook_id=str(self.app_id),
                application_id=str(self.app_id),
                interaction_metadata=inter.metadata,
            )
        elif kind == 7:
            assert inter.message_id is not None
            message = await self._edit_message(self._find_message_or_404(inter.message_id), data, files)
        elif kind == 6:
            assert inter.message_id is not None
            message = self._find_message_or_404(inter.message_id)
        else:
            return None
        inter.original_id = int(message["id"])
        inter.message_ids.add(inter.original_id)
        return message

    def _callback_body(self, inter: _Interaction, kind: int, message: Json | None) -> Json:
        summary: Json = {"id": str(inter.id), "type": inter.type}
        resource: Json = {"type": kind}
        if message is not None:
            summary.update(
                response_message_id=message["id"],
                response_message_loading=kind == 5,
                response_message_ephemeral=bool(message["flags"] & EPHEMERAL),
            )
            resource["message"] = message
        return {"interaction": summary, "resource": resource}

    def _find_message_or_404(self, message_id: int) -> Json:
        if (message := self._find_message(message_id)) is None:
            raise ApiError(404, 10008, "Unknown Message")
        return message

    def _webhook_interaction(self, call: _Call) -> _Interaction:
        if call.id("app") != self.app_id:
            raise ApiError(404, 10015, "Unknown Webhook")
        inter = self._interactions.get(call.params["token"])
        if inter is None or inter.expired():
            raise ApiError(401, 50027, "Invalid Webhook Token")
        if inter.callback_type is None:
            raise ApiError(404, 10015, "Unknown Webhook")  # Discord's answer before the interaction is acked
        return inter

    def _webhook_message(self, call: _Call) -> Json:
        inter = self._webhook_interaction(call)
        ref = call.params["message"]
        message_id = inter.original_id if ref == "@original" else int(ref)
        if message_id is None or message_id not in inter.message_ids:
            raise ApiError(404, 10008, "Unknown Message")
        return self._find_message_or_404(message_id)

    async def _post_followup(self, call: _Call) -> web.Response:
        inter = self._webhook_interaction(call)
        channel_id = int(call.rec.query.get("thread_id", inter.channel_id))
        message = await self._create_message(
            channel_id,
            call.body,
            call.rec.files,
            type=inter.message_type,
            webhook_id=str(self.app_id),
            application_id=str(self.app_id),
            interaction_metadata=inter.metadata,
        )
        inter.message_ids.add(int(message["id"]))
        wait = call.rec.query.get("wait", "false").lower() in ("1", "true")
        return _json(message) if wait else _no_content()

    async def _get_webhook_message(self, call: _Call) -> web.Response:
        return _json(self._webhook_message(call))

    async def _patch_webhook_message(self, call: _Call) -> web.Response:
        return _json(await self._edit_message(self._webhook_message(call), call.body, call.rec.files))

    async def _delete_webhook_message(self, call: _Call) -> web.Response:
        await self._remove_message(self._webhook_message(call))
        return _no_content()

    # ------------------------------------------------------------------------------ rate limits

    def _rate_limit_key(self, rec: Recorded) -> tuple[str, str] | None:
        """Message creates/edits are limited per channel and per interaction token (not callbacks)."""
        if rec.method not in ("POST", "PATCH"):
            return None
        if match := re.fullmatch(r"/channels/(\d+)/messages(?:/\d+)?", rec.path):
            return ("channel", match[1])
        if match := re.fullmatch(r"/webhooks/\d+/([^/]+)(?:/messages/[^/]+)?", rec.path):
            return ("webhook", match[1])
        return None

    def _take_rate_limit(self, rec: Recorded) -> dict[str, str]:
        """Consume one request from the fixed window; Discord-style headers, or a 429 ApiError."""
        key = self._rate_limit_key(rec)
        if key is None:
            return {}
        limit, per = self.edit_rate
        now = self._now()
        window = self._windows.get(key)
        if window is None or now >= window.start + per:
            window = self._windows[key] = _Window(now)
        reset_after = math.ceil((window.start + per - now) * 1000) / 1000
        exceeded = window.count >= limit
        window.count += 0 if exceeded else 1
        headers = {
            "X-RateLimit-Limit": str(limit),
            "X-RateLimit-Remaining": str(limit - window.count),
            "X-RateLimit-Reset": f"{time.time() + reset_after:.3f}",
            "X-RateLimit-Reset-After": f"{reset_after:.3f}",
            "X-RateLimit-Bucket": f"fake-{key[0]}-messages",
        }
        if exceeded:
            self.rate_limited += 1
            error = ApiError(429, 0, RATE_LIMIT_BODY, headers={**headers, **VIA, "X-RateLimit-Scope": "user"})
            error.body = {"message": RATE_LIMIT_BODY, "retry_after": reset_after, "global": False}
            raise error
        return headers

    # ---------------------------------------------------------------------------------- gateway

    async def _handle_gateway(self, request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        self._sockets.add(ws)
        session: _Session | None = None
        try:
            await self._send(ws, {"op": 10, "d": {"heartbeat_interval": HEARTBEAT_INTERVAL_MS}})
            async for msg in ws:
                if msg.type is WSMsgType.TEXT:
                    session = await self._on_frame(ws, session, msg.data)
        finally:
            self._sockets.discard(ws)
            if session is not None and session.ws is ws:
                session.ws = None
            self._notify()
        return ws

    async def _on_frame(self, ws: web.WebSocketResponse, session: _Session | None, raw: str) -> _Session | None:
        try:
            frame = json.loads(raw)
            self.gateway_frames.append(frame)
            self._notify()
            op, data = frame.get("op"), frame.get("d")
            if op == 1:
                await self._send(ws, {"op": 11})
            elif op == 2:
                session = await self._identify(ws, data)
            elif op == 6:
                session = await self._resume(ws, data)
            elif op == 8 and session is not None:
                await self._emit(session, "GUILD_MEMBERS_CHUNK", self._members_chunk(data))
        except Exception as exc:
            log.exception("fake gateway failed on frame %r", raw)
            self.unhandled.append(f"gateway frame {raw[:200]}: {exc!r}")
        return session

    async def _identify(self, ws: web.WebSocketResponse, data: Json) -> _Session:
        self.identify_payloads.append(data)
        session = _Session(id=f"fake-session-{len(self._sessions) + 1}", ws=ws)
        self._sessions[session.id] = session
        ready: Json = {
            "v": 10,
            "user": self._users[self.bot_user_id],
            "session_id": session.id,
            "resume_gateway_url": self.gateway_url,
            "guilds": [{"id": str(self.guild_id), "unavailable": True}],
            "application": {"id": str(self.app_id), "flags": 0},
            "private_channels": [],
            "relationships": [],
        }
        if "shard" in data:
            ready["shard"] = data["shard"]
        await self._emit(session, "READY", ready)
        await self._emit(session, "GUILD_CREATE", self.guild_payload())
        self.ready.set()
        return session

    async def _resume(self, ws: web.WebSocketResponse, data: Json) -> _Session | None:
        self.resume_payloads.append(data)
        session = self._sessions.get(data.get("session_id", ""))
        if session is None:
            await self._send(ws, {"op": 9, "d": False})  # invalid session: the client identifies again
            return None
        session.ws = ws
        for frame in [f for f in session.log if f["s"] > (data.get("seq") or 0)]:
            await self._send(ws, frame)
        await self._emit(session, "RESUMED", {})
        return session

    def _members_chunk(self, request: Json) -> Json:
        chunk: Json = {
            "guild_id": str(self.guild_id),
            "members": list(self._members.values()),
            "chunk_index": 0,
            "chunk_count": 1,
        }
        if request.get("nonce"):
            chunk["nonce"] = request["nonce"]
        return chunk

    async def _broadcast(self, event: str, data: Json) -> None:
        for session in list(self._sessions.values()):
            await self._emit(session, event, data)

    async def _emit(self, session: _Session, event: str, data: Json) -> None:
        session.seq += 1
        frame = {"op": 0, "t": event, "s": session.seq, "d": data}
        session.log.append(frame)
        if session.ws is not None:
            await self._send(session.ws, frame)

    async def _send(self, ws: web.WebSocketResponse, frame: Json) -> None:
        if ws.closed:
            return
        try:
            await ws.send_str(json.dumps(frame))
        except ConnectionError:
            log.debug("gateway socket went away while sending %s", frame.get("t") or frame.get("op"))


async def _read_body(request: web.Request) -> tuple[Any, list[UploadedFile]]:
    """JSON body, or multipart ``payload_json`` plus ``files[n]`` parts."""
    if request.content_type.startswith("multipart/"):
        return await _read_multipart(request)
    raw = await request.read()
    if not raw:
        return None, []
    try:
        return json.loads(raw), []
    except ValueError:
        raise ApiError(400, 50109, "The request body contains invalid JSON.") from None


async def _read_multipart(request: web.Request) -> tuple[Any, list[UploadedFile]]:
    payload: Any = None
    files: list[UploadedFile] = []
    reader = await request.multipart()
    while (part := await reader.next()) is not None:
        if not isinstance(part, BodyPartReader):
            continue
        data = bytes(await part.read())
        if part.name == "payload_json":
            payload = json.loads(data)
        else:
            content_type = part.headers.get(hdrs.CONTENT_TYPE, "")
            files.append(UploadedFile(part.name or "", part.filename or "", content_type, data))
    return payload, files


# --------------------------------------------------------------------------------------------------
# Client harness
# --------------------------------------------------------------------------------------------------


@asynccontextmanager
async def run_client(
    client: discord.Client,
    fake: FakeDiscord,
    token: str = "fake-token",  # noqa: S107
) -> AsyncIterator[None]:
    """Log ``client`` in against ``fake``, run ``connect()`` as a task until ready, and shut it down after.

    Raises if ``connect()`` ends before ready or dies with an exception while the block runs. Create the
    client with ``guild_ready_timeout=0.05`` (the default makes ``on_ready`` wait 2 s).
    """
    task: asyncio.Task[None] | None = None
    try:
        await client.login(token)
        task = asyncio.create_task(client.connect(), name="discord-client-connect")
        await _wait_ready(client, task)
        yield
    finally:
        await client.close()
        error = await _finish(task)
    if error is not None:
        raise RuntimeError("client.connect() died during the test") from error


async def _wait_ready(client: discord.Client, task: asyncio.Task[None]) -> None:
    ready = asyncio.create_task(client.wait_until_ready())
    done, _ = await asyncio.wait({ready, task}, timeout=READY_TIMEOUT, return_when=asyncio.FIRST_COMPLETED)
    if ready in done:
        return
    ready.cancel()
    await asyncio.gather(ready, return_exceptions=True)
    if task in done:
        raise RuntimeError("client.connect() ended before the client was ready") from task.exception()
    raise TimeoutError(f"client not ready after {READY_TIMEOUT}s")


async def _finish(task: asyncio.Task[None] | None) -> BaseException | None:
    if task is None:
        return None
    try:
        await asyncio.wait_for(task, timeout=10.0)
    except Exception as exc:
        return exc
    return None
