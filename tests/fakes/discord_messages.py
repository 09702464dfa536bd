"""Messages and attachments of the fake Discord: creating, editing and deleting them the way Discord does, the CDN
files behind attachments, and what a bot without the Message Content intent gets to see of them."""

from __future__ import annotations

import mimetypes
import re
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from tests.fakes.discord_components import check_message_components, message_text, resolve_v2, walk
from tests.fakes.discord_wire import (
    COMPONENTS_V2,
    EPHEMERAL,
    LOADING,
    MAX_NONCE_LENGTH,
    SETTABLE_FLAGS,
    SUPPRESS_EMBEDS,
    ApiError,
    Json,
    UploadedFile,
    image_size,
    invalid_form,
    iso,
    upload_index,
    validate_message,
)
from tests.fakes.discord_world import Snowflakes, World

_USER_MENTION = re.compile(r"<@!?(\d+)>")
# Message fields that need the Message Content intent (events/gateway.mdx "Message Content Intent").
CONTENT_FIELDS: dict[str, Any] = {"content": "", "embeds": [], "attachments": [], "components": []}

Announce = Callable[[str, Json], Awaitable[None]]


@dataclass
class _Nonce:
    message_id: int
    at: float  # loop time of the create


class MessageStore:
    """Every message the fake knows, plus the CDN bytes of every attachment."""

    def __init__(self, world: World, ids: Snowflakes, announce: Announce, clock: Callable[[], float]) -> None:
        self.world = world
        self.ids = ids
        self.announce = announce
        self.clock = clock
        self.base_url = ""
        self.nonce_window = 300.0
        self.messages: dict[int, Json] = {}  # created by the bot over REST (incl. interaction responses)
        self.user_messages: dict[int, Json] = {}  # added by the test
        self.deleted: dict[int, Json] = {}
        self.undisplayed: dict[int, list[str]] = {}  # V2 message id -> attachment filenames no component shows
        self.channel_log: dict[int, list[int]] = {}
        self.files: dict[int, tuple[bytes, str]] = {}  # CDN bytes and content type by attachment id
        self.attachment_objects: dict[int, Json] = {}
        self.expired_files: set[int] = set()
        self._nonces: dict[tuple[str, str], _Nonce] = {}

    # ------------------------------------------------------------------------------------ lookups

    def find(self, message_id: int) -> Json | None:
        return self.messages.get(message_id) or self.user_messages.get(message_id)

    def find_or_404(self, message_id: int) -> Json:
        if (message := self.find(message_id)) is None:
            raise ApiError(404, 10008, "Unknown Message")
        return message

    def in_channel(self, channel_id: int, message_id: int) -> Json:
        self.world.channel(channel_id)
        message = self.find(message_id)
        if message is None or message["channel_id"] != str(channel_id) or message["flags"] & EPHEMERAL:
            raise ApiError(404, 10008, "Unknown Message")
        return message

    def channel_messages(self, channel_id: int) -> list[Json]:
        return [m for mid in self.channel_log.get(channel_id, []) if (m := self.find(mid))]

    # ----------------------------------------------------------------------------------- building

    def skeleton(self, channel_id: int, author_id: int, **fields: Any) -> Json:
        channel = self.world.channel(channel_id)
        message: Json = {
            "id": str(self.ids.new()),
            "channel_id": str(channel_id),
            "author": self.world.users[author_id],
            "content": "",
            "timestamp": iso(),
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

    def new_attachment(
        self, channel_id: int, filename: str, data: bytes, content_type: str | None, **extra: Any
    ) -> Json:
        att_id = self.ids.new()
        self.files[att_id] = (data, content_type or "application/octet-stream")
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
        self.attachment_objects[att_id] = attachment
        return attachment

    def add_user_message(self, message: Json) -> None:
        message.update(self.mentions(message["content"], None))
        self.store(message, by_bot=False)

    def store(self, message: Json, *, by_bot: bool) -> None:
        message_id = int(message["id"])
        target = self.user_messages if message_id in self.user_messages or not by_bot else self.messages
        is_new = message_id not in target
        target[message_id] = message
        if is_new and not message["flags"] & EPHEMERAL:
            channel_id = int(message["channel_id"])
            self.channel_log.setdefault(channel_id, []).append(message_id)
            if (thread := self.world.threads.get(channel_id)) is not None:
                thread["message_count"] += 1
                thread["total_message_sent"] += 1

    # ------------------------------------------------------------------------------------- nonces

    def nonce_match(self, author_id: int, payload: Json) -> Json | None:
        """resources/message.mdx, Create Message ``enforce_nonce``: the message the same author created with the
        same nonce in the last few minutes (``nonce_window`` seconds here), if it still exists."""
        nonce = payload.get("nonce")
        if nonce is not None and len(str(nonce)) > MAX_NONCE_LENGTH:
            raise invalid_form(f"nonce: Must be {MAX_NONCE_LENGTH} or fewer in length.")
        if nonce is None or not payload.get("enforce_nonce"):
            return None
        seen = self._nonces.get((str(author_id), str(nonce)))
        if seen is None or self.clock() - seen.at > self.nonce_window:
            return None
        return self.find(seen.message_id)

    def remember_nonce(self, author_id: int, nonce: Any, message_id: int) -> None:
        self._nonces[(str(author_id), str(nonce))] = _Nonce(message_id, self.clock())

    # ---------------------------------------------------------------------------- create and edit

    async def create(
        self,
        channel_id: int,
        payload: Json,
        files: list[UploadedFile],
        *,
        message_id: int | None = None,
        **fields: Any,
    ) -> Json:
        """Build, validate, store and announce a message the bot sends (channel, callback or webhook). The answer
        (and MESSAGE_CREATE) carry the ``nonce``; the stored message, as later fetched, does not."""
        message = self.skeleton(channel_id, self.world.bot_user_id, **fields)
        if message_id is not None:
            message["id"] = str(message_id)
        content = str(payload.get("content") or "")
        flags = int(payload.get("flags") or 0) & SETTABLE_FLAGS | message["flags"]
        message.update(
            content=content,
            tts=bool(payload.get("tts", False)),
            embeds=[{"type": "rich", **e} for e in payload.get("embeds") or []],
            flags=flags,
            attachments=self.attachments(channel_id, payload, files, []),
        )
        if payload.get("message_reference"):
            message.update(self.reply_fields(channel_id, payload["message_reference"]))
        self._set_components(message, payload, v2_request=bool(flags & COMPONENTS_V2))
        message.update(self.mentions(message_text(message), payload.get("allowed_mentions")))
        if not message["flags"] & LOADING:
            validate_message(message)
        self.store(message, by_bot=True)
        answer = {**message, "nonce": payload["nonce"]} if payload.get("nonce") is not None else message
        await self._announce("MESSAGE_CREATE", answer)
        return answer

    async def edit(self, message: Json, payload: Json, files: list[UploadedFile]) -> Json:
        edited = {**message, "edited_timestamp": iso(), "flags": message["flags"] & ~LOADING}
        if "content" in payload:
            edited["content"] = str(payload["content"] or "")
        if "embeds" in payload:
            edited["embeds"] = [{"type": "rich", **e} for e in payload["embeds"] or []]
        if payload.get("flags") is not None:
            # resources/message.mdx Edit Message: SUPPRESS_EMBEDS can be set and unset, IS_COMPONENTS_V2 only set
            # (a request without it leaves it on).
            new_flags = int(payload["flags"])
            edited["flags"] = edited["flags"] & ~SUPPRESS_EMBEDS | new_flags & (SUPPRESS_EMBEDS | COMPONENTS_V2)
        if "attachments" in payload or files:
            edited["attachments"] = self.attachments(int(message["channel_id"]), payload, files, message["attachments"])
        self._set_components(edited, payload, v2_request=bool(edited["flags"] & COMPONENTS_V2))
        if "content" in payload or ("components" in payload and edited["flags"] & COMPONENTS_V2):
            edited.update(self.mentions(message_text(edited), payload.get("allowed_mentions")))
        validate_message(edited)
        self.store(edited, by_bot=True)
        await self._announce("MESSAGE_UPDATE", edited)
        return edited

    def _set_components(self, message: Json, payload: Json, *, v2_request: bool) -> None:
        """Components and the IS_COMPONENTS_V2 rules (resources/message.mdx Create/Edit Message, webhook.mdx): a V2
        message has no ``content``, ``embeds``, ``poll`` or stickers (400 otherwise, also when an edit turns the flag
        on without clearing them); attachments show only where a component names them."""
        if "components" in payload:
            message["components"] = payload["components"] or []
        if not v2_request:
            check_message_components(message["components"], v2=False, available=set())
            return
        if message["content"] or message["embeds"] or payload.get("poll") or payload.get("sticker_ids"):
            raise invalid_form(
                "Invalid Form Body: content, embeds, poll and stickers cannot be used with IS_COMPONENTS_V2"
            )
        by_name = {a["filename"]: a for a in message["attachments"]}
        if "components" in payload:
            shown = check_message_components(message["components"], v2=True, available=set(by_name))
            message["components"] = resolve_v2(message["components"], by_name)
        else:
            shown = self._shown_attachments(message)
        self.undisplayed[int(message["id"])] = [name for name in by_name if name not in shown]

    @staticmethod
    def _shown_attachments(message: Json) -> set[str]:
        ids = {str(m.get("attachment_id")) for m in _media_of(message["components"])}
        return {a["filename"] for a in message["attachments"] if a["id"] in ids}

    async def remove(self, message: Json) -> None:
        message_id, channel_id = int(message["id"]), int(message["channel_id"])
        self.messages.pop(message_id, None)
        self.user_messages.pop(message_id, None)
        self.deleted[message_id] = message
        if message_id in self.channel_log.get(channel_id, []):
            self.channel_log[channel_id].remove(message_id)
        event = {"id": message["id"], "channel_id": message["channel_id"]}
        if "guild_id" in message:
            event["guild_id"] = message["guild_id"]
        if not message["flags"] & EPHEMERAL:
            await self.announce("MESSAGE_DELETE", event)

    async def _announce(self, event: str, message: Json) -> None:
        if not message["flags"] & EPHEMERAL:
            await self.announce(event, message)

    # -------------------------------------------------------------------------------- attachments

    def attachments(
        self, channel_id: int, payload: Json, files: list[UploadedFile], existing: list[Json]
    ) -> list[Json]:
        """New attachment list: kept ``existing`` ones named in ``payload["attachments"]`` plus the uploads."""
        uploads = {index: f for f in files if (index := upload_index(f.field)) is not None}
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
                raise invalid_form(f"attachments: unknown attachment {spec['id']}")
        return result + [self._upload(channel_id, f, {}) for f in uploads.values()]

    def _upload(self, channel_id: int, upload: UploadedFile, spec: Json) -> Json:
        filename = str(spec.get("filename") or upload.filename)
        content_type = mimetypes.guess_type(filename)[0] or upload.content_type
        size = image_size(upload.data)
        extra = {"width": size[0], "height": size[1]} if size else {}
        attachment = self.new_attachment(channel_id, filename, upload.data, content_type, **extra)
        if spec.get("description"):
            attachment["description"] = spec["description"]
        return attachment

    # --------------------------------------------------------------------------- mentions, replies

    def mentions(self, content: str, allowed: Json | None) -> Json:
        ids = {int(i) for i in _USER_MENTION.findall(content)}
        everyone = "@everyone" in content or "@here" in content
        if allowed is not None:
            parse, users = allowed.get("parse") or [], {int(u) for u in allowed.get("users") or []}
            ids = {i for i in ids if "users" in parse or i in users}
            everyone = everyone and "everyone" in parse
        users_by_id = self.world.users
        return {"mentions": [users_by_id[i] for i in sorted(ids) if i in users_by_id], "mention_everyone": everyone}

    def reply_fields(self, channel_id: int, reference: Json) -> Json:
        target = self.find(int(reference["message_id"]))
        if target is None or target["channel_id"] != str(reference.get("channel_id") or channel_id):
            if reference.get("fail_if_not_exists", True):
                raise invalid_form("message_reference: Unknown message")
            return {}
        ref = {"type": 0, "message_id": target["id"], "channel_id": target["channel_id"]}
        if "guild_id" in target:
            ref["guild_id"] = target["guild_id"]
        return {"type": 19, "message_reference": ref, "referenced_message": target}

    def react(self, message_id: int, emoji: str, *, delta: int, me: bool) -> None:
        message = self.find(message_id)
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

    # ------------------------------------------------------------------------------ content intent

    def visible(self, message: Json, *, message_content: bool) -> Json:
        """The message as the bot receives it (events/gateway.mdx "Message Content Intent"): without the intent,
        other users' messages lose ``content``, ``embeds``, ``attachments``, ``components`` and ``poll`` unless
        they are in a DM or mention the bot. (A message context menu's target is sent whole; it never passes
        through here.)"""
        if message_content or not self._needs_intent(message):
            return message
        stripped = {k: v for k, v in message.items() if k != "poll"}
        stripped.update({k: type(v)() for k, v in CONTENT_FIELDS.items()})
        if isinstance(message.get("referenced_message"), dict):
            stripped["referenced_message"] = self.visible(message["referenced_message"], message_content=False)
        return stripped

    def _needs_intent(self, message: Json) -> bool:
        bot = str(self.world.bot_user_id)
        if message.get("author", {}).get("id") == bot or "guild_id" not in message:
            return False
        return not any(user.get("id") == bot for user in message.get("mentions", []))


def _media_of(components: Sequence[Json]) -> list[Json]:
    found: list[Json] = []
    for component in walk(list(components)):
        if component.get("type") in (11, 13):
            found.append(component.get("media") or component.get("file") or {})
        for item in component.get("items") or []:
            found.append(item.get("media") or {})
    return found
