"""A fake Discord on 127.0.0.1 for end-to-end tests of a real, unmodified discord.py client.

One aiohttp app serves REST under ``/api/v10``, the websocket gateway at ``/gateway/`` and attachment
bytes under ``/cdn/``. ``FakeDiscord.patch_discord`` points discord.py at it by setting
``discord.http.Route.BASE`` and ``DiscordWebSocket.DEFAULT_GATEWAY``; nothing else in discord.py is
touched. Every REST request is recorded (``FakeDiscord.requests``) and the state the bot changed
(messages, threads, synced commands) is kept for assertions. The wire formats follow what discord.py
2.7 reads, including its pitfalls (exact ``application/json`` content type, ``Via`` on 429s, ...).

Modules: ``discord_wire`` (constants, records, errors), ``discord_world`` (guilds, channels, permissions),
``discord_messages`` (messages, attachments, the Message Content intent), ``discord_components`` (Components V2
and modals), ``discord_interactions`` (interaction payloads, callbacks, followups), ``discord_gateway`` (sessions,
shards). This one: the ``FakeDiscord`` facade (world knobs, builders, faults, queries), the bot-token REST
handlers, and ``run_client``. Every public name stays importable from here.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import re
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Self, Unpack

import discord
import pytest
import yarl
from aiohttp import web

from tests.fakes.discord_components import message_text, modal_submission
from tests.fakes.discord_gateway import Gateway
from tests.fakes.discord_interactions import Interactions, Where
from tests.fakes.discord_messages import MessageStore
from tests.fakes.discord_wire import (
    API_PREFIX,
    BOT_PERMS,
    COMPONENTS_V2,
    DEFAULT_RETRY_AFTER,
    DROPPED,
    EPHEMERAL,
    EVERYONE_PERMS,
    MAX_FILES,
    MOD_PERMS,
    PRIVATE_TYPES,
    RATE_LIMIT_BODY,
    THREAD_TYPES,
    VIA,
    ApiError,
    Call,
    Handler,
    Json,
    Recorded,
    UploadedFile,
    invalid_form,
    json_response,
    no_content,
    read_body,
    too_many,
)
from tests.fakes.discord_world import FakeGuild, Snowflakes, World, member_object

__all__ = (
    "BOT_PERMS",
    "COMPONENTS_V2",
    "DROPPED",
    "EPHEMERAL",
    "GATEWAY_MESSAGE_CONTENT",
    "GATEWAY_MESSAGE_CONTENT_LIMITED",
    "FakeDiscord",
    "FakeGuild",
    "Json",
    "Recorded",
    "UploadedFile",
    "Where",
    "message_text",
    "run_client",
)

log = logging.getLogger(__name__)

READY_TIMEOUT = 10.0
POLL_INTERVAL = 0.02
LOCALES = frozenset(locale.value for locale in discord.Locale)

# Application flags (resources/application.mdx): the Message Content intent, approved or (under 100 servers) limited.
GATEWAY_MESSAGE_CONTENT = 1 << 18
GATEWAY_MESSAGE_CONTENT_LIMITED = 1 << 19

_CALLBACK_PATH = re.compile(r"/interactions/\d+/[^/]+/callback")
_CDN_PATH = re.compile(r"/cdn/(?:media/)?attachments/(?P<channel>\d+)/(?P<att>\d+)/[^/]+")


# --------------------------------------------------------------------------------------------------
# Internal records
# --------------------------------------------------------------------------------------------------


@dataclass
class _Failure:
    method: str
    pattern: re.Pattern[str]
    status: int
    body: Any
    headers: dict[str, str]
    times: int
    disconnect: bool = False
    applied: bool = False

    def response(self) -> web.Response:
        if self.status == 429 and self.body is None:
            return too_many(DEFAULT_RETRY_AFTER, self.headers)
        if isinstance(self.body, str):
            return web.Response(status=self.status, text=self.body, content_type="text/html", headers=self.headers)
        body = self.body if self.body is not None else {"code": 0, "message": f"{self.status}: injected failure"}
        headers = {**VIA, **self.headers} if self.status == 429 else self.headers
        return json_response(body, self.status, headers)


@dataclass
class _Window:
    start: float
    count: int = 0


def _moved(where: Where, channel_id: int) -> Where:
    moved = where.copy()
    moved["channel_id"] = channel_id
    return moved


class _Disconnect(Exception):
    """Close the connection without an answer (``fail_next(..., disconnect=True)``)."""


# --------------------------------------------------------------------------------------------------
# FakeDiscord
# --------------------------------------------------------------------------------------------------


class FakeDiscord:
    """Fake Discord REST + gateway + CDN. Use ``async with FakeDiscord() as fake: fake.patch_discord(mp)``."""

    app_id = 1_000_000_000_000_000_001
    bot_user_id = 1_000_000_000_000_000_002
    guild_id = 1_000_000_000_000_000_010  # on shard 1 of 2
    channel_id = 1_000_000_000_000_000_020
    nsfw_channel_id = 1_000_000_000_000_000_021
    forum_channel_id = 1_000_000_000_000_000_022
    forum_or_no_thread_channel_id = forum_channel_id
    mod_role_id = 1_000_000_000_000_000_030
    bot_role_id = 1_000_000_000_000_000_031
    owner_id = 1_000_000_000_000_000_040
    other_user_id = 1_000_000_000_000_000_041
    mod_user_id = 1_000_000_000_000_000_042
    external_guild_id = 1_000_000_000_000_000_050  # a guild whose members installed the app; the bot is not in it
    external_channel_id = 1_000_000_000_000_000_051

    def __init__(
        self,
        *,
        ack_deadline: float = 3.0,
        attachment_size_limit: int = 10 * 1024 * 1024,
        edit_rate: tuple[int, float] = (5, 5.0),
        nonce_window: float = 300.0,
        recommended_shards: int = 1,
        max_concurrency: int = 1,
        port: int = 0,
    ) -> None:
        self.port = port  # 0: any free port
        self.edit_rate = edit_rate
        self.recommended_shards = recommended_shards  # GET /gateway/bot "shards"
        self.max_concurrency = max_concurrency  # GET /gateway/bot "session_start_limit.max_concurrency"
        self.threads_allowed = True
        self.token: str | None = None  # set: bot-token requests with another token get 401, as from Discord
        self.app_flags = GATEWAY_MESSAGE_CONTENT_LIMITED  # GET /oauth2/applications/@me "flags"
        self.interactions_endpoint_url: str | None = None
        self.base_url = self.api_url = self.gateway_url = ""

        self.requests: list[Recorded] = []
        self.unhandled: list[str] = []
        self.commands: dict[int | None, list[Json]] = {}  # last sync, by guild id (None = global)
        self.rate_limited = 0

        self.ids = Snowflakes()
        self.world = World(self.ids, self.bot_user_id)
        self.store = MessageStore(self.world, self.ids, self._announce, self._now)
        self.store.nonce_window = nonce_window
        self.gateway = Gateway(self.world, self.store, self.app_id, self._notify, self.unhandled)
        self.interactions = Interactions(
            self.world,
            self.store,
            self.ids,
            self._now,
            app_id=self.app_id,
            default_user_id=self.owner_id,
            default_channel_id=self.channel_id,
        )
        self.ack_deadline = ack_deadline
        self.attachment_size_limit = attachment_size_limit
        self.modals = self.interactions.modals  # type-9 callback data by modal custom_id
        self.messages = self.store.messages  # created by the bot over REST (incl. interaction responses)
        self.user_messages = self.store.user_messages  # added by the test with add_message()
        self.deleted_messages = self.store.deleted
        self.undisplayed_attachments = self.store.undisplayed  # V2 message id -> filenames no component shows
        self.threads = self.world.threads
        self.identify_payloads = self.gateway.identify_payloads
        self.resume_payloads = self.gateway.resume_payloads
        self.gateway_frames = self.gateway.frames  # everything the clients sent on the gateway
        self.ready = self.gateway.ready

        self._command_ids: dict[tuple[int | None, str, int], int] = {}
        self._failures: list[_Failure] = []
        self._delays: list[tuple[str, re.Pattern[str], float]] = []
        self._closing = asyncio.Event()
        self._windows: dict[tuple[str, str], _Window] = {}
        self._changed = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self.peak_connections = 0  # the most client connections (REST, gateway, CDN) open at one request's arrival
        self._build_world()
        self._routes = self._build_routes()

    @property
    def ack_deadline(self) -> float:
        """Seconds an interaction may wait for its callback (Discord: 3); later ones answer 404 10062."""
        return self.interactions.ack_deadline

    @ack_deadline.setter
    def ack_deadline(self, seconds: float) -> None:
        self.interactions.ack_deadline = seconds

    @property
    def attachment_size_limit(self) -> int:
        """Bytes per uploaded file (413 / 40005 above it); sent as ``attachment_size_limit`` in interactions."""
        return self.interactions.attachment_size_limit

    @attachment_size_limit.setter
    def attachment_size_limit(self, size: int) -> None:
        self.interactions.attachment_size_limit = size

    @property
    def nonce_window(self) -> float:
        """Seconds during which a repeated ``enforce_nonce`` create returns the first message."""
        return self.store.nonce_window

    @nonce_window.setter
    def nonce_window(self, seconds: float) -> None:
        self.store.nonce_window = seconds

    # ---------------------------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        app = web.Application(client_max_size=2**31)
        app.router.add_route("*", API_PREFIX + "/{tail:.*}", self._handle_api)
        app.router.add_get("/gateway/", self.gateway.handle)
        app.router.add_get("/cdn/{tail:.*}", self._handle_cdn)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=2.0)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
        port = self.port = self._runner.addresses[0][1]
        self.base_url = self.store.base_url = f"http://127.0.0.1:{port}"
        self.api_url = self.base_url + API_PREFIX
        self.gateway_url = self.gateway.url = f"ws://127.0.0.1:{port}/gateway/"

    async def close(self) -> None:
        self._closing.set()  # ends delay_next() waits
        await self.gateway.close()
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

    # ------------------------------------------------------------------------------------- world

    def _build_world(self) -> None:
        world = self.world
        world.add_user(self.bot_user_id, "Kontext", bot=True)
        for user_id, name in (
            (self.owner_id, "owner"),
            (self.other_user_id, "member"),
            (self.mod_user_id, "moderator"),
        ):
            world.add_user(user_id, name)
        people = [self.owner_id, self.other_user_id, self.mod_user_id]
        guild = world.add_guild(
            self.guild_id, "Fake Guild", self.owner_id, member_ids=people, bot_role_id=self.bot_role_id
        )
        world.add_role(guild, self.mod_role_id, "Mods", EVERYONE_PERMS | MOD_PERMS, [self.mod_user_id], position=1)
        world.add_channel(guild, self.channel_id, "general", 0)
        world.add_channel(guild, self.nsfw_channel_id, "after-dark", 0, nsfw=True)
        world.add_channel(guild, self.forum_channel_id, "gallery", 15)
        outside = world.add_guild(
            self.external_guild_id, "Elsewhere", self.other_user_id, member_ids=people[:2], bot_member=False
        )
        world.add_channel(outside, self.external_channel_id, "lobby", 0)

    @property
    def _users(self) -> dict[int, Json]:  # kept for bench/world.py
        return self.world.users

    @property
    def _members(self) -> dict[int, Json]:  # kept for bench/world.py: the main guild's members
        return self.world.guilds[self.guild_id].members

    @staticmethod
    def _member(user: Json, roles: list[int]) -> Json:  # kept for bench/world.py
        return member_object(user, roles)

    def add_user(self, user_id: int, name: str, *, guild_ids: Iterable[int] | None = None) -> Json:
        """A user, member of the main guild (or of ``guild_ids``)."""
        user = self.world.add_user(user_id, name)
        for guild_id in [self.guild_id] if guild_ids is None else guild_ids:
            self.world.guilds[guild_id].members[user_id] = member_object(user, [])
        return user

    def add_guild(
        self,
        name: str = "Another Guild",
        *,
        shard: int | None = None,
        shard_count: int = 2,
        bot_member: bool = True,
        locale: str = "en-US",
        member_ids: Sequence[int] | None = None,
    ) -> FakeGuild:
        """A guild with a "general" text channel (``.text_channel_id``); ``shard`` picks an id on that shard of
        ``shard_count``. Add it before the bot connects (or dispatch GUILD_CREATE with ``guild_payload``)."""
        guild_id = self.ids.new() if shard is None else self.ids.on_shard(shard, shard_count)
        members = list(member_ids) if member_ids is not None else [self.owner_id, self.other_user_id, self.mod_user_id]
        guild = self.world.add_guild(
            guild_id, name, self.owner_id, member_ids=members, bot_member=bot_member, locale=locale
        )
        self.world.add_channel(guild, self.ids.new(), "general", 0)
        return guild

    def add_channel(self, guild_id: int, name: str, kind: int = 0, *, nsfw: bool = False) -> Json:
        return self.world.add_channel(self.world.guilds[guild_id], self.ids.new(), name, kind, nsfw=nsfw)

    def add_thread(self, parent_id: int, name: str = "thread", *, owner_id: int | None = None, private: bool = False,
                   content: str = "first post") -> Json:  # fmt: skip
        """A thread someone else started: in a text channel (type 11, or 12 if ``private``), or a forum post (type 11
        in a forum, with its starter message, id = thread id, saying ``content``). Not announced: add it before the
        bot connects, or dispatch THREAD_CREATE with it."""
        parent = self.world.channel(parent_id)
        owner = owner_id or self.owner_id
        thread_id = self.ids.new()
        thread = self.world.thread_object(parent, thread_id, name, 12 if private else 11, owner)
        self.world.store_thread(thread)
        if parent["type"] == 15:
            starter = self.store.skeleton(thread_id, owner, content=content)
            starter["id"] = str(thread_id)
            self.store.add_user_message(starter)
        return thread

    def dm_channel(self, user_id: int | None = None, *, other_user_id: int | None = None) -> Json:
        """The DM channel (type 1) between the bot and ``user_id`` (default the owner); with ``other_user_id``, a
        DM between two users that the bot is not part of (user-installed apps only, interaction context 2)."""
        user = user_id or self.owner_id
        return self.world.dm_channel([user, other_user_id or self.bot_user_id])

    def deny_channel(self, channel_id: int, code: int = 50001) -> None:
        """The bot may not use the channel (or thread, and a channel's threads): its REST calls there answer 403
        ``code`` (50001 Missing Access: no View Channel; 50013 Missing Permissions), ``app_permissions`` of
        interactions from there lack those permissions, and interactions and their webhooks keep working."""
        self.world.refuse(channel_id, code)

    def allow_channel(self, channel_id: int) -> None:
        self.world.allow(channel_id)

    def remove_channel(self, channel_id: int) -> Json:
        """The channel no longer exists: REST calls on it answer 404 10003 Unknown Channel. Returns the channel
        (dispatch CHANNEL_DELETE with it to tell the bot)."""
        return self.world.remove_channel(channel_id)

    def guild_payload(self, guild_id: int | None = None) -> Json:
        """The full guild object as sent in GUILD_CREATE."""
        return self.world.guild_payload(self.world.guilds[guild_id or self.guild_id])

    def _app_info(self) -> Json:
        return {
            "id": str(self.app_id),
            "name": "Kontext",
            "icon": None,
            "description": "",
            "rpc_origins": [],
            "bot_public": True,
            "bot_require_code_grant": False,
            "owner": self.world.users[self.owner_id],
            "verify_key": "0" * 64,
            "team": None,
            "flags": self.app_flags,
            "interactions_endpoint_url": self.interactions_endpoint_url,
            "bot": self.world.users[self.bot_user_id],
            "integration_types_config": {"0": {}, "1": {}},
        }

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
        attachment = self.store.new_attachment(
            self.channel_id, filename, data, content_type, width=width, height=height
        )
        if size is not None:
            attachment["size"] = size
        return attachment

    def expire_attachment(self, attachment: Json) -> None:
        """Make the attachment's URLs answer 404 until refreshed through POST /attachments/refresh-urls."""
        self.store.expired_files.add(int(attachment["id"]))

    def add_message(
        self,
        channel_id: int,
        *,
        content: str = "",
        author_id: int | None = None,
        attachments: Sequence[Json] = (),
        embeds: Sequence[Json] = (),
        components: Sequence[Json] = (),
        referenced_message_id: int | None = None,
    ) -> Json:
        """A message by a user (default: the owner), fetchable over REST and listed in the history."""
        message = self.store.skeleton(
            channel_id,
            author_id or self.owner_id,
            content=content,
            attachments=list(attachments),
            embeds=list(embeds),
            components=list(components),
        )
        if referenced_message_id is not None:
            message.update(self.store.reply_fields(channel_id, {"message_id": str(referenced_message_id)}))
        self.store.add_user_message(message)
        return message

    def slash(
        self, name: str, options: list[Json], *, attachments: Sequence[Json] = (), **where: Unpack[Where]
    ) -> Json:
        """INTERACTION_CREATE data for a chat-input command; attachment options are resolved."""
        data = self._command_data(name, 1)
        data["options"] = options
        resolved = {a["id"]: {**a, "ephemeral": True} for a in [*attachments, *self._option_attachments(options)]}
        if resolved:
            data["resolved"] = {"attachments": resolved}
        for kind, objects in self._option_objects(options).items():
            data.setdefault("resolved", {})[kind] = objects
        return self.interactions.build(2, data, where, 20)

    def _option_objects(self, options: Iterable[Json]) -> dict[str, Json]:
        """Channel (type 7) and role (type 8) options resolved as Discord sends them: partial channels with the
        bot's permissions there, and role objects (subcommand options included)."""
        found: dict[str, Json] = {}
        for option in options:
            for kind, objects in self._option_objects(option.get("options", [])).items():
                found.setdefault(kind, {}).update(objects)
            if option.get("type") == 7:
                channel = self.world.channel(int(option["value"]))
                partial = self.world.partial_channel(channel, self.world.app_permissions(channel))
                found.setdefault("channels", {})[str(option["value"])] = partial
            elif option.get("type") == 8:
                role = next(g.roles[int(option["value"])] for g in self.world.guilds.values()
                            if int(option["value"]) in g.roles)  # fmt: skip
                found.setdefault("roles", {})[str(option["value"])] = role
        return found

    def message_command(self, name: str, message: Json, **where: Unpack[Where]) -> Json:
        """INTERACTION_CREATE data for a message context menu on ``message`` (its current state is sent, with
        content even without the Message Content intent)."""
        message = self.store.find(int(message["id"])) or message
        data = self._command_data(name, 3)
        data.update(target_id=message["id"], resolved={"messages": {message["id"]: message}})
        return self.interactions.build(2, data, _moved(where, int(message["channel_id"])), 23)

    def button(self, custom_id: str, message: Json, **where: Unpack[Where]) -> Json:
        """INTERACTION_CREATE data for a button press on ``message`` (its current state is sent)."""
        message = self.store.find(int(message["id"])) or message
        data = {"custom_id": custom_id, "component_type": 2}
        return self.interactions.build(3, data, _moved(where, int(message["channel_id"])), 0, message=message)

    def modal_submit(
        self, custom_id: str, values: Mapping[str, Any], *, message: Json | None = None, **where: Unpack[Where]
    ) -> Json:
        """INTERACTION_CREATE data for submitting the modal ``custom_id``. ``values`` by input custom_id: a str for a
        Text Input, a list of option values for a select, a list of ``add_attachment()`` objects for a File Upload
        (they land in ``data.resolved.attachments``). The submission mirrors the modal the bot opened (Labels,
        rows, ids; untouched inputs send their pre-filled value); an unknown modal gets legacy rows."""
        modal = self.modals.get(custom_id)
        if modal is not None:
            components = modal_submission(modal, values)
        else:
            components = [
                {"type": 1, "components": [{"type": 4, "custom_id": k, "value": v}]} for k, v in values.items()
            ]
        data: Json = {"custom_id": custom_id, "components": components}
        uploads = [f for v in values.values() if isinstance(v, list) for f in v if isinstance(f, dict)]
        if uploads:
            data["resolved"] = {"attachments": {f["id"]: {**f, "ephemeral": True} for f in uploads}}
        if message is not None and not where.get("channel_id"):
            where = _moved(where, int(message["channel_id"]))
        return self.interactions.build(5, data, where, 0, message=message)

    def reaction_add(self, message: Json, emoji: str, *, user_id: int | None = None) -> Json:
        """MESSAGE_REACTION_ADD data (not dispatched) and the reaction counted on the stored message."""
        user = user_id or self.owner_id
        name, _, emoji_id = emoji.partition(":")
        self.store.react(int(message["id"]), emoji, delta=1, me=False)
        event: Json = {
            "user_id": str(user),
            "channel_id": message["channel_id"],
            "message_id": message["id"],
            "emoji": {"id": emoji_id or None, "name": name},
            "message_author_id": message["author"]["id"],
            "burst": False,
            "burst_colors": [],
            "type": 0,
        }
        if guild := self.world.guild_of(self.world.channel(int(message["channel_id"]))):
            event.update(guild_id=str(guild.id), member=guild.members[user])
        return event

    def _command_data(self, name: str, kind: int) -> Json:
        for guild_id, commands in sorted(self.commands.items(), key=lambda kv: kv[0] is None):
            for command in commands:
                if command["name"] == name and command.get("type", 1) == kind:
                    data: Json = {"id": command["id"], "name": name, "type": kind}
                    if guild_id is not None:
                        data["guild_id"] = str(guild_id)
                    return data
        return {"id": str(self.ids.new()), "name": name, "type": kind}  # never synced: the bot won't know it

    def _option_attachments(self, options: Iterable[Json]) -> list[Json]:
        found = []
        for option in options:
            found += self._option_attachments(option.get("options", []))
            if option.get("type") == 11 and (known := self.store.attachment_objects.get(int(option["value"]))):
                found.append(known)
        return found

    # ---------------------------------------------------------------------- test-facing actions

    async def dispatch(self, event: str, data: Json) -> None:
        """Send a gateway DISPATCH to the session(s) of the shard owning the event's guild (queued for replay if
        a socket is down). MESSAGE_CREATE/UPDATE lose their content for sessions without the intent."""
        if not self.gateway.sessions:
            raise RuntimeError(f"cannot dispatch {event}: no client has identified on the gateway")
        await self.gateway.dispatch(event, data)

    async def interact(self, payload: Json) -> None:
        """Dispatch INTERACTION_CREATE and start the acknowledgement clock (``ack_deadline``)."""
        self.interactions.started(payload["token"])
        await self.dispatch("INTERACTION_CREATE", payload)

    def fail_next(
        self,
        method: str,
        path_regex: str,
        status: int = 0,
        body: Any = None,
        *,
        headers: dict[str, str] | None = None,
        times: int = 1,
        disconnect: bool = False,
        applied: bool = False,
    ) -> None:
        """Answer the next ``times`` matching requests with ``status`` (429s get ``Via`` + ``retry_after``).

        ``disconnect=True``: close the TCP connection instead of answering (aiohttp raises
        ``ServerDisconnectedError`` in discord.py; ``Recorded.status`` is ``DROPPED``). With ``applied=True`` the
        request takes effect first (the message exists, the client does not know). aiohttp itself retries an
        idempotent request (GET, PUT, DELETE) once after such a drop: use ``times=2`` to make those fail."""
        if not disconnect and not status:
            raise ValueError("fail_next needs a status, or disconnect=True")
        pattern = re.compile(path_regex)
        failure = _Failure(method.upper(), pattern, status, body, dict(headers or {}), times, disconnect, applied)
        self._failures.append(failure)

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

    async def drop_gateway(self, code: int = 4000, *, resumable: bool = True, shard_id: int | None = None) -> None:
        """Close every gateway socket (or ``shard_id``'s) from the server side; discord.py reconnects and RESUMEs.

        With ``resumable=False`` the sessions are forgotten: the RESUME gets INVALID_SESSION and the client
        identifies again (READY, GUILD_CREATE and ``on_ready`` a second time).
        """
        await self.gateway.drop(code, resumable=resumable, shard_id=shard_id)

    # ------------------------------------------------------------------------ test-facing queries

    def channel_messages(self, channel_id: int) -> list[Json]:
        """Live, non-ephemeral messages in the channel (bot's and test-added), oldest first."""
        return self.store.channel_messages(channel_id)

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

    async def _announce(self, event: str, data: Json) -> None:
        await self.gateway.dispatch(event, data)

    # ---------------------------------------------------------------------------- REST plumbing

    def _build_routes(self) -> list[tuple[str, re.Pattern[str], Handler]]:
        app, channel = r"/applications/(?P<app>\d+)(?:/guilds/(?P<guild>\d+))?", r"/channels/(?P<channel>\d+)"
        message, hook = channel + r"/messages/(?P<message>\d+)", r"/webhooks/(?P<app>\d+)/(?P<token>[^/]+)"
        reaction, hook_message = (
            message + r"/reactions/(?P<emoji>[^/]+)",
            hook + r"/messages/(?P<message>@original|\d+)",
        )
        table: list[tuple[str, str, Handler]] = [
            ("GET", r"/users/@me", self._get_me),
            ("POST", r"/users/@me/channels", self._post_dm_channel),
            ("GET", r"/users/(?P<user>\d+)", self._get_user),
            ("GET", r"/oauth2/applications/@me", self._get_app),
            ("GET", r"/gateway", self._get_gateway),
            ("GET", r"/gateway/bot", self._get_gateway_bot),
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
            ("POST", r"/interactions/(?P<iid>\d+)/(?P<token>[^/]+)/callback", self.interactions.post_callback),
            ("POST", hook, self.interactions.post_followup),
            ("GET", hook_message, self.interactions.get_webhook_message),
            ("PATCH", hook_message, self.interactions.patch_webhook_message),
            ("DELETE", hook_message, self.interactions.delete_webhook_message),
        ]
        return [(method, re.compile(pattern), handler) for method, pattern, handler in table]

    async def _handle_api(self, request: web.Request) -> web.StreamResponse:
        rec = Recorded(request.method, request.path.removeprefix(API_PREFIX), dict(request.query))
        rec.time = self._now()
        if self._runner is not None and self._runner.server is not None:
            self.peak_connections = max(self.peak_connections, len(self._runner.server.connections))
        try:
            response = await self._answer(request, rec)
            rec.status = response.status
        except ApiError as exc:
            response = exc.response()
            rec.status = response.status
        except _Disconnect:
            if request.transport is not None:
                request.transport.close()
            response, rec.status = no_content(), DROPPED  # the response never reaches the client
        except Exception as exc:
            log.exception("fake Discord failed on %s %s", rec.method, rec.path)
            self.unhandled.append(f"{rec.method} {rec.path}: {exc!r}")
            response = json_response({"code": 0, "message": "500: Internal Server Error"}, 500)
            rec.status = response.status
        self.requests.append(rec)
        self._notify()
        return response

    async def _answer(self, request: web.Request, rec: Recorded) -> web.Response:
        rec.json, rec.files = await read_body(request)
        failure = self._take_failure(rec)
        if failure is not None and not failure.applied:
            if failure.disconnect:
                raise _Disconnect
            return failure.response()
        handler, params = self._route(rec.method, rec.path)
        if handler is None:
            self.unhandled.append(f"{rec.method} {rec.path}")
            return json_response({"code": 0, "message": "404: Not Found"}, 404)
        is_interaction = rec.path.startswith(("/interactions/", "/webhooks/"))
        if not is_interaction:
            self._check_bot_request(request, params)
        self._check_uploads(rec.files)
        headers = self._take_rate_limit(rec)
        response = await handler(Call(rec, params, request.headers))
        if failure is not None:  # applied: the request took effect, its answer is lost
            raise _Disconnect
        response.headers.update(headers)
        if self._delays:
            self.requests.append(rec)  # visible while the answer is held back
            self._notify()
            await self._delay_answer(rec)
            self.requests.remove(rec)
        return response

    def _check_bot_request(self, request: web.Request, params: Mapping[str, str]) -> None:
        """Bot-token routes: authorization, then the bot's access to the channel or guild named in the path.
        Interaction callbacks and webhooks skip this: they work wherever the interaction came from."""
        authorization = request.headers.get("Authorization")
        if authorization is None or (self.token is not None and authorization != f"Bot {self.token}"):
            raise ApiError(401, 0, "401: Unauthorized")
        if "channel" in params:
            self.world.check_bot_access(int(params["channel"]))
        elif "guild" in params:
            self.world.guild_or_error(int(params["guild"]))

    def _route(self, method: str, path: str) -> tuple[Handler | None, dict[str, str]]:
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
        stored = self.store.files.get(att_id)
        if stored is None or (att_id in self.store.expired_files and request.query.get("refreshed") != "1"):
            response = web.Response(status=404, text="This content is no longer available.")
        else:
            response = web.Response(body=stored[0], content_type=stored[1])
        rec.status = response.status
        self.requests.append(rec)
        self._notify()
        return response

    # -------------------------------------------------------------------- REST: startup and guild

    async def _get_me(self, call: Call) -> web.Response:
        return json_response(self.world.users[self.bot_user_id])

    async def _get_user(self, call: Call) -> web.Response:
        if (user := self.world.users.get(call.id("user"))) is None:
            raise ApiError(404, 10013, "Unknown User")
        return json_response(user)

    async def _post_dm_channel(self, call: Call) -> web.Response:
        recipient = int(call.body.get("recipient_id") or 0)
        if recipient not in self.world.users:
            raise invalid_form("recipient_id: Unknown user")
        return json_response(self.world.dm_channel([self.bot_user_id, recipient]))

    async def _get_app(self, call: Call) -> web.Response:
        return json_response(self._app_info())

    async def _get_gateway(self, call: Call) -> web.Response:
        return json_response({"url": self.gateway_url})

    async def _get_gateway_bot(self, call: Call) -> web.Response:
        """events/gateway.mdx "Get Gateway Bot": url, recommended shards, session start limit."""
        remaining = max(0, 1000 - len(self.identify_payloads))
        limit = {
            "total": 1000,
            "remaining": remaining,
            "reset_after": 14_400_000,
            "max_concurrency": self.max_concurrency,
        }
        return json_response({"url": self.gateway_url, "shards": self.recommended_shards, "session_start_limit": limit})

    async def _put_commands(self, call: Call) -> web.Response:
        guild_id = call.id("guild") if "guild" in call.params else None
        if call.id("app") != self.app_id:
            raise ApiError(403, 50001, "Missing Access")
        if not isinstance(call.rec.json, list):
            raise invalid_form()
        for index, command in enumerate(call.rec.json):
            _check_localizations(command, f"{index}")
        self.commands[guild_id] = [self._command(guild_id, c) for c in call.rec.json]
        return json_response(self.commands[guild_id])

    def _command(self, guild_id: int | None, command: Json) -> Json:
        """The stored command as Discord echoes it (application-commands.mdx, Bulk Overwrite ... Commands):
        localization dictionaries (null when absent), ``integration_types`` default [0] (GUILD_INSTALL),
        ``contexts`` default [0, 1, 2]; options, their localizations and choices are kept as sent."""
        key = (guild_id, command["name"], command.get("type", 1))
        command_id = self._command_ids.setdefault(key, self.ids.new())  # ids are stable across syncs
        echoed: Json = {
            "type": 1,
            "description": "",
            "options": [],
            "default_member_permissions": None,
            "dm_permission": True,
            "nsfw": False,
            **command,
            "id": str(command_id),
            "application_id": str(self.app_id),
            "version": str(self.ids.new()),
        }
        for key_name, default in (("name_localizations", None), ("description_localizations", None)):
            echoed.setdefault(key_name, default)
        echoed["integration_types"] = command.get("integration_types") or [0]
        echoed["contexts"] = command.get("contexts") or [0, 1, 2]
        if guild_id is not None:
            echoed["guild_id"] = str(guild_id)
        return echoed

    async def _get_commands(self, call: Call) -> web.Response:
        """Without ``with_localizations=true`` Discord drops the dictionaries and sends ``name_localized`` /
        ``description_localized`` for the ``X-Discord-Locale`` header (application-commands.mdx "Retrieving
        localized commands")."""
        commands = self.commands.get(call.id("guild") if "guild" in call.params else None, [])
        if call.rec.query.get("with_localizations", "").lower() in ("1", "true"):
            return json_response(commands)
        locale = call.headers.get("X-Discord-Locale")
        return json_response([_localized(c, locale) for c in commands])

    async def _get_guild(self, call: Call) -> web.Response:
        return json_response(self.world.guild_rest_payload(self.world.guild_or_error(call.id("guild"))))

    async def _get_guild_channels(self, call: Call) -> web.Response:
        guild = self.world.guild_or_error(call.id("guild"))
        return json_response(self.world.guild_payload(guild)["channels"])

    async def _get_member(self, call: Call) -> web.Response:
        guild = self.world.guild_or_error(call.id("guild"))
        if (member := guild.members.get(call.id("user"))) is None:
            raise ApiError(404, 10007, "Unknown Member")
        return json_response(member)

    async def _refresh_urls(self, call: Call) -> web.Response:
        urls = call.body.get("attachment_urls")
        if not isinstance(urls, list):
            raise invalid_form("attachment_urls: This field is required")
        refreshed = [{"original": u, "refreshed": u + ("&" if "?" in u else "?") + "refreshed=1"} for u in urls]
        return json_response({"refreshed_urls": refreshed})

    # --------------------------------------------------------------------------- REST: channels

    def _visible(self, message: Json) -> Json:
        return self.store.visible(message, message_content=self.gateway.message_content)

    async def _get_channel(self, call: Call) -> web.Response:
        return json_response(self.world.channel(call.id("channel")))

    async def _post_typing(self, call: Call) -> web.Response:
        return no_content()

    async def _get_history(self, call: Call) -> web.Response:
        query = call.rec.query
        limit = int(query.get("limit", 50))
        if not 1 <= limit <= 100:
            raise invalid_form("limit: int value should be less than or equal to 100.")
        ids = sorted(self.store.channel_log.get(call.id("channel"), []))
        if "before" in query:
            ids = [i for i in ids if i < int(query["before"])][-limit:]
        elif "after" in query:
            ids = [i for i in ids if i > int(query["after"])][:limit]
        elif "around" in query:
            pivot = int(query["around"])
            ids = [i for i in ids if i < pivot][-(limit // 2) :] + [i for i in ids if i >= pivot][: limit - limit // 2]
        else:
            ids = ids[-limit:]
        found = [m for i in reversed(ids) if (m := self.store.find(i))]  # newest first, like Discord
        return json_response([self._visible(m) for m in found])

    async def _get_message(self, call: Call) -> web.Response:
        return json_response(self._visible(self.store.in_channel(call.id("channel"), call.id("message"))))

    async def _post_message(self, call: Call) -> web.Response:
        channel = self.world.channel(call.id("channel"))
        if channel["type"] in (4, 15, 16):
            raise ApiError(400, 50008, "Cannot send messages in a non-text channel")
        if (earlier := self.store.nonce_match(self.bot_user_id, call.body)) is not None:
            return json_response({**earlier, "nonce": call.body["nonce"]})  # enforce_nonce: nothing new is created
        message = await self.store.create(call.id("channel"), call.body, call.rec.files)
        if call.body.get("nonce") is not None:
            self.store.remember_nonce(self.bot_user_id, call.body["nonce"], int(message["id"]))
        return json_response(message)

    async def _patch_message(self, call: Call) -> web.Response:
        message = self.store.in_channel(call.id("channel"), call.id("message"))
        if message["author"]["id"] != str(self.bot_user_id):
            raise ApiError(403, 50005, "Cannot edit a message authored by another user")
        return json_response(await self.store.edit(message, call.body, call.rec.files))

    async def _delete_message(self, call: Call) -> web.Response:
        await self.store.remove(self.store.in_channel(call.id("channel"), call.id("message")))
        return no_content()

    @staticmethod
    def _check_thread_parent(channel: Json, allowed: tuple[int, ...]) -> None:
        """Threads start only in text/announcement channels (and forums for posts): 50003 in a DM, 50024 in a
        thread or any other type (topics/opcodes-and-status-codes.mdx)."""
        if channel["type"] in PRIVATE_TYPES:
            raise ApiError(400, 50003, "Cannot execute action on a DM channel")
        if channel["type"] in THREAD_TYPES or channel["type"] not in allowed:
            raise ApiError(400, 50024, "Cannot execute action on this channel type")

    async def _post_message_thread(self, call: Call) -> web.Response:
        channel = self.world.channel(call.id("channel"))
        self._check_thread_parent(channel, (0, 5))
        message = self.store.in_channel(call.id("channel"), call.id("message"))
        if not self.threads_allowed:
            raise ApiError(403, 50013, "Missing Permissions")
        if call.id("message") in self.threads:
            raise ApiError(400, 160004, "A thread has already been created for this message")
        thread = await self._create_thread(channel, call.body, thread_id=call.id("message"), kind=11)
        self.store.store({**message, "thread": thread}, by_bot=message["author"]["id"] == str(self.bot_user_id))
        return json_response(thread, 201)

    async def _post_thread(self, call: Call) -> web.Response:
        channel = self.world.channel(call.id("channel"))
        self._check_thread_parent(channel, (0, 5, 15))
        if not self.threads_allowed:
            raise ApiError(403, 50013, "Missing Permissions")
        is_forum = channel["type"] == 15
        thread = await self._create_thread(channel, call.body, thread_id=self.ids.new(), kind=11 if is_forum else 12)
        if is_forum:  # a forum post starts with a message whose id is the thread id
            starter = call.body.get("message") or {}
            await self.store.create(int(thread["id"]), starter, call.rec.files, message_id=int(thread["id"]))
            return json_response({**thread, "message": self.store.find(int(thread["id"]))}, 201)
        return json_response(thread, 201)

    async def _create_thread(self, parent: Json, body: Json, *, thread_id: int, kind: int) -> Json:
        name = body.get("name")
        if not isinstance(name, str) or not 1 <= len(name) <= 100:
            raise invalid_form("name: Must be between 1 and 100 in length.")
        extra = {
            "auto_archive_duration": body.get("auto_archive_duration"),
            "rate_limit_per_user": int(body.get("rate_limit_per_user") or 0),
        }
        thread = self.world.thread_object(
            parent, thread_id, name, int(body.get("type", kind)), self.bot_user_id, **extra
        )
        self.world.store_thread(thread)
        await self._announce("THREAD_CREATE", {**thread, "newly_created": True})
        return thread

    async def _put_reaction(self, call: Call) -> web.Response:
        self.store.in_channel(call.id("channel"), call.id("message"))
        self.store.react(call.id("message"), call.params["emoji"], delta=1, me=True)
        return no_content()

    async def _delete_reaction(self, call: Call) -> web.Response:
        self.store.in_channel(call.id("channel"), call.id("message"))
        self.store.react(call.id("message"), call.params["emoji"], delta=-1, me=call.params["user"] == "@me")
        return no_content()

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


# --------------------------------------------------------------------------------------------------
# Command localizations
# --------------------------------------------------------------------------------------------------


def _check_localizations(item: Json, path: str, name_limit: int = 32) -> None:
    """Keys must be Discord locales (reference.mdx "Locales"); values follow the field's own length rule (a choice's
    name takes 100 characters, a command's or option's 32)."""
    for key, high in (("name_localizations", name_limit), ("description_localizations", 100)):
        for locale, text in (item.get(key) or {}).items():
            if locale not in LOCALES:
                raise invalid_form(f"Invalid Form Body: {path}.{key}.{locale}: Invalid locale")
            if not isinstance(text, str) or not 1 <= len(text) <= high:
                raise invalid_form(f"Invalid Form Body: {path}.{key}.{locale}: Must be between 1 and {high} in length.")
    for index, option in enumerate(item.get("options") or []):
        _check_localizations(option, f"{path}.options.{index}")
    for index, choice in enumerate(item.get("choices") or []):
        _check_localizations(choice, f"{path}.choices.{index}", name_limit=100)


def _localized(item: Json, locale: str | None) -> Json:
    shown = {k: v for k, v in item.items() if k not in ("name_localizations", "description_localizations")}
    for key, single in (
        ("name_localizations", "name_localized"),
        ("description_localizations", "description_localized"),
    ):
        if locale and locale in (item.get(key) or {}):
            shown[single] = item[key][locale]
    for nested in ("options", "choices"):
        if nested in item:
            shown[nested] = [_localized(child, locale) for child in item[nested]]
    return shown


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
