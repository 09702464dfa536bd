"""Tests of the fake Discord itself, driven by a tiny throwaway discord.py bot over the wire."""

from __future__ import annotations

import asyncio
import io
import logging
import re
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from typing import Any, Self

import aiohttp
import discord
import pytest
from discord import app_commands
from discord.ext import commands
from PIL import Image

from tests.fakes.fake_discord import FakeDiscord, Recorded, run_client

Json = dict[str, Any]

# ------------------------------------------------------------------------------------ tiny bot


class AgainButton(discord.ui.DynamicItem[discord.ui.Button[discord.ui.View]], template=r"again:(?P<user>\d+)"):
    """Persistent button: makes a thread on its message, posts a file there and reacts."""

    def __init__(self, user_id: int) -> None:
        super().__init__(discord.ui.Button(label="Again", custom_id=f"again:{user_id}"))
        self.user_id = user_id

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction, item: discord.ui.Item[Any], match: re.Match[str]
    ) -> Self:
        return cls(int(match["user"]))

    async def callback(self, interaction: discord.Interaction) -> None:
        await interaction.response.defer()
        assert interaction.message is not None
        thread = await interaction.message.create_thread(name="Results")
        await thread.send("again", file=discord.File(io.BytesIO(b"again-bytes"), "again.png"))
        await interaction.message.add_reaction("✅")
        await interaction.followup.send(f"thread ready for {self.user_id}", ephemeral=True)


class BumpButton(discord.ui.DynamicItem[discord.ui.Button[discord.ui.View]], template=r"bump:(?P<n>\d+)"):
    """Persistent button that edits its own message through the callback (type 7)."""

    def __init__(self, n: int) -> None:
        super().__init__(discord.ui.Button(label=f"Bump {n}", custom_id=f"bump:{n}"))
        self.n = n

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction, item: discord.ui.Item[Any], match: re.Match[str]
    ) -> Self:
        return cls(int(match["n"]))

    async def callback(self, interaction: discord.Interaction) -> None:
        view = discord.ui.View(timeout=None)
        view.add_item(BumpButton(self.n + 1))
        await interaction.response.edit_message(content=f"bumped to {self.n + 1}", view=view)


class PromptModal(discord.ui.Modal, title="Edit image"):
    prompt: discord.ui.TextInput[PromptModal] = discord.ui.TextInput(label="Prompt", custom_id="prompt")

    def __init__(self, target: discord.Message) -> None:
        super().__init__()
        self.target = target

    async def on_submit(self, interaction: discord.Interaction) -> None:
        await interaction.response.defer(thinking=True)
        count = len(self.target.attachments)
        await interaction.followup.send(f"modal got {self.prompt.value!r} for {count} image(s)")


@app_commands.command(name="edit", description="Edit an image")
async def edit_command(interaction: discord.Interaction, prompt: str, image: discord.Attachment) -> None:
    await interaction.response.defer(thinking=True)
    data = await image.read()
    await interaction.edit_original_response(content=f"Working on {prompt}")
    view = discord.ui.View(timeout=None)
    view.add_item(AgainButton(interaction.user.id))
    await interaction.edit_original_response(content=f"Done: {prompt}", view=view)
    await interaction.followup.send(file=discord.File(io.BytesIO(data[::-1]), "result.png"))


@app_commands.command(name="count", description="Edit the response n times")
async def count_command(interaction: discord.Interaction, n: int) -> None:
    await interaction.response.defer()
    for i in range(n):
        await interaction.edit_original_response(content=f"step {i}")


@app_commands.command(name="slow", description="Acknowledges too late")
async def slow_command(interaction: discord.Interaction) -> None:
    await asyncio.sleep(0.3)
    await interaction.response.defer()


@app_commands.command(name="late", description="Sends a followup after the token expired")
async def late_command(interaction: discord.Interaction) -> None:
    await interaction.response.defer()
    await interaction.edit_original_response(content="still valid")
    await asyncio.sleep((interaction.expires_at - discord.utils.utcnow()).total_seconds() + 0.01)
    assert interaction.is_expired()
    await interaction.followup.send("too late")


