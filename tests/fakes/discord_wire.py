"""Wire-level pieces of the fake Discord: constants, records, Discord-shaped errors, small pure payload helpers.

Nothing here holds state; ``fake_discord``, ``discord_world``, ``discord_messages`` and ``discord_gateway``
build on it.
"""

from __future__ import annotations

import dataclasses
import io
import json
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import discord
from aiohttp import BodyPartReader, hdrs, web
from PIL import Image

Json = dict[str, Any]

API_PREFIX = "/api/v10"
DISCORD_EPOCH_MS = 1_420_070_400_000
TOKEN_LIFETIME = 15 * 60.0
HEARTBEAT_INTERVAL_MS = 41_250
MAX_FILES = 10
MAX_CONTENT = 2000
MAX_NONCE_LENGTH = 25
DEFAULT_RETRY_AFTER = 0.1
RATE_LIMIT_BODY = "You are being rate limited."
VIA = {"Via": "1.1 google"}
DROPPED = 0  # Recorded.status of a request whose connection the fake closed without an answer

# Message flags.
SUPPRESS_EMBEDS = 1 << 2
EPHEMERAL = 1 << 6
LOADING = 1 << 7
SUPPRESS_NOTIFICATIONS = 1 << 12
COMPONENTS_V2 = 1 << 15
SETTABLE_FLAGS = SUPPRESS_EMBEDS | EPHEMERAL | SUPPRESS_NOTIFICATIONS | COMPONENTS_V2

# Gateway intents.
MESSAGE_CONTENT_INTENT = 1 << 15

