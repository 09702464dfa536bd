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

from tests.fakes.fake_discord import COMPONENTS_V2, DROPPED, EPHEMERAL, FakeDiscord, Recorded, Where, run_client

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


class ReshowButton(discord.ui.DynamicItem[discord.ui.Button[discord.ui.LayoutView]], template=r"reshow:(?P<n>\d+)"):
    """Button inside a Components V2 message; redraws the message (type 7) as a spoilered gallery."""

    def __init__(self, n: int) -> None:
        super().__init__(discord.ui.Button(label=f"Reshow {n}", custom_id=f"reshow:{n}"))
        self.n = n

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction, item: discord.ui.Item[Any], match: re.Match[str]
    ) -> Self:
        return cls(int(match["n"]))

    async def callback(self, interaction: discord.Interaction) -> None:
        view = gallery_view(["red.png"], spoiler=True, button=ReshowButton(self.n + 1))
        await interaction.response.edit_message(view=view)


def gallery_view(
    names: list[str], *, spoiler: bool = False, button: discord.ui.Item[Any] | None = None
) -> discord.ui.LayoutView:
    """A Components V2 result: a container with a caption and a gallery of uploaded files (and maybe a button)."""
    view = discord.ui.LayoutView(timeout=None)
    items = [discord.MediaGalleryItem(f"attachment://{n}", description=f"alt {n}", spoiler=spoiler) for n in names]
    view.add_item(
        discord.ui.Container(discord.ui.TextDisplay("Results"), discord.ui.MediaGallery(*items), accent_colour=0x5865F2)
    )
    if button is not None:
        view.add_item(discord.ui.ActionRow(button))
    return view


def color_files(*colors: str) -> list[discord.File]:
    return [discord.File(io.BytesIO(png(c)), f"{c}.png") for c in colors]


class UploadModal(discord.ui.Modal, title="Edit with files"):
    """A modal with Labels: a prompt and a File Upload of 1-3 images."""

    prompt: discord.ui.Label[UploadModal] = discord.ui.Label(
        text="Prompt",
        description="What should change?",
        component=discord.ui.TextInput(custom_id="prompt", style=discord.TextStyle.paragraph, max_length=4000),
    )
    images: discord.ui.Label[UploadModal] = discord.ui.Label(
        text="Images", component=discord.ui.FileUpload(custom_id="images", min_values=1, max_values=3)
    )

    async def on_submit(self, interaction: discord.Interaction) -> None:
        prompt, upload = self.prompt.component, self.images.component
        assert isinstance(prompt, discord.ui.TextInput) and isinstance(upload, discord.ui.FileUpload)
        sizes = [len(await attachment.read()) for attachment in upload.values]
        await interaction.response.send_message(f"upload got {prompt.value!r} with sizes {sizes}")


def tiny_bot(interaction: discord.Interaction) -> TinyBot:
    assert isinstance(interaction.client, TinyBot)
    return interaction.client


@app_commands.command(name="where", description="Reply from wherever it was used")
@app_commands.allowed_installs(guilds=True, users=True)
@app_commands.allowed_contexts(guilds=True, dms=True, private_channels=True)
async def where_command(interaction: discord.Interaction, followups: int = 0) -> None:
    tiny_bot(interaction).seen.append(interaction)
    await interaction.response.send_message("here")
    for index in range(followups):
        await interaction.followup.send(f"followup {index}")


@app_commands.command(name="gallery", description="Answer with a Components V2 gallery")
async def gallery_command(interaction: discord.Interaction, how: str) -> None:
    if how == "send":
        view = gallery_view(["red.png"], button=ReshowButton(1))
        await interaction.response.send_message(view=view, files=color_files("red"))
    elif how == "defer":
        await interaction.response.defer(thinking=True)
        view = gallery_view(["red.png", "blue.png"], spoiler=True)
        await interaction.edit_original_response(view=view, attachments=color_files("red", "blue"))
    else:
        await interaction.response.defer()
        await interaction.followup.send(view=gallery_view(["blue.png"]), files=color_files("red", "blue"))


@app_commands.command(name="upload", description="Open a modal with a File Upload")
async def upload_command(interaction: discord.Interaction) -> None:
    await interaction.response.send_modal(UploadModal())


CHINESE = {"where": "哪里", "Reply from wherever it was used": "从任何地方回复", "followups": "后续"}


