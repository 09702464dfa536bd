"""The model registry: each model's exact body at the fake fal (which validates it by fal's own schema, not by
the registry), refusals before any paid call, cost estimates, the model kept by Reroll and Edit again, the
operator's settings, and a job stored before the registry resuming as Kontext [max] multi."""

from __future__ import annotations

import sqlite3
from dataclasses import replace
from decimal import Decimal
from typing import Any

import pytest

from bot.config import ConfigError, load_settings
from bot.fal import MODELS, EditRequest, ModelSpec, Option, find_model
from bot.fal.registry import FLUX_2_PRO_EDIT, KONTEXT_MAX_MULTI, KONTEXT_PRO_MULTI, SEEDREAM_V4_EDIT
from bot.jobs import JobState
from tests.conftest import DISCORD_TOKEN, FAL_KEY, StartBot
from tests.fakes.fake_fal import SCHEMAS, FakeFal, JobScript, schema_of, validate_input
from tests.harness import RESULT_TEXT, Harness, Json, custom_ids, message_text

URL = "https://cdn.example/in.png"
KONTEXT_OPTIONS = {"guidance_scale": 4.5, "num_images": 2, "output_format": "png", "safety_tolerance": "3",
                   "aspect_ratio": "3:2", "seed": 11}  # fmt: skip
KONTEXT_BODY = {"guidance_scale": 4.5, "num_images": 2, "output_format": "png", "safety_tolerance": "3",
                "aspect_ratio": "3:2", "seed": 11}  # fmt: skip
# Per model: the options a user gives, the body fal must receive (written out, not derived from the registry),
# the estimate for one 64x64 input, and the number of results.
CASES = [
    pytest.param(KONTEXT_MAX_MULTI, KONTEXT_OPTIONS, KONTEXT_BODY, "$0.16", 2, id="kontext-max-multi"),
    pytest.param(KONTEXT_PRO_MULTI, KONTEXT_OPTIONS, KONTEXT_BODY, "$0.08", 2, id="kontext-pro-multi"),
    pytest.param(
        FLUX_2_PRO_EDIT,
        {"output_format": "png", "safety_tolerance": "5", "aspect_ratio": "16:9", "seed": 11},
        {
            "output_format": "png",
            "safety_tolerance": "5",
            "image_size": "landscape_16_9",
            "seed": 11,
            "enable_safety_checker": True,
        },
        "$0.045",  # 1 MP out + 1 MP in: $0.03 + $0.015
        1,
        id="flux-2-pro-edit",
    ),
    pytest.param(
        SEEDREAM_V4_EDIT,
        {"num_images": 3, "aspect_ratio": "4:3", "seed": 11},
        {"num_images": 3, "image_size": "landscape_4_3", "seed": 11, "enable_safety_checker": True},
        "$0.09",
        3,
        id="seedream-v4-edit",
    ),
]


def submits(harness: Harness) -> list[Json]:
    return [r.json for r in harness.fal.requests if r.kind == "submit"]


def submit_paths(harness: Harness) -> list[str]:
    return [r.path for r in harness.fal.requests if r.kind == "submit"]


def result_messages(harness: Harness) -> list[Json]:
    return [m for m in harness.discord.messages.values() if RESULT_TEXT in message_text(m)]


def button(message: Json, action: str) -> str:
    ids = custom_ids(message)
    return next(i for i in ids if i.startswith(f"kontext:{action}:"))


async def refused(harness: Harness) -> str:
    """The one ephemeral answer; asserts that nothing reached fal and no job was stored."""
    await harness.discord.wait_until(lambda: bool(harness.ephemeral_replies() or harness.fal.requests))
    assert harness.fal.requests == [], "a refused job must not reach fal"
    assert await harness.finish_jobs() == []
    [reply] = harness.ephemeral_replies()
    return reply


# --- each model's body, as fal receives it ---------------------------------------------------------------


