"""Faults and abuse, end to end: the real bot against the fake Discord and the fake fal.

Part A, bad inputs: every one ends in a clear message to the user, nothing stored or consumed, and no
submit to fal (a submit is the paid call). Bad fal *outputs* come after a paid submit: the user still gets a
clear message and the job ends FAILED in the store.

Part B, faults on the way: every one ends with the job DELIVERED exactly once (one accepted submit, one
result message).

The cases in test_e2e_kontext.py and test_e2e_triggers.py are not repeated here; these extend them.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import pytest
from yarl import URL

from bot.bot import KontextBot
from bot.jobs import Job, JobState
from tests.conftest import StartBot, Trap
from tests.fakes.fake_discord import FakeDiscord, Recorded
from tests.fakes.fake_fal import JobScript, Outcome
from tests.fakes.images import make_png, padded_png
from tests.harness import RESULT_TEXT, Harness, Json, custom_ids, message_text

PNG = make_png(32, 32)
MIB = 1024 * 1024
OWNER = FakeDiscord.owner_id
OTHER = FakeDiscord.other_user_id
MOD_ROLE = FakeDiscord.mod_role_id
UNEXPECTED = "The image service sent something unexpected"


# --------------------------------------------------------------------------------------------------
# Observing
# --------------------------------------------------------------------------------------------------


def submits(harness: Harness) -> list[Json]:
    return [r.json for r in harness.fal.requests if r.kind == "submit"]


def uploads(harness: Harness) -> list[Recorded]:
    return [r for r in harness.discord.requests if r.files and r.method == "POST"]


def result_messages(harness: Harness) -> list[Json]:
    return [m for m in harness.discord.messages.values() if RESULT_TEXT in message_text(m)]


def public_messages(harness: Harness) -> list[Json]:
    return [m for m in harness.discord.messages.values() if not m["flags"] & 64]


def custom_id(message: Json, action: str) -> str:
    ids = custom_ids(message)
    return str(next(i for i in ids if i.startswith(f"kontext:{action}:")))


def _body(rec: Recorded) -> Json:
    """What the bot asked Discord to show: an interaction callback's `data`, else the JSON body."""
    if not isinstance(rec.json, dict):
        return {}
    if rec.path.endswith("/callback"):
        data = rec.json.get("data")
        return data if isinstance(data, dict) else {}
    return rec.json


def assert_never_pings(harness: Harness, users: frozenset[int] = frozenset({OWNER})) -> int:
    """Every message the bot sent or edited: no @everyone/@here, no roles, only `users` may be pinged.
    Checked on what the bot asked for (allowed_mentions) and on what the fake computed. Returns how many
    message bodies were checked, so a caller can tell the check was not vacuous."""
    checked = 0
    for rec in harness.discord.requests:
        body = _body(rec)
        if rec.method not in ("POST", "PATCH") or ("content" not in body and not message_text(body)):
            continue
        checked += 1
        allowed = body.get("allowed_mentions")
        assert isinstance(allowed, dict), f"{rec.method} {rec.path} sent content without allowed_mentions"
        assert allowed.get("parse", []) == [], (rec.path, allowed)
        assert not allowed.get("roles"), (rec.path, allowed)
        assert {int(u) for u in allowed.get("users", [])} <= users, (rec.path, allowed)
    for message in [*harness.discord.messages.values(), *harness.discord.deleted_messages.values()]:
        assert message["mention_everyone"] is False, message["content"]
        assert message["mention_roles"] == [], message["content"]
        assert {int(u["id"]) for u in message["mentions"]} <= users, message["content"]
    return checked


async def stored_jobs(harness: Harness) -> list[Job]:
    return await harness.finish_jobs()


async def refused(harness: Harness, expected: str) -> str:
    """The one ephemeral answer to a refused input; asserts nothing was paid, posted, stored or deleted."""
    await harness.discord.wait_until(
        lambda: bool(harness.ephemeral_replies() or harness.fal.requests), what="an ephemeral reply"
    )
    assert harness.fal.requests == [], "a refused input must not reach fal"
    [reply] = harness.ephemeral_replies()
    assert expected in reply
    assert public_messages(harness) == []
    assert harness.discord.deleted_messages == {}
    assert await stored_jobs(harness) == []
    assert assert_never_pings(harness) >= 1
    return reply


async def delivered(harness: Harness, key: str | int) -> Job:
    """The job behind status `key` ended DELIVERED exactly once: one accepted submit, one result message."""
    final = await harness.final_status(key)
    assert "✅ Done" in final, final
    [job] = await stored_jobs(harness)
    assert job.state is JobState.DELIVERED
    assert len(harness.fal.jobs) == 1, "exactly one job was accepted (and paid) at fal"
    [message] = result_messages(harness)
    assert job.id in str(message["components"])
    posted = [r for r in harness.discord.requests if r.method == "POST" and RESULT_TEXT in message_text(_body(r))]
    assert [r.status for r in posted][-1:] == [200] and len(result_messages(harness)) == 1
    assert_never_pings(harness)
    return job


