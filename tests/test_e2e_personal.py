"""/kontext-settings and /kontext-history end to end: personal defaults reaching fal's payload, and the history's
pages and actions, also after a restart."""

from __future__ import annotations

from datetime import UTC, datetime

from bot.community import UserSettings
from tests.community import command, delivered, personal, result_messages, submits
from tests.conftest import StartBot
from tests.fakes.discord_components import walk
from tests.fakes.fake_discord import FakeDiscord
from tests.harness import Harness, Json, message_text


async def test_personal_defaults_reach_fals_payload_unless_the_command_says_otherwise(harness: Harness):
    shown = await personal(harness, aspect_ratio="16:9", output_format="png", num_images=2, model="kontext-pro-multi")
    await delivered(harness)
    await delivered(harness, num_images=1, aspect_ratio="1:1", model="kontext-max-multi")

    assert "- Aspect ratio: 16:9" in shown and "- Model: FLUX.1 Kontext [pro] multi" in shown
    first, second = submits(harness)
    paths = [r.path for r in harness.fal.requests if r.kind == "submit"]
    assert paths == ["/fal-ai/flux-pro/kontext/multi", "/fal-ai/flux-pro/kontext/max/multi"]
    assert (first["aspect_ratio"], first["output_format"], first["num_images"]) == ("16:9", "png", 2)
    assert (second["aspect_ratio"], second["output_format"], second["num_images"]) == ("1:1", "png", 1)


async def test_a_default_the_model_does_not_take_is_left_out(harness: Harness):
    await personal(harness, aspect_ratio="21:9", num_images=3, model="flux-2-pro-edit")

    await delivered(harness)

    [sent] = submits(harness)
    assert "image_size" not in sent and "num_images" not in sent  # FLUX.2 has no 21:9 and makes one image


async def test_defaults_apply_to_the_reaction_trigger_too(harness: Harness):
    await personal(harness, output_format="png")
    target = harness.discord.add_message(harness.discord.channel_id, content="at night", attachments=[harness.image()])

    await harness.discord.dispatch("MESSAGE_REACTION_ADD", harness.discord.reaction_add(target, "🎨"))
    await harness.discord.wait_until(lambda: bool(submits(harness)))

    assert submits(harness)[0]["output_format"] == "png"
    await harness.bot.runner.wait_idle()


async def test_defaults_changed_by_another_process_are_used_after_its_next_look(harness: Harness):
    """Another process (one of the user's other servers) saves them; this one reads the changes every few seconds."""
    await delivered(harness)
    await harness.store.save_user_settings(harness.discord.owner_id, UserSettings(num_images=3), datetime.now(UTC))
    await harness.bot.user_settings.refresh(harness.store, datetime.now(UTC))  # the look the refresher makes

    await delivered(harness)

    assert [sent["num_images"] for sent in submits(harness)] == [1, 3]


async def test_reset_clears_them_and_a_crafted_value_is_refused(harness: Harness):
    await personal(harness, num_images=4)

    crafted = await personal(harness, aspect_ratio="5:1")
    cleared = await personal(harness, reset=True)
    await delivered(harness)

    assert "That value is not valid here: 5:1" in crafted
    assert "- Number of results: the model's default" in cleared
    assert submits(harness)[0]["num_images"] == 1


# --- history --------------------------------------------------------------------------------------------


def buttons(message: Json) -> dict[str, Json]:
    """A message's buttons by custom_id, nested ones too (a result card's sit in its container)."""
    return {c["custom_id"]: c for c in walk(list(message.get("components") or [])) if "custom_id" in c}


def history_message(harness: Harness) -> Json:
    [message] = [m for m in harness.discord.messages.values() if m["content"].startswith("**Your edits**")]
    return message


async def press(
    harness: Harness, custom_id: str, message: Json, user_id: int | None = None, *, answered: bool = True
) -> str | None:
    """Press a button; returns its ephemeral answer (`answered`; a page turn edits the message, a post posts)."""
    before = len(harness.ephemeral_replies())
    await harness.discord.interact(harness.discord.button(custom_id, message, user_id=user_id))
    if not answered:
        return None
    await harness.discord.wait_until(lambda: len(harness.ephemeral_replies()) > before, what="an answer")
    return harness.ephemeral_replies()[before]


async def open_history(harness: Harness) -> Json:
    await command(harness, "kontext-history", [])
    return history_message(harness)


async def test_history_pages_and_reposts_after_a_restart(start_bot: StartBot, fake_discord: FakeDiscord):
    async with start_bot() as first:
        for n in range(5):
            await delivered(first, prompt=f"edit number {n}")
        await first.discord.interact(first.discord.slash("kontext-history", []))
        await fake_discord.wait_until(lambda: any(m["content"].startswith("**Your edits**") for m in
                                                  fake_discord.messages.values()))  # fmt: skip
    async with start_bot() as second:  # a new process: same database, the old ephemeral message's buttons
        page = history_message(second)
        assert page["flags"] & 64 and "edit number 4" in page["content"] and "edit number 0" not in page["content"]

        await press(second, "kontext-history:page:1", page, answered=False)
        await fake_discord.wait_until(lambda: "edit number 0" in history_message(second)["content"])
        older = history_message(second)
        [job] = [j for j in await second.store.jobs(limit=10) if j.request.prompt == "edit number 0"]
        assert "edit number 4" not in older["content"] and buttons(older)["kontext-history:page:2"]["disabled"]
        assert not buttons(page)["kontext-history:page:1"].get("disabled")

        await press(second, f"kontext-history:repost:{job.id}", older, answered=False)
        await fake_discord.wait_until(lambda: len(result_messages(second)) == 6)
        [repost] = [m for m in result_messages(second) if int(m["channel_id"]) == fake_discord.channel_id]
        assert "edit number 0" in message_text(repost)
        assert repost["attachments"] and f"kontext:reroll:{job.id}" in buttons(repost)

        await press(second, f"kontext:reroll:{job.id}", repost, answered=False)  # the re-posted buttons work
        await fake_discord.wait_until(lambda: len(submits(second)) == 6)  # five before the restart
        assert submits(second)[-1]["prompt"] == "edit number 0"
        await second.bot.runner.wait_idle()


async def test_history_deletes_a_result_message_and_reuses_a_result_but_only_ones_own(harness: Harness):
    await delivered(harness)
    [job] = await harness.store.jobs(limit=1)
    page = await open_history(harness)
    [result] = result_messages(harness)

    others = [await press(harness, f"kontext-history:{action}:{job.id}", page, user_id=harness.discord.other_user_id)
              for action in ("delete", "repost")]  # fmt: skip
    deleted = await press(harness, f"kontext-history:delete:{job.id}", page)
    pinned = await press(harness, f"kontext-history:use:{job.id}", page)
    await delivered(harness)

    assert all(answer is not None and "not one of your jobs" in answer for answer in others)
    assert deleted is not None and "Deleted the result message" in deleted
    assert int(result["id"]) in harness.discord.deleted_messages and result_messages(harness)[0] is not result
    assert pinned is not None and "Saved" in pinned
    assert submits(harness)[1]["image_urls"][0] == job.result.images[0].url  # type: ignore[union-attr]
    harness.discord.messages.pop(int(page["id"]))
    again = await open_history(harness)
    assert "🗑️ result message deleted" in again["content"]
    assert buttons(again)[f"kontext-history:delete:{job.id}"]["disabled"]