class ChineseTranslator(app_commands.Translator):
    async def translate(
        self, string: app_commands.locale_str, locale: discord.Locale, context: app_commands.TranslationContextTypes
    ) -> str | None:
        return CHINESE.get(string.message) if locale is discord.Locale.chinese else None


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
        self.seen: list[discord.Interaction] = []
        self.messages_seen: list[discord.Message] = []
        self.tree.error(self._on_tree_error)

    async def setup_hook(self) -> None:
        self.add_dynamic_items(AgainButton, BumpButton, ReshowButton)
        await self.tree.set_translator(ChineseTranslator())
        guild_commands: list[app_commands.Command[Any, ..., None]] = [
            edit_command,
            count_command,
            slow_command,
            late_command,
            gallery_command,
            upload_command,
        ]
        for command in guild_commands:
            self.tree.add_command(command, guild=self.guild)
        self.tree.add_command(app_commands.ContextMenu(name="Edit with Tiny", callback=edit_with_tiny))
        self.tree.add_command(where_command)
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

    async def on_message(self, message: discord.Message) -> None:
        self.messages_seen.append(message)

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
    assert sorted((c["name"], c["type"]) for c in global_sync) == [("Edit with Tiny", 3), ("where", 1)]
    edit = next(c for c in guild_sync if c["name"] == "edit")
    assert [(o["name"], o["type"]) for o in edit["options"]] == [("prompt", 3), ("image", 11)]
    menu = next(c for c in fake.commands[None] if c["type"] == 3)
    assert menu["description"] == ""  # context menus are synced without one

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


# ------------------------------------------------------------------------ nonces, refusals, drops


async def raw_request(
    fake: FakeDiscord, method: str, path: str, *, json: Any = None, headers: dict[str, str] | None = None
) -> tuple[int, Any]:
    """One request with a bot token, outside discord.py (for what discord.py refuses to send)."""
    async with (
        aiohttp.ClientSession(headers={"Authorization": "Bot x", **(headers or {})}) as session,
        session.request(method, fake.api_url + path, json=json) as answer,
    ):
        return answer.status, await answer.json(content_type=None)


async def test_enforced_nonce_returns_the_first_message(fake: FakeDiscord, bot: TinyBot) -> None:
    channel = text_channel(bot, fake)
    first = await channel.send("once", nonce="retry-1")
    again = await channel.send("once", nonce="retry-1")
    other = await channel.send("once", nonce="retry-2")

    assert again.id == first.id != other.id
    assert [m["content"] for m in fake.channel_messages(fake.channel_id)] == ["once", "once"]
    posts = [r for r in fake.requests if r.method == "POST" and r.path.endswith("/messages")]
    assert [(r.status, r.json["nonce"], r.json["enforce_nonce"]) for r in posts[:2]] == [(200, "retry-1", True)] * 2
    assert first.nonce == again.nonce == "retry-1"  # the create answers carry it ...
    assert (await channel.fetch_message(first.id)).nonce is None  # ... a fetched message does not

    fake.nonce_window = 0.05
    await asyncio.sleep(0.06)
    assert (await channel.send("once", nonce="retry-1")).id != first.id  # the window has passed
    status, body = await raw_request(
        fake, "POST", f"/channels/{fake.channel_id}/messages", json={"content": "x", "nonce": "n" * 26}
    )
    assert (status, body["code"]) == (400, 50035)


async def test_refused_channel_answers_403_to_the_bot_but_interactions_work(fake: FakeDiscord, bot: TinyBot) -> None:
    channel = text_channel(bot, fake)
    before = await channel.send("before")
    thread = await before.create_thread(name="inside")
    fake.deny_channel(fake.channel_id)  # 50001 Missing Access

    calls = {
        "send": channel.send("x"),
        "fetch": channel.fetch_message(before.id),
        "history": anext(channel.history(limit=1)),
        "typing": channel.typing().wrapped_typer(),
        "edit": before.edit(content="y"),
        "delete": before.delete(),
        "react": before.add_reaction("✅"),
        "thread": channel.create_thread(name="new", type=discord.ChannelType.public_thread),
        "in thread": thread.send("z"),
    }
    for name, call in calls.items():
        with pytest.raises(discord.Forbidden) as refused:
            await call
        assert refused.value.code == 50001, name

    payload = fake.slash("count", [{"name": "n", "type": 4, "value": 1}])
    assert not discord.Permissions(int(payload["app_permissions"])).view_channel
    await fake.interact(payload)
    await fake.wait_for_message(lambda m: m["content"] == "step 0")  # callback and @original edit went through

    fake.deny_channel(fake.channel_id, code=50013)
    with pytest.raises(discord.Forbidden) as no_send:
        await channel.send("x")
    assert no_send.value.code == 50013
    permissions = discord.Permissions(int(fake.slash("count", [])["app_permissions"]))
    assert permissions.view_channel and not permissions.send_messages
    [overwrite] = fake.world.channels[fake.channel_id]["permission_overwrites"]  # sent in later GUILD_CREATEs
    assert overwrite["id"] == str(fake.bot_role_id) and not int(overwrite["deny"]) & permissions.value

    fake.allow_channel(fake.channel_id)
    assert (await channel.send("back")).content == "back"

    gone = fake.remove_channel(fake.nsfw_channel_id)
    with pytest.raises(discord.NotFound) as unknown:
        await bot.get_partial_messageable(int(gone["id"])).send("x")
    assert unknown.value.code == 10003