@pytest.mark.parametrize(("model", "options", "body", "cost", "results"), CASES)
async def test_each_model_gets_exactly_the_body_it_takes_and_its_output_is_delivered(
    harness: Harness, model: ModelSpec, options: Json, body: Json, cost: str, results: int
):
    image = harness.image()
    payload = await harness.kontext("make it blue", [image], model=model.id, **options)
    final = await harness.final_status(payload["token"])
    [job] = await harness.finish_jobs()

    [sent] = submits(harness)
    assert sent == {"prompt": "make it blue", "image_urls": [image["url"]], **body}
    assert submit_paths(harness) == [f"/{model.endpoint}"]
    assert job.state is JobState.DELIVERED and job.endpoint == model.endpoint and job.result is not None
    assert len(job.result.images) == results and job.result.seed == 11
    assert job.result.has_nsfw_concepts == ((False,) * results if model.nsfw_flags else ())
    assert f"**{model.name}** for <@" in final and f"est. {cost}" in final and "✅ Done" in final
    [message] = result_messages(harness)
    assert f"· {model.name} · seed `11` · est. {cost}" in message_text(message)
    assert len(message["attachments"]) == results


@pytest.mark.parametrize("model", MODELS, ids=lambda m: m.id)
def test_every_value_a_model_allows_is_accepted_by_fals_schema(model: ModelSpec):
    """Each allowed value alone (span ends included) makes a body fal's schema for that endpoint accepts."""
    base = EditRequest(prompt="p", image_urls=(URL,))
    assert validate_input(model.payload(base), model.endpoint) == []
    for option in model.options:
        values = option.span if option.span is not None else option.choices
        for value in values:
            typed = int(value) if option.name in ("num_images", "seed") else value
            request = base.model_copy(update={option.name: typed})
            assert validate_input(model.payload(request), model.endpoint) == [], (option.name, value)


def test_the_fake_knows_each_registered_endpoint_and_its_output_traits():
    for model in MODELS:
        schema = schema_of(model.endpoint)
        assert model.endpoint in SCHEMAS and schema.image_field == model.image_field
        assert schema.nsfw_flags == model.nsfw_flags and schema.multi_output == (model.max_outputs > 1)


def test_a_wrong_mapping_in_an_entry_fails_against_fals_schema():
    """What this suite guards against: a registry entry that sends a field the way fal does not take it."""
    wrong = replace(FLUX_2_PRO_EDIT, options=(Option("aspect_ratio", choices=("16:9",)),))  # not mapped
    body = wrong.payload(EditRequest(prompt="p", image_urls=(URL,), aspect_ratio="16:9"))
    [issue] = validate_input(body, wrong.endpoint)
    assert (issue["loc"], issue["type"]) == (["body", "aspect_ratio"], "extra_forbidden")


async def test_a_single_image_model_is_a_data_entry_too(fake_fal: FakeFal, fal):
    """An entry taking `image_url` (Kontext [pro] single) sends one string, refuses a second image."""
    single = replace(KONTEXT_PRO_MULTI, id="kontext-pro", endpoint="fal-ai/flux-pro/kontext", image_field="image_url",
                     max_images=1)  # fmt: skip
    request = EditRequest(prompt="p", image_urls=(URL,), seed=3)

    handle = await fal.submit(single.endpoint, single.payload(request))
    assert handle.endpoint == "fal-ai/flux-pro/kontext"
    [submit] = [r for r in fake_fal.requests if r.kind == "submit"]
    assert submit.json == {"prompt": "p", "image_url": URL, "seed": 3, "num_images": 1, "output_format": "jpeg"}
    [problem] = single.problems(request.model_copy(update={"image_urls": (URL, URL)}))
    assert (problem.name, problem.limit) == ("images", 1)


# --- refused before any paid call --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "options", "expected"),
    [
        (FLUX_2_PRO_EDIT, {"guidance_scale": 3.0}, "FLUX.2 [pro] edit has no guidance_scale option"),
        (FLUX_2_PRO_EDIT, {"safety_tolerance": "6"},
         "For FLUX.2 [pro] edit, safety_tolerance must be one of 1, 2, 3, 4, 5."),
        (FLUX_2_PRO_EDIT, {"num_images": 2}, "For FLUX.2 [pro] edit, num_images must be from 1 to 1."),
        (FLUX_2_PRO_EDIT, {"aspect_ratio": "21:9"},
         "For FLUX.2 [pro] edit, aspect_ratio must be one of 1:1, 4:3, 3:4, 16:9, 9:16."),
        (SEEDREAM_V4_EDIT, {"output_format": "png"}, "Seedream 4.0 edit has no output_format option"),
        (SEEDREAM_V4_EDIT, {"safety_tolerance": "2"}, "Seedream 4.0 edit has no safety_tolerance option"),
        (KONTEXT_PRO_MULTI, {"num_images": 6}, "For FLUX.1 Kontext [pro] multi, num_images must be from 1 to 4."),
    ],
    ids=lambda value: value.id if isinstance(value, ModelSpec) else None,
)  # fmt: skip
async def test_an_option_the_model_does_not_take_is_refused_with_no_fal_call(
    harness: Harness, model: ModelSpec, options: Json, expected: str
):
    await harness.kontext("make it blue", model=model.id, **options)

    assert expected in await refused(harness)