async def edit_with_tiny(interaction: discord.Interaction, message: discord.Message) -> None:
    await interaction.response.send_modal(PromptModal(message))


def tiny_intents(*, message_content: bool = True) -> discord.Intents:
    intents = discord.Intents.default()
    intents.message_content = message_content
    return intents


class TinyBot(commands.Bot):
    def __init__(self, guild_id: int, *, message_content: bool = True) -> None:
        intents = tiny_intents(message_content=message_content)
        super().__init__(command_prefix="!", intents=intents, guild_ready_timeout=0.05)
        self.guild = discord.Object(guild_id)
        self.errors: list[Exception] = []
        self.resumed = asyncio.Event()
        self.ready_count = 0
        self.tree.error(self._on_tree_error)

    async def setup_hook(self) -> None:
        self.add_dynamic_items(AgainButton, BumpButton)
        guild_commands: list[app_commands.Command[Any, ..., None]] = [
            edit_command,
            count_command,
            slow_command,
            late_command,
        ]
        for command in guild_commands:
            self.tree.add_command(command, guild=self.guild)
        self.tree.add_command(app_commands.ContextMenu(name="Edit with Tiny", callback=edit_with_tiny))
        await self.tree.sync()
        await self.tree.sync(guild=self.guild)

    async def _on_tree_error(self, interaction: discord.Interaction, error: app_commands.AppCommandError) -> None:
        self.errors.append(error)

    async def before_identify_hook(self, shard_id: int | None, *, initial: bool = False) -> None:
        """discord.py sleeps 5 s before every re-IDENTIFY by default; not needed against the fake."""

    async def on_ready(self) -> None:
        self.ready_count += 1

    async def on_resumed(self) -> None:
        self.resumed.set()

    async def on_raw_reaction_add(self, payload: discord.RawReactionActionEvent) -> None:
        if str(payload.emoji) != "🎨":
            return
        channel = self.get_channel(payload.channel_id)
        assert isinstance(channel, discord.TextChannel)
        message = await channel.fetch_message(payload.message_id)
        await message.reply(f"kontext on {len(message.attachments)} image(s)", mention_author=False)


# ------------------------------------------------------------------------------------ fixtures


@pytest.fixture
def fake_kwargs() -> Json:
    return {}


@pytest.fixture
async def fake(monkeypatch: pytest.MonkeyPatch, fake_kwargs: Json) -> AsyncIterator[FakeDiscord]:
    async with FakeDiscord(**fake_kwargs) as server:
        server.patch_discord(monkeypatch)
        yield server
    assert server.unhandled == []


@pytest.fixture
async def bot(fake: FakeDiscord, caplog: pytest.LogCaptureFixture) -> AsyncIterator[TinyBot]:
    client = TinyBot(fake.guild_id)
    async with run_client(client, fake):
        yield client
    assert client.errors == []
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []


def png(color: str = "red") -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 6), color).save(buffer, "PNG")
    return buffer.getvalue()


def text_channel(bot: TinyBot, fake: FakeDiscord) -> discord.TextChannel:
    channel = bot.get_channel(fake.channel_id)
    assert isinstance(channel, discord.TextChannel)
    return channel


def on_token(payload: Json) -> Callable[[Recorded], bool]:
    return lambda r: payload["token"] in r.path


async def run_edit(fake: FakeDiscord, image: bytes) -> tuple[Json, Json]:
    """Drive /edit to the end; returns (interaction payload, the @original message)."""
    attachment = fake.add_attachment("cat.png", image)
    options = [
        {"name": "prompt", "type": 3, "value": "make it blue"},
        {"name": "image", "type": 11, "value": attachment["id"]},
    ]
    payload = fake.slash("edit", options)
    await fake.interact(payload)
    await fake.wait_for(lambda r: on_token(payload)(r) and r.method == "POST" and r.path.startswith("/webhooks/"))
    return payload, await fake.wait_for_message(lambda m: m["content"] == "Done: make it blue")


