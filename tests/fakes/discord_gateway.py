"""The fake Discord's websocket gateway: sessions (one per IDENTIFY, sharded or not), READY and GUILD_CREATE per
shard, events routed to the shard that owns their guild, RESUME with replay, and the Message Content intent.

Sources: events/gateway.mdx "Sharding" (``shard_id = (guild_id >> 22) % num_shards``; events without a guild go
to shard 0), "Message Content Intent", "Resuming"; close code 4010 Invalid shard from
topics/opcodes-and-status-codes.mdx.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from aiohttp import WSMsgType, web

from tests.fakes.discord_messages import MessageStore
from tests.fakes.discord_wire import HEARTBEAT_INTERVAL_MS, MESSAGE_CONTENT_INTENT, Json, shard_of
from tests.fakes.discord_world import FakeGuild, World

log = logging.getLogger(__name__)

_GUILD_OBJECT_EVENTS = ("GUILD_CREATE", "GUILD_UPDATE", "GUILD_DELETE")  # carry the guild as "id", not "guild_id"
_MESSAGE_EVENTS = ("MESSAGE_CREATE", "MESSAGE_UPDATE")
INVALID_SHARD = 4010


@dataclass
class Session:
    """One identified gateway session; ``ws`` is None while the client is disconnected (events are kept in ``log``
    for a RESUME)."""

    id: str
    shard_id: int = 0
    shard_count: int = 1
    intents: int = 0
    seq: int = 0
    log: list[Json] = field(default_factory=list)
    ws: web.WebSocketResponse | None = None

    def owns(self, guild_id: int | None) -> bool:
        return shard_of(guild_id, self.shard_count) == self.shard_id


class Gateway:
    """Serves ``/gateway/``; ``FakeDiscord`` exposes its lists (identify/resume payloads, frames) and ``ready``."""

    def __init__(
        self, world: World, store: MessageStore, app_id: int, notify: Callable[[], None], unhandled: list[str]
    ) -> None:
        self.world = world
        self.app_id = app_id
        self.store = store
        self.notify = notify
        self.unhandled = unhandled
        self.url = ""
        self.sessions: dict[str, Session] = {}
        self.identify_payloads: list[Json] = []
        self.resume_payloads: list[Json] = []
        self.frames: list[Json] = []  # everything the clients sent
        self._numbers = itertools.count(1)
        self._sockets: set[web.WebSocketResponse] = set()
        self.ready = asyncio.Event()  # set at the first IDENTIFY
        self.heartbeat_interval_ms = HEARTBEAT_INTERVAL_MS  # what HELLO tells clients connecting from now on

    @property
    def message_content(self) -> bool:
        """Whether the bot asked for the Message Content intent (its latest IDENTIFY; True before any)."""
        if not self.identify_payloads:
            return True
        return bool(int(self.identify_payloads[-1].get("intents", 0)) & MESSAGE_CONTENT_INTENT)

    # ------------------------------------------------------------------------------- connections

    async def handle(self, request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        self._sockets.add(ws)
        session: Session | None = None
        try:
            await self._send(ws, {"op": 10, "d": {"heartbeat_interval": self.heartbeat_interval_ms}})
            async for msg in ws:
                if msg.type is WSMsgType.TEXT:
                    session = await self._on_frame(ws, session, msg.data)
        finally:
            self._sockets.discard(ws)
            if session is not None and session.ws is ws:
                session.ws = None
            self.notify()
        return ws

    async def close(self) -> None:
        for ws in list(self._sockets):
            await ws.close(code=1001)

    async def drop(self, code: int = 4000, *, resumable: bool = True, shard_id: int | None = None) -> None:
        """Close the sockets of every session (or of ``shard_id``'s) from the server side."""
        dropped = [s for s in self.sessions.values() if shard_id is None or s.shard_id == shard_id]
        for session in dropped:
            if not resumable:
                del self.sessions[session.id]
            ws, session.ws = session.ws, None
            if ws is not None:
                await ws.close(code=code, message=b"dropped by the fake")

    async def _on_frame(self, ws: web.WebSocketResponse, session: Session | None, raw: str) -> Session | None:
        try:
            frame = json.loads(raw)
            self.frames.append(frame)
            self.notify()
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

    async def _identify(self, ws: web.WebSocketResponse, data: Json) -> Session | None:
        self.identify_payloads.append(data)
        shard_id, shard_count = data.get("shard") or (0, 1)
        if not 0 <= shard_id < shard_count:
            await ws.close(code=INVALID_SHARD, message=b"Invalid shard.")
            return None
        session = Session(f"fake-session-{next(self._numbers)}", shard_id, shard_count, int(data.get("intents", 0)))
        session.ws = ws
        self.sessions[session.id] = session
        guilds = self.guilds_of(session)
        await self._emit(session, "READY", self._ready(session, data, guilds))
        for guild in guilds:
            await self._emit(session, "GUILD_CREATE", self.world.guild_payload(guild))
        self.ready.set()
        self.notify()
        return session

    def guilds_of(self, session: Session) -> list[FakeGuild]:
        return [g for g in self.world.guilds.values() if g.bot_member and session.owns(g.id)]

    def _ready(self, session: Session, identify: Json, guilds: list[FakeGuild]) -> Json:
        ready: Json = {
            "v": 10,
            "user": self.world.users[self.world.bot_user_id],
            "session_id": session.id,
            "resume_gateway_url": self.url,
            "guilds": [{"id": str(g.id), "unavailable": True} for g in guilds],
            "application": {"id": str(self.app_id), "flags": 0},
            "private_channels": [],
            "relationships": [],
        }
        if "shard" in identify:
            ready["shard"] = [session.shard_id, session.shard_count]
        return ready

    async def _resume(self, ws: web.WebSocketResponse, data: Json) -> Session | None:
        self.resume_payloads.append(data)
        session = self.sessions.get(data.get("session_id", ""))
        if session is None:
            await self._send(ws, {"op": 9, "d": False})  # invalid session: the client identifies again
            return None
        session.ws = ws
        for frame in [f for f in session.log if f["s"] > (data.get("seq") or 0)]:
            await self._send(ws, frame)
        await self._emit(session, "RESUMED", {})
        return session

    def _members_chunk(self, request: Json) -> Json:
        guild = self.world.guilds[int(request["guild_id"])]
        chunk: Json = {
            "guild_id": str(guild.id),
            "members": list(guild.members.values()),
            "chunk_index": 0,
            "chunk_count": 1,
        }
        if request.get("nonce"):
            chunk["nonce"] = request["nonce"]
        return chunk

    # ----------------------------------------------------------------------------------- events

    async def dispatch(self, event: str, data: Json) -> None:
        """Send a DISPATCH to every session of the shard that owns the event's guild (shard 0 without a guild).
        Events of guilds the bot is not in reach nobody, except interactions (user-installed apps)."""
        guild_id = _event_guild(event, data)
        guild = self.world.guilds.get(guild_id) if guild_id is not None else None
        if guild is not None and not guild.bot_member and event != "INTERACTION_CREATE":
            return
        for session in list(self.sessions.values()):
            if session.owns(guild_id):
                await self._emit(session, event, self._shaped(event, data, session))

    def _shaped(self, event: str, data: Json, session: Session) -> Json:
        if event in _MESSAGE_EVENTS:
            return self.store.visible(data, message_content=bool(session.intents & MESSAGE_CONTENT_INTENT))
        return data

    async def _emit(self, session: Session, event: str, data: Json) -> None:
        session.seq += 1
        frame = {"op": 0, "t": event, "s": session.seq, "d": data}
        session.log.append(frame)
        if session.ws is not None:
            await self._send(session.ws, frame)

    @staticmethod
    async def _send(ws: web.WebSocketResponse, frame: Json) -> None:
        if ws.closed:
            return
        try:
            await ws.send_str(json.dumps(frame))
        except ConnectionError:
            log.debug("gateway socket went away while sending %s", frame.get("t") or frame.get("op"))


def _event_guild(event: str, data: Json) -> int | None:
    raw = data.get("id") if event in _GUILD_OBJECT_EVENTS else data.get("guild_id")
    return int(raw) if raw else None