async def failed_after_payment(harness: Harness, key: str | int, expected: str) -> Job:
    """A paid job whose output was unusable: a clear final status, nothing posted, UNDELIVERABLE in the store
    (generated, so it counts against the limits)."""
    harness.errors.allowed.append("its result cannot be read")  # logged for the operator: fal billed it
    final = await harness.final_status(key)
    assert any(line.startswith("❌ ") for line in final.splitlines()), final
    assert expected in final
    [job] = await stored_jobs(harness)
    assert job.state is JobState.UNDELIVERABLE and job.error is not None and expected in job.error
    assert harness.fal.count("submit") == 1 and len(harness.fal.jobs) == 1
    assert uploads(harness) == [] and result_messages(harness) == []
    assert_never_pings(harness)
    return job


async def open_modal_and_submit(harness: Harness, target: Json, values: dict[str, str]) -> None:
    await harness.discord.interact(harness.discord.message_command("Edit with Kontext", target))
    await harness.discord.wait_until(lambda: any(r.json.get("type") == 9 for r in harness.discord.callbacks()))
    await harness.discord.interact(harness.discord.modal_submit(harness.discord.modal_custom_id(), values))


async def react(harness: Harness, target: Json, *, user_id: int = OWNER) -> None:
    await harness.discord.dispatch("MESSAGE_REACTION_ADD", harness.discord.reaction_add(target, "🎨", user_id=user_id))


def replies_to(harness: Harness, target: Json) -> list[Json]:
    return [m for m in public_messages(harness) if m.get("message_reference", {}).get("message_id") == target["id"]]


async def delivered_job(harness: Harness, **options: Any) -> Json:
    payload = await harness.kontext(**options)
    await harness.final_status(payload["token"])
    await harness.finish_jobs()
    [message] = result_messages(harness)
    return message


# --------------------------------------------------------------------------------------------------
# A. Bad inputs to /kontext: an ephemeral answer, no fal call
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Upload:
    """One attachment as Discord describes it: Discord sets width/height only for images it could read."""

    name: str = "in.png"
    content_type: str | None = "image/png"
    data: bytes = PNG
    size: int | None = None
    dims: bool = True

    def attach(self, harness: Harness) -> Json:
        side = 32 if self.dims else None
        return harness.discord.add_attachment(
            self.name, self.data, self.content_type, width=side, height=side, size=self.size
        )


