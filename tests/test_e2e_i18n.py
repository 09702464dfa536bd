"""Localization over the wire: the commands Discord stores carry zh-CN names and descriptions, and what the bot
says to a Chinese client — status, refusals, result card, buttons, forms — comes back in Chinese, while an English
client's stays English, each job in its own locale to the end (after a restart too)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest

from bot.jobs import Job, JobState
from tests.conftest import StartBot
from tests.fakes.discord_components import walk
from tests.fakes.fake_discord import FakeDiscord
from tests.fakes.fake_fal import JobScript
from tests.harness import Harness, Json, message_text

ZH = "zh-CN"
HAN = re.compile(r"[\u4e00-\u9fff]")
CHINESE_FINAL = ("✅ 完成", "❌ ", "🚫 已取消")


# --- commands -------------------------------------------------------------------------------------------------


def _tree(item: Json, path: str = "") -> Iterator[tuple[str, Json]]:
    """A command and its subcommands and options, each with its path (`kontext-admin/limits/daily_server`)."""
    here = f"{path}/{item['name']}" if path else item["name"]
    yield here, item
    for option in item.get("options") or []:
        yield from _tree(option, here)


def _discord_name(text: str) -> bool:
    """Discord's pattern for names of slash commands and options, for the scripts the catalogs use."""
    return re.fullmatch(r"[-_\w]{1,32}", text) is not None and text == text.lower()


async def test_synced_commands_carry_chinese_names_and_descriptions(harness: Harness):
    synced = harness.discord.commands[None]
    assert {c["name"] for c in synced} == {
        "kontext", "Edit with Kontext", "kontext-usage", "kontext-admin", "kontext-settings", "kontext-history",
    }  # fmt: skip
    for command in synced:
        for path, item in _tree(command):
            names, descriptions = item.get("name_localizations") or {}, item.get("description_localizations") or {}
            assert set(names) | set(descriptions) == {ZH}, path  # only a language with a catalog
            assert HAN.search(names[ZH]), path
            if command["type"] == 1:
                assert _discord_name(names[ZH]), (path, names[ZH])
                assert 1 <= len(descriptions[ZH]) <= 100 and HAN.search(descriptions[ZH]), path
            else:  # a message menu: any 1-32 characters, and no description
                assert len(names[ZH]) <= 32 and ZH not in descriptions
            siblings = [option["name_localizations"][ZH] for option in item.get("options") or []]
            assert len(siblings) == len(set(siblings)), (path, siblings)


async def test_choices_with_words_are_translated_and_names_are_kept(harness: Harness):
    choices = {
        choice["name"]: (choice.get("name_localizations") or {}).get(ZH)
        for command in harness.discord.commands[None] for _, item in _tree(command)
        for choice in item.get("choices") or []
    }  # fmt: skip
    assert choices["add"] == "添加" and choices["remove"] == "移除"
    assert choices["the model's default"] == "模型的默认值"
    assert choices["withheld everywhere"] == "在任何地方都不发布"
    assert choices["Monthly budget"] == "每月预算"  # /kontext-admin reset's settings
    for kept in ("FLUX.1 Kontext [max] multi", "JPEG", "16:9", "2"):  # model names, formats, ratios, levels
        assert choices[kept] is None
    assert all(1 <= len(text) <= 100 for text in choices.values() if text is not None)


async def test_the_kontext_options_are_named_as_a_chinese_client_shows_them(harness: Harness):
    [kontext] = [c for c in harness.discord.commands[None] if c["name"] == "kontext"]
    names = {option["name"]: option["name_localizations"][ZH] for option in kontext["options"]}

    assert kontext["name_localizations"][ZH] == "kontext-修图"
    assert (names["prompt"], names["seed"], names["safety_tolerance"]) == ("提示词", "种子", "安全容忍度")


# --- answers --------------------------------------------------------------------------------------------------


