"""User installs end to end: the commands declare both installs and every context; where only the user installed
the app (no bot member), the status stays on the interaction's token and the results come as its followups, with
no thread and no channel request; where the server turned off external apps, everything is ephemeral."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from bot.jobs import JobState
from tests.fakes.fake_discord import COMPONENTS_V2, EPHEMERAL, Recorded
from tests.fakes.fake_fal import JobScript
from tests.harness import Harness, Json, custom_ids, gallery_items

EVERY_CONTEXT = [0, 1, 2]  # GUILD, BOT_DM, PRIVATE_CHANNEL
BOTH_INSTALLS = [0, 1]  # GUILD_INSTALL, USER_INSTALL


def followups(harness: Harness, payload: Json) -> list[Recorded]:
    """The interaction's followup posts (its webhook, no message id in the path)."""
    return [r for r in harness.discord.requests if r.method == "POST" and r.path.endswith(f"/{payload['token']}")]


def bot_channel_requests(harness: Harness) -> list[Recorded]:
    """Requests with the bot's token on channels: messages, threads, history, reactions."""
    return [r for r in harness.discord.requests if r.path.startswith("/channels/")]


def result_of(harness: Harness, payload: Json) -> Json:
    [message] = [m for m in harness.result_messages() if m["interaction_metadata"]["id"] == payload["id"]]
    return message


async def test_commands_declare_both_installs_and_every_context(harness: Harness):
    commands = {(c["name"], c["type"]): c for c in harness.discord.commands[None]}

    everywhere = [("kontext", 1), ("Edit with Kontext", 3), ("kontext-usage", 1), ("kontext-settings", 1),
                  ("kontext-history", 1)]  # fmt: skip
    for key in everywhere:
        assert commands[key]["integration_types"] == BOTH_INSTALLS, key
        assert commands[key]["contexts"] == EVERY_CONTEXT, key
    admin = commands[("kontext-admin", 1)]
    assert admin["integration_types"] == [0] and admin["contexts"] == [0]  # a server's settings: in servers only
    [put] = [r for r in harness.discord.requests if r.method == "PUT" and r.path.endswith("/commands")]
    assert all("integration_types" in c and "contexts" in c for c in put.json)  # sent by the bot, not defaults


@pytest.mark.parametrize("place", ["server-without-the-bot", "private-channel"])
async def test_where_only_the_user_installed_the_app_results_come_as_followups(harness: Harness, place: str):
    discord = harness.discord
    if place == "private-channel":  # a DM between two users: the bot is not in it
        channel_id = int(discord.dm_channel(other_user_id=discord.other_user_id)["id"])
    else:
        channel_id = discord.external_channel_id
    harness.fal.add_script(JobScript(queue_positions=(1,)))

    payload = await harness.kontext("make it blue", num_images=2, channel_id=channel_id, user_install=True)
    final = await harness.final_status(payload["token"])
    [job] = await harness.finish_jobs()

    assert "✅ Done" in final and job.state is JobState.DELIVERED
    [posted] = followups(harness, payload)  # both images in one card
    assert posted.status == 200 and posted.json["flags"] & COMPONENTS_V2
    assert [item["media"]["url"] for item in gallery_items(posted.json)] == [f"attachment://{f.filename}"
                                                                            for f in posted.files]  # fmt: skip
    result = result_of(harness, payload)
    assert job.result_message_ids == (int(result["id"]),) and f"kontext:reroll:{job.id}" in custom_ids(result)
    assert discord.threads == {} and bot_channel_requests(harness) == []  # no thread, nor any try at one


async def test_a_result_card_from_a_followup_rerolls_as_followups_again(harness: Harness):
    discord = harness.discord
    first = await harness.kontext(channel_id=discord.external_channel_id, user_install=True)
    await harness.final_status(first["token"])
    result = result_of(harness, first)

    reroll = next(i for i in custom_ids(result) if i.startswith("kontext:reroll:"))
    press = discord.button(reroll, result, user_install=True)
    await discord.interact(press)
    assert "✅ Done" in await harness.final_status(press["token"])
    jobs = await harness.finish_jobs()

    assert [job.state for job in jobs] == [JobState.DELIVERED, JobState.DELIVERED]
    assert len(followups(harness, press)) == 1 and result_of(harness, press)["flags"] & COMPONENTS_V2
    assert discord.threads == {} and bot_channel_requests(harness) == []


async def test_where_the_server_turned_off_external_apps_everything_is_private(harness: Harness):
    discord = harness.discord

    payload = await harness.kontext(channel_id=discord.external_channel_id, user_install=True, external_apps=False)
    final = await harness.final_status(payload["token"])
    [job] = await harness.finish_jobs()

    assert "✅ Done" in final and "Only you can see this" in final and job.state is JobState.DELIVERED
    [callback] = [r for r in discord.callbacks() if payload["token"] in r.path]
    assert callback.json["data"]["flags"] & EPHEMERAL  # asked for, not only forced
    [posted] = followups(harness, payload)
    assert posted.json["flags"] & EPHEMERAL and posted.json["flags"] & COMPONENTS_V2
    mine = [m for m in discord.messages.values() if m["interaction_metadata"]["id"] == payload["id"]]
    assert len(mine) == 2 and all(m["flags"] & EPHEMERAL for m in mine)
    assert discord.channel_messages(discord.external_channel_id) == [] and bot_channel_requests(harness) == []


async def test_in_the_bots_dm_the_results_are_posted_in_the_dm(harness: Harness):
    dm = harness.discord.dm_channel()

    payload = await harness.kontext(channel_id=int(dm["id"]))
    assert "✅ Done" in await harness.final_status(payload["token"])
    [job] = await harness.finish_jobs()

    assert followups(harness, payload) == [] and harness.discord.threads == {}
    [result] = harness.discord.channel_messages(int(dm["id"]))[1:]  # after the status
    assert result["flags"] & COMPONENTS_V2 and job.result_message_ids == (int(result["id"]),)


async def test_a_job_outliving_the_token_says_so_and_never_tries_the_channel(harness: Harness):
    harness.fal.add_script(JobScript(queue_positions=(2,), hold=True))
    created = datetime.now(UTC) - timedelta(minutes=15) + timedelta(seconds=61)  # the token has ~61 s left
    discord = harness.discord

    payload = await harness.kontext(channel_id=discord.external_channel_id, user_install=True, created_at=created)
    await discord.wait_until(lambda: any("⌛" in text for text in harness.status_texts(payload["token"])))
    harness.fal.release(next(iter(harness.fal.jobs)))
    final = await harness.final_status(payload["token"])

    note = next(text for text in harness.status_texts(payload["token"]) if "⌛" in text)
    assert "2 jobs ahead" in note and "can't post its results" in note
    assert "✅ Done" in final and "⌛" not in final  # done in time: the warning goes with the Cancel button
    assert len(followups(harness, payload)) == 1 and bot_channel_requests(harness) == []