NOT_AN_IMAGE = "is not a supported image; use PNG, JPEG, WebP."
OK = [Upload()]
SLASH_BAD_INPUTS = [
    # Files that are not (supported) images, whatever their names say.
    pytest.param("edit", [Upload("cat.png", "application/pdf", b"%PDF-1.7\n", dims=False)], {},
                 f"Image 1 (`cat.png`) {NOT_AN_IMAGE}", id="pdf-named-png"),
    pytest.param("edit", [Upload("photo.png", "application/octet-stream")], {},
                 f"Image 1 (`photo.png`) {NOT_AN_IMAGE}", id="png-bytes-with-octet-stream-type"),
    pytest.param("edit", [Upload("cat.jpg", "text/html; charset=utf-8", b"<html></html>", dims=False)], {},
                 f"(`cat.jpg`) {NOT_AN_IMAGE}", id="html-named-jpg"),
    pytest.param("edit", [Upload("logo.png", "image/svg+xml", b"<svg/>", dims=False)], {},
                 f"(`logo.png`) {NOT_AN_IMAGE}", id="svg-named-png"),
    pytest.param("edit", [Upload("cat.png.exe", "application/x-msdownload", b"MZ\x90\x00", dims=False)], {},
                 NOT_AN_IMAGE, id="exe-with-double-extension"),
    pytest.param("edit", [Upload("scan.tiff", "image/tiff")], {}, NOT_AN_IMAGE, id="tiff"),
    pytest.param("edit", [Upload(), Upload(), Upload("notes.txt", "text/plain", b"hi", dims=False), Upload()], {},
                 f"Image 3 (`notes.txt`) {NOT_AN_IMAGE}", id="third-of-four-is-text"),
    # Sizes.
    pytest.param("edit", [Upload("huge.png", size=2 * 1024 * MIB)], {},
                 "Image 1 (`huge.png`) is 2048.0 MiB; the limit is 10.0 MiB per image.", id="2-gib-image"),
    pytest.param("edit", [Upload("a.png"), Upload("b.png", size=10 * MIB + 1)], {},
                 "is 10,485,761 bytes; the limit is 10,485,760 bytes per image.", id="second-image-one-byte-over"),
    # Prompts that are empty once whitespace is gone, or too long.
    pytest.param("", OK, {}, "Please write a prompt", id="empty-prompt"),
    pytest.param("\n\t \r\n", OK, {}, "Please write a prompt", id="newlines-and-tabs-only"),
    pytest.param("\u00a0\u3000\u2003\u2028", OK, {}, "Please write a prompt", id="unicode-spaces-only"),
    pytest.param("x" * 4000, OK, {}, "The prompt is 4000 characters long; the limit is 1500.", id="prompt-4000"),
    pytest.param(" " * 50 + "x" * 1501, OK, {}, "1501 characters long", id="long-prompt-counted-after-strip"),
    # Options outside what the endpoint takes (Discord enforces most of them; a forged payload does not).
    pytest.param("edit", OK, {"seed": 2**32}, "seed must be from 0 to 4294967295.", id="seed-2-pow-32"),
    pytest.param("edit", OK, {"num_images": -3}, "num_images must be from 1 to 4.", id="negative-num-images"),
    pytest.param("edit", OK, {"guidance_scale": 20.5}, "guidance_scale must be from 1 to 20.", id="guidance-20.5"),
    pytest.param("edit", OK, {"output_format": "PNG"}, "output_format must be one of jpeg, png.", id="format-upper"),
    pytest.param("edit", OK, {"output_format": "webp"}, "output_format must be one of jpeg, png.", id="format-webp"),
    pytest.param("edit", OK, {"safety_tolerance": "0"}, "safety_tolerance must be one of 1, 2,", id="tolerance-0"),
    pytest.param("edit", OK, {"aspect_ratio": "16:10"}, "aspect_ratio must be one of 21:9", id="aspect-16-10"),
    # Mention injection in the refused input itself: the answer (which echoes file names) must not ping.
    pytest.param("@everyone @here <@&1000000000000000030> " + "x" * 1500, OK, {}, "the limit is 1500",
                 id="pinging-oversized-prompt"),
    pytest.param("edit", [Upload("@everyone <@&1000000000000000030> <@1000000000000000041>.gif", "image/gif")],
                 {}, NOT_AN_IMAGE, id="pinging-filename"),
]  # fmt: skip


@pytest.mark.parametrize(("prompt", "files", "options", "expected"), SLASH_BAD_INPUTS)
async def test_bad_slash_input_is_refused_before_any_paid_call(
    harness: Harness, prompt: str, files: list[Upload], options: Json, expected: str
):
    await harness.kontext(prompt, [f.attach(harness) for f in files], **options)

    await refused(harness, expected)


async def test_a_refused_input_consumes_no_cooldown_and_no_quota(start_bot: StartBot):
    async with start_bot(cooldown_seconds=600, daily_images_per_user=1) as harness:
        await harness.kontext("x" * 1501)
        await refused(harness, "the limit is 1500")

        payload = await harness.kontext("a fine prompt")  # at once, under a 10-minute cooldown and a quota of 1

        await delivered(harness, payload["token"])
        assert len(harness.ephemeral_replies()) == 1


async def test_limits_from_the_settings_are_the_ones_enforced(start_bot: StartBot):
    async with start_bot(max_images=1, max_image_bytes=2 * MIB, max_prompt_length=20) as harness:
        await harness.kontext("two images", [harness.image("a.png"), harness.image("b.png")])
        await harness.discord.wait_until(lambda: len(harness.ephemeral_replies()) == 1)
        await harness.kontext("big", [harness.image("big.png", size=3 * MIB)])
        await harness.discord.wait_until(lambda: len(harness.ephemeral_replies()) == 2)
        await harness.kontext("y" * 21)
        await harness.discord.wait_until(lambda: len(harness.ephemeral_replies()) == 3)

        images, size, prompt = harness.ephemeral_replies()
        assert "You gave 2 images; at most 1 can be combined." in images
        assert "is 3.0 MiB; the limit is 2.0 MiB per image." in size
        assert "The prompt is 21 characters long; the limit is 20." in prompt
        assert harness.fal.requests == [] and await stored_jobs(harness) == []


async def test_a_non_image_that_discord_could_not_read_is_refused(harness: Harness):
    text = Upload("cat.png", "image/png", b"this is not a png at all", dims=False)  # what Discord reports for it

    await harness.kontext("edit", [text.attach(harness)])

    await refused(harness, NOT_AN_IMAGE)


