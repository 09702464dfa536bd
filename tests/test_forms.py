"""The edit form end to end: `/kontext` without images, "Edit again" and "Edit with Kontext" open one modal with a
File Upload (in a Label), and its submit, with Discord's resolved attachments, starts the job."""

from __future__ import annotations

from typing import Any

import pytest

from bot.jobs import JobState
from tests.conftest import StartBot
from tests.harness import Harness, Json, custom_ids

LABEL, TEXT_INPUT, FILE_UPLOAD = 18, 4, 19


def submits(harness: Harness) -> list[Json]:
    return [r.json for r in harness.fal.requests if r.kind == "submit"]


async def opened_form(harness: Harness, count: int = 1) -> Json:
    """The data of the `count`-th modal the bot opened (type-9 callback), once it is there."""

    def forms() -> list[Json]:
        return [r.json["data"] for r in harness.discord.callbacks() if r.json.get("type") == 9 and r.status == 200]

    await harness.discord.wait_until(lambda: len(forms()) >= count, what="the form")
    return forms()[count - 1]


def fields(form: Json) -> dict[str, tuple[str, Json]]:
    """The form's inputs by custom_id: (their Label's text, the input)."""
    assert all(c["type"] == LABEL for c in form["components"]), form  # every input in a Label: no legacy rows
    return {c["component"]["custom_id"]: (c["label"], c["component"]) for c in form["components"]}


async def submit(harness: Harness, values: dict[str, Any], **where: Any) -> Json:
    payload = harness.discord.modal_submit(harness.discord.modal_custom_id(), values, **where)
    await harness.discord.interact(payload)
    return payload


@pytest.mark.parametrize("message_content", [True, False])
async def test_kontext_without_images_asks_for_them_in_a_form_and_runs_on_exactly_those(
    start_bot: StartBot, message_content: bool
):
    async with start_bot(message_content_intent=message_content) as harness:
        command = await harness.kontext("a hat", [], num_images=2, seed=5)
        form = await opened_form(harness)
        inputs = fields(form)
        assert list(inputs) == ["prompt", "images", "num_images"]
        assert inputs["prompt"][1]["type"] == TEXT_INPUT and inputs["prompt"][1]["value"] == "a hat"
        assert inputs["images"][1] == {"type": FILE_UPLOAD, "custom_id": "images", "min_values": 1, "max_values": 4,
                                       "required": True}  # fmt: skip
        assert inputs["num_images"][1]["value"] == "2"
        files = [harness.image("a.png"), harness.image("b.png", color=(1, 2, 3))]

        payload = await submit(harness, {"prompt": "put the hat from 2 on 1", "images": files})
        final = await harness.final_status(payload["token"])

        [sent] = submits(harness)
        assert sent["image_urls"] == [f["url"] for f in files]  # exactly the uploaded files, in order
        assert (sent["prompt"], sent["num_images"], sent["seed"]) == ("put the hat from 2 on 1", 2, 5)
        [answer] = [r for r in harness.discord.callbacks() if payload["token"] in r.path]
        assert answer.json["type"] == 4 and "⏳" in answer.json["data"]["content"]  # the status is the answer
        assert next(r for r in harness.discord.callbacks() if command["token"] in r.path).json["type"] == 9
        [job] = await harness.finish_jobs()
        assert "✅ Done" in final and job.state is JobState.DELIVERED and job.source == "slash"


@pytest.mark.parametrize(
    ("model", "room"), [("kontext-max-multi", 4), ("flux-2-pro-edit", 8), ("seedream-v4-edit", 10)]
)
async def test_the_form_takes_as_many_images_as_the_model_and_max_images_allow(
    start_bot: StartBot, model: str, room: int
):
    async with start_bot(max_images=10) as harness:
        await harness.kontext("x", [], model=model)
        inputs = fields(await opened_form(harness))

        assert inputs["images"][1]["max_values"] == room
        assert ("num_images" in inputs) == (model != "flux-2-pro-edit")  # a model that makes one image: no field


async def test_an_uploaded_file_that_is_no_image_is_refused_before_fal(harness: Harness):
    await harness.kontext("x", [])
    await opened_form(harness)

    await submit(harness, {"images": [harness.image("notes.txt", content_type="text/plain")]})
    await harness.discord.wait_until(lambda: bool(harness.ephemeral_replies()))

    assert "not a supported image" in harness.ephemeral_replies()[0] and harness.fal.requests == []
    assert await harness.finish_jobs() == []


async def test_edit_again_uses_the_same_form_and_adds_the_uploaded_images(harness: Harness):
    payload = await harness.kontext("a cat")
    await harness.final_status(payload["token"])
    [result] = harness.result_messages()
    [first] = await harness.finish_jobs()
    edit = next(i for i in custom_ids(result) if i.startswith("kontext:edit:"))

    await harness.discord.interact(harness.discord.button(edit, result))
    inputs = fields(await opened_form(harness))
    assert inputs["prompt"][1]["value"] == "a cat"
    upload = inputs["images"][1]
    assert (upload["min_values"], upload["max_values"], upload["required"]) == (0, 3, False)  # the result is one
    extra = harness.image("hat.png")
    again = await submit(harness, {"prompt": "give it the hat", "images": [extra]},
                         channel_id=int(result["channel_id"]))  # fmt: skip
    await harness.final_status(again["token"])

    assert first.result is not None
    assert submits(harness)[1]["image_urls"] == [first.result.images[0].url, extra["url"]]


async def test_edit_with_kontext_takes_more_images_in_its_form(harness: Harness):
    images = [harness.image("a.png"), harness.image("b.png")]
    target = harness.discord.add_message(harness.discord.channel_id, content="these", attachments=images)

    await harness.discord.interact(harness.discord.message_command("Edit with Kontext", target))
    inputs = fields(await opened_form(harness))
    assert inputs["images"][1]["max_values"] == 2 and not inputs["images"][1]["required"]
    third = harness.image("c.png")
    payload = await submit(harness, {"prompt": "all three", "images": [third]})
    await harness.final_status(payload["token"])

    assert submits(harness)[0]["image_urls"] == [images[0]["url"], images[1]["url"], third["url"]]