async def _menu(harness: Harness, count: int, values: dict[str, str] | None = None) -> None:
    """The "Edit with Kontext" menu on a message with `count` images; the modal filled in with `values`."""
    images = [harness.image(f"{i}.png") for i in range(count)]
    target = harness.discord.add_message(harness.discord.channel_id, content="these", attachments=images)
    await harness.discord.interact(harness.discord.message_command("Edit with Kontext", target))
    if values is not None:
        await harness.discord.wait_until(lambda: any(r.json.get("type") == 9 for r in harness.discord.callbacks()))
        await harness.discord.interact(harness.discord.modal_submit(harness.discord.modal_custom_id(), values))


@pytest.mark.parametrize(
    ("default", "count", "values", "expected"),
    [
        ("kontext-max-multi", 5, None, "FLUX.1 Kontext [max] multi takes at most 4 input images; this job has 5."),
        ("flux-2-pro-edit", 9, None, "FLUX.2 [pro] edit takes at most 8 input images; this job has 9."),
        ("seedream-v4-edit", 10, {"prompt": "mix", "num_images": "6"},
         "Seedream 4.0 edit takes at most 15 images in and out together; 10 in and 6 out are too many."),
    ],
)  # fmt: skip
async def test_too_many_images_for_the_model_are_refused_with_its_limit(
    start_bot: StartBot, default: str, count: int, values: dict[str, str] | None, expected: str
):
    async with start_bot(max_images=10, default_model=default) as harness:
        await _menu(harness, count, values)

        assert expected in await refused(harness)


# --- choosing ------------------------------------------------------------------------------------------------


async def test_only_enabled_models_are_offered_and_another_is_refused(start_bot: StartBot, fake_discord):
    async with start_bot(enabled_models=("seedream-v4-edit", "kontext-max-multi")) as harness:
        [command] = [c for c in fake_discord.commands[None] if c["name"] == "kontext"]
        [option] = [o for o in command["options"] if o["name"] == "model"]
        assert option["choices"] == [
            {"name": "Seedream 4.0 edit", "value": "seedream-v4-edit"},
            {"name": "FLUX.1 Kontext [max] multi", "value": "kontext-max-multi"},
        ]

        await harness.kontext(model="flux-2-pro-edit")  # sent anyway (a stale client, a crafted request)

        reply = await refused(harness)
        assert "not available here" in reply and "Seedream 4.0 edit, FLUX.1 Kontext [max] multi" in reply


async def test_without_a_choice_the_default_model_runs_and_a_plugged_in_default_comes_first(start_bot: StartBot):
    enabled = ("kontext-max-multi", "kontext-pro-multi", "seedream-v4-edit")
    async with start_bot(default_model="kontext-pro-multi", enabled_models=enabled) as harness:

        async def run(prompt: str, **options: Any) -> None:
            payload = await harness.kontext(prompt, **options)
            assert "✅ Done" in await harness.final_status(payload["token"])

        await run("one")
        launcher = harness.bot.get_cog("Jobs").launcher  # type: ignore[union-attr]  # the cog as the bot loaded it
        launcher.defaults += [lambda origin: "flux-2-pro-edit", lambda origin: "seedream-v4-edit"]  # first: disabled
        await run("two")
        await run("three", model="kontext-max-multi")  # a choice beats every default
        await harness.finish_jobs()

    assert submit_paths(harness) == [
        "/fal-ai/flux-pro/kontext/multi", "/fal-ai/bytedance/seedream/v4/edit", "/fal-ai/flux-pro/kontext/max/multi",
    ]  # fmt: skip