async def test_dropped_connection_raises_server_disconnected(fake: FakeDiscord, bot: TinyBot) -> None:
    channel = text_channel(bot, fake)
    fake.fail_next("POST", r"^/channels/\d+/messages$", disconnect=True)
    with pytest.raises(aiohttp.ServerDisconnectedError):
        await channel.send("lost")
    assert fake.requests[-1].status == DROPPED and fake.channel_messages(fake.channel_id) == []

    fake.fail_next("POST", r"^/channels/\d+/messages$", disconnect=True, applied=True)
    with pytest.raises(aiohttp.ServerDisconnectedError):
        await channel.send("landed")
    [landed] = fake.channel_messages(fake.channel_id)
    assert landed["content"] == "landed"  # it exists, the bot just never heard back

    fake.fail_next("GET", r"/messages/\d+$", disconnect=True)  # aiohttp retries an idempotent request once
    assert (await channel.fetch_message(int(landed["id"]))).content == "landed"
    assert [r.status for r in fake.requests[-2:]] == [DROPPED, 200]
    fake.fail_next("GET", r"/messages/\d+$", disconnect=True, times=2)
    with pytest.raises(aiohttp.ServerDisconnectedError):
        await channel.fetch_message(int(landed["id"]))

    payload, _ = await run_edit_with_dropped_followup(fake)
    assert [r.status for r in fake.requests if on_token(payload)(r) and r.method == "POST"][-1] == DROPPED
    await fake.wait_until(lambda: bool(bot.errors), what="the bot's error")
    [error] = bot.errors
    assert isinstance(error, app_commands.CommandInvokeError)
    assert isinstance(error.original, aiohttp.ServerDisconnectedError)
    bot.errors.clear()


async def run_edit_with_dropped_followup(fake: FakeDiscord) -> tuple[Json, Json]:
    fake.fail_next("POST", r"^/webhooks/\d+/[^/]+$", disconnect=True)
    attachment = fake.add_attachment("cat.png", png())
    options = [{"name": "prompt", "type": 3, "value": "p"}, {"name": "image", "type": 11, "value": attachment["id"]}]
    payload = fake.slash("edit", options)
    await fake.interact(payload)
    original = await fake.wait_for_message(lambda m: m["content"] == "Done: p")
    await fake.wait_until(lambda: fake.requests[-1].status == DROPPED, what="the dropped followup")
    return payload, original


# ------------------------------------------------------------------------ threads, forum posts, DMs


async def where(fake: FakeDiscord, bot: TinyBot, **kwargs: Any) -> tuple[Json, discord.Interaction]:
    """Run /where with the builder's keyword arguments; the payload and the Interaction discord.py built."""
    payload = fake.slash("where", [], **kwargs)
    await fake.interact(payload)
    await fake.wait_until(lambda: any(i.id == int(payload["id"]) for i in bot.seen), what="/where")
    return payload, next(i for i in bot.seen if i.id == int(payload["id"]))


async def test_interactions_in_a_thread_and_a_forum_post(fake: FakeDiscord, bot: TinyBot) -> None:
    base = await text_channel(bot, fake).send("base")
    thread = await base.create_thread(name="results")
    _, inside = await where(fake, bot, channel_id=thread.id)
    assert isinstance(inside.channel, discord.Thread) and inside.channel.parent_id == fake.channel_id
    [reply] = [m for m in fake.channel_messages(thread.id) if m["content"] == "here"]
    assert reply["guild_id"] == str(fake.guild_id)

    post = fake.add_thread(fake.forum_channel_id, "my post", owner_id=fake.other_user_id, content="look at this")
    payload, in_post = await where(fake, bot, channel_id=int(post["id"]))
    assert payload["channel"]["parent_id"] == str(fake.forum_channel_id) and payload["channel"]["type"] == 11
    assert isinstance(in_post.channel, discord.Thread)
    assert isinstance(in_post.channel.parent, discord.ForumChannel)
    starter = fake.channel_messages(int(post["id"]))[0]
    assert (starter["id"], starter["content"]) == (post["id"], "look at this")

    await fake.interact(fake.message_command("Edit with Tiny", starter))  # the builders follow the message
    await fake.wait_for(lambda r: isinstance(r.json, dict) and r.json.get("type") == 9)
    await fake.interact(fake.modal_submit(fake.modal_custom_id(), {"prompt": "p"}, channel_id=int(post["id"])))
    done = await fake.wait_for_message(lambda m: m["content"].startswith("modal got"))
    assert done["channel_id"] == post["id"]

    sent = await thread.send("in thread")
    with pytest.raises(discord.HTTPException) as nested:
        await sent.create_thread(name="deeper")
    assert nested.value.code == 50024  # no thread from a message in a thread
    with pytest.raises(discord.HTTPException) as thread_in_thread:
        await bot.http.start_thread_without_message(thread.id, name="x", auto_archive_duration=60, type=11)
    assert thread_in_thread.value.code == 50024


