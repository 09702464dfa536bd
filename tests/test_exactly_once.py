"""Every job fal accepted is delivered exactly once, and the limits hold, at the edges: retries inside
threads, racing clicks, channels the bot cannot post in, deadlines, old databases. Each test runs the
real bot over the wire against the fakes."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Sequence
from typing import Any

import pytest

from bot.jobs import Job, JobState
from tests.conftest import StartBot, Trap
from tests.fakes.fake_fal import JobScript, Outcome
from tests.harness import RESULT_TEXT, Harness, Json, custom_ids, message_text
from tests.test_store import SCHEMA_V1, v1_row

MISSING_ACCESS = {"code": 50001, "message": "Missing Access"}


def submits(harness: Harness) -> list[Json]:
    return [r.json for r in harness.fal.requests if r.kind == "submit"]


def result_posts(harness: Harness, job: Job) -> list[Json]:
    """Every message (channel post or followup) carrying this job's results."""
    return [m for m in harness.discord.messages.values() if RESULT_TEXT in message_text(m) and job.id in str(m)]


def button(message: Json, action: str) -> str:
    ids = custom_ids(message)
    return next(i for i in ids if i.startswith(f"kontext:{action}:"))


async def delivered(harness: Harness, **options: Any) -> tuple[Job, Json]:
    """Run one /kontext to the end; the job and its result message."""
    payload = await harness.kontext(**options)
    assert "✅ Done" in await harness.final_status(payload["token"])
    jobs = await harness.finish_jobs()
    [message] = result_posts(harness, jobs[-1])
    return jobs[-1], message


async def job_of(harness: Harness, payload: Json) -> Job:
    """The job started by the interaction `payload` (its status message answered it)."""
    await harness.finish_jobs()
    [job] = [j for j in await harness.store.jobs() if j.status_message_id == _response_id(harness, payload)]
    return job


def _response_id(harness: Harness, payload: Json) -> int:
    """The interaction's own response: the first message made for it (followups come later)."""
    return min(int(m["id"]) for m in harness.discord.messages.values()
               if m.get("interaction_metadata", {}).get("id") == payload["id"])  # fmt: skip


# --- a retried post inside a thread ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "body"),
    [
        pytest.param(503, {"message": "Service Unavailable", "code": 0}, id="retried-after-a-5xx"),
        pytest.param(403, MISSING_ACCESS, id="followup-after-a-403"),
    ],
)
async def test_a_reroll_whose_first_post_fails_posts_its_results_exactly_once(
    harness: Harness, status: int, body: Json
):
    _, message = await delivered(harness)
    thread_id = int(message["channel_id"])
    harness.discord.fail_next("POST", rf"/channels/{thread_id}/messages", status, body)

    press = harness.discord.button(button(message, "reroll"), message)
    await harness.discord.interact(press)
    final = await harness.final_status(press["token"])
    reroll = await job_of(harness, press)

    assert "✅ Done" in final, final
    assert reroll.state is JobState.DELIVERED and len(reroll.result_message_ids) == 1
    assert len(result_posts(harness, reroll)) == 1  # the reroll's own status message never counts as its results
    assert harness.fal.count("submit") == 2


@pytest.mark.parametrize("nonce_window", [300.0, 0.0], ids=["within-the-nonce-window", "found-in-the-history"])
async def test_kontext_in_a_thread_retried_after_a_lost_answer_is_posted_once(harness: Harness, nonce_window: float):
    """Discord created the message but the answer never arrived: the retry finds it instead of posting again."""
    _, first = await delivered(harness)
    thread_id = int(first["channel_id"])
    harness.discord.nonce_window = nonce_window
    harness.discord.fail_next("POST", rf"/channels/{thread_id}/messages", disconnect=True, applied=True)

    payload = await harness.kontext("in the thread", channel_id=thread_id)
    assert "✅ Done" in await harness.final_status(payload["token"])
    job = await job_of(harness, payload)

    assert len(result_posts(harness, job)) == 1 and job.delivery_attempts == 2
    assert job.result_message_ids == (int(result_posts(harness, job)[0]["id"]),)


# --- the status message survives a dropped connection -----------------------------------------------


@pytest.mark.parametrize("dropped", [1, 3])
async def test_status_edits_dropped_by_the_connection_still_end_on_the_final_state(harness: Harness, dropped: int):
    harness.fal.add_script(JobScript(queue_positions=(2, 1), step_seconds=0.2))
    harness.discord.fail_next("PATCH", r"/webhooks/\d+/[^/]+/messages/@original", disconnect=True, times=dropped)

    payload = await harness.kontext()
    final = await harness.final_status(payload["token"])

    assert "✅ Done" in final
    patches = [r for r in harness.discord.requests if r.method == "PATCH"]
    assert sum(r.status == 0 for r in patches) == dropped and patches[-1].status == 200
    assert "Cancel" not in str(patches[-1].json)  # the final state has no Cancel button left


