"""Hostile users and careless operators: the bot checks before it talks, never fetches what a link points
at, echoes prompts harmlessly, refuses bad state at start and keeps each user's inputs theirs."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import sys
import time
from pathlib import Path

import pytest

from bot.bot import bot_intents
from bot.store import SCHEMA_VERSION
from cogs.delivery import thread_name
from tests.conftest import DISCORD_TOKEN, FAL_KEY, StartBot
from tests.harness import Harness, Json, custom_ids, message_text

QUESTION = "what should I do"


def submits(harness: Harness) -> list[Json]:
    return [r.json for r in harness.fal.requests if r.kind == "submit"]


def button(message: Json, action: str) -> str:
    ids = custom_ids(message)
    return next(i for i in ids if i.startswith(f"kontext:{action}:"))


def bot_posts(harness: Harness) -> list[Json]:
    return [r.json for r in harness.discord.requests if r.method == "POST" and r.path.startswith("/channels/")]


async def react(harness: Harness, target: Json, *, user_id: int | None = None) -> None:
    await harness.event("MESSAGE_REACTION_ADD", harness.discord.reaction_add(target, "🎨", user_id=user_id))


async def delivered_result(harness: Harness, prompt: str = "make it blue") -> Json:
    payload = await harness.kontext(prompt)
    assert "✅ Done" in await harness.final_status(payload["token"])
    await harness.finish_jobs()
    [message] = harness.result_messages()
    return message


# --- the reaction trigger checks before it talks ---------------------------------------------------------


@pytest.mark.parametrize(
    ("setting", "reacting_user"),
    [
        pytest.param({"allowed_guild_ids": (42,)}, None, id="server-not-allowed"),
        pytest.param({"allowed_role_ids": (1_000_000_000_000_000_030,)}, None, id="member-without-the-role"),
    ],
)
async def test_outsiders_reacting_get_no_answer_at_all(
    start_bot: StartBot, setting: dict[str, tuple[int, ...]], reacting_user: int | None
):
    async with start_bot(**setting) as harness:
        target = harness.discord.add_message(harness.discord.channel_id, attachments=[harness.image()])

        for _ in range(8):
            await react(harness, target, user_id=reacting_user)

        assert bot_posts(harness) == [] and harness.fal.requests == []
        assert not any(r.path.endswith(f"/messages/{target['id']}") for r in harness.discord.requests)  # not even read


async def test_eight_reactions_ask_one_question_and_one_answer_starts_one_job(harness: Harness):
    channel = harness.discord.channel_id
    targets = [harness.discord.add_message(channel, attachments=[harness.image()]) for _ in range(8)]

    await asyncio.gather(*(react(harness, target) for target in targets))
    await harness.discord.wait_for_message(lambda m: QUESTION in m["content"])
    await harness.discord.dispatch("MESSAGE_CREATE", harness.discord.add_message(channel, content="add a hat"))
    await harness.discord.wait_until(lambda: bool(submits(harness)))
    await harness.finish_jobs()

    assert sum(QUESTION in str(post.get("content")) for post in bot_posts(harness)) == 1
    assert len(submits(harness)) == 1


async def test_a_member_over_the_limit_is_told_before_any_question(start_bot: StartBot):
    async with start_bot(daily_images_per_user=0) as harness:
        target = harness.discord.add_message(harness.discord.channel_id, attachments=[harness.image()])

        await react(harness, target)
        notice = await harness.discord.wait_for_message(lambda m: "images today" in m["content"])

        assert QUESTION not in str(bot_posts(harness)) and harness.fal.requests == []
        assert f"<@{harness.discord.owner_id}>" in notice["content"]


async def test_without_the_content_intent_it_points_to_the_menu_instead_of_asking(start_bot: StartBot):
    async with start_bot(message_content_intent=False) as harness:
        result = await delivered_result(harness)  # the bot sees its own messages' images

        started = time.monotonic()
        await react(harness, result)
        notice = await harness.discord.wait_for_message(lambda m: "Edit with Kontext" in m["content"])

        assert QUESTION not in str(bot_posts(harness)) and time.monotonic() - started < 5
        assert "can't read messages" in notice["content"]


def test_the_bot_asks_only_for_the_intents_it_uses():
    without = bot_intents(message_content=False)
    with_content = bot_intents(message_content=True)

    assert (without.guilds, without.guild_reactions, without.guild_messages, without.message_content) == (
        True, True, False, False,
    )  # fmt: skip
    assert with_content.guild_messages and with_content.message_content
    assert not (with_content.dm_messages or with_content.members or with_content.presences)


async def test_a_mention_is_not_a_command_and_logs_nothing(harness: Harness):
    mention = harness.discord.add_message(harness.discord.channel_id, content=f"<@{harness.discord.bot_user_id}> hi")

    await harness.event("MESSAGE_CREATE", mention)

    assert bot_posts(harness) == []  # and the harness fails on any logged error (it was a CommandNotFound)


# --- links are never fetched as given -------------------------------------------------------------------------


async def test_an_embedded_link_reaches_fal_only_as_discords_proxied_copy(harness: Harness):
    link = "http://169.254.169.254/latest/meta-data/iam/role.png"
    proxied = f"{harness.discord.base_url}/cdn/external/role.png"
    embed = {"type": "image", "url": link, "thumbnail": {"url": link, "proxy_url": proxied, "width": 8, "height": 8}}
    target = harness.discord.add_message(harness.discord.channel_id, content="make it pop", embeds=[embed])

    await react(harness, target)
    await harness.discord.wait_until(lambda: bool(submits(harness)))

    assert submits(harness)[0]["image_urls"] == [proxied]
    assert link not in str(harness.fal.requests)


async def test_a_malformed_embed_link_gets_an_answer_from_the_menu(harness: Harness):
    bad = "http://[::1/a.png"
    embed = {"type": "image", "url": bad, "thumbnail": {"url": bad, "proxy_url": bad, "width": 8, "height": 8}}
    target = harness.discord.add_message(harness.discord.channel_id, content="x", embeds=[embed])

    await harness.discord.interact(harness.discord.message_command("Edit with Kontext", target))
    await harness.discord.wait_until(lambda: bool(harness.ephemeral_replies()))

    assert "no images I can use" in harness.ephemeral_replies()[0]


async def test_an_unexpected_error_in_the_menu_still_gets_an_answer(harness: Harness, monkeypatch: pytest.MonkeyPatch):
    def broken(message: object) -> list[object]:
        raise RuntimeError("a bug")

    monkeypatch.setattr(sys.modules["cogs.triggers"], "images_of_message", broken)  # the module the bot loaded
    harness.errors.allowed.append("failed")
    target = harness.discord.add_message(harness.discord.channel_id, attachments=[harness.image()])

    await harness.discord.interact(harness.discord.message_command("Edit with Kontext", target))
    await harness.discord.wait_until(lambda: bool(harness.ephemeral_replies()))

    assert "Something went wrong on my side" in harness.ephemeral_replies()[0]


# --- prompts are echoed harmlessly ------------------------------------------------------------------------------


async def test_an_echoed_prompt_shows_no_link_previews_and_no_reordering(harness: Harness):
    prompt = "make it like https://example.com/look.png \u202eevil\u202c please"

    result = await delivered_result(harness, prompt)

    assert submits(harness)[0]["prompt"] == "make it like https://example.com/look.png evil please"
    assert "\u202e" not in message_text(result) and result["flags"] & 4  # SUPPRESS_EMBEDS
    status = next(m for m in harness.discord.messages.values() if m.get("interaction_metadata"))
    assert status["flags"] & 4


@pytest.mark.parametrize(
    ("prompt", "expected"),
    [
        ("a\nb\t c", "Kontext: a b c"),
        ("x" * 200, "Kontext: " + "x" * 90 + "…"),
        ("word " * 30, "Kontext: " + ("word " * 18).strip() + "…"),
    ],
)
def test_thread_names_are_one_line_within_discords_limit(prompt: str, expected: str):
    name = thread_name(prompt)

    assert name == expected and 1 <= len(name) <= 100


# --- other people's results -------------------------------------------------------------------------------------


async def test_only_the_requester_or_a_moderator_may_reroll(harness: Harness):
    result = await delivered_result(harness)
    reroll = button(result, "reroll")

    await harness.discord.interact(harness.discord.button(reroll, result, user_id=harness.discord.other_user_id))
    await harness.discord.wait_until(lambda: bool(harness.ephemeral_replies()))
    assert "Only <@" in harness.ephemeral_replies()[0] and len(submits(harness)) == 1

    press = harness.discord.button(reroll, result, user_id=harness.discord.mod_user_id)
    await harness.discord.interact(press)
    assert "✅ Done" in await harness.final_status(press["token"])
    assert len(submits(harness)) == 2


async def test_anyone_may_edit_again_from_a_result_as_their_own_job(harness: Harness):
    result = await delivered_result(harness)
    other = harness.discord.other_user_id

    await harness.discord.interact(harness.discord.button(button(result, "edit"), result, user_id=other))
    await harness.discord.wait_until(lambda: any(r.json.get("type") == 9 for r in harness.discord.callbacks()))
    submit = harness.discord.modal_submit(harness.discord.modal_custom_id(), {"prompt": "snow"}, user_id=other,
                                          channel_id=int(result["channel_id"]))  # fmt: skip
    await harness.discord.interact(submit)
    await harness.final_status(submit["token"])

    jobs = await harness.finish_jobs()
    assert jobs[-1].user_id == other and submits(harness)[1]["image_urls"] == [jobs[0].result.images[0].url]  # type: ignore[union-attr]


# --- bad state at start ---------------------------------------------------------------------------------------------


ROOT = str(Path(__file__).resolve().parent.parent)


async def run_bot(database: Path, tmp_path: Path) -> tuple[int, str, float]:
    env = {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": ROOT,
           "DISCORD_TOKEN": DISCORD_TOKEN, "FAL_KEY": FAL_KEY, "DATABASE_PATH": str(database),
           "DISCORD_API_URL": "http://127.0.0.1:9/api/v10", "HEARTBEAT_PATH": str(tmp_path / "beat")}  # fmt: skip
    started = time.monotonic()
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bot", env=env, cwd=tmp_path, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    output, _ = await asyncio.wait_for(process.communicate(), 20)
    return process.returncode or 0, output.decode(), time.monotonic() - started


async def test_a_corrupt_database_stops_the_bot_at_once_with_one_clear_line(tmp_path: Path):
    database = tmp_path / "kontext.sqlite3"
    database.write_bytes(os.urandom(64 * 1024))

    code, output, seconds = await run_bot(database, tmp_path)

    assert code != 0 and seconds < 15
    lines = output.strip().splitlines()
    assert len(lines) == 1 and str(database) in lines[0] and "not a database" in lines[0], output


async def test_a_database_from_a_newer_bot_is_refused_at_start(tmp_path: Path):
    database = tmp_path / "kontext.sqlite3"
    with sqlite3.connect(database) as db:
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 3}")

    code, output, _ = await run_bot(database, tmp_path)

    assert code != 0 and "is newer than this bot's" in output and "Traceback" not in output