async def test_interactions_and_messages_in_a_dm(fake: FakeDiscord, bot: TinyBot) -> None:
    dm = fake.dm_channel()
    payload, interaction = await where(fake, bot, channel_id=int(dm["id"]))
    assert "guild_id" not in payload and "member" not in payload and payload["user"]["id"] == str(fake.owner_id)
    assert payload["context"] == 1 and payload["authorizing_integration_owners"] == {"0": "0"}
    assert payload["app_permissions"] == "442368"  # receiving-and-responding.mdx: DMs with the app's bot user
    assert isinstance(interaction.channel, discord.DMChannel) and isinstance(interaction.user, discord.User)
    assert interaction.guild is None and interaction.context.dm_channel
    [reply] = fake.channel_messages(int(dm["id"]))
    assert reply["content"] == "here" and "guild_id" not in reply

    owner = await bot.fetch_user(fake.owner_id)
    channel = await owner.create_dm()
    assert channel.id == int(dm["id"])
    view = discord.ui.View(timeout=None)
    view.add_item(BumpButton(1))
    sent = await channel.send("bump me", view=view)
    await fake.interact(fake.button("bump:1", fake.messages[sent.id]))
    await fake.wait_for_message(lambda m: m["content"] == "bumped to 2")
    with pytest.raises(discord.HTTPException) as no_thread:
        await bot.http.start_thread_with_message(dm["id"], sent.id, name="x", auto_archive_duration=60)
    assert no_thread.value.code == 50003  # Cannot execute action on a DM channel

    target = fake.add_message(int(dm["id"]), content="mine", attachments=[fake.add_attachment("a.png", png())])
    await fake.interact(fake.message_command("Edit with Tiny", target))
    await fake.wait_for(lambda r: isinstance(r.json, dict) and r.json.get("type") == 9)
    await fake.interact(
        fake.modal_submit(fake.modal_custom_id(), {"prompt": "dm"}, message=None, channel_id=int(dm["id"]))
    )
    done = await fake.wait_for_message(lambda m: m["content"].startswith("modal got 'dm'"))
    assert done["channel_id"] == dm["id"]

    between_users = fake.dm_channel(fake.owner_id, other_user_id=fake.other_user_id)
    with pytest.raises(ValueError, match="user-installed"):
        fake.slash("where", [], channel_id=int(between_users["id"]))
    payload, elsewhere = await where(fake, bot, channel_id=int(between_users["id"]), user_install=True)
    assert payload["context"] == 2 and elsewhere.context.private_channel and elsewhere.is_user_integration()
    with pytest.raises(discord.Forbidden) as not_a_recipient:
        await bot.get_partial_messageable(int(between_users["id"])).send("x")
    assert not_a_recipient.value.code == 50001


async def test_without_message_content_intent_other_peoples_messages_are_empty(fake: FakeDiscord) -> None:
    client = TinyBot(fake.guild_id, message_content=False)
    async with run_client(client, fake):
        channel = client.get_channel(fake.channel_id)
        assert isinstance(channel, discord.TextChannel)
        image = fake.add_attachment("a.png", png())
        secret = fake.add_message(fake.channel_id, content="secret", attachments=[image], author_id=fake.other_user_id)
        mention = fake.add_message(fake.channel_id, content=f"<@{fake.bot_user_id}> look", attachments=[image])
        direct = fake.add_message(int(fake.dm_channel()["id"]), content="just us", attachments=[image])
        for message in (secret, mention, direct):
            await fake.dispatch("MESSAGE_CREATE", message)
        own = await channel.send("mine")
        await fake.wait_until(lambda: len(client.messages_seen) == 4, what="four MESSAGE_CREATEs")

        seen = {m.id: (m.content, len(m.attachments)) for m in client.messages_seen}
        assert seen[int(secret["id"])] == ("", 0)
        assert seen[int(mention["id"])] == (f"<@{fake.bot_user_id}> look", 1)
        assert seen[int(direct["id"])] == ("just us", 1)
        assert seen[own.id] == ("mine", 0)
        fetched = await channel.fetch_message(int(secret["id"]))
        assert (fetched.content, fetched.attachments) == ("", [])
        assert [m.content async for m in channel.history(limit=2)] == ["mine", f"<@{fake.bot_user_id}> look"]

        await fake.interact(fake.message_command("Edit with Tiny", secret))  # the target keeps its content
        await fake.wait_for(lambda r: isinstance(r.json, dict) and r.json.get("type") == 9)
        await fake.interact(fake.modal_submit(fake.modal_custom_id(), {"prompt": "p"}))
        done = await fake.wait_for_message(lambda m: m["content"].startswith("modal got"))
        assert done["content"] == "modal got 'p' for 1 image(s)"
    assert fake.identify_payloads[0]["intents"] & (1 << 15) == 0


# ------------------------------------------------------------------------------------------ shards


class ShardBot(commands.AutoShardedBot):
    """An AutoShardedBot that records what reaches it."""

    def __init__(self, shard_ids: list[int] | None, shard_count: int | None) -> None:
        shards: dict[str, Any] = {} if shard_ids is None else {"shard_ids": shard_ids}
        super().__init__(
            command_prefix="!", intents=tiny_intents(), shard_count=shard_count, guild_ready_timeout=0.05, **shards
        )
        self.interaction_guilds: list[int | None] = []
        self.reaction_guilds: list[int | None] = []
        self.resumed = asyncio.Event()

    async def before_identify_hook(self, shard_id: int | None, *, initial: bool = False) -> None:
        """No 5 s pause between shards against the fake."""

    async def on_interaction(self, interaction: discord.Interaction) -> None:
        self.interaction_guilds.append(interaction.guild_id)

    async def on_raw_reaction_add(self, payload: discord.RawReactionActionEvent) -> None:
        self.reaction_guilds.append(payload.guild_id)

    async def on_shard_resumed(self, shard_id: int) -> None:
        self.resumed.set()


