"""The result card (Components V2): within Discord's limits whatever the job, one gallery per 10 files, alt text and
spoilers per image, and still posted exactly once (recognised by its nested buttons after a lost answer)."""

from __future__ import annotations

from decimal import Decimal

import discord
import pytest

from bot.fal import EditRequest, KontextOutput, OutputImage
from bot.jobs import Job, JobState, ResultImage
from cogs.cards import ALT_TEXT_LIMIT, TEXT_LIMIT, more_results_card, result_card
from cogs.delivery import plan_uploads
from cogs.installs import FOLLOWUP_CAP
from cogs.render import result_notes
from tests.fakes.discord_components import check_message_components, message_text
from tests.fakes.fake_fal import JobScript, Outcome
from tests.fakes.images import padded_png
from tests.harness import Harness, Json, custom_ids, gallery_items

BUTTONS = ("reroll", "edit", "use")


def job_with(count: int, *, prompt: str = "make it blue", nsfw: tuple[bool, ...] = ()) -> Job:
    request = EditRequest(prompt=prompt, image_urls=("https://example.com/a.png",), num_images=count)
    images = tuple(OutputImage(url=f"https://fal.media/{n}.png", width=1024, height=768) for n in range(count))
    return Job(request=request, user_id=1, channel_id=2, guild_id=3, source="test", cost_usd=Decimal("0.08"),
               result=KontextOutput(images=images, seed=7, has_nsfw_concepts=nsfw))  # fmt: skip


def results(job: Job, size: int = 100) -> list[ResultImage]:
    assert job.result is not None
    nsfw = job.result.has_nsfw_concepts or (False,) * len(job.result.images)
    return [
        ResultImage(i.url, "image/png", flagged, data=b"x" * size)
        for i, flagged in zip(job.result.images, nsfw, strict=True)
    ]


def components(view: discord.ui.LayoutView) -> list[Json]:
    """The components a view sends, as discord.py puts them in the request."""
    sent: list[Json] = view.to_components()  # type: ignore[no-untyped-call]  # untyped in discord.py
    return sent


def checked(view_components: list[Json], files: list[str]) -> set[str]:
    """Discord's checks of a V2 message (the fake's): returns the file names the components show."""
    return check_message_components(view_components, v2=True, available=set(files))


def test_twelve_results_make_two_cards_each_within_discords_limits():
    job = job_with(12, nsfw=(True,) + (False,) * 11)
    plan = plan_uploads(job, results(job), file_limit=10 * 2**20, nsfw_channel=True)

    assert [len(m.files) for m in plan.messages] == [10, 2]
    first, second = plan.messages
    notes = result_notes(posted=plan.posted, withheld=0, linked=[], missing=0)
    card = components(result_card(job, first.files, notes))
    names = [name for name, _ in first.files]
    assert checked(card, names) == set(names)  # every uploaded file is shown, nothing else is named
    items = gallery_items({"components": card})
    assert [i["spoiler"] for i in items] == [True] + [False] * 9 and items[0]["description"] == "make it blue"
    assert custom_ids({"components": card}) == [f"kontext:{a}:{job.id}" for a in BUTTONS]
    text = message_text({"components": card})
    assert "seed `7`" in text and "Size: 1024×768" in text and "> make it blue" in text  # noqa: RUF001
    more = components(more_results_card(job, second.files))
    assert checked(more, [n for n, _ in second.files]) == {n for n, _ in second.files}
    assert custom_ids({"components": more}) == []  # the buttons go with the first card only