# --- limits under races ---------------------------------------------------------------------------------


async def test_twenty_simultaneous_kontexts_from_one_user_pay_for_exactly_two(start_bot: StartBot):
    async with start_bot(max_concurrent_jobs_per_user=2) as harness:
        users = (harness.discord.owner_id, harness.discord.other_user_id, harness.discord.mod_user_id)
        for round_number, user in enumerate(users * 2, start=1):
            harness.fal.add_script(JobScript(queue_positions=(1,), hold=True))
            before = len(harness.fal.jobs)

            await asyncio.gather(*(harness.kontext(f"try {i}", user_id=user) for i in range(20)))
            refusals = 18 * round_number
            await harness.discord.wait_until(lambda: len(harness.ephemeral_replies()) == refusals, 10)  # noqa: B023

            assert len(harness.fal.jobs) - before == 2
            assert all("already have 2 jobs running" in r for r in harness.ephemeral_replies()[-18:])
            for request_id in list(harness.fal.jobs)[before:]:
                harness.fal.release(request_id)
            await harness.finish_jobs()


@pytest.mark.parametrize(
    ("limits", "users"),
    [
        pytest.param({"daily_images_per_user": 4}, (0, 0, 0, 0, 0, 0), id="one-user-daily"),
        pytest.param({"daily_images_per_guild": 4}, (0, 1, 2, 0, 1, 2), id="server-daily"),
    ],
)
async def test_six_simultaneous_images_against_a_daily_limit_of_four_pay_for_four(
    start_bot: StartBot, limits: dict[str, int], users: Sequence[int]
):
    async with start_bot(max_concurrent_jobs_per_user=10, **limits) as harness:
        people = (harness.discord.owner_id, harness.discord.other_user_id, harness.discord.mod_user_id)

        await asyncio.gather(*(harness.kontext(f"n{i}", user_id=people[u]) for i, u in enumerate(users)))
        await harness.discord.wait_until(lambda: len(harness.ephemeral_replies()) == 2, 10)
        jobs = await harness.finish_jobs()

        assert harness.fal.count("submit") == 4
        assert sum(job.num_images for job in jobs if job.state is JobState.DELIVERED) == 4


async def test_answers_racing_the_reaction_trigger_start_one_job(start_bot: StartBot):
    async with start_bot(cooldown_seconds=10) as harness:
        channel = harness.discord.channel_id
        targets = [harness.discord.add_message(channel, attachments=[harness.image()]) for _ in range(2)]
        for target in targets:  # two photos reacted to at once: one question, not two
            await harness.discord.dispatch("MESSAGE_REACTION_ADD", harness.discord.reaction_add(target, "🎨"))
        await harness.discord.wait_for_message(lambda m: "what should I do" in m["content"])

        for text in ("add a hat", "add a scarf"):
            await harness.discord.dispatch("MESSAGE_CREATE", harness.discord.add_message(channel, content=text))
        await harness.discord.wait_until(lambda: harness.fal.count("submit") >= 1)
        await asyncio.sleep(0.3)
        await harness.finish_jobs()

        questions = [m for m in harness.discord.messages.values() if "what should I do" in m["content"]]
        assert len(questions) == 1 and harness.fal.count("submit") == 1


# --- every delivery ends ------------------------------------------------------------------------------------


async def test_results_reach_a_user_whose_channel_the_bot_cannot_post_in(harness: Harness):
    """Slash commands work where the bot has no access: the results arrive as the interaction's followups."""
    harness.discord.fail_next("POST", r"/channels/\d+/(messages|threads)$", 403, MISSING_ACCESS, times=100)
    harness.discord.fail_next("POST", r"/channels/\d+/messages/\d+/threads", 403, MISSING_ACCESS, times=100)

    payload = await harness.kontext()
    final = await harness.final_status(payload["token"])
    job = await job_of(harness, payload)

    assert "✅ Done" in final and job.state is JobState.DELIVERED
    [message] = result_posts(harness, job)
    assert int(message["id"]) in job.result_message_ids
    assert any(r.path.startswith("/webhooks/") and r.files for r in harness.discord.requests)


async def test_results_that_cannot_be_posted_anywhere_end_the_job_and_free_the_user(start_bot: StartBot):
    async with start_bot(max_concurrent_jobs_per_user=1) as harness:
        harness.discord.fail_next("POST", r"/channels/\d+/messages", 403, MISSING_ACCESS, times=100)
        harness.discord.fail_next("POST", r"/channels/\d+/messages/\d+/threads", 403, MISSING_ACCESS, times=100)
        harness.discord.fail_next("POST", r"/webhooks/\d+/[^/]+$", 403, MISSING_ACCESS, times=100)

        payload = await harness.kontext()
        final = await harness.final_status(payload["token"])
        job = await job_of(harness, payload)

        assert job.state is JobState.UNDELIVERABLE
        assert "can't post in that channel" in final and job.result is not None
        assert f"<{job.result.images[0].url}>" in final  # the paid images can still be fetched
        harness.discord.requests.clear()
        second = await harness.kontext("next one")
        await harness.discord.wait_until(lambda: harness.fal.count("submit") == 2, what="the next job's submit")
        assert not harness.ephemeral_replies()
        await harness.final_status(second["token"])