async def test_two_sharded_processes_each_get_their_guilds_and_events(fake: FakeDiscord) -> None:
    guild0 = fake.add_guild("Shard zero", shard=0, shard_count=2)  # the main guild is on shard 1 of 2
    zero, one = ShardBot([0], 2), ShardBot([1], 2)
    async with run_client(zero, fake, "token-a"), run_client(one, fake, "token-b"):
        assert sorted(tuple(p["shard"]) for p in fake.identify_payloads) == [(0, 2), (1, 2)]
        assert [g.id for g in zero.guilds] == [guild0.id] and [g.id for g in one.guilds] == [fake.guild_id]
        assert not any(r.path == "/gateway/bot" for r in fake.requests)  # shard_count given: DEFAULT_GATEWAY

        await fake.interact(fake.button("nothing", fake.add_message(guild0.text_channel_id)))
        await fake.interact(fake.slash("where", [], channel_id=int(fake.dm_channel()["id"])))  # DMs: shard 0
        await fake.dispatch("MESSAGE_REACTION_ADD", fake.reaction_add(fake.add_message(fake.channel_id), "👍"))
        await fake.wait_until(lambda: len(zero.interaction_guilds) == 2 and len(one.reaction_guilds) == 1)
        assert zero.interaction_guilds == [guild0.id, None] and zero.reaction_guilds == []
        assert one.interaction_guilds == [] and one.reaction_guilds == [fake.guild_id]

        await fake.drop_gateway(shard_id=1)
        await fake.dispatch("MESSAGE_REACTION_ADD", fake.reaction_add(fake.add_message(fake.channel_id), "👀"))
        await asyncio.wait_for(one.resumed.wait(), 5.0)
        await fake.wait_until(lambda: len(one.reaction_guilds) == 2, what="the replayed reaction")
        [resume] = fake.resume_payloads
        assert fake.gateway.sessions[resume["session_id"]].shard_id == 1
        assert not zero.resumed.is_set() and len(fake.identify_payloads) == 2


@pytest.mark.parametrize("fake_kwargs", [{"recommended_shards": 2, "max_concurrency": 2}])
async def test_gateway_bot_recommends_the_shard_count(fake: FakeDiscord) -> None:
    guild0 = fake.add_guild("Shard zero", shard=0, shard_count=2)
    client = ShardBot(None, None)
    async with run_client(client, fake):
        assert client.shard_count == 2 and sorted(client.shards) == [0, 1]
        assert sorted(g.id for g in client.guilds) == sorted([guild0.id, fake.guild_id])
        limits = await client.fetch_session_start_limits()
        assert (limits.max_concurrency, limits.total) == (2, 1000) and limits.remaining == 998
    gateway_bot = next(r for r in fake.requests if r.path == "/gateway/bot")
    assert gateway_bot.status == 200
    assert sorted(tuple(p["shard"]) for p in fake.identify_payloads) == [(0, 2), (1, 2)]
    assert (await raw_request(fake, "GET", "/gateway"))[1] == {"url": fake.gateway_url}


# ------------------------------------------------------------------------ modals with File Upload


async def test_file_upload_modal_delivers_values_and_attachments(fake: FakeDiscord, bot: TinyBot) -> None:
    await fake.interact(fake.slash("upload", []))
    opened = await fake.wait_for(lambda r: isinstance(r.json, dict) and r.json.get("type") == 9)
    prompt, images = opened.json["data"]["components"]
    assert (prompt["type"], prompt["label"], prompt["component"]["type"]) == (18, "Prompt", 4)
    assert images["component"] == {
        "type": 19,
        "custom_id": "images",
        "min_values": 1,
        "max_values": 3,
        "required": True,
    }

    files = [fake.add_attachment("a.png", png("red")), fake.add_attachment("b.png", png("blue"))]
    submit = fake.modal_submit(fake.modal_custom_id(), {"prompt": "add snow", "images": files})
    assert submit["data"]["components"] == [
        {"type": 18, "id": 1, "component": {"type": 4, "id": 2, "custom_id": "prompt", "value": "add snow"}},
        {
            "type": 18,
            "id": 3,
            "component": {"type": 19, "id": 4, "custom_id": "images", "values": [f["id"] for f in files]},
        },
    ]
    assert set(submit["data"]["resolved"]["attachments"]) == {f["id"] for f in files}
    await fake.interact(submit)
    done = await fake.wait_for_message(lambda m: m["content"].startswith("upload got"))
    assert done["content"] == f"upload got 'add snow' with sizes {[len(png('red')), len(png('blue'))]}"
    with pytest.raises(ValueError, match="no input"):
        fake.modal_submit(fake.modal_custom_id(), {"nope": "x"})


