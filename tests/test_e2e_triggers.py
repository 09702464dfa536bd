"""Every trigger, the result buttons (also after a restart), and quotas, end to end against both fakes."""

from __future__ import annotations

import logging

import pytest

from bot.bot import REQUIRED_PERMISSIONS
from bot.jobs import JobState
from tests.conftest import StartBot
from tests.fakes.fake_fal import JobScript
from tests.harness import RESULT_TEXT, Harness, Json, custom_ids, message_text


def submits(harness: Harness) -> list[Json]:
    return [r.json for r in harness.fal.requests if r.kind == "submit"]


def result_messages(harness: Harness) -> list[Json]:
    return [m for m in harness.discord.messages.values() if RESULT_TEXT in message_text(m)]


def button(message: Json, action: str) -> str:
    ids = custom_ids(message)
    return next(i for i in ids if i.startswith(f"kontext:{action}:"))


def _replies_to(message: Json, target: Json) -> bool:
    return bool(message.get("message_reference", {}).get("message_id") == target["id"])


async def delivered_job(harness: Harness, **options) -> Json:
    """Run one /kontext to the end; return its result message."""
    payload = await harness.kontext(**options)
    await harness.final_status(payload["token"])
    await harness.finish_jobs()
    [message] = result_messages(harness)
    return message


async def test_context_menu_uses_the_message_images_and_asks_for_a_prompt(harness: Harness):
    first, second = harness.image("a.png"), harness.image("b.png", color=(1, 2, 3))
    target = harness.discord.add_message(harness.discord.channel_id, content="look", attachments=[first, second])

    await harness.discord.interact(harness.discord.message_command("Edit with Kontext", target))
    await harness.discord.wait_until(lambda: any(r.json.get("type") == 9 for r in harness.discord.callbacks()))
    submit = harness.discord.modal_submit(harness.discord.modal_custom_id(), {"prompt": "swap them", "num_images": "2"})
    await harness.discord.interact(submit)
    await harness.final_status(submit["token"])

    [sent] = submits(harness)
    assert sent["image_urls"] == [first["url"], second["url"]] and sent["num_images"] == 2
    assert int(target["id"]) in harness.discord.threads  # the thread hangs on the edited message
    [job] = await harness.finish_jobs()
    assert job.source == "context_menu" and job.state is JobState.DELIVERED


async def test_context_menu_counts_images_of_the_replied_to_message_and_embeds(harness: Harness):
    original = harness.discord.add_message(harness.discord.channel_id, attachments=[harness.image("orig.png")])
    link = "https://example.com/photo.jpg"  # the link as the user posted it; Discord's proxy already fetched it
    proxied = f"{harness.discord.base_url}/cdn/external/photo.jpg"
    thumbnail = {"url": link, "proxy_url": proxied, "width": 8, "height": 8}
    reply = harness.discord.add_message(
        harness.discord.channel_id, content="combine", referenced_message_id=int(original["id"]),
        embeds=[{"type": "image", "url": link, "thumbnail": thumbnail}],
    )  # fmt: skip

    await harness.discord.interact(harness.discord.message_command("Edit with Kontext", reply))
    await harness.discord.wait_until(lambda: any(r.json.get("type") == 9 for r in harness.discord.callbacks()))
    await harness.discord.interact(harness.discord.modal_submit(harness.discord.modal_custom_id(), {"prompt": "mix"}))
    await harness.discord.wait_until(lambda: bool(submits(harness)))

    assert submits(harness)[0]["image_urls"] == [proxied, original["attachments"][0]["url"]]


async def test_context_menu_on_a_message_without_images_says_so(harness: Harness):
    target = harness.discord.add_message(harness.discord.channel_id, content="just text")

    await harness.discord.interact(harness.discord.message_command("Edit with Kontext", target))
    await harness.discord.wait_until(lambda: bool(harness.ephemeral_replies()))

    assert "no images" in harness.ephemeral_replies()[0] and harness.fal.requests == []


async def test_reaction_uses_the_message_text_as_the_prompt(harness: Harness):
    image = harness.image()
    target = harness.discord.add_message(harness.discord.channel_id, content="make it night", attachments=[image])

    await harness.discord.dispatch("MESSAGE_REACTION_ADD", harness.discord.reaction_add(target, "🎨"))
    status = await harness.discord.wait_for_message(
        lambda m: m.get("message_reference", {}).get("message_id") == target["id"]
    )
    final = await harness.final_status(int(status["id"]))

    assert "✅ Done" in final
    assert submits(harness)[0]["prompt"] == "make it night"
    assert int(target["id"]) in harness.discord.threads
    [job] = await harness.finish_jobs()
    assert job.source == "reaction"