async def test_a_zero_width_only_prompt_counts_as_empty(harness: Harness):
    await harness.kontext("\u200b\u200c\u200d\u2060\ufeff")

    await refused(harness, "Please write a prompt")


async def test_a_refused_request_keeps_the_pinned_input(harness: Harness):
    """Regression (fixed in 215ca0d): the pin used to be removed before the request was checked."""
    message = await delivered_job(harness)
    [job] = await stored_jobs(harness)
    await harness.discord.interact(harness.discord.button(custom_id(message, "use"), message))
    await harness.discord.wait_until(lambda: any("Saved" in r for r in harness.ephemeral_replies()))

    await harness.kontext("five", [harness.image(f"{i}.png") for i in range(4)])  # the pin makes it 5
    await harness.discord.wait_until(lambda: len(harness.ephemeral_replies()) == 2)
    assert "You gave 5 images; at most 4 can be combined." in harness.ephemeral_replies()[-1]
    assert len(submits(harness)) == 1
    payload = await harness.kontext("now with one", [extra := harness.image("extra.png")])
    await harness.final_status(payload["token"])

    assert submits(harness)[-1]["image_urls"] == [job.result.images[0].url, extra["url"]]  # type: ignore[union-attr]


# --------------------------------------------------------------------------------------------------
# A. Bad inputs through the context menu, its modal, the result buttons and the reaction trigger
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        pytest.param({"prompt": "ok", "num_images": "9"}, "Number of results must be a number from 1 to 4.", id="9"),
        pytest.param({"prompt": "ok", "num_images": "x"}, "Number of results must be a number from 1 to 4.", id="x"),
        pytest.param({"prompt": "ok", "num_images": "0"}, "Number of results must be a number from 1 to 4.", id="0"),
        pytest.param({"prompt": "ok", "num_images": "-"}, "Number of results must be a number from 1 to 4.", id="-"),
        pytest.param({"prompt": "ok", "num_images": "²"}, "Number of results must be a number from 1 to 4.",
                     id="superscript-two"),  # str.isdigit() is true for it; int() is not fooled
        pytest.param({"prompt": " \n ", "num_images": "1"}, "Please write a prompt", id="blank-prompt"),
        pytest.param({"prompt": "z" * 1501, "num_images": "1"}, "the limit is 1500", id="prompt-too-long"),
    ],
)  # fmt: skip
async def test_bad_modal_values_are_refused(harness: Harness, values: dict[str, str], expected: str):
    target = harness.discord.add_message(harness.discord.channel_id, content="pic", attachments=[harness.image()])

    await open_modal_and_submit(harness, target, values)

    await refused(harness, expected)


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        pytest.param([Upload(f"{i}.png") for i in range(5)], "You gave 5 images; at most 4", id="five-images"),
        pytest.param([Upload("anim.gif", "image/gif"), Upload()], f"Image 1 (`anim.gif`) {NOT_AN_IMAGE}", id="gif"),
    ],
)
async def test_context_menu_on_images_that_cannot_be_used(harness: Harness, files: list[Upload], expected: str):
    target = harness.discord.add_message(
        harness.discord.channel_id, content="look", attachments=[f.attach(harness) for f in files]
    )

    await harness.discord.interact(harness.discord.message_command("Edit with Kontext", target))

    await refused(harness, expected)
    assert not any(r.json.get("type") == 9 for r in harness.discord.callbacks())  # refused before asking a prompt


async def test_edit_again_with_a_result_number_that_does_not_exist(harness: Harness):
    message = await delivered_job(harness, num_images=2)
    await harness.discord.interact(harness.discord.button(custom_id(message, "edit"), message))
    await harness.discord.wait_until(lambda: any(r.json.get("type") == 9 for r in harness.discord.callbacks()))

    values = {"prompt": "again", "num_images": "1", "which": "3"}
    await harness.discord.interact(harness.discord.modal_submit(harness.discord.modal_custom_id(), values))
    await harness.discord.wait_until(lambda: bool(harness.ephemeral_replies()))

    assert harness.ephemeral_replies() == ["Which result must be a number from 1 to 2."]
    assert len(submits(harness)) == 1  # only the first job's


REACTION_BAD_INPUTS = [
    pytest.param("w" * 1501, [Upload()], "The prompt is 1501 characters long; the limit is 1500.", id="long-text"),
    pytest.param("@everyone " + "w" * 1600, [Upload()], "the limit is 1500", id="long-pinging-text"),
    pytest.param("animate", [Upload("a.gif", "image/gif")], f"Image 1 (`a.gif`) {NOT_AN_IMAGE}", id="gif"),
    pytest.param("merge", [Upload(f"{i}.png") for i in range(5)], "You gave 5 images; at most 4", id="five-images"),
]


