"""Buttons and modals. Buttons are `DynamicItem`s: their custom_id carries the job id, so they keep
working after a restart (and in whichever process gets the click); the job behind them is in the store."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, Self, runtime_checkable

import discord
from discord.ext import commands

from bot.i18n import t

__all__ = (
    "BUTTONS",
    "RESULT_ACTIONS",
    "CancelButton",
    "EditAgainButton",
    "JobButtonHandler",
    "PromptModal",
    "RerollButton",
    "UseAsInputButton",
    "status_view",
)

JOB_ID = r"(?P<job_id>[0-9a-f]{32})"
RESULT_ACTIONS = ("reroll", "edit", "use")  # the buttons under a result (the status message has "cancel")
HANDLER_COG = "ResultButtons"
Button = discord.ui.Button[discord.ui.View]


@runtime_checkable
class JobButtonHandler(Protocol):
    """What a job button hands its click to (the `ResultButtons` cog)."""

    async def job_button(self, interaction: discord.Interaction[Any], action: str, job_id: str) -> None: ...


def button_handler(client: discord.Client) -> JobButtonHandler:
    cog = client.get_cog(HANDLER_COG) if isinstance(client, commands.bot.BotBase) else None  # Bot or AutoShardedBot
    if not isinstance(cog, JobButtonHandler):
        raise RuntimeError(f"the {HANDLER_COG} cog is not loaded")
    return cog


class _JobButton(discord.ui.DynamicItem[Button], template=rf"kontext:[a-z]+:{JOB_ID}"):
    """A button bound to one job; subclasses name the action and how it looks."""

    action: str
    emoji: str
    style = discord.ButtonStyle.secondary

    def __init__(self, job_id: str) -> None:
        self.job_id = job_id
        super().__init__(
            discord.ui.Button(
                label=self.label(), emoji=self.emoji, style=self.style, custom_id=f"kontext:{self.action}:{job_id}"
            )
        )

    @staticmethod
    def label() -> str:
        raise NotImplementedError

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction[Any], item: discord.ui.Item[Any], match: re.Match[str], /
    ) -> Self:
        return cls(match["job_id"])

    async def callback(self, interaction: discord.Interaction[Any]) -> None:
        await button_handler(interaction.client).job_button(interaction, self.action, self.job_id)


class CancelButton(_JobButton, template=rf"kontext:cancel:{JOB_ID}"):
    action, emoji, style = "cancel", "✖️", discord.ButtonStyle.danger

    @staticmethod
    def label() -> str:
        return t("Cancel")


class RerollButton(_JobButton, template=rf"kontext:reroll:{JOB_ID}"):
    action, emoji = "reroll", "🎲"

    @staticmethod
    def label() -> str:
        return t("Reroll")


class EditAgainButton(_JobButton, template=rf"kontext:edit:{JOB_ID}"):
    action, emoji = "edit", "✏️"

    @staticmethod
    def label() -> str:
        return t("Edit again")


class UseAsInputButton(_JobButton, template=rf"kontext:use:{JOB_ID}"):
    action, emoji = "use", "📌"

    @staticmethod
    def label() -> str:
        return t("Use as input")


BUTTONS = (CancelButton, RerollButton, EditAgainButton, UseAsInputButton)


def status_view(job_id: str) -> discord.ui.View:
    view = discord.ui.View(timeout=None)
    view.add_item(CancelButton(job_id))
    return view


SubmitPrompt = Callable[[discord.Interaction[Any], dict[str, str]], Awaitable[None]]


class PromptModal(discord.ui.Modal):
    """Asks for a prompt (and a few options); hands the values to `on_values`."""

    def __init__(self, title: str, on_values: SubmitPrompt, *, default_prompt: str = "", max_length: int = 1500,
                 image_count: int = 0, max_results: int = 4) -> None:  # fmt: skip
        super().__init__(title=title[:45], timeout=600)
        self._on_values = on_values
        self.prompt: discord.ui.TextInput[PromptModal] = discord.ui.TextInput(
            label=t("Prompt"), custom_id="prompt", style=discord.TextStyle.paragraph,
            default=default_prompt[:max_length] or None, max_length=min(max_length, 4000),
            placeholder=t("What should change? e.g. put the cat from image 2 on a sofa"),
        )  # fmt: skip
        self.num_images: discord.ui.TextInput[PromptModal] = discord.ui.TextInput(
            label=t("Number of results (1-{count})", count=max_results), custom_id="num_images", default="1",
            max_length=1, required=False,
        )  # fmt: skip
        self.add_item(self.prompt)
        self.add_item(self.num_images)
        self.which: discord.ui.TextInput[PromptModal] | None = None
        if image_count > 1:
            self.which = discord.ui.TextInput(label=t("Which result to edit (1-{count})", count=image_count),
                                              custom_id="which", default="1", max_length=1, required=False)  # fmt: skip
            self.add_item(self.which)

    async def on_submit(self, interaction: discord.Interaction[Any]) -> None:
        values = {"prompt": self.prompt.value, "num_images": self.num_images.value or "1"}
        if self.which is not None:
            values["which"] = self.which.value or "1"
        await self._on_values(interaction, values)