async def test_reaction_on_a_message_without_text_asks_for_a_prompt(harness: Harness):
    target = harness.discord.add_message(harness.discord.channel_id, attachments=[harness.image()])

    await harness.discord.dispatch("MESSAGE_REACTION_ADD", harness.discord.reaction_add(target, "🎨"))
    await harness.discord.wait_for_message(lambda m: "what should I do" in m["content"])
    answer = harness.discord.add_message(harness.discord.channel_id, content="add a hat")
    await harness.discord.dispatch("MESSAGE_CREATE", answer)
    await harness.discord.wait_until(lambda: bool(submits(harness)))

    assert submits(harness)[0]["prompt"] == "add a hat"


async def test_other_emoji_and_messages_without_images_are_ignored(harness: Harness):
    with_image = harness.discord.add_message(harness.discord.channel_id, content="x", attachments=[harness.image()])
    text_only = harness.discord.add_message(harness.discord.channel_id, content="hello")

    await harness.discord.dispatch("MESSAGE_REACTION_ADD", harness.discord.reaction_add(with_image, "👍"))
    await harness.discord.dispatch("MESSAGE_REACTION_ADD", harness.discord.reaction_add(text_only, "🎨"))
    await harness.discord.wait_for(lambda r: r.path.endswith(f"/messages/{text_only['id']}"))

    assert harness.fal.requests == []
    assert [m for m in harness.discord.messages.values()] == []


async def test_reroll_keeps_the_inputs_with_a_new_seed_in_the_same_thread(harness: Harness):
    message = await delivered_job(harness, seed=7)
    thread_id = int(message["channel_id"])

    press = harness.discord.button(button(message, "reroll"), message)
    await harness.discord.interact(press)
    await harness.final_status(press["token"])
    await harness.finish_jobs()

    first, second = submits(harness)
    assert second["image_urls"] == first["image_urls"] and second["prompt"] == first["prompt"]
    assert second["seed"] != first["seed"] == 7
    assert [int(m["channel_id"]) for m in result_messages(harness)] == [thread_id, thread_id]


async def test_edit_again_uses_the_result_image_and_a_new_prompt(harness: Harness):
    message = await delivered_job(harness)
    [job] = await harness.finish_jobs()

    await harness.discord.interact(harness.discord.button(button(message, "edit"), message))
    await harness.discord.wait_until(lambda: any(r.json.get("type") == 9 for r in harness.discord.callbacks()))
    modal = [r for r in harness.discord.callbacks() if r.json.get("type") == 9][-1]
    assert "make it blue" in str(modal.json)  # the old prompt is pre-filled
    submit = harness.discord.modal_submit(harness.discord.modal_custom_id(), {"prompt": "now add snow"},
                                          channel_id=int(message["channel_id"]))  # fmt: skip
    await harness.discord.interact(submit)
    await harness.final_status(submit["token"])

    assert submits(harness)[1]["image_urls"] == [job.result.images[0].url]  # type: ignore[union-attr]
    assert submits(harness)[1]["prompt"] == "now add snow"


async def test_use_as_input_starts_the_next_kontext_from_the_result(harness: Harness):
    message = await delivered_job(harness)
    [job] = await harness.finish_jobs()

    await harness.discord.interact(harness.discord.button(button(message, "use"), message))
    await harness.discord.wait_until(lambda: any("Saved" in r for r in harness.ephemeral_replies()))
    extra = harness.image("extra.png")
    payload = await harness.kontext("blend", [extra])
    await harness.final_status(payload["token"])

    assert submits(harness)[1]["image_urls"] == [job.result.images[0].url, extra["url"]]  # type: ignore[union-attr]


async def test_buttons_keep_working_after_a_restart(start_bot: StartBot):
    async with start_bot() as first_run:
        message = await delivered_job(first_run)
    async with start_bot() as second_run:  # a new process would look the same: same database, fresh bot
        press = second_run.discord.button(button(message, "reroll"), message)
        await second_run.discord.interact(press)
        final = await second_run.final_status(press["token"])

        assert "✅ Done" in final
        assert len(submits(second_run)) == 2


async def test_concurrency_limit_refuses_a_second_running_job(start_bot: StartBot):
    async with start_bot(max_concurrent_jobs_per_user=1) as harness:
        harness.fal.add_script(JobScript(queue_positions=(3,), hold=True))
        await harness.kontext()
        await harness.discord.wait_until(lambda: bool(submits(harness)))
        await harness.kontext("another")
        await harness.discord.wait_until(lambda: bool(harness.ephemeral_replies()))

        assert "already have 1 job running" in harness.ephemeral_replies()[0]
        assert len(submits(harness)) == 1
        harness.fal.release(next(iter(harness.fal.jobs)))
        await harness.finish_jobs()