@pytest.mark.parametrize(("text", "files", "expected"), REACTION_BAD_INPUTS)
async def test_bad_reaction_trigger_input_gets_a_reply_and_no_fal_call(
    harness: Harness, text: str, files: list[Upload], expected: str
):
    target = harness.discord.add_message(
        harness.discord.channel_id, content=text, attachments=[f.attach(harness) for f in files]
    )

    await react(harness, target)
    await harness.discord.wait_until(lambda: bool(replies_to(harness, target)), what="the bot's reply")

    [reply] = replies_to(harness, target)
    assert reply["content"].startswith(f"<@{OWNER}> ") and expected in reply["content"]
    assert harness.fal.requests == [] and await stored_jobs(harness) == []
    assert [m["id"] for m in public_messages(harness)] == [reply["id"]]
    assert_never_pings(harness)


async def test_a_too_long_answer_to_the_prompt_question_is_refused(harness: Harness):
    target = harness.discord.add_message(harness.discord.channel_id, attachments=[harness.image()])
    await react(harness, target)
    await harness.discord.wait_for_message(lambda m: "what should I do" in m["content"])

    answer = harness.discord.add_message(harness.discord.channel_id, content="@here " + "q" * 1600)
    await harness.discord.dispatch("MESSAGE_CREATE", answer)
    await harness.discord.wait_for_message(lambda m: "the limit is 1500" in m["content"])

    assert harness.fal.requests == [] and await stored_jobs(harness) == []
    assert_never_pings(harness)


@pytest.mark.parametrize("text", ["", "w" * 1501], ids=["question", "refusal"])
async def test_reacting_to_someone_elses_message_pings_only_the_reactor(harness: Harness, text: str):
    target = harness.discord.add_message(harness.discord.channel_id, content=text, attachments=[harness.image()])

    await react(harness, target, user_id=OTHER)  # the message is the owner's
    await harness.discord.wait_until(lambda: bool(replies_to(harness, target)), what="the bot's reply")

    [reply] = replies_to(harness, target)
    assert reply["content"].startswith(f"<@{OTHER}> ")
    [sent] = [r for r in harness.discord.requests if r.method == "POST" and r.path.endswith("/messages")]
    assert not sent.json["allowed_mentions"].get("replied_user")  # Discord's default is false: the owner is not pinged
    assert assert_never_pings(harness, frozenset({OTHER})) == 1
    assert harness.fal.requests == []


# --------------------------------------------------------------------------------------------------
# A. Hostile but valid prompts: accepted, echoed harmlessly
# --------------------------------------------------------------------------------------------------


async def test_mentions_of_every_kind_in_the_prompt_never_ping_anyone(harness: Harness):
    prompt = f"@here @everyone <@!{OTHER}> <@&{MOD_ROLE}> <@{OTHER}> \uff20everyone @\u200beveryone"

    payload = await harness.kontext(prompt)
    await delivered(harness, payload["token"])

    assert submits(harness)[0]["prompt"] == prompt  # fal gets the prompt as written
    echoes = [message_text(m) for m in harness.discord.messages.values()]
    assert len(echoes) >= 2
    for content in echoes:
        assert "@everyone" not in content and "@here" not in content, content  # defused in the text as well
        assert f"<@&{MOD_ROLE}>" not in content and f"<@{OTHER}>" not in content and f"<@!{OTHER}>" not in content
    assert assert_never_pings(harness) >= 3


async def test_markdown_backticks_and_newlines_stay_inside_the_quoted_prompt(harness: Harness):
    prompt = "**bold** `code` ```py\nimport os\n```\n> quote\n# Heading\n||spoiler|| [link](https://evil.example)"

    payload = await harness.kontext(prompt)
    await delivered(harness, payload["token"])

    assert submits(harness)[0]["prompt"] == prompt
    [result] = result_messages(harness)
    final = harness.status_texts(payload["token"])[-1]
    for content in (message_text(result), final):
        quoted = [line for line in content.splitlines() if line.startswith("> ")]
        assert len(quoted) == len(prompt.splitlines()), content  # each prompt line stays a quote line
        text = "\n".join(quoted)
        assert "**bold**" not in text and "||spoiler||" not in text and "`code`" not in text
        assert all(text[i - 1] == "\\" for i, ch in enumerate(text) if ch == "`"), text  # every backtick escaped
        assert "\\[link](https://evil.example)" in text  # a masked link shows as text


