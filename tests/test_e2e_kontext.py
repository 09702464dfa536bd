"""/kontext end to end: the real bot and discord.py against the fake Discord and the fake fal."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta

import pytest

from bot.jobs import JobState
from tests.conftest import StartBot
from tests.fakes.fake_discord import COMPONENTS_V2, Recorded
from tests.fakes.fake_fal import JobScript, Outcome
from tests.fakes.images import padded_png
from tests.harness import RESULT_TEXT, Harness, Json, custom_ids, gallery_items, message_text


def uploads(harness: Harness) -> list[Recorded]:
    return [r for r in harness.discord.requests if r.files and r.method == "POST"]


def result_message(harness: Harness, channel_id: int) -> Json:
    [message] = [m for m in harness.discord.channel_messages(channel_id) if RESULT_TEXT in message_text(m)]
    return message


@pytest.mark.parametrize("count", [1, 4])
async def test_images_go_from_the_slash_command_to_files_in_a_thread(harness: Harness, count: int):
    colors = [(200, 40, 40), (40, 200, 40), (40, 40, 200), (200, 200, 40)]
    images = [harness.image(f"in{i}.png", color=colors[i]) for i in range(count)]

    payload = await harness.kontext("put them together", images, num_images=count)
    final = await harness.final_status(payload["token"])
    [job] = await harness.finish_jobs()

    [submit] = [r for r in harness.fal.requests if r.kind == "submit"]
    assert submit.json["image_urls"] == [image["url"] for image in images]
    assert submit.json["num_images"] == count and submit.json["prompt"] == "put them together"
    original = harness.original_response(payload)
    thread = harness.discord.threads[int(original["id"])]  # the thread hangs on the status message
    assert thread["name"] == "Kontext: put them together"
    [upload] = uploads(harness)
    assert job.request_id is not None
    fake_job = harness.fal.jobs[job.request_id]
    served = [image.data for image in [await harness.bot.fal.download(i.url) for i in job.result.images]]  # type: ignore[union-attr]
    assert [f.data for f in upload.files] == served and len(served) == count == fake_job.num_images
    message = result_message(harness, int(thread["id"]))
    assert custom_ids(message) == [f"kontext:{action}:{job.id}" for action in ("reroll", "edit", "use")]
    assert message["flags"] & COMPONENTS_V2 and message["content"] == "" and message["embeds"] == []
    shown = [item["media"]["attachment_id"] for item in gallery_items(message)]  # every file, in the gallery
    assert shown == [a["id"] for a in message["attachments"]] and len(shown) == count
    assert harness.discord.undisplayed_attachments[int(message["id"])] == []
    assert upload.json["allowed_mentions"] == {"parse": [], "users": [harness.discord.owner_id]}
    assert job.state is JobState.DELIVERED and f"<#{thread['id']}>" in final
    assert original["components"] == []  # the Cancel button is gone once the job is done


async def test_queue_positions_show_up_as_edits_of_one_status_message(harness: Harness):
    harness.fal.add_script(JobScript(queue_positions=(3, 2, 1), progress_steps=2, step_seconds=0.3))

    payload = await harness.kontext()
    await harness.final_status(payload["token"])

    lines = [text.splitlines()[-1] for text in harness.status_texts(payload["token"])]
    assert [line.split(" · ")[0] for line in lines] == [
        "⏳ Sending to the image service…",
        "🕒 In the queue: 3 jobs ahead",
        "🕒 In the queue: 2 jobs ahead",
        "🕒 In the queue: 1 job ahead",
        "🎨 Generating",
        "✅ Done",
    ]
    assert harness.discord.rate_limited == 0


async def test_the_first_edit_after_the_answer_waits_for_the_messages_turn(start_bot: StartBot):
    """The answer already shows the status: a queue move right after it waits one pause like any later move, so
    a job that ends within that pause costs one edit, the final one (under load, one edit instead of two)."""
    async with start_bot(status_edit_interval_seconds=5.0) as harness:
        harness.fal.add_script(JobScript(queue_positions=(2, 1), progress_steps=1, step_seconds=0.1))
        payload = await harness.kontext()
        await harness.final_status(payload["token"])
        texts = harness.status_texts(payload["token"])

    assert [text.splitlines()[-1].split(" · ")[0] for text in texts] == ["⏳ Sending to the image service…", "✅ Done"]


async def test_status_is_never_edited_when_its_text_did_not_change(harness: Harness):
    harness.fal.add_script(JobScript(queue_positions=(1, 1, 1, 1), step_seconds=0.05))

    payload = await harness.kontext()
    await harness.final_status(payload["token"])

    texts = harness.status_texts(payload["token"])
    assert all(a != b for a, b in itertools.pairwise(texts))
    assert sum("1 job ahead" in t for t in texts) == 1


async def test_owner_cancels_a_queued_job_and_nothing_is_posted(harness: Harness):
    harness.fal.add_script(JobScript(queue_positions=(4,), hold=True))
    payload = await harness.kontext()
    await harness.discord.wait_until(lambda: any("4 jobs ahead" in t for t in harness.status_texts(payload["token"])))
    original = harness.original_response(payload)
    [cancel_id] = custom_ids(original)

    await harness.discord.interact(harness.discord.button(cancel_id, original))
    final = await harness.final_status(payload["token"])

    assert "🚫 Cancelled" in final
    assert harness.fal.count("cancel") == 1 and harness.fal.count("result") == 0
    assert uploads(harness) == [] and harness.discord.threads == {}
    [job] = await harness.finish_jobs()
    assert job.state is JobState.CANCELLED and job.cancel_requested


async def test_only_the_owner_or_a_moderator_may_cancel(harness: Harness):
    harness.fal.add_script(JobScript(queue_positions=(2,), hold=True))
    payload = await harness.kontext()
    await harness.discord.wait_until(lambda: any("2 jobs ahead" in t for t in harness.status_texts(payload["token"])))
    original = harness.original_response(payload)
    [cancel_id] = custom_ids(original)

    await harness.discord.interact(harness.discord.button(cancel_id, original, user_id=harness.discord.other_user_id))
    await harness.discord.wait_until(lambda: len(harness.ephemeral_replies()) == 1)
    assert harness.fal.count("cancel") == 0
    assert "Only <@" in harness.ephemeral_replies()[0]

    await harness.discord.interact(harness.discord.button(cancel_id, original, user_id=harness.discord.mod_user_id))
    assert "🚫 Cancelled" in await harness.final_status(payload["token"])
    assert harness.fal.count("cancel") == 1


BAD_INPUTS = [
    pytest.param({"prompt": "   "}, "write a prompt", id="blank-prompt"),
    pytest.param({"prompt": "x" * 1501}, "limit is 1500", id="prompt-too-long"),
    pytest.param({"kind": "text/plain"}, "not a supported image", id="not-an-image"),
    pytest.param({"kind": "image/gif"}, "not a supported image", id="gif"),
    pytest.param({"size": 11 * 1024 * 1024}, "limit is 10.0 MiB", id="image-too-large"),
    pytest.param({"size": 0}, "is empty", id="empty-image"),
    pytest.param({"guidance_scale": 25.0}, "guidance_scale must be from 1 to 20", id="guidance-high"),
    pytest.param({"guidance_scale": 0.5}, "guidance_scale must be from 1 to 20", id="guidance-low"),
    pytest.param({"num_images": 5}, "num_images must be from 1 to 4", id="too-many-results"),
    pytest.param({"num_images": 0}, "num_images must be from 1 to 4", id="zero-results"),
    pytest.param({"output_format": "gif"}, "output_format must be one of jpeg, png", id="bad-format"),
    pytest.param({"safety_tolerance": "9"}, "safety_tolerance must be one of 1, 2, 3, 4, 5, 6", id="bad-tolerance"),
    pytest.param({"aspect_ratio": "5:1"}, "aspect_ratio must be one of", id="bad-aspect"),
    pytest.param({"seed": -1}, "seed must be from 0 to", id="negative-seed"),
]


@pytest.mark.parametrize(("bad", "message"), BAD_INPUTS)
async def test_bad_input_gets_an_ephemeral_error_and_no_fal_call(harness: Harness, bad: Json, message: str):
    prompt = bad.pop("prompt", "make it blue")
    images = bad.pop("images", None)
    kind, size = bad.pop("kind", "image/png"), bad.pop("size", None)
    if images is None:
        images = [harness.image("in.png", content_type=kind, size=size)]

    await harness.kontext(prompt, images, **bad)
    await harness.discord.wait_until(lambda: bool(harness.ephemeral_replies()))

    [reply] = harness.ephemeral_replies()
    assert message in reply
    assert harness.fal.requests == []
    assert await harness.finish_jobs() == []


async def test_more_images_than_the_limit_are_refused(start_bot: StartBot):
    async with start_bot(max_images=2) as harness:
        await harness.kontext("merge", [harness.image(f"{i}.png") for i in range(3)])
        await harness.discord.wait_until(lambda: bool(harness.ephemeral_replies()))

        assert "at most 2 can be combined" in harness.ephemeral_replies()[0]
        assert harness.fal.requests == []


async def test_moderated_request_ends_with_a_plain_message(harness: Harness):
    detail = [{"loc": ["body", "prompt"], "msg": "Content flagged", "type": "content_policy_violation"}]
    harness.fal.add_script(
        JobScript(outcome=Outcome(kind="error", status_error="flagged", result_body={"detail": detail}))
    )

    payload = await harness.kontext("something rude")
    final = await harness.final_status(payload["token"])

    assert "❌ Sorry, the image service's safety filter refused this request" in final
    assert uploads(harness) == []
    [job] = await harness.finish_jobs()
    assert job.state is JobState.FAILED


@pytest.mark.parametrize(
    ("status", "body", "expected"),
    [
        (403, {"detail": "User is locked. Reason: Exhausted balance."}, "out of credit"),
        (401, {"detail": "No user found for Key ID and Secret"}, "key was refused"),
        (500, {"detail": "Internal Server Error"}, "having trouble"),
    ],
)
async def test_fal_refusing_the_submit_ends_with_a_plain_message(harness: Harness, status, body, expected):
    harness.fal.fail_next("submit", status, body)

    payload = await harness.kontext()
    final = await harness.final_status(payload["token"])

    assert expected in final
    assert harness.fal.count("submit") == 1 and harness.fal.jobs == {}
    [job] = await harness.finish_jobs()
    assert job.state is JobState.FAILED and job.request_id is None  # nothing was accepted, nothing is owed
    usage = await harness.store.usage_snapshot(job.user_id, job.guild_id, job.created_at)
    assert (usage.active_jobs, usage.user_images) == (0, 0)


async def test_a_discord_429_on_an_edit_is_waited_out_and_the_job_delivered(harness: Harness):
    harness.errors.allowed.append("rate limited")
    harness.discord.fail_next("PATCH", r"/webhooks/.*/messages/@original", 429, times=2)

    payload = await harness.kontext()
    final = await harness.final_status(payload["token"])

    assert "✅ Done" in final
    assert [r.status for r in harness.discord.requests if r.method == "PATCH"][:3] == [429, 429, 200]
    [job] = await harness.finish_jobs()
    assert job.state is JobState.DELIVERED and len(uploads(harness)) == 1


async def test_the_interaction_is_answered_before_the_slow_submit(harness: Harness):
    harness.discord.ack_deadline = 0.5
    harness.fal.slow("submit", 1.0)

    payload = await harness.kontext()
    final = await harness.final_status(payload["token"])

    [callback] = [r for r in harness.discord.callbacks() if payload["token"] in r.path]
    assert callback.status == 200 and "✅ Done" in final


async def test_a_job_longer_than_the_token_moves_its_status_to_a_channel_message(harness: Harness):
    harness.fal.add_script(JobScript(queue_positions=(2, 1), hold=True))
    created = datetime.now(UTC) - timedelta(minutes=15) + timedelta(seconds=61)  # the token has ~61 s left

    payload = await harness.kontext(created_at=created)
    moved = await harness.discord.wait_for_message(lambda m: "🕒" in m["content"] and not m.get("interaction_metadata"))
    request_id = next(iter(harness.fal.jobs))
    harness.fal.release(request_id)
    final = await harness.final_status(int(moved["id"]))

    assert "✅ Done" in final
    assert "status continues here" in harness.status_texts(payload["token"])[-1]
    assert not any(r.status == 401 for r in harness.discord.requests)  # never used the dead token
    [job] = await harness.finish_jobs()
    assert job.status_message_id == int(moved["id"]) and job.state is JobState.DELIVERED


async def test_flagged_images_are_withheld_in_a_normal_channel(harness: Harness):
    harness.fal.add_script(JobScript(outcome=Outcome(nsfw=(True, False))))

    payload = await harness.kontext(num_images=2)
    await harness.final_status(payload["token"])

    [upload] = uploads(harness)
    assert len(upload.files) == 1 and not upload.files[0].filename.startswith("SPOILER_")
    assert "1 image withheld" in message_text(upload.json)
    [shown] = gallery_items(upload.json)  # the withheld one is neither uploaded nor shown
    assert shown == {"media": {"url": f"attachment://{upload.files[0].filename}"}, "description": "make it blue",
                     "spoiler": False}  # fmt: skip


async def test_flagged_images_are_spoilered_in_an_nsfw_channel(harness: Harness):
    harness.fal.add_script(JobScript(outcome=Outcome(nsfw=(True, False))))

    payload = await harness.kontext(num_images=2, channel_id=harness.discord.nsfw_channel_id)
    await harness.final_status(payload["token"])

    [upload] = uploads(harness)
    assert upload.json["flags"] & COMPONENTS_V2
    items = gallery_items(upload.json)  # the gallery item carries the spoiler, for the flagged image only
    assert [item["media"]["url"] for item in items] == [f"attachment://{f.filename}" for f in upload.files]
    assert [item["spoiler"] for item in items] == [True, False]


async def test_a_result_over_the_upload_limit_is_linked_instead(harness: Harness):
    big = padded_png(harness.discord.attachment_size_limit + 1)
    harness.fal.add_script(JobScript(outcome=Outcome(image_bytes=big)))

    payload = await harness.kontext()
    await harness.final_status(payload["token"])

    [job] = await harness.finish_jobs()
    [message] = harness.result_messages()
    assert message["attachments"] == [] and gallery_items(message) == []
    assert f"<{job.result.images[0].url}>" in message_text(message)  # type: ignore[union-attr]
    assert job.state is JobState.DELIVERED


async def test_results_go_to_the_channel_where_threads_are_not_allowed(harness: Harness):
    harness.discord.threads_allowed = False

    payload = await harness.kontext()
    await harness.final_status(payload["token"])

    message = result_message(harness, harness.discord.channel_id)
    assert message["attachments"] and harness.discord.threads == {}


async def test_mentions_in_the_prompt_never_ping(harness: Harness):
    payload = await harness.kontext("@everyone look <@&1000000000000000030> <@1000000000000000041>")
    await harness.final_status(payload["token"])

    sent = [r for r in harness.discord.requests if r.method in ("POST", "PATCH") and isinstance(r.json, dict)]
    for rec in sent:
        body = rec.json.get("data", rec.json) if "type" in rec.json else rec.json
        if message_text(body):
            assert body["allowed_mentions"]["parse"] == [], rec.path
    [message] = harness.result_messages()
    assert message["mention_everyone"] is False and message["mention_roles"] == []
    assert [u["id"] for u in message["mentions"]] == [str(harness.discord.owner_id)]