# --------------------------------------------------------------------------------------- tests


async def test_startup_sync_and_gateway_identify(fake: FakeDiscord, bot: TinyBot) -> None:
    startup = [(r.method, r.path) for r in fake.requests]
    assert startup == [
        ("GET", "/users/@me"),
        ("GET", "/oauth2/applications/@me"),
        ("PUT", f"/applications/{fake.app_id}/commands"),
        ("PUT", f"/applications/{fake.app_id}/guilds/{fake.guild_id}/commands"),
    ]
    global_sync, guild_sync = fake.requests[2].json, fake.requests[3].json
    assert [(c["name"], c["type"]) for c in global_sync] == [("Edit with Tiny", 3)]
    edit = next(c for c in guild_sync if c["name"] == "edit")
    assert [(o["name"], o["type"]) for o in edit["options"]] == [("prompt", 3), ("image", 11)]
    assert fake.commands[None][0]["description"] == ""  # context menus are synced without one

    assert len(fake.identify_payloads) == 1
    assert fake.identify_payloads[0]["token"] == "fake-token"
    assert fake.identify_payloads[0]["intents"] == bot.intents.value
    assert fake.ready.is_set()

    guild = bot.get_guild(fake.guild_id)
    assert guild is not None
    assert isinstance(guild.get_channel(fake.forum_channel_id), discord.ForumChannel)
    nsfw = guild.get_channel(fake.nsfw_channel_id)
    assert isinstance(nsfw, discord.TextChannel) and nsfw.is_nsfw() and not text_channel(bot, fake).is_nsfw()
    mod, other = await guild.fetch_member(fake.mod_user_id), await guild.fetch_member(fake.other_user_id)
    assert mod.guild_permissions.manage_messages and not other.guild_permissions.manage_messages


async def test_slash_defer_edit_and_followup_with_file(fake: FakeDiscord, bot: TinyBot) -> None:
    image = png()
    payload, original = await run_edit(fake, image)

    on_this = [r for r in fake.requests if on_token(payload)(r) or r.path.startswith("/cdn/")]
    assert [(r.method, r.path.split("/")[1], r.status) for r in on_this] == [
        ("POST", "interactions", 200),
        ("GET", "cdn", 200),
        ("PATCH", "webhooks", 200),
        ("PATCH", "webhooks", 200),
        ("POST", "webhooks", 200),
    ]
    callback = fake.callbacks()[0]
    assert callback.json["type"] == 5 and callback.query == {"with_response": "1"}
    assert [r.json["content"] for r in on_this[2:4]] == ["Working on make it blue", "Done: make it blue"]

    followup = on_this[4]
    assert followup.query["wait"] in ("1", "true")
    assert [(f.field, f.filename, f.data) for f in followup.files] == [("files[0]", "result.png", image[::-1])]
    sent = fake.channel_messages(fake.channel_id)
    assert [m["id"] for m in sent] == [original["id"], followup_message_id(fake, payload)]
    assert sent[1]["attachments"][0]["filename"] == "result.png"
    assert sent[1]["attachments"][0]["size"] == len(image)
    assert original["components"][0]["components"][0]["custom_id"] == f"again:{fake.owner_id}"
    assert original["flags"] == 0 and original["edited_timestamp"] is not None
    assert original["interaction_metadata"]["user"]["id"] == str(fake.owner_id)


def followup_message_id(fake: FakeDiscord, payload: Json) -> str:
    return next(
        str(m["id"])
        for m in fake.messages.values()
        if m.get("interaction_metadata", {}).get("id") == payload["id"] and m["attachments"]
    )