def upload_modal() -> Json:
    prompt = {"type": 4, "custom_id": "prompt", "style": 2, "max_length": 4000}
    upload = {"type": 19, "custom_id": "images", "min_values": 1, "max_values": 3, "required": True}
    return {
        "custom_id": "m",
        "title": "Edit",
        "components": [
            {"type": 18, "label": "Prompt", "component": prompt},
            {"type": 18, "label": "Images", "component": upload},
        ],
    }


def _set(path: str, value: Any) -> Callable[[Json], Json]:
    def change(modal: Json) -> Json:
        *parents, last = path.split(".")
        node: Any = modal
        for key in parents:
            node = node[int(key)] if key.isdigit() else node[key]
        node[int(last) if last.isdigit() else last] = value
        return modal

    return change


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (_set("title", "t" * 46), "data.title"),
        (_set("custom_id", "c" * 101), "data.custom_id"),
        (lambda m: {**m, "components": m["components"] * 3}, "data.components"),
        (_set("components.0.label", "l" * 46), "data.components[0].label"),
        (_set("components.0.component.max_length", 4001), "max_length"),
        (_set("components.0.component.custom_id", "x" * 101), "custom_id"),
        (_set("components.1.component.max_values", 11), "max_values"),
        (_set("components.1.component.min_values", 0), "min_values"),
        (_set("components.1", {"type": 1, "components": [upload_modal()["components"][1]["component"]]}), "type"),
        (_set("components.1.component.custom_id", "prompt"), "unique"),
    ],
)
async def test_modal_callbacks_are_checked_like_discord(
    fake: FakeDiscord, change: Callable[[Json], Json], field: str
) -> None:
    payload = fake.slash("upload", [])
    path = f"/interactions/{payload['id']}/{payload['token']}/callback"
    status, body = await raw_request(fake, "POST", path, json={"type": 9, "data": change(upload_modal())})
    assert (status, body["code"]) == (400, 50035) and field in body["message"]
    status, _ = await raw_request(fake, "POST", path, json={"type": 9, "data": upload_modal()})
    assert status == 200  # the refused callback did not use up the interaction


# ---------------------------------------------------------------------------------- Components V2


def messages_of(fake: FakeDiscord, payload: Json) -> list[Json]:
    """Messages an interaction created (response first), current state."""
    return [m for m in fake.messages.values() if m.get("interaction_metadata", {}).get("id") == payload["id"]]


@pytest.mark.parametrize("fake_kwargs", [{"edit_rate": (50, 5.0)}])
async def test_components_v2_messages_are_validated_and_stored(fake: FakeDiscord, bot: TinyBot) -> None:
    channel = text_channel(bot, fake)
    sent = await channel.send(
        view=gallery_view(["red.png", "blue.png"], spoiler=True), files=color_files("red", "blue", "green")
    )
    stored = fake.messages[sent.id]
    assert stored["flags"] & COMPONENTS_V2 and stored["content"] == ""
    container = stored["components"][0]
    assert (container["type"], container["accent_color"]) == (17, 0x5865F2)
    gallery, by_name = container["components"][1], {a["filename"]: a for a in stored["attachments"]}
    assert [i["media"]["url"] for i in gallery["items"]] == [by_name["red.png"]["url"], by_name["blue.png"]["url"]]
    assert [i["media"]["attachment_id"] for i in gallery["items"]] == [
        by_name["red.png"]["id"],
        by_name["blue.png"]["id"],
    ]
    assert [(i["spoiler"], i["description"]) for i in gallery["items"]] == [
        (True, "alt red.png"),
        (True, "alt blue.png"),
    ]
    assert fake.undisplayed_attachments[sent.id] == ["green.png"]  # uploaded, but no component shows it
    assert isinstance(sent.components[0], discord.Container)

    for refused in (
        channel.send("text too", view=gallery_view(["red.png"]), files=color_files("red")),  # type: ignore[call-overload]
        channel.send(view=gallery_view(["gone.png"]), files=color_files("red")),
    ):
        with pytest.raises(discord.HTTPException) as bad:
            await refused
        assert (bad.value.status, bad.value.code) == (400, 50035)
    path = f"/channels/{fake.channel_id}/messages"
    text = {"type": 10, "content": "x"}
    item = {"media": {"url": "https://example.com/a.png"}}
    for body in (
        {"flags": COMPONENTS_V2, "components": [text] * 41},  # 40 components at most, nested ones counted
        {"flags": COMPONENTS_V2, "components": [{"type": 17, "components": [text] * 40}]},
        {"flags": COMPONENTS_V2, "components": [{"type": 12, "items": [item] * 11}]},
        {"flags": COMPONENTS_V2, "components": [{"type": 12, "items": [{**item, "description": "d" * 1025}]}]},
        {"flags": COMPONENTS_V2, "components": [{"type": 13, "file": {"url": "https://example.com/a.png"}}]},
        {"flags": COMPONENTS_V2, "components": [{"type": 9, "components": [text]}]},  # a Section needs an accessory
        {"components": [text]},  # V2 components without the flag
    ):
        status, answer = await raw_request(fake, "POST", path, json=body)
        assert (status, answer.get("code")) == (400, 50035), (body, answer)
    status, _ = await raw_request(fake, "POST", path, json={"flags": COMPONENTS_V2, "components": [text] * 40})
    assert status == 200


