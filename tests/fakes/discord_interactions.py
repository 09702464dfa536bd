"""Interactions in the fake Discord: the payloads of INTERACTION_CREATE for every place an interaction can come
from (guild channel, thread, forum post, DM, private channel, a guild only a user installed the app in), and the
interaction endpoints (callback, followups, ``@original``) with Discord's rules.

Sources (discord/discord-api-docs, HEAD c98d64bc): interactions/receiving-and-responding.mdx (interaction object,
``authorizing_integration_owners``, ``app_permissions`` in DMs, callback types, the 5-followup cap for apps only a
user installed, the EPHEMERAL-only deferred response), topics/permissions.mdx ``USE_EXTERNAL_APPS`` (responses
become ephemeral when a server turns it off), topics/opcodes-and-status-codes.mdx (10062, 40060, 40094, 50027).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TypedDict

from aiohttp import web

from tests.fakes.discord_components import check_modal
from tests.fakes.discord_messages import MessageStore
from tests.fakes.discord_wire import (
    EPHEMERAL,
    LOADING,
    SUPPRESS_NOTIFICATIONS,
    TOKEN_LIFETIME,
    USE_EXTERNAL_APPS,
    ApiError,
    Call,
    Json,
    UploadedFile,
    invalid_form,
    json_response,
    no_content,
    snowflake_time,
)
from tests.fakes.discord_world import FakeGuild, Snowflakes, World

FOLLOWUP_CAP = 5  # receiving-and-responding.mdx "Create Followup Message": user-install-only interactions


class Where(TypedDict, total=False):
    """Who triggers an interaction, where and how: keyword arguments of every interaction builder.

    ``channel_id`` may be a guild channel, a thread, a forum post, or a DM channel from ``dm_channel()``.
    ``user_install``: the user installed the app (``authorizing_integration_owners["1"]``); needed in guilds the bot
    is not in and in private channels without the bot. ``external_apps=False``: the server turned off Use External
    Apps, so an app that only the user installed answers ephemerally there."""

    user_id: int | None
    channel_id: int | None
    created_at: datetime | None
    locale: str
    guild_locale: str | None
    user_install: bool
    external_apps: bool


@dataclass
class InteractionState:
    """Server-side state of one interaction token."""

    id: int
    token: str
    type: int  # 2 application command, 3 component, 5 modal submit
    message_type: int  # type of the messages it creates
    channel_id: int
    metadata: Json
    created_at: float  # epoch seconds, from the snowflake like discord.py's Interaction.created_at
    message_id: int | None = None  # the component's message, for callback types 6 and 7
    only_user_install: bool = False  # authorizing_integration_owners has no "0": at most 5 followups
    force_ephemeral: bool = False  # user-installed app in a server with Use External Apps off
    dispatched_at: float | None = None  # loop.time() of interact()
    callback_type: int | None = None
    original_id: int | None = None
    message_ids: set[int] = field(default_factory=set)
    followups: int = 0

    def expired(self) -> bool:
        return time.time() >= self.created_at + TOKEN_LIFETIME


class Interactions:
    """Every interaction token the fake handed out, its builders' core and its REST endpoints."""

    def __init__(
        self,
        world: World,
        store: MessageStore,
        ids: Snowflakes,
        clock: Callable[[], float],
        *,
        app_id: int,
        default_user_id: int,
        default_channel_id: int,
    ) -> None:
        self.world = world
        self.store = store
        self.ids = ids
        self.app_id = app_id
        self.clock = clock
        self.ack_deadline = 3.0
        self.attachment_size_limit = 10 * 1024 * 1024
        self.default_user_id = default_user_id  # who interacts, and where, when a builder does not say
        self.default_channel_id = default_channel_id
        self.by_token: dict[str, InteractionState] = {}
        self.modals: dict[str, Json] = {}  # type-9 callback data by modal custom_id

    def started(self, token: str) -> None:
        """The interaction was dispatched: the acknowledgement clock runs."""
        self.by_token[token].dispatched_at = self.clock()

    def build(self, itype: int, data: Json, where: Where, message_type: int, *, message: Json | None = None) -> Json:
        """The INTERACTION_CREATE payload, registered so its token works."""
        iid = self.ids.new(where.get("created_at") or datetime.now(UTC))
        user_id = where.get("user_id") or self.default_user_id
        channel = self.world.channel(where.get("channel_id") or self.default_channel_id)
        payload: Json = {
            "id": str(iid),
            "application_id": str(self.app_id),
            "type": itype,
            "token": f"fake-interaction-token-{iid}",
            "version": 1,
            "attachment_size_limit": self.attachment_size_limit,
            "channel_id": channel["id"],
            "locale": where.get("locale", "en-US"),
            "entitlements": [],
            "data": data,
        }
        guild = self.world.guild_of(channel)
        if guild is None:
            self._place_in_private_channel(payload, channel, user_id, where)
        else:
            self._place_in_guild(payload, guild, channel, user_id, where)
        if message is not None:
            payload["message"] = message
        self._register(payload, user_id, message_type, message, where, in_guild=guild is not None)
        return payload

    def _place_in_guild(self, payload: Json, guild: FakeGuild, channel: Json, user_id: int, where: Where) -> None:
        user_install = where.get("user_install", False)
        if not guild.bot_member and not user_install:
            raise ValueError(f"the bot is not in guild {guild.id}: only a user-installed app (user_install=True)")
        owners = {"0": str(guild.id)} if guild.bot_member else {}
        if user_install:
            owners["1"] = str(user_id)
        permissions = self.world.permissions(guild, user_id, channel)
        if not where.get("external_apps", True):
            permissions &= ~USE_EXTERNAL_APPS
        payload.update(
            guild_id=str(guild.id),
            guild=guild.partial(),
            guild_locale=where.get("guild_locale") or guild.locale,
            channel=channel if guild.bot_member else self.world.partial_channel(channel, permissions),
            member={**guild.members[user_id], "permissions": str(permissions)},
            app_permissions=str(self.world.app_permissions(channel)),
            authorizing_integration_owners=owners,
            context=0,
        )

    def _place_in_private_channel(self, payload: Json, channel: Json, user_id: int, where: Where) -> None:
        with_bot = self.world.bot_is_recipient(channel)
        user_install = where.get("user_install", False)
        if not with_bot and not user_install:
            raise ValueError("the bot is not in this private channel: only a user-installed app (user_install=True)")
        if user_id not in self.world.private_members[int(channel["id"])]:
            raise ValueError(f"user {user_id} is not in private channel {channel['id']}")
        payload.update(
            channel=channel,
            user=self.world.users[user_id],
            app_permissions=str(self.world.app_permissions(channel)),
            authorizing_integration_owners={"1": str(user_id)} if user_install else {"0": "0"},
            context=1 if with_bot else 2,
        )

    def _register(
        self, payload: Json, user_id: int, message_type: int, message: Json | None, where: Where, *, in_guild: bool
    ) -> None:
        iid, owners = int(payload["id"]), payload["authorizing_integration_owners"]
        only_user_install = "0" not in owners
        self.by_token[payload["token"]] = InteractionState(
            id=iid,
            token=payload["token"],
            type=payload["type"],
            message_type=message_type,
            channel_id=int(payload["channel_id"]),
            metadata={
                "id": str(iid),
                "type": payload["type"],
                "user": self.world.users[user_id],
                "authorizing_integration_owners": owners,
            },
            created_at=snowflake_time(iid),
            message_id=int(message["id"]) if message else None,
            only_user_install=only_user_install,
            force_ephemeral=only_user_install and in_guild and not where.get("external_apps", True),
        )

    # ----------------------------------------------------------------------------- endpoints

    def _callback_interaction(self, call: Call) -> InteractionState:
        inter = self.by_token.get(call.params["token"])
        if inter is None or inter.id != call.id("iid") or inter.expired():
            raise ApiError(404, 10062, "Unknown interaction")
        if inter.callback_type is not None:
            raise ApiError(400, 40060, "Interaction has already been acknowledged.")
        late = inter.dispatched_at is not None and self.clock() - inter.dispatched_at > self.ack_deadline
        if late:
            raise ApiError(404, 10062, "Unknown interaction")
        return inter

    async def post_callback(self, call: Call) -> web.Response:
        inter = self._callback_interaction(call)
        kind, data = int(call.body.get("type", 0)), call.body.get("data") or {}
        if kind not in (4, 5, 6, 7, 9) or (kind in (6, 7) and inter.message_id is None):
            raise ApiError(400, 40043, "Interaction has invalid type for this response")  # approximate code
        if kind == 9:
            if inter.type == 5:
                raise ApiError(400, 40043, "Interaction has invalid type for this response")
            check_modal(data)
        if kind == 5 and int(data.get("flags") or 0) & ~(EPHEMERAL | SUPPRESS_NOTIFICATIONS):
            # receiving-and-responding.mdx: a deferred response may only set EPHEMERAL; V2 comes with the edit
            raise invalid_form("data.flags: Only EPHEMERAL can be set on a deferred response")
        inter.callback_type = kind  # before any await, so a racing second callback sees it
        try:
            message = await self._callback_message(inter, kind, data, call.rec.files)
        except ApiError:
            inter.callback_type = None
            raise
        if kind == 9:
            self.modals[str(data["custom_id"])] = data
        return json_response(self._callback_body(inter, kind, message))

    async def _callback_message(
        self, inter: InteractionState, kind: int, data: Json, files: list[UploadedFile]
    ) -> Json | None:
        if kind in (4, 5):
            requested = int(data.get("flags") or 0)
            flags = (LOADING if kind == 5 else 0) | requested & EPHEMERAL | (EPHEMERAL if inter.force_ephemeral else 0)
            message = await self.store.create(
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
            message = await self.store.edit(self.store.find_or_404(inter.message_id), data, files)
        elif kind == 6:
            assert inter.message_id is not None
            message = self.store.find_or_404(inter.message_id)
        else:
            return None
        inter.original_id = int(message["id"])
        inter.message_ids.add(inter.original_id)
        return message

    def _callback_body(self, inter: InteractionState, kind: int, message: Json | None) -> Json:
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

    def _webhook_interaction(self, call: Call) -> InteractionState:
        if call.id("app") != self.app_id:
            raise ApiError(404, 10015, "Unknown Webhook")
        inter = self.by_token.get(call.params["token"])
        if inter is None or inter.expired():
            raise ApiError(401, 50027, "Invalid Webhook Token")
        if inter.callback_type is None:
            raise ApiError(404, 10015, "Unknown Webhook")  # Discord's answer before the interaction is acked
        return inter

    def _webhook_message(self, call: Call) -> Json:
        inter = self._webhook_interaction(call)
        ref = call.params["message"]
        message_id = inter.original_id if ref == "@original" else int(ref)
        if message_id is None or message_id not in inter.message_ids:
            raise ApiError(404, 10008, "Unknown Message")
        return self.store.find_or_404(message_id)

    async def post_followup(self, call: Call) -> web.Response:
        inter = self._webhook_interaction(call)
        if inter.only_user_install and inter.followups >= FOLLOWUP_CAP:
            raise ApiError(400, 40094, "This interaction has hit the maximum number of follow up messages")
        channel_id = int(call.rec.query.get("thread_id", inter.channel_id))
        message = await self.store.create(
            channel_id,
            call.body,
            call.rec.files,
            flags=EPHEMERAL if inter.force_ephemeral else 0,
            type=inter.message_type,
            webhook_id=str(self.app_id),
            application_id=str(self.app_id),
            interaction_metadata=inter.metadata,
        )
        inter.followups += 1
        inter.message_ids.add(int(message["id"]))
        wait = call.rec.query.get("wait", "false").lower() in ("1", "true")
        return json_response(message) if wait else no_content()

    async def get_webhook_message(self, call: Call) -> web.Response:
        return json_response(self._webhook_message(call))

    async def patch_webhook_message(self, call: Call) -> web.Response:
        return json_response(await self.store.edit(self._webhook_message(call), call.body, call.rec.files))

    async def delete_webhook_message(self, call: Call) -> web.Response:
        await self.store.remove(self._webhook_message(call))
        return no_content()