async def test_persistent_button_thread_file_and_reaction(fake: FakeDiscord, bot: TinyBot) -> None:
    _, original = await run_edit(fake, png())
    press = fake.button(f"again:{fake.owner_id}", original)
    await fake.interact(press)
    ready = await fake.wait_for_message(lambda m: m["content"] == f"thread ready for {fake.owner_id}")

    assert ready["flags"] & 64  # ephemeral: not in the channel listing
    assert ready["id"] not in [m["id"] for m in fake.channel_messages(fake.channel_id)]
    later = [(r.method, r.path) for r in fake.requests if r.time >= fake.callbacks()[-1].time]
    thread_id = int(original["id"])
    assert later == [
        ("POST", f"/interactions/{press['id']}/{press['token']}/callback"),
        ("POST", f"/channels/{fake.channel_id}/messages/{thread_id}/threads"),
        ("POST", f"/channels/{thread_id}/messages"),
        ("PUT", f"/channels/{fake.channel_id}/messages/{thread_id}/reactions/✅/@me"),
        ("POST", f"/webhooks/{fake.app_id}/{press['token']}"),
    ]
    assert fake.callbacks()[-1].json == {"type": 6}
    thread = fake.threads[thread_id]
    assert (thread["name"], thread["type"], thread["parent_id"]) == ("Results", 11, str(fake.channel_id))
    [in_thread] = fake.channel_messages(thread_id)
    assert in_thread["content"] == "again" and in_thread["attachments"][0]["filename"] == "again.png"
    upload = fake.requests[-3]
    assert upload.files[0].data == b"again-bytes"
    reactions = fake.messages[thread_id]["reactions"]
    assert [(r["emoji"]["name"], r["count"], r["me"]) for r in reactions] == [("✅", 1, True)]

    message = await text_channel(bot, fake).fetch_message(thread_id)
    with pytest.raises(discord.HTTPException) as second:
        await message.create_thread(name="again")
    assert (second.value.status, second.value.code) == (400, 160004)


async def test_context_menu_opens_modal_and_submit(fake: FakeDiscord, bot: TinyBot) -> None:
    attachment = fake.add_attachment("a.png", png())
    target = fake.add_message(fake.channel_id, content="look", attachments=[attachment], author_id=fake.other_user_id)
    await fake.interact(fake.message_command("Edit with Tiny", target))
    modal = await fake.wait_for(lambda r: isinstance(r.json, dict) and r.json.get("type") == 9)
    assert modal.json["data"]["title"] == "Edit image"

    await fake.interact(fake.modal_submit(fake.modal_custom_id(), {"prompt": "night sky"}))
    done = await fake.wait_for_message(lambda m: m["content"].startswith("modal got"))
    assert done["content"] == "modal got 'night sky' for 1 image(s)"
    assert [c.json["type"] for c in fake.callbacks()] == [9, 5]


async def test_raw_reaction_fetches_and_replies(fake: FakeDiscord, bot: TinyBot) -> None:
    attachment = fake.add_attachment("a.png", png())
    target = fake.add_message(fake.channel_id, content="edit me", attachments=[attachment, attachment])
    await fake.dispatch("MESSAGE_REACTION_ADD", fake.reaction_add(target, "🎨"))
    reply = await fake.wait_for_message(lambda m: m["content"].startswith("kontext"))

    assert reply["content"] == "kontext on 2 image(s)"
    assert reply["type"] == 19 and reply["referenced_message"]["id"] == target["id"]
    fetch, post = fake.requests[-2:]
    assert (fetch.method, fetch.path) == ("GET", f"/channels/{fake.channel_id}/messages/{target['id']}")
    assert str(post.json["message_reference"]["message_id"]) == target["id"]
    assert post.json["allowed_mentions"]["replied_user"] is False


async def test_channel_send_file_cdn_roundtrip_and_refresh(fake: FakeDiscord, bot: TinyBot) -> None:
    image = png("blue")
    message = await text_channel(bot, fake).send("hello", file=discord.File(io.BytesIO(image), "blue.png"))
    assert fake.requests[-1].files[0].data == image
    [attachment] = message.attachments
    assert (attachment.width, attachment.height, attachment.content_type) == (8, 6, "image/png")
    assert await attachment.read() == image

    stored = fake.add_attachment("old.png", b"old bytes")
    fake.expire_attachment(stored)
    with pytest.raises(discord.NotFound):
        await bot.http.get_from_cdn(stored["url"])
    route = discord.http.Route("POST", "/attachments/refresh-urls")
    refreshed = await bot.http.request(route, json={"attachment_urls": [stored["url"]]})
    assert refreshed["refreshed_urls"][0]["original"] == stored["url"]
    assert await bot.http.get_from_cdn(refreshed["refreshed_urls"][0]["refreshed"]) == b"old bytes"