# --- deadlines ------------------------------------------------------------------------------------------------


async def test_a_job_past_its_deadline_is_cancelled_at_fal_and_says_so(start_bot: StartBot):
    async with start_bot(job_timeout_seconds=0.5) as harness:
        harness.fal.add_script(JobScript(queue_positions=(3,), hold=True))

        payload = await harness.kontext()
        final = await harness.final_status(payload["token"])
        [job] = await harness.finish_jobs()

        assert harness.fal.count("cancel") == 1
        assert job.state is JobState.TIMED_OUT and "may still be charged" in final
        assert "Nothing more will be charged" not in final


# --- old and new databases ----------------------------------------------------------------------------------


async def test_an_old_database_is_migrated_and_its_job_delivered_on_the_new_base(
    start_bot: StartBot, make_settings: Any, trap: Trap
):
    """Version 1 stored fal's URLs (here on a base the operator has since left): the key never goes there."""
    path = make_settings().database_path
    async with start_bot() as harness:  # a fal job accepted before the upgrade
        harness.fal.add_script(JobScript(queue_positions=(1,), hold=True))
        request_id = await _accepted_at_fal(harness)
    old_base = f"http://127.0.0.1:{trap.port}/fal-ai/flux-pro/requests/{request_id}"
    old = v1_row("c" * 32, "queued", request_id=request_id, channel_id=harness.discord.channel_id,
                 guild_id=harness.discord.guild_id, user_id=harness.discord.owner_id,
                 status_url=f"{old_base}/status", response_url=old_base, cancel_url=f"{old_base}/cancel")  # fmt: skip
    path.unlink()
    with sqlite3.connect(path) as db:
        db.executescript(SCHEMA_V1)
        db.execute(f"INSERT INTO jobs ({', '.join(old)}) VALUES ({', '.join('?' for _ in old)})", list(old.values()))  # noqa: S608

    async with start_bot() as harness:
        harness.fal.release(request_id)
        await harness.discord.wait_until(lambda: any(RESULT_TEXT in message_text(m) for m in
                                                     harness.discord.messages.values()), 10)  # fmt: skip
        [job] = [j for j in await harness.finish_jobs() if j.id == "c" * 32]

        assert job.state is JobState.DELIVERED and job.endpoint == "fal-ai/flux-pro/kontext/max/multi"
        assert harness.fal.count("submit") == 1  # the one from before the upgrade: followed, never resent
        assert trap.hits == []


async def _accepted_at_fal(harness: Harness) -> str:
    await harness.kontext()
    await harness.discord.wait_until(lambda: bool(harness.fal.jobs))
    [request_id] = harness.fal.jobs
    await harness.bot.runner.close()  # the old bot stops; its job row is replaced by the v1 one below
    return request_id


# --- fal's answers are bounded -----------------------------------------------------------------------------


async def test_a_trickling_submit_ends_by_its_deadline_and_is_never_resent(start_bot: StartBot):
    async with start_bot(submit_timeout_seconds=1.0) as harness:
        harness.errors.allowed.append("not confirmed")  # logged at ERROR for the operator: it may be billed
        harness.fal.trickle_next("submit", interval=0.5)

        payload = await harness.kontext()
        final = await harness.final_status(payload["token"], timeout=15)
        [job] = await harness.finish_jobs()

        assert "did not confirm the request" in final and "never charged twice" in final
        assert job.state is JobState.UNCONFIRMED and harness.fal.count("submit") == 1


async def test_fifty_images_for_one_requested_post_one(harness: Harness):
    harness.fal.add_script(JobScript(outcome=Outcome(image_count=50)))
    harness.errors.allowed.append("images")  # the extra ones are logged

    job, message = await delivered(harness)

    assert len(message["attachments"]) == 1 and job.result is not None and len(job.result.images) == 1
    assert harness.fal.count("file") == 1


async def test_a_result_file_that_redirects_is_never_followed_nor_posted(harness: Harness):
    target = f"{harness.discord.base_url}/cdn/private/secret.png"
    harness.fal.add_script(JobScript(outcome=Outcome(file_redirect=target)))

    payload = await harness.kontext()
    final = await harness.final_status(payload["token"])
    [job] = await harness.finish_jobs()

    assert job.state is JobState.UNDELIVERABLE and "unexpected" in final
    assert not any("/cdn/private/" in r.path for r in harness.discord.requests)
    assert not any(r.files for r in harness.discord.requests if r.method == "POST")