# --------------------------------------------------------------------------------------------------
# A. Bad fal outputs: the job was paid, so a clear message and a FAILED job in the store
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        pytest.param({"images": "nope"}, "unexpected result shape", id="images-is-a-string"),
        pytest.param({}, "unexpected result shape", id="empty-object"),
        pytest.param([{"url": "http://127.0.0.1/x.png"}], "unexpected result shape", id="a-list"),
        pytest.param({"images": [{"width": 1, "height": 1}]}, "unexpected result shape", id="image-without-url"),
        pytest.param({"images": [{"url": 42}]}, "unexpected result shape", id="url-is-a-number"),
        pytest.param("just a string", "unexpected result shape", id="a-json-string"),
    ],
)
async def test_malformed_result_json_fails_the_job_with_a_clear_message(harness: Harness, raw: Any, expected: str):
    harness.fal.add_script(JobScript(outcome=Outcome(raw_result=raw)))

    payload = await harness.kontext()

    await failed_after_payment(harness, payload["token"], f"{UNEXPECTED} ({expected}")
    assert harness.fal.count("file") == 0


async def test_a_result_that_is_not_json_once_is_read_again(harness: Harness):
    harness.fal.fail_next("result", 200, b"<html><body>502 Bad Gateway</body></html>")

    payload = await harness.kontext()

    await delivered(harness, payload["token"])
    assert harness.fal.count("result") == 2


async def test_a_result_that_is_never_json_ends_the_job_with_its_links_kept(harness: Harness):
    harness.fal.fail_next("result", 200, b"<html><body>502 Bad Gateway</body></html>", times=10)

    payload = await harness.kontext()

    await failed_after_payment(harness, payload["token"], f"{UNEXPECTED} (answer is not JSON (HTTP 200))")
    assert harness.fal.count("result") == 4  # read a few times, then given up: fal keeps it for an admin


async def test_a_result_without_images_fails_the_job(harness: Harness):
    harness.fal.add_script(JobScript(outcome=Outcome(raw_result={"images": [], "seed": 1})))

    payload = await harness.kontext()

    await failed_after_payment(harness, payload["token"], "image service")


@dataclass(frozen=True)
class Sent:
    at: float  # loop time
    method: str
    url: URL


@pytest.fixture
def outgoing(monkeypatch: pytest.MonkeyPatch) -> list[Sent]:
    """Every request any aiohttp client session in this process starts (the bot's and discord.py's)."""
    sent: list[Sent] = []
    original = aiohttp.ClientSession._request

    def spy(self: aiohttp.ClientSession, method: str, str_or_url: Any, **kwargs: Any) -> Any:
        sent.append(Sent(asyncio.get_running_loop().time(), method, URL(str(str_or_url))))
        return original(self, method, str_or_url, **kwargs)

    monkeypatch.setattr(aiohttp.ClientSession, "_request", spy)
    return sent


@pytest.mark.parametrize(
    ("host", "shown"),
    [
        pytest.param("http://evil.example", "evil.example", id="evil-example"),
        pytest.param("http://localhost:{port}", "localhost", id="localhost-is-not-127.0.0.1"),
        pytest.param("http://127.0.0.1.evil.example:{port}", "127.0.0.1.evil.example", id="allowed-host-as-prefix"),
        pytest.param("http://127.0.0.1@evil.example:{port}", "evil.example", id="allowed-host-as-userinfo"),
    ],
)
async def test_results_on_unexpected_hosts_are_never_downloaded(
    harness: Harness, trap: Trap, outgoing: list[Sent], host: str, shown: str
):
    harness.fal.add_script(JobScript(outcome=Outcome(result_host=host.format(port=trap.port))))

    payload = await harness.kontext()

    await failed_after_payment(harness, payload["token"], f"result image on an unexpected host: {shown}")
    assert trap.hits == [] and harness.fal.count("file") == 0
    assert any(s.url.port == URL(harness.fal.base_url).port for s in outgoing)  # the spy does see the bot
    assert [s.url for s in outgoing if s.url.host != "127.0.0.1" or s.url.port == trap.port] == []


async def test_a_result_over_max_result_bytes_is_refused(start_bot: StartBot):
    async with start_bot(max_result_bytes=4096) as harness:
        harness.fal.add_script(JobScript(outcome=Outcome(image_bytes=padded_png(4097))))

        payload = await harness.kontext()

        await failed_after_payment(harness, payload["token"], "result image larger than 4096 bytes")


async def test_a_result_over_the_guild_upload_limit_is_linked_from_the_reaction_trigger(harness: Harness):
    big = padded_png(harness.discord.attachment_size_limit + 1)  # a 10 MiB guild (tier 0) takes no more
    harness.fal.add_script(JobScript(outcome=Outcome(image_bytes=big)))
    target = harness.discord.add_message(harness.discord.channel_id, content="upscale", attachments=[harness.image()])

    await react(harness, target)
    status = await harness.discord.wait_for_message(lambda m: bool(replies_to(harness, target)))
    job = await delivered(harness, int(status["id"]))

    [message] = result_messages(harness)
    assert message["attachments"] == []
    assert f"<{job.result.images[0].url}>" in message_text(message)  # type: ignore[union-attr]
    assert not any(r.status == 413 for r in harness.discord.requests)  # never tried to upload it


