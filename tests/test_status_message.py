"""The status message's failure paths, over the wire: an edit that fails is tried again, a text that keeps
failing is dropped for a newer one, a deleted message is posted again (and the new id recorded), and a
move off the dying interaction token that fails leaves the status on the token."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from bot.jobs import JobState
from tests.fakes.fake_fal import JobScript
from tests.harness import Harness, Json

BAD_REQUEST = {"code": 50035, "message": "Invalid Form Body"}
UNKNOWN_MESSAGE = {"code": 10008, "message": "Unknown Message"}
ORIGINAL = r"/webhooks/\d+/[^/]+/messages/@original"


def last_lines(texts: list[str]) -> list[str]:
    return [text.splitlines()[-1].split(" · ")[0] for text in texts]


async def test_a_failed_edit_is_tried_again_until_it_shows(harness: Harness):
    harness.fal.add_script(JobScript(queue_positions=(2,), hold=True))
    harness.discord.fail_next("PATCH", ORIGINAL, 400, BAD_REQUEST, times=2)

    payload = await harness.kontext()
    await harness.discord.wait_until(
        lambda: any(r.method == "PATCH" and r.status == 200 for r in harness.discord.requests)
    )

    patches = [r.status for r in harness.discord.requests if r.method == "PATCH"]
    assert patches == [400, 400, 200]
    harness.fal.release(next(iter(harness.fal.jobs)))
    assert "✅ Done" in await harness.final_status(payload["token"])


async def test_a_text_that_keeps_failing_gives_way_to_the_next_one(harness: Harness):
    harness.fal.add_script(JobScript(queue_positions=(3,), hold=True))
    harness.discord.fail_next("PATCH", ORIGINAL, 400, BAD_REQUEST, times=3)

    payload = await harness.kontext()
    await harness.discord.wait_until(lambda: sum(r.method == "PATCH" for r in harness.discord.requests) == 3)
    harness.fal.release(next(iter(harness.fal.jobs)))
    final = await harness.final_status(payload["token"])

    assert "✅ Done" in final
    statuses = [r.status for r in harness.discord.requests if r.method == "PATCH"]
    assert statuses[:3] == [400, 400, 400] and statuses[-1] == 200


async def test_a_deleted_channel_status_is_posted_again_and_its_new_id_recorded(harness: Harness):
    harness.fal.add_script(JobScript(queue_positions=(2,), hold=True))
    target = harness.discord.add_message(harness.discord.channel_id, content="make it blue",
                                         attachments=[harness.image()])  # fmt: skip
    await harness.event("MESSAGE_REACTION_ADD", harness.discord.reaction_add(target, "🎨"))
    status = await harness.discord.wait_for_message(lambda m: "2 jobs ahead" in m["content"])
    harness.discord.fail_next("PATCH", rf"/channels/\d+/messages/{status['id']}", 404, UNKNOWN_MESSAGE, times=10)

    harness.fal.release(next(iter(harness.fal.jobs)))
    reposted = await harness.discord.wait_for_message(lambda m: "✅ Done" in m["content"] and m["id"] != status["id"])
    [job] = await harness.finish_jobs()

    assert job.state is JobState.DELIVERED and job.status_message_id == int(reposted["id"])


async def test_a_failed_move_off_the_dying_token_keeps_the_status_on_the_token(harness: Harness):
    harness.fal.add_script(JobScript(queue_positions=(2,), hold=True))
    harness.discord.fail_next("POST", rf"/channels/{harness.discord.channel_id}/messages$", 403,
                              {"code": 50013, "message": "Missing Permissions"})  # fmt: skip
    created = datetime.now(UTC) - timedelta(minutes=15) + timedelta(seconds=61)  # the token has ~61 s left

    payload = await harness.kontext(created_at=created)
    await harness.discord.wait_until(lambda: any(r.status == 403 for r in harness.discord.requests))
    harness.fal.release(next(iter(harness.fal.jobs)))
    final = await harness.final_status(payload["token"])

    assert "✅ Done" in final
    moved: list[Json] = [m for m in harness.discord.messages.values() if "🕒" in m["content"]
                         and not m.get("interaction_metadata")]  # fmt: skip
    assert moved == []
    assert last_lines(harness.status_texts(payload["token"]))[-1] == "✅ Done"