async def test_reroll_and_edit_again_keep_the_jobs_model(harness: Harness):
    image = harness.image()
    payload = await harness.kontext("night", [image], model="seedream-v4-edit", num_images=2, aspect_ratio="1:1")
    await harness.final_status(payload["token"])
    [job] = await harness.finish_jobs()
    message = next(m for m in result_messages(harness))

    press = harness.discord.button(button(message, "reroll"), message)
    await harness.discord.interact(press)
    assert "**Seedream 4.0 edit**" in await harness.final_status(press["token"])
    await harness.discord.interact(harness.discord.button(button(message, "edit"), message))
    await harness.discord.wait_until(lambda: any(r.json.get("type") == 9 for r in harness.discord.callbacks()))
    edit = harness.discord.modal_submit(harness.discord.modal_custom_id(), {"prompt": "snow", "num_images": "5"},
                                        channel_id=int(message["channel_id"]))  # fmt: skip
    await harness.discord.interact(edit)
    await harness.final_status(edit["token"])
    await harness.finish_jobs()

    first, reroll, again = submits(harness)
    assert submit_paths(harness) == ["/fal-ai/bytedance/seedream/v4/edit"] * 3
    assert "seed" not in first and {k: v for k, v in reroll.items() if k != "seed"} == first  # a new seed
    assert job.result is not None
    assert again == {"prompt": "snow", "image_urls": [job.result.images[0].url], "num_images": 5,
                     "enable_safety_checker": True}  # fmt: skip


async def test_reroll_is_refused_once_the_jobs_model_is_disabled(start_bot: StartBot):
    async with start_bot() as harness:
        payload = await harness.kontext(model="kontext-pro-multi")
        await harness.final_status(payload["token"])
        await harness.finish_jobs()
        [message] = result_messages(harness)
    async with start_bot(enabled_models=("kontext-max-multi",)) as harness:
        press = harness.discord.button(button(message, "reroll"), message)
        await harness.discord.interact(press)
        await harness.discord.wait_until(lambda: bool(harness.ephemeral_replies()))

        assert "not available here" in harness.ephemeral_replies()[0]
        assert harness.fal.count("submit") == 1  # the first run's only


# --- cost estimates ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "changes", "expected"),
    [
        (KONTEXT_MAX_MULTI, {"num_images": 3}, "0.24"),
        (KONTEXT_PRO_MULTI, {"num_images": 3}, "0.12"),
        (SEEDREAM_V4_EDIT, {"num_images": 3}, "0.09"),
        # per processed megapixel (1024x1024 px, rounded up, at most 4 per image), inputs included
        (FLUX_2_PRO_EDIT, {"image_pixels": (1024 * 1024,)}, "0.045"),  # 1 out (as the input) + 1 in
        (FLUX_2_PRO_EDIT, {"image_pixels": (2000 * 1500,)}, "0.105"),  # 3 out + 3 in: 0.03 + 5 x 0.015
        (FLUX_2_PRO_EDIT, {"image_pixels": (2000 * 1500,), "aspect_ratio": "16:9"}, "0.075"),  # 1 out + 3 in
        (FLUX_2_PRO_EDIT, {"image_pixels": (8000 * 8000, None), "image_urls": (URL, URL)}, "0.15"),  # 4+4+1+1
        (FLUX_2_PRO_EDIT, {}, "0.045"),  # sizes unknown: a megapixel each
    ],
)
def test_cost_estimates_per_model(model: ModelSpec, changes: dict[str, Any], expected: str):
    request = EditRequest(prompt="p", image_urls=(URL,)).model_copy(update=changes)
    assert model.estimate(request) == Decimal(expected)