def test_a_huge_prompt_and_many_links_stay_within_the_text_and_alt_text_limits():
    job = job_with(6, prompt="\n".join(["word " * 60] * 25))
    plan = plan_uploads(job, results(job, size=200), file_limit=150, nsfw_channel=False)  # all too large: links
    linked = [url + "?" + "signature" * 60 for url in plan.linked]  # long signed links
    notes = result_notes(posted=0, withheld=0, linked=linked, missing=0)

    card = components(result_card(job, plan.messages[0].files, notes))

    assert checked(card, []) == set() and gallery_items({"components": card}) == []
    assert len(message_text({"components": card})) <= TEXT_LIMIT
    files = [(f"kontext-{job.id[:12]}-1.png", results(job)[0])]
    [item] = gallery_items({"components": components(result_card(job, files, []))})
    assert len(item["description"]) == ALT_TEXT_LIMIT and job.request.prompt.startswith(item["description"][:-1])


def test_followups_take_at_most_five_messages_and_link_the_rest():
    job = job_with(6)
    huge = [ResultImage(r.url, r.content_type, r.nsfw, data=b"x" * (9 * 2**20)) for r in results(job)] * 3  # 18

    capped = plan_uploads(job, huge, file_limit=10 * 2**20, nsfw_channel=False, max_messages=FOLLOWUP_CAP)
    free = plan_uploads(job, huge, file_limit=10 * 2**20, nsfw_channel=False)

    assert len(free.messages) == 9 and free.linked == []  # two 9 MiB files per 24 MiB request
    assert len(capped.messages) == FOLLOWUP_CAP and capped.posted == 10 and len(capped.linked) == 8


async def test_the_prompt_is_each_images_alt_text_cut_to_discords_limit(harness: Harness):
    prompt = "a cat on a sofa " * 90  # 1440 characters
    harness.fal.add_script(JobScript(outcome=Outcome(nsfw=(False, False))))

    payload = await harness.kontext(prompt, num_images=2)
    await harness.final_status(payload["token"])

    [message] = harness.result_messages()
    descriptions = [item["description"] for item in gallery_items(message)]
    assert len(descriptions) == 2 and all(len(d) == ALT_TEXT_LIMIT for d in descriptions)
    assert prompt.strip().startswith(descriptions[0][:-1])


async def test_a_card_without_files_whose_answer_was_lost_is_found_by_its_buttons(harness: Harness):
    """No file names to go by (the image was too large, so only linked): the nested buttons identify the post."""
    thread = await _a_thread(harness)
    harness.fal.add_script(
        JobScript(outcome=Outcome(image_bytes=padded_png(harness.discord.attachment_size_limit + 1)))
    )
    harness.discord.nonce_window = 0.0  # the retry comes too late for Discord's nonce
    harness.discord.fail_next("POST", rf"/channels/{thread}/messages", disconnect=True, applied=True)

    payload = await harness.kontext("in the thread", channel_id=thread)
    assert "✅ Done" in await harness.final_status(payload["token"])
    jobs = await harness.finish_jobs()

    posts = [m for m in harness.result_messages() if jobs[-1].id in str(m["components"])]
    assert len(posts) == 1 and posts[0]["attachments"] == [] and jobs[-1].delivery_attempts == 2
    assert jobs[-1].state is JobState.DELIVERED and jobs[-1].result_message_ids == (int(posts[0]["id"]),)


async def _a_thread(harness: Harness) -> int:
    payload = await harness.kontext("first")
    await harness.final_status(payload["token"])
    await harness.finish_jobs()
    [first] = harness.result_messages()
    return int(first["channel_id"])


@pytest.mark.parametrize("nsfw_channel", [False, True])
async def test_flagged_images_get_the_gallery_spoiler_only_in_nsfw_channels(harness: Harness, nsfw_channel: bool):
    harness.fal.add_script(JobScript(outcome=Outcome(nsfw=(False, True, False))))
    channel = harness.discord.nsfw_channel_id if nsfw_channel else harness.discord.channel_id

    payload = await harness.kontext(num_images=3, channel_id=channel)
    await harness.final_status(payload["token"])

    [message] = harness.result_messages()
    spoilers = [item["spoiler"] for item in gallery_items(message)]
    assert spoilers == ([False, True, False] if nsfw_channel else [False, False])  # else withheld
    assert all(not a["filename"].startswith("SPOILER_") for a in message["attachments"])