async def test_thread_errors_and_foreign_edit(fake: FakeDiscord, bot: TinyBot) -> None:
    message = await text_channel(bot, fake).send("base")
    thread = await message.create_thread(name="t1")
    sent = await thread.send("inside")
    assert fake.threads[message.id]["message_count"] == 1 and sent.channel.id == message.id

    fake.threads_allowed = False
    other = await text_channel(bot, fake).send("other")
    with pytest.raises(discord.Forbidden) as forbidden:
        await other.create_thread(name="t2")
    assert forbidden.value.code == 50013

    with pytest.raises(discord.HTTPException) as wrong_type:
        await bot.http.start_thread_with_message(
            fake.forum_or_no_thread_channel_id, other.id, name="x", auto_archive_duration=60, rate_limit_per_user=0
        )
    assert wrong_type.value.code == 50024

    user_message = fake.add_message(fake.channel_id, content="mine")
    partial = text_channel(bot, fake).get_partial_message(int(user_message["id"]))
    with pytest.raises(discord.Forbidden) as foreign:
        await partial.edit(content="hijack")
    assert foreign.value.code == 50005


async def test_channel_history_pages_newest_first(fake: FakeDiscord, bot: TinyBot) -> None:
    added = [fake.add_message(fake.channel_id, content=f"m{i}") for i in range(120)]
    channel = text_channel(bot, fake)

    everything = [m async for m in channel.history(limit=None)]
    assert [m.content for m in everything] == [f"m{i}" for i in reversed(range(120))]
    pages = [r for r in fake.requests if r.path == f"/channels/{fake.channel_id}/messages" and r.method == "GET"]
    assert [p.query.get("limit") for p in pages] == ["100", "100"]
    assert pages[1].query["before"] == added[20]["id"]

    after = [m.content async for m in channel.history(after=discord.Object(int(added[9]["id"])), limit=3)]
    assert after == ["m10", "m11", "m12"]
    before = [m.content async for m in channel.history(before=discord.Object(int(added[9]["id"])), limit=2)]
    assert before == ["m8", "m7"]


@pytest.mark.parametrize("fake_kwargs", [{"edit_rate": (2, 0.4)}])
async def test_rate_limit_headers_pace_discord_py(fake: FakeDiscord, bot: TinyBot) -> None:
    channel = text_channel(bot, fake)
    for i in range(5):
        await channel.send(f"n{i}")
    payload = fake.slash("count", [{"name": "n", "type": 4, "value": 4}])
    await fake.interact(payload)
    await fake.wait_for_message(lambda m: m["content"] == "step 3")

    assert fake.rate_limited == 0
    sends = [r.time for r in fake.requests if r.method == "POST" and r.path.endswith("/messages")]
    edits = [r.time for r in fake.requests if r.method == "PATCH" and on_token(payload)(r)]
    assert (len(sends), len(edits)) == (5, 4)
    # limit 2 per 0.4 s: requests 0-1, 2-3 and 4 fall in successive windows
    assert sends[2] - sends[0] >= 0.39 and sends[4] - sends[2] >= 0.39
    assert edits[2] - edits[0] >= 0.39