async def test_text_displays_mention_as_content_does_within_allowed_mentions(fake: FakeDiscord, bot: TinyBot) -> None:
    """reference.mdx "Text Display": pingable mentions in it ping, per the message's allowed_mentions."""
    text = f"<@{fake.owner_id}> and <@{fake.other_user_id}> @everyone"
    body = {"flags": COMPONENTS_V2, "components": [{"type": 17, "components": [{"type": 10, "content": text}]}]}
    path = f"/channels/{fake.channel_id}/messages"

    _, everyone = await raw_request(fake, "POST", path, json=body)
    only_owner = {**body, "allowed_mentions": {"parse": [], "users": [str(fake.owner_id)]}}
    _, owner = await raw_request(fake, "POST", path, json=only_owner)

    assert {u["id"] for u in everyone["mentions"]} == {str(fake.owner_id), str(fake.other_user_id)}
    assert everyone["mention_everyone"] is True
    assert [u["id"] for u in owner["mentions"]] == [str(fake.owner_id)] and owner["mention_everyone"] is False


async def test_components_v2_flag_is_set_once_and_never_removed(fake: FakeDiscord, bot: TinyBot) -> None:
    channel = text_channel(bot, fake)
    v2 = discord.ui.LayoutView()
    v2.add_item(discord.ui.TextDisplay("now in components"))
    legacy = await channel.send("plain text")
    with pytest.raises(discord.HTTPException) as keeps_content:
        await legacy.edit(view=v2)  # resources/message.mdx: the used content must be cleared (null) as well
    assert keeps_content.value.code == 50035
    upgraded = await legacy.edit(content=None, view=v2)
    assert upgraded.flags.components_v2 and fake.messages[legacy.id]["content"] == ""

    path = f"/channels/{fake.channel_id}/messages/{legacy.id}"
    status, answer = await raw_request(fake, "PATCH", path, json={"flags": 0})
    assert status == 200 and answer["flags"] & COMPONENTS_V2  # only ever set
    status, answer = await raw_request(fake, "PATCH", path, json={"content": "back to text"})
    assert (status, answer["code"]) == (400, 50035)


async def test_components_v2_in_interaction_responses(fake: FakeDiscord, bot: TinyBot) -> None:
    def gallery(how: str) -> Json:
        return fake.slash("gallery", [{"name": "how", "type": 3, "value": how}])

    send = gallery("send")
    await fake.interact(send)
    await fake.wait_until(lambda: bool(messages_of(fake, send)))
    [original] = messages_of(fake, send)
    assert original["flags"] & COMPONENTS_V2 and fake.callbacks()[-1].json["data"]["flags"] & COMPONENTS_V2
    await fake.interact(fake.button("reshow:1", original))  # type 7 on a V2 message
    reshown = await fake.wait_for_message(lambda m: "reshow:2" in str(m["components"]))
    assert reshown["id"] == original["id"] and reshown["flags"] & COMPONENTS_V2
    assert reshown["components"][0]["components"][1]["items"][0]["spoiler"] is True

    deferred = gallery("defer")
    await fake.interact(deferred)
    await fake.wait_until(lambda: any("items" in str(m["components"]) for m in messages_of(fake, deferred)))
    [edited] = messages_of(fake, deferred)
    assert edited["flags"] & COMPONENTS_V2 and not edited["flags"] & (1 << 7)  # no longer loading
    assert [i["spoiler"] for i in edited["components"][0]["components"][1]["items"]] == [True, True]

    followup = gallery("followup")
    await fake.interact(followup)
    await fake.wait_until(lambda: len(messages_of(fake, followup)) == 2)
    sent = messages_of(fake, followup)[1]
    assert sent["flags"] & COMPONENTS_V2 and fake.undisplayed_attachments[int(sent["id"])] == ["red.png"]

    refused = gallery("send")
    path = f"/interactions/{refused['id']}/{refused['token']}/callback"
    for body in (
        {"type": 5, "data": {"flags": COMPONENTS_V2}},
        {"type": 4, "data": {"flags": COMPONENTS_V2, "content": "x"}},
    ):
        status, answer = await raw_request(fake, "POST", path, json=body)
        assert (status, answer.get("code")) == (400, 50035), (body, answer)


# ------------------------------------------------------------------------------------ user installs