def _labels(message: Json) -> list[str]:
    return [c["label"] for c in walk(list(message.get("components") or [])) if c.get("type") == 2 and "label" in c]


def _card(harness: Harness, job: Job) -> Json:
    [card] = [
        m for m in harness.discord.messages.values()
        if any(c.get("custom_id") == f"kontext:reroll:{job.id}" for c in walk(list(m.get("components") or [])))
    ]  # fmt: skip
    return card


async def _final(harness: Harness, key: str | int, marks: tuple[str, ...]) -> list[str]:
    def final() -> bool:
        return any(mark in text for text in harness.status_texts(key) for mark in marks)

    await harness.discord.wait_until(final, 10, f"final status of {key}")
    return harness.status_texts(key)


async def test_a_chinese_client_gets_chinese_and_an_english_one_english_at_once(harness: Harness):
    for _ in range(2):
        harness.fal.add_script(JobScript(queue_positions=(2, 1), progress_steps=2, step_seconds=0.1))
    chinese = await harness.kontext("给猫戴上帽子", locale=ZH)
    english = await harness.kontext("put a hat on the cat", locale="en-US", user_id=harness.discord.other_user_id)

    zh_texts = await _final(harness, chinese["token"], CHINESE_FINAL)
    en_texts = await _final(harness, english["token"], ("✅ Done",))
    jobs = {job.locale: job for job in await harness.finish_jobs()}
    first_answers = {r.path: r.json["data"] for r in harness.discord.callbacks() if r.json.get("type") == 4}

    assert len(zh_texts) >= 4 and all("输入 1 张，输出 1 张" in text for text in zh_texts)  # noqa: RUF001
    assert any("排队中：前面还有 2 个任务" in text for text in zh_texts) and "✅ 完成 · 结果在" in zh_texts[-1]  # noqa: RUF001
    assert all("1 image(s) in, 1 out" in text and not HAN.search(text.replace("给猫戴上帽子", "")) for text in en_texts)
    assert "✅ Done · results in" in en_texts[-1]
    zh_answer = next(data for path, data in first_answers.items() if chinese["token"] in path)
    en_answer = next(data for path, data in first_answers.items() if english["token"] in path)
    assert (_labels(zh_answer), _labels(en_answer)) == (["取消"], ["Cancel"])
    zh_card, en_card = _card(harness, jobs[ZH]), _card(harness, jobs["en-US"])
    assert "这是你的编辑结果" in message_text(zh_card) and "here is your edit" in message_text(en_card)
    assert _labels(zh_card) == ["重新生成", "再次编辑", "用作输入"]
    assert _labels(en_card) == ["Reroll", "Edit again", "Use as input"]


async def test_refusals_and_button_answers_come_in_the_clients_language(start_bot: StartBot):
    async with start_bot(daily_images_per_user=1) as harness:
        await harness.kontext("   ", locale=ZH)
        await harness.discord.wait_until(lambda: len(harness.ephemeral_replies()) == 1)
        harness.fal.add_script(JobScript(queue_positions=(2,), hold=True))
        payload = await harness.kontext(locale=ZH)
        await harness.discord.wait_until(lambda: any("排队中" in t for t in harness.status_texts(payload["token"])))
        await harness.kontext(locale=ZH)  # over the daily limit: the status is taken back, the refusal says why
        await harness.discord.wait_until(lambda: len(harness.ephemeral_replies()) == 2)
        status = harness.original_response(payload)
        [cancel] = [c["custom_id"] for c in walk(status["components"]) if "custom_id" in c]
        press = harness.discord.button(cancel, status, user_id=harness.discord.other_user_id)
        await harness.discord.interact({**press, "locale": ZH})
        await harness.discord.wait_until(lambda: len(harness.ephemeral_replies()) == 3)
        harness.fal.release(next(iter(harness.fal.jobs)))
        await harness.finish_jobs()

    empty, denied, not_yours = harness.ephemeral_replies()
    assert empty == "请填写提示词：图片中要改变什么？"  # noqa: RUF001
    assert denied.startswith("你今天已使用 1 张图片，上限为 1 张。可以再次使用的时间：<t:")  # noqa: RUF001
    assert not_yours == f"只有 <@{harness.discord.owner_id}> 或版主才能取消这个任务。"