@pytest.mark.parametrize(
    ("detail", "expected"),
    [
        pytest.param(
            [{"loc": ["body", "image_urls", 0], "msg": "Failed to download the file", "type": "file_download_error"}],
            "❌ Sorry, the image service could not download one of the images.",
            id="known-issue-type",
        ),
        pytest.param(
            [
                {"loc": ["body", "prompt"], "msg": "@everyone look <@&1000000000000000030>", "type": "value_error"},
                {"loc": ["body", "seed"], "msg": "seed is **odd**", "type": "value_error"},
            ],
            "❌ Sorry, the image service refused the request: @everyone look <@&1000000000000000030>; seed is",
            id="unknown-types-with-mentions",
        ),
    ],
)
async def test_fal_422_on_submit_with_a_detail_list(harness: Harness, detail: list[Json], expected: str):
    harness.fal.fail_next("submit", 422, {"detail": detail})

    payload = await harness.kontext()
    final = await harness.final_status(payload["token"])

    assert expected in final
    assert harness.fal.count("submit") == 1 and harness.fal.jobs == {}  # refused: not resent, nothing to pay
    [job] = await stored_jobs(harness)
    assert job.state is JobState.FAILED and job.request_id is None
    assert assert_never_pings(harness) >= 2


# --------------------------------------------------------------------------------------------------
# B. Faults on the way: each job still DELIVERED exactly once
# --------------------------------------------------------------------------------------------------


async def test_fal_5xx_bursts_while_polling_the_status(start_bot: StartBot):
    async with start_bot(use_status_stream=False) as harness:
        harness.fal.fail_next("status", 503, times=3)
        harness.fal.fail_next("status", 500, {"detail": "Internal Server Error"})
        harness.fal.fail_next("status", 502, b"<html>Bad Gateway</html>", times=2)

        payload = await harness.kontext()
        await delivered(harness, payload["token"])

        statuses = [r.status for r in harness.fal.requests if r.kind == "status"]
        assert statuses[:6] == [503, 503, 503, 500, 502, 502] and statuses[-1] == 200
        assert harness.fal.count("stream") == 0


async def test_the_status_stream_dropped_mid_way_is_reopened(harness: Harness):
    harness.fal.add_script(JobScript(queue_positions=(3, 2, 1), step_seconds=0.05))
    harness.fal.fail_next("stream", 200, drop=True, times=2)  # each sends one event, then the connection dies

    payload = await harness.kontext()
    await delivered(harness, payload["token"])

    assert harness.fal.count("stream") == 3  # reopened twice, read to the end the third time
    assert harness.fal.count("status") == 0  # no fallback to polling was needed


async def test_fal_429_on_submit_is_retried_and_submitted_once(harness: Harness):
    harness.fal.fail_next("submit", 429, {"detail": "Too many requests"}, headers={"Retry-After": "0.05"})

    payload = await harness.kontext()
    await delivered(harness, payload["token"])

    assert [r.status for r in harness.fal.requests if r.kind == "submit"] == [429, 200]


async def test_fal_status_requests_that_time_out_are_retried(start_bot: StartBot, outgoing: list[Sent]):
    async with start_bot(use_status_stream=False, request_timeout_seconds=0.3) as harness:
        harness.fal.slow("status", 1.5, times=2)  # answered only after 1.5 s

        payload = await harness.kontext()
        await delivered(harness, payload["token"])

        first, second, third = [s.at for s in outgoing if s.url.path.endswith("/status")][:3]
        assert 0.3 <= second - first < 1.0 and 0.3 <= third - second < 1.0  # gave up after 0.3 s, then retried


@pytest.mark.parametrize(
    ("status", "log_line"),
    [
        pytest.param(429, "rate limited", id="429-waited-out-by-discord.py"),
        pytest.param(502, None, id="502-retried-by-discord.py"),
        pytest.param(503, "delivering job", id="503-retried-by-the-runner-after-a-history-check"),
    ],
)
async def test_discord_errors_on_the_result_upload(harness: Harness, status: int, log_line: str | None):
    if log_line:
        harness.errors.allowed.append(log_line)
    harness.discord.fail_next("POST", r"/channels/\d+/messages$", status)

    payload = await harness.kontext()
    await delivered(harness, payload["token"])

    assert [r.status for r in harness.discord.requests if r.files] == [status, 200]
    if status == 503:  # discord.py does not retry a 503: the runner does, after looking for an earlier post
        assert [r for r in harness.discord.requests if r.method == "GET" and r.path.endswith("/messages")]