@pytest.mark.parametrize("fake_kwargs", [{"edit_rate": (2, 5.0)}])
async def test_rate_limit_exceeded_answers_429_like_discord(fake: FakeDiscord) -> None:
    url = f"{fake.api_url}/channels/{fake.channel_id}/messages"
    async with aiohttp.ClientSession(headers={"Authorization": "Bot x"}) as session:
        answers = [await session.post(url, json={"content": str(i)}) for i in range(3)]
        bodies = [await a.json(content_type=None) for a in answers]
    ok, last_ok, limited = answers
    assert ok.headers["Content-Type"] == "application/json"
    assert (ok.headers["X-RateLimit-Limit"], ok.headers["X-RateLimit-Remaining"]) == ("2", "1")
    assert last_ok.headers["X-RateLimit-Remaining"] == "0"
    assert 0 < float(last_ok.headers["X-RateLimit-Reset-After"]) <= 5.0
    assert ok.headers["X-RateLimit-Bucket"] == last_ok.headers["X-RateLimit-Bucket"]
    assert limited.status == 429 and limited.headers["Via"]
    assert bodies[2]["global"] is False and 0 < bodies[2]["retry_after"] <= 5.0
    assert fake.rate_limited == 1
    assert [m["content"] for m in fake.channel_messages(fake.channel_id)] == ["0", "1"]


async def test_scripted_429s_are_retried_and_without_via_are_not(fake: FakeDiscord, bot: TinyBot) -> None:
    fake.fail_next("POST", r"^/channels/\d+/messages$", 429)
    fake.fail_next("PATCH", r"/messages/@original$", 429)
    await text_channel(bot, fake).send("after 429")
    posts = [r for r in fake.requests if r.method == "POST" and r.path.endswith("/messages")]
    assert [r.status for r in posts] == [429, 200]
    assert posts[1].time - posts[0].time >= 0.1

    payload, _ = await run_edit(fake, png())
    patches = [r.status for r in fake.requests if r.method == "PATCH" and on_token(payload)(r)]
    assert patches == [429, 200, 200]

    fake.fail_next("POST", r"^/channels/\d+/messages$", 429, headers={"Via": ""})
    with pytest.raises(discord.HTTPException) as banned:
        await text_channel(bot, fake).send("cloudflare")
    assert banned.value.status == 429
    assert fake.rate_limited == 0  # scripted failures are not counted as real rate limits


@pytest.mark.parametrize("fake_kwargs", [{"ack_deadline": 0.1}])
async def test_late_ack_gets_10062_and_second_ack_40060(fake: FakeDiscord, bot: TinyBot) -> None:
    await fake.interact(fake.slash("slow", []))
    await fake.wait_until(lambda: bool(bot.errors), what="the bot's error")
    [error] = bot.errors
    assert isinstance(error, app_commands.CommandInvokeError)
    assert isinstance(error.original, discord.NotFound) and error.original.code == 10062
    bot.errors.clear()

    payload = fake.slash("count", [{"name": "n", "type": 4, "value": 1}])
    await fake.interact(payload)
    await fake.wait_for_message(lambda m: m["content"] == "step 0")
    url = f"{fake.api_url}/interactions/{payload['id']}/{payload['token']}/callback"
    async with aiohttp.ClientSession() as session, session.post(url, json={"type": 5}) as again:
        assert again.status == 400 and (await again.json())["code"] == 40060


async def test_token_expires_15_minutes_after_the_interaction_snowflake(fake: FakeDiscord, bot: TinyBot) -> None:
    created = datetime.now(UTC) - timedelta(minutes=15) + timedelta(seconds=0.6)
    payload = fake.slash("late", [], created_at=created)
    assert discord.utils.snowflake_time(int(payload["id"])) == created.replace(
        microsecond=created.microsecond // 1000 * 1000
    )
    await fake.interact(payload)
    await fake.wait_until(lambda: bool(bot.errors), timeout=5.0, what="the bot's error")

    [error] = bot.errors
    assert isinstance(error, app_commands.CommandInvokeError)
    assert isinstance(error.original, discord.HTTPException)
    assert (error.original.status, error.original.code) == (401, 50027)
    assert [r.status for r in fake.requests if on_token(payload)(r)] == [200, 200, 401]
    bot.errors.clear()


@pytest.mark.parametrize("fake_kwargs", [{"attachment_size_limit": 1000}])
async def test_upload_over_the_size_limit_is_413(fake: FakeDiscord, bot: TinyBot) -> None:
    channel = text_channel(bot, fake)
    await channel.send(file=discord.File(io.BytesIO(b"x" * 1000), "fits.bin"))
    with pytest.raises(discord.HTTPException) as too_big:
        await channel.send(file=discord.File(io.BytesIO(b"x" * 1001), "big.bin"))
    assert (too_big.value.status, too_big.value.code) == (413, 40005)
    assert fake.slash("edit", [])["attachment_size_limit"] == 1000