async def test_the_upload_form_and_use_as_input_speak_chinese(harness: Harness):
    await harness.kontext(None, [], locale=ZH)  # no images: the form
    await harness.discord.wait_until(lambda: any(r.json.get("type") == 9 for r in harness.discord.callbacks()))
    form = next(r.json["data"] for r in harness.discord.callbacks() if r.json.get("type") == 9)
    labels = [c["label"] for c in walk(form["components"]) if c.get("type") == 18]
    assert form["title"] == "新建 Kontext 编辑" and labels[0] == "提示词" and "图片（1-4 张）" in labels  # noqa: RUF001

    payload = await harness.kontext(locale=ZH)
    await _final(harness, payload["token"], CHINESE_FINAL)
    [job] = await harness.finish_jobs()
    use = f"kontext:use:{job.id}"
    await harness.discord.interact(harness.discord.button(use, _card(harness, job), locale=ZH))
    await harness.discord.wait_until(lambda: bool(harness.ephemeral_replies()))
    assert harness.ephemeral_replies()[0].startswith("📌 已保存。你的下一次 `/kontext-修图` 或 *用 Kontext 编辑*")


async def test_a_resumed_job_keeps_its_locale_after_a_restart(start_bot: StartBot):
    async with start_bot() as harness:
        harness.fal.add_script(JobScript(queue_positions=(3,), hold=True))
        payload = await harness.kontext(locale=ZH)
        await harness.discord.wait_until(
            lambda: any("前面还有 3 个" in t for t in harness.status_texts(payload["token"]))
        )
        status_id = int(harness.original_response(payload)["id"])
        [request_id] = harness.fal.jobs
        await harness.bot.runner.close()  # the process stops with the job queued at fal

    async with start_bot() as harness:  # resumed where no interaction sets a locale
        harness.fal.release(request_id)
        texts = await _final(harness, status_id, CHINESE_FINAL)
        [job] = await harness.finish_jobs()

    assert job.state is JobState.DELIVERED and job.locale == ZH
    assert texts and all(HAN.search(text) for text in texts) and "✅ 完成" in texts[-1]
    assert _labels(_card(harness, job)) == ["重新生成", "再次编辑", "用作输入"]


@pytest.fixture
def chinese_server(fake_discord: FakeDiscord) -> Any:
    """The test server prefers Simplified Chinese (set before the bot connects: it comes with GUILD_CREATE)."""
    fake_discord.world.guilds[fake_discord.guild_id].locale = ZH
    return fake_discord


async def test_the_reaction_trigger_speaks_the_servers_language(chinese_server: FakeDiscord, start_bot: StartBot):
    async with start_bot() as harness:
        target = harness.discord.add_message(harness.discord.channel_id, attachments=[harness.image()])
        await harness.discord.dispatch("MESSAGE_REACTION_ADD", harness.discord.reaction_add(target, "🎨"))
        question = await harness.discord.wait_for_message(lambda m: "要怎么处理这些图片" in m["content"])
        answer = harness.discord.add_message(harness.discord.channel_id, content="加一顶帽子")
        await harness.discord.dispatch("MESSAGE_CREATE", answer)
        status = await harness.discord.wait_for_message(
            lambda m: m.get("message_reference", {}).get("message_id") == target["id"] and "输入 1 张" in m["content"]
        )
        texts = await _final(harness, int(status["id"]), CHINESE_FINAL)
        [job] = await harness.finish_jobs()

    assert question["content"].endswith("请在 2 分钟内在这个频道发送你的提示词。")
    assert job.locale == ZH and "✅ 完成" in texts[-1]