async def test_daily_quota_is_kept_across_a_restart_and_says_when_it_resets(start_bot: StartBot):
    async with start_bot(daily_images_per_user=2) as harness:
        await delivered_job(harness, num_images=2)
    async with start_bot(daily_images_per_user=2) as harness:
        await harness.kontext()
        await harness.discord.wait_until(lambda: bool(harness.ephemeral_replies()))

        [reply] = harness.ephemeral_replies()
        assert "You have used 2 of 2 images today" in reply and "<t:" in reply
        assert len(submits(harness)) == 1  # the first run's only


async def test_cooldown_guild_and_role_limits(start_bot: StartBot, fake_discord):
    async with start_bot(cooldown_seconds=60, allowed_role_ids=(fake_discord.mod_role_id,)) as harness:
        await harness.kontext()  # the owner has no Mods role
        await harness.discord.wait_until(lambda: len(harness.ephemeral_replies()) == 1)
        allowed = await harness.kontext(user_id=fake_discord.mod_user_id)
        await harness.final_status(allowed["token"])
        await harness.kontext(user_id=fake_discord.mod_user_id)
        await harness.discord.wait_until(lambda: len(harness.ephemeral_replies()) == 2)

        first, second = harness.ephemeral_replies()
        assert "roles an admin allowed" in first and "cooldown" in second
        assert len(submits(harness)) == 1


async def test_a_guild_that_is_not_allowed_gets_no_paid_call(start_bot: StartBot):
    async with start_bot(allowed_guild_ids=(123,)) as harness:
        await harness.kontext()
        await harness.discord.wait_until(lambda: bool(harness.ephemeral_replies()))

        assert "not enabled here" in harness.ephemeral_replies()[0] and harness.fal.requests == []


async def test_cost_is_shown_with_the_job_and_usage_reports_it(start_bot: StartBot, fake_discord):
    async with start_bot(price_per_image_usd="0.05") as harness:
        payload = await harness.kontext(num_images=3)
        assert "est. $0.15" in await harness.final_status(payload["token"])
        await harness.finish_jobs()

        for count, user_id in enumerate((fake_discord.owner_id, fake_discord.other_user_id), start=1):
            await harness.discord.interact(harness.discord.slash("kontext-usage", [], user_id=user_id))
            await harness.discord.wait_until(lambda n=count: len(harness.ephemeral_replies()) == n)  # type: ignore[misc]

        admin, member = harness.ephemeral_replies()
        assert "**You**: 3 of 20 images today (≈$0.15)" in admin and "**This server**: 3 of 200" in admin
        assert "**You**: 0 of 20" in member and "This server" not in member


async def test_a_double_click_is_refused_at_once_even_while_the_first_submit_is_slow(start_bot: StartBot):
    async with start_bot(max_concurrent_jobs_per_user=1) as harness:
        harness.discord.ack_deadline = 0.5
        harness.fal.slow("submit", 1.5)
        first = await harness.kontext()
        await harness.kontext("again")
        await harness.discord.wait_until(lambda: bool(harness.ephemeral_replies()), timeout=1.0)

        assert "already have 1 job running" in harness.ephemeral_replies()[0]
        assert "✅ Done" in await harness.final_status(first["token"])
        assert len(submits(harness)) == 1
        assert all(r.status == 200 for r in harness.discord.callbacks())  # both answered within the deadline


async def test_reroll_refreshes_input_links_that_discord_has_expired(harness: Harness):
    message = await delivered_job(harness)
    [job] = await harness.finish_jobs()
    stale = job.request.image_urls[0].split("?")[0] + "?ex=00000001&is=00000000&hm=abc"  # signed, long expired
    await harness.store.save(job.update(request=job.request.model_copy(update={"image_urls": (stale,)})))

    press = harness.discord.button(button(message, "reroll"), message)
    await harness.discord.interact(press)
    await harness.final_status(press["token"])

    [refresh] = [r for r in harness.discord.requests if r.path == "/attachments/refresh-urls"]
    assert refresh.json == {"attachment_urls": [stale]}
    assert submits(harness)[1]["image_urls"] == [stale + "&refreshed=1"]


async def test_commands_sync_to_the_dev_guild_and_the_invite_url_is_logged(
    start_bot: StartBot, fake_discord, caplog: pytest.LogCaptureFixture
):
    caplog.set_level(logging.INFO, logger="bot.bot")
    async with start_bot(dev_guild_id=fake_discord.guild_id) as harness:
        payload = await harness.kontext()
        assert "✅ Done" in await harness.final_status(payload["token"])

    assert None not in fake_discord.commands
    names = {c["name"] for c in fake_discord.commands[fake_discord.guild_id]}
    assert names == {
        "kontext",
        "kontext-usage",
        "Edit with Kontext",
        "kontext-admin",
        "kontext-settings",
        "kontext-history",
    }
    [invite] = [r.getMessage() for r in caplog.records if "invite the bot" in r.getMessage()]
    assert f"client_id={fake_discord.app_id}" in invite and "scope=bot+applications.commands" in invite
    assert f"permissions={REQUIRED_PERMISSIONS.value}" in invite