# Permissions.
USE_EXTERNAL_APPS = 1 << 50
EVERYONE_PERMS = (
    discord.Permissions(
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
    | USE_EXTERNAL_APPS
)
MOD_PERMS = discord.Permissions(manage_messages=True).value
BOT_PERMS = EVERYONE_PERMS | discord.Permissions(manage_threads=True, manage_messages=True).value
# app_permissions Discord documents for DMs (receiving-and-responding.mdx, footnote *** of the interaction object):
# ATTACH_FILES | EMBED_LINKS | MENTION_EVERYONE in (G)DMs with other users, plus USE_EXTERNAL_EMOJIS in the bot's DM.
PRIVATE_CHANNEL_APP_PERMS = discord.Permissions(attach_files=True, embed_links=True, mention_everyone=True).value
BOT_DM_APP_PERMS = PRIVATE_CHANNEL_APP_PERMS | discord.Permissions(external_emojis=True).value  # = 442368

# Channel types.
GUILD_TEXT, DM, GROUP_DM, GUILD_ANNOUNCEMENT = 0, 1, 3, 5
PUBLIC_THREAD, PRIVATE_THREAD, GUILD_FORUM, GUILD_MEDIA = 11, 12, 15, 16
THREAD_TYPES = (10, PUBLIC_THREAD, PRIVATE_THREAD)
PRIVATE_TYPES = (DM, GROUP_DM)


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
    """One request the fake answered. ``path`` is below ``/api/v10`` (CDN downloads keep ``/cdn/...``).

    ``status`` is ``DROPPED`` (0) when the fake closed the connection instead of answering."""

    method: str
    path: str
    query: dict[str, str]
    json: Any = None
    files: list[UploadedFile] = field(default_factory=list)
    status: int = 0
    time: float = 0.0


@dataclass
class Call:
    """One routed REST request: its record, the path parameters, the headers."""

    rec: Recorded
    params: dict[str, str]
    headers: Mapping[str, str]

    @property
    def body(self) -> Json:
        return self.rec.json if isinstance(self.rec.json, dict) else {}

    def id(self, name: str) -> int:
        return int(self.params[name])


Handler = Callable[[Call], Awaitable[web.Response]]


class ApiError(Exception):
    """An error answer in Discord's JSON shape, raised from anywhere inside a handler."""

    def __init__(self, status: int, code: int, message: str, *, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(f"{status} {code} {message}")
        self.status = status
        self.code = code
        self.body: Any = {"code": code, "message": message}
        self.headers = dict(headers or {})

    def response(self) -> web.Response:
        return json_response(self.body, self.status, self.headers)


def json_response(body: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> web.Response:
    # Exactly "application/json": discord.py compares the header verbatim and ignores "; charset=...".
    return web.Response(status=status, body=json.dumps(body).encode(), content_type="application/json", headers=headers)


def no_content() -> web.Response:
    return web.Response(status=204)


def too_many(retry_after: float, headers: Mapping[str, str] | None = None) -> web.Response:
    body = {"message": RATE_LIMIT_BODY, "retry_after": retry_after, "global": False}
    return json_response(body, 429, {**VIA, **(headers or {})})


def invalid_form(message: str = "Invalid Form Body") -> ApiError:
    """400 / 50035, Discord's answer to any field that breaks a documented limit."""
    return ApiError(400, 50035, message)


# Access errors, from topics/opcodes-and-status-codes.mdx.
MISSING_ACCESS = (403, 50001, "Missing Access")
MISSING_PERMISSIONS = (403, 50013, "Missing Permissions")
UNKNOWN_CHANNEL = (404, 10003, "Unknown Channel")
ACCESS_ERRORS = {50001: MISSING_ACCESS, 50013: MISSING_PERMISSIONS, 10003: UNKNOWN_CHANNEL}


def access_error(code: int) -> ApiError:
    status, code, message = ACCESS_ERRORS[code]
    return ApiError(status, code, message)


# --------------------------------------------------------------------------------------------------
# Small pure helpers
# --------------------------------------------------------------------------------------------------


def snowflake(epoch_seconds: float, increment: int) -> int:
    return ((int(epoch_seconds * 1000) - DISCORD_EPOCH_MS) << 22) | (increment & 0x3FFFFF)


def snowflake_time(value: int) -> float:
    return ((value >> 22) + DISCORD_EPOCH_MS) / 1000


def iso(epoch_seconds: float | None = None) -> str:
    return datetime.fromtimestamp(time.time() if epoch_seconds is None else epoch_seconds, UTC).isoformat()


def user_object(user_id: int, name: str, *, bot: bool = False) -> Json:
    user: Json = {"id": str(user_id), "username": name, "global_name": name, "discriminator": "0", "avatar": None}
    if bot:
        user["bot"] = True
    return user


def image_size(data: bytes) -> tuple[int, int] | None:
    try:
        with Image.open(io.BytesIO(data)) as image:
            return image.size
    except Exception:  # not an image (or one Pillow cannot read): Discord then omits width/height
        return None


def upload_index(field_name: str) -> int | None:
    match = re.fullmatch(r"files\[(\d+)\]", field_name)
    return int(match[1]) if match else None


def shard_of(guild_id: int | None, shard_count: int) -> int:
    """events/gateway.mdx "Sharding Formula"; events without a guild (DMs) belong to shard 0."""
    return 0 if guild_id is None else (guild_id >> 22) % shard_count


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


def validate_message(message: Json) -> None:
    """Discord's checks on a message about to be created or after an edit."""
    if len(message["content"]) > MAX_CONTENT:
        raise invalid_form(f"content: Must be {MAX_CONTENT} or fewer in length.")
    if len(message["embeds"]) > 10:
        raise invalid_form("embeds: Must be 10 or fewer in length.")
    if any(problem := _embed_problem(e) for e in message["embeds"]):
        raise invalid_form(f"embeds: {problem}")
    keys = ("content", "embeds", "attachments", "components", "poll", "sticker_items")
    if not any(message.get(key) for key in keys):
        raise ApiError(400, 50006, "Cannot send an empty message")


async def read_body(request: web.Request) -> tuple[Any, list[UploadedFile]]:
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