async def test_usage_lists_each_jobs_model_and_cost_and_the_prices(harness: Harness):
    runs: list[tuple[str, dict[str, Any]]] = [("kontext-max-multi", {"num_images": 2}), ("flux-2-pro-edit", {})]
    for model, options in runs:
        payload = await harness.kontext(model=model, **options)
        await harness.final_status(payload["token"])
    await harness.finish_jobs()
    await harness.discord.interact(harness.discord.slash("kontext-usage", []))
    await harness.discord.wait_until(lambda: bool(harness.ephemeral_replies()))

    [report] = harness.ephemeral_replies()
    assert "**You**: 3 of 20 images today (≈$0.205)" in report
    assert "FLUX.2 [pro] edit: 1 image, est. $0.045" in report
    assert "FLUX.1 Kontext [max] multi: 2 images, est. $0.16" in report
    assert "- FLUX.1 Kontext [max] multi: $0.08 per image (default)" in report
    assert "- Seedream 4.0 edit: $0.03 per image" in report
    assert "- FLUX.2 [pro] edit: $0.03 for the first megapixel, $0.015 for each further one" in report


# --- settings --------------------------------------------------------------------------------------------


def test_the_default_model_must_be_enabled_and_models_may_be_named_by_endpoint():
    secrets = {"discord_token": DISCORD_TOKEN, "fal_key": FAL_KEY}
    settings = load_settings(_env_file=None, **secrets, enabled_models="fal-ai/flux-2-pro/edit, kontext-pro-multi",
                             default_model="flux-2-pro-edit")  # fmt: skip
    assert settings.enabled_models == ("flux-2-pro-edit", "kontext-pro-multi")
    assert [model.name for model in settings.models] == ["FLUX.2 [pro] edit", "FLUX.1 Kontext [pro] multi"]
    with pytest.raises(ConfigError, match=r"DEFAULT_MODEL: .*must be one of ENABLED_MODELS \(kontext-pro-multi\)"):
        load_settings(_env_file=None, **secrets, enabled_models="kontext-pro-multi")


def test_every_entry_is_reachable_by_id_and_endpoint():
    assert len({model.id for model in MODELS}) == len({model.endpoint for model in MODELS}) == len(MODELS)
    for model in MODELS:
        assert find_model(model.id) is find_model(model.endpoint) is find_model(f"/{model.endpoint}/") is model


# --- a job from before the registry -----------------------------------------------------------------------

# What the bot stored before the registry: Kontext [max] multi's own body as the request.
KONTEXT_ROW_REQUEST = (
    '{"prompt":"make it blue","image_urls":["%s"],"seed":null,"guidance_scale":null,"num_images":2,'
    '"output_format":"jpeg","safety_tolerance":null,"aspect_ratio":null,"enhance_prompt":null}'
)


async def test_a_job_stored_before_the_registry_resumes_as_kontext_max_multi(start_bot: StartBot, make_settings):
    async with start_bot() as harness:  # a job fal accepted, then the bot stopped
        harness.fal.add_script(JobScript(queue_positions=(1,), hold=True))
        image = harness.image()
        await harness.kontext("make it blue", [image], num_images=2)
        await harness.discord.wait_until(lambda: bool(harness.fal.jobs))
        [request_id] = harness.fal.jobs
        await harness.bot.runner.close()
    with sqlite3.connect(make_settings().database_path) as db:  # as the bot before the registry wrote it
        db.execute("UPDATE jobs SET request_json = ?, cost_usd = '0.16'", (KONTEXT_ROW_REQUEST % image["url"],))

    async with start_bot() as harness:
        harness.fal.release(request_id)
        await harness.discord.wait_until(lambda: bool(result_messages(harness)), 10)
        [job] = await harness.finish_jobs()
        [message] = result_messages(harness)
        press = harness.discord.button(button(message, "reroll"), message)
        await harness.discord.interact(press)
        await harness.final_status(press["token"])
        await harness.finish_jobs()

        assert job.state is JobState.DELIVERED and job.model is KONTEXT_MAX_MULTI
        text = message_text(message)
        assert "· FLUX.1 Kontext [max] multi · seed" in text and "est. $0.16" in text
        assert job.status_message_id is not None  # resumed, the status is edited as a channel message
        assert "**FLUX.1 Kontext [max] multi**" in harness.status_texts(job.status_message_id)[-1]
        reroll = submits(harness)[-1]  # the one before is the first run's
        assert submit_paths(harness) == ["/fal-ai/flux-pro/kontext/max/multi"] * 2
        assert {**reroll, "seed": 0} == {"prompt": "make it blue", "image_urls": [image["url"]], "num_images": 2,
                                         "output_format": "jpeg", "seed": 0}  # fmt: skip