@pytest.mark.parametrize("fake_kwargs", [{"edit_rate": (50, 5.0)}])  # seven messages on one token
async def test_user_installed_app_in_a_guild_without_the_bot(fake: FakeDiscord, bot: TinyBot) -> None:
    outside: Where = {"channel_id": fake.external_channel_id, "user_install": True, "user_id": fake.other_user_id}
    payload, interaction = await where(fake, bot, **outside)
    assert payload["authorizing_integration_owners"] == {"1": str(fake.other_user_id)} and payload["context"] == 0
    assert "permissions" in payload["channel"] and "permission_overwrites" not in payload["channel"]
    assert interaction.is_user_integration() and not interaction.is_guild_integration()
    assert bot.get_guild(fake.external_guild_id) is None  # the gateway never announced it
    for refused in (
        bot.get_partial_messageable(fake.external_channel_id).send("x"),
        bot.fetch_channel(fake.external_channel_id),
        bot.fetch_guild(fake.external_guild_id),
    ):
        with pytest.raises(discord.Forbidden) as missing:
            await refused
        assert missing.value.code == 50001
    with pytest.raises(ValueError, match="user_install"):
        fake.slash("where", [], channel_id=fake.external_channel_id)

    six = [{"name": "followups", "type": 4, "value": 6}]
    capped = fake.slash("where", six, **outside)
    await fake.interact(capped)
    await fake.wait_until(lambda: bool(bot.errors), what="the 6th followup's error")
    [error] = bot.errors
    assert isinstance(error, app_commands.CommandInvokeError) and isinstance(error.original, discord.HTTPException)
    assert (error.original.status, error.original.code) == (400, 40094)
    assert len(messages_of(fake, capped)) == 1 + 5
    bot.errors.clear()

    both = fake.slash("where", six, user_install=True)  # installed to the server too: no cap
    assert set(both["authorizing_integration_owners"]) == {"0", "1"}
    await fake.interact(both)
    await fake.wait_until(lambda: len(messages_of(fake, both)) == 7, what="all six followups")

    quiet_server: Where = {**outside, "external_apps": False}  # the server turned Use External Apps off
    quiet = fake.slash("where", [{"name": "followups", "type": 4, "value": 1}], **quiet_server)
    assert not discord.Permissions(int(quiet["member"]["permissions"])).use_external_apps
    await fake.interact(quiet)
    await fake.wait_until(lambda: len(messages_of(fake, quiet)) == 2, what="reply and followup")
    assert all(m["flags"] & EPHEMERAL for m in messages_of(fake, quiet))  # whatever the bot asked
    assert not any(
        m["interaction_metadata"]["id"] == quiet["id"] for m in fake.channel_messages(fake.external_channel_id)
    )


# -------------------------------------------------------------------------- locales and command sync


async def test_command_localizations_are_echoed_and_locales_reach_the_bot(fake: FakeDiscord, bot: TinyBot) -> None:
    put = next(r for r in fake.requests if r.method == "PUT" and r.path == f"/applications/{fake.app_id}/commands")
    assert next(c for c in put.json if c["name"] == "where")["name_localizations"] == {"zh-CN": "哪里"}
    stored = next(c for c in fake.commands[None] if c["name"] == "where")
    assert (stored["name_localizations"], stored["description_localizations"]) == (
        {"zh-CN": "哪里"},
        {"zh-CN": "从任何地方回复"},
    )
    assert stored["options"][0]["name_localizations"] == {"zh-CN": "后续"}
    assert (stored["integration_types"], stored["contexts"]) == ([0, 1], [0, 1, 2])
    edit = next(c for c in fake.commands[fake.guild_id] if c["name"] == "edit")
    assert edit["integration_types"] == [0] and edit["guild_id"] == str(fake.guild_id)

    fetched = {c.name: c for c in await bot.tree.fetch_commands()}
    assert fetched["where"].name_localizations == {}  # a plain GET drops the dictionaries ...
    listing = f"/applications/{fake.app_id}/commands"
    _, localized = await raw_request(fake, "GET", listing, headers={"X-Discord-Locale": "zh-CN"})
    where_cmd = next(c for c in localized if c["name"] == "where")
    assert where_cmd["name_localized"] == "哪里" and "name_localizations" not in where_cmd  # ... or localizes them
    _, full = await raw_request(fake, "GET", listing + "?with_localizations=true")
    assert next(c for c in full if c["name"] == "where")["name_localizations"] == {"zh-CN": "哪里"}

    _, interaction = await where(fake, bot, locale="zh-CN", guild_locale="de")
    assert (interaction.locale, interaction.guild_locale) == (discord.Locale.chinese, discord.Locale.german)
    payload, in_dm = await where(fake, bot, locale="fr", channel_id=int(fake.dm_channel()["id"]))
    assert "guild_locale" not in payload and (in_dm.locale, in_dm.guild_locale) == (discord.Locale.french, None)

    bad = [{"name": "x", "description": "d", "name_localizations": {"xx-XX": "y"}}]
    status, answer = await raw_request(fake, "PUT", listing, json=bad)
    assert (status, answer["code"]) == (400, 50035)


async def test_a_choice_name_localization_takes_100_characters_a_command_name_32(fake: FakeDiscord) -> None:
    listing = f"/applications/{fake.app_id}/commands"
    choice = {"name": "c", "value": "c", "name_localizations": {"zh-CN": "长" * 100}}
    option = {"type": 3, "name": "o", "description": "d", "choices": [choice]}
    status, _ = await raw_request(fake, "PUT", listing, json=[{"name": "x", "description": "d", "options": [option]}])
    assert status == 200
    long_name = [{"name": "x", "description": "d", "name_localizations": {"zh-CN": "长" * 33}}]
    status, answer = await raw_request(fake, "PUT", listing, json=long_name)
    assert (status, answer["code"]) == (400, 50035)