async def test_discord_5xx_on_a_status_edit_is_retried(harness: Harness):
    harness.discord.fail_next("PATCH", r"/webhooks/.*/messages/@original", 500)

    payload = await harness.kontext()
    await delivered(harness, payload["token"])

    patches = [r.status for r in harness.discord.requests if r.method == "PATCH"]
    assert patches[:2] == [500, 200]
    assert not [m for m in public_messages(harness) if "status continues here" in m["content"]]


async def test_discord_429_on_channel_status_edits_of_the_reaction_trigger(harness: Harness):
    harness.errors.allowed.append("rate limited")
    harness.discord.fail_next("PATCH", r"/channels/\d+/messages/\d+$", 429, times=2)
    target = harness.discord.add_message(harness.discord.channel_id, content="paint", attachments=[harness.image()])

    await react(harness, target)
    status = await harness.discord.wait_for_message(lambda m: bool(replies_to(harness, target)))
    await delivered(harness, int(status["id"]))

    assert [r.status for r in harness.discord.requests if r.method == "PATCH"][:3] == [429, 429, 200]


async def test_discord_403_on_thread_creation_posts_in_the_channel(harness: Harness):
    harness.discord.fail_next("POST", r"/messages/\d+/threads$", 403, {"code": 50001, "message": "Missing Access"})
    target = harness.discord.add_message(harness.discord.channel_id, content="paint", attachments=[harness.image()])

    await react(harness, target)
    status = await harness.discord.wait_for_message(lambda m: bool(replies_to(harness, target)))
    job = await delivered(harness, int(status["id"]))

    [message] = result_messages(harness)
    assert int(message["channel_id"]) == harness.discord.channel_id and harness.discord.threads == {}
    assert job.thread_id is None
    assert f"<#{harness.discord.channel_id}>" in harness.status_texts(int(status["id"]))[-1]


@pytest.fixture
def quick_reidentify(monkeypatch: pytest.MonkeyPatch) -> None:
    """discord.py waits 5 s before every re-IDENTIFY (Discord's identify rate limit); not against the fake."""

    async def no_wait(self: KontextBot, shard_id: int | None, *, initial: bool = False) -> None:
        return None

    monkeypatch.setattr(KontextBot, "before_identify_hook", no_wait)


@pytest.mark.parametrize("resumable", [True, False], ids=["resumed", "identified-again"])
async def test_gateway_reconnect_while_the_job_is_queued(harness: Harness, quick_reidentify: None, resumable: bool):
    harness.fal.add_script(JobScript(queue_positions=(1,), hold=True))
    payload = await harness.kontext()
    await harness.discord.wait_until(lambda: any("1 job ahead" in t for t in harness.status_texts(payload["token"])))

    await harness.discord.drop_gateway(resumable=resumable)
    harness.fal.release(next(iter(harness.fal.jobs)))
    await delivered(harness, payload["token"])
    await harness.discord.wait_until(lambda: len(harness.discord.resume_payloads) == 1, what="a RESUME")
    identifies = 1 if resumable else 2
    await harness.discord.wait_until(lambda: len(harness.discord.identify_payloads) == identifies)
    await harness.discord.wait_until(harness.bot.is_ready)

    second = await harness.kontext("after the reconnect")  # the bot still hears interactions
    assert "✅ Done" in await harness.final_status(second["token"])
    assert len(result_messages(harness)) == 2 and len(harness.fal.jobs) == 2
    assert len(harness.discord.identify_payloads) == identifies and len(harness.discord.resume_payloads) == 1


async def test_an_interaction_14_minutes_old_moves_its_status_before_the_first_edit(harness: Harness):
    harness.fal.add_script(JobScript(queue_positions=(2, 1), step_seconds=0.05))
    created = datetime.now(UTC) - timedelta(minutes=14, seconds=30)  # 30 s left: inside the 60 s margin

    payload = await harness.kontext(created_at=created)
    moved = await harness.discord.wait_for_message(lambda m: "✅ Done" in m["content"], timeout=10)
    job = await delivered(harness, int(moved["id"]))

    token_edits = harness.status_texts(payload["token"])
    assert len(token_edits) == 2 and "Sending to the image service" in token_edits[0]
    assert "the status continues here" in token_edits[1] and moved["id"] in token_edits[1]
    assert not moved.get("interaction_metadata") and job.status_message_id == int(moved["id"])
    assert not any(r.status == 401 for r in harness.discord.requests)