async def test_gateway_drop_resumes_and_replays_missed_events(fake: FakeDiscord, bot: TinyBot) -> None:
    await fake.drop_gateway()
    await fake.dispatch("MESSAGE_REACTION_ADD", fake.reaction_add(fake.add_message(fake.channel_id), "🎨"))
    await fake.wait_for_message(lambda m: m["content"] == "kontext on 0 image(s)")

    await asyncio.wait_for(bot.resumed.wait(), 5.0)
    assert len(fake.identify_payloads) == 1
    [resume] = fake.resume_payloads
    assert resume["session_id"] == "fake-session-1" and resume["token"] == "fake-token"
    assert resume["seq"] >= 2  # READY and GUILD_CREATE were seen before the drop

    _, original = await run_edit(fake, png())  # interactions still work on the resumed session
    assert original["content"] == "Done: make it blue"


async def test_unknown_routes_and_injected_errors(fake: FakeDiscord, bot: TinyBot) -> None:
    with pytest.raises(discord.NotFound) as missing:
        await bot.http.request(discord.http.Route("GET", "/nope/{x}", x=1))
    assert missing.value.text == "404: Not Found"
    assert fake.unhandled == ["GET /nope/1"]
    fake.unhandled.clear()

    fake.fail_next("GET", r"/messages/\d+$", 403, {"code": 50001, "message": "Missing Access"})
    target = fake.add_message(fake.channel_id, content="hidden")
    with pytest.raises(discord.Forbidden) as denied:
        await text_channel(bot, fake).fetch_message(int(target["id"]))
    assert denied.value.code == 50001
    assert (await text_channel(bot, fake).fetch_message(int(target["id"]))).content == "hidden"


async def test_run_client_raises_when_connect_dies(fake: FakeDiscord) -> None:
    client = TinyBot(fake.guild_id)
    with pytest.raises(RuntimeError, match="died") as died:
        async with run_client(client, fake):
            await fake.drop_gateway(code=4004)  # authentication failed: discord.py does not reconnect
            await asyncio.sleep(0.1)
    assert isinstance(died.value.__cause__, discord.ConnectionClosed)
    assert died.value.__cause__.code == 4004
    assert client.is_closed()


async def test_component_update_message_callback_edits_the_message(fake: FakeDiscord, bot: TinyBot) -> None:
    view = discord.ui.View(timeout=None)
    view.add_item(BumpButton(1))
    sent = await text_channel(bot, fake).send("bump me", view=view)
    stale = fake.messages[sent.id]
    for expected in (2, 3):
        await fake.interact(fake.button(f"bump:{expected - 1}", stale))  # the fake sends the current state
        await fake.wait_for_message(lambda m: m["content"] == f"bumped to {expected}")  # noqa: B023

    assert [c.json["type"] for c in fake.callbacks()] == [7, 7]
    message = fake.messages[sent.id]
    assert message["components"][0]["components"][0]["custom_id"] == "bump:3"
    assert fake.channel_messages(fake.channel_id) == [message]


async def test_unresumable_drop_makes_the_client_identify_again(fake: FakeDiscord, bot: TinyBot) -> None:
    await fake.drop_gateway(resumable=False)
    await fake.wait_until(lambda: bot.ready_count == 2, what="second on_ready")
    assert len(fake.resume_payloads) == 1 and len(fake.identify_payloads) == 2
    resumes = [f for f in fake.gateway_frames if f.get("op") == 6]
    assert [r["d"]["session_id"] for r in resumes] == ["fake-session-1"]  # answered with INVALID_SESSION

    await fake.dispatch("MESSAGE_REACTION_ADD", fake.reaction_add(fake.add_message(fake.channel_id), "🎨"))
    await fake.wait_for_message(lambda m: m["content"] == "kontext on 0 image(s)")
