"""Buttons and modals. Buttons are `DynamicItem`s: their custom_id carries the job id, so they
keep working after a restart; the state behind them is looked up in the store."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Self, cast

import discord

if TYPE_CHECKING:
    from cogs.kontext import Kontext

__all__ = (
    "CancelButton",
    "EditAgainButton",
    "PromptModal",
    "RerollButton",
    "UseAsInputButton",
    "result_view",
    "status_view",
)

JOB_ID = r"(?P<job_id>[0-9a-f]{32})"
Button = discord.ui.Button[discord.ui.View]


def _cog(interaction: discord.Interaction[Any]) -> Kontext:
    return cast("Kontext", interaction.client.get_cog("Kontext"))


class _JobButton(discord.ui.DynamicItem[Button], template=rf"kontext:[a-z]+:{JOB_ID}"):
    """A button bound to one job; subclasses name the action and what it does."""

    action: str
    label: str
    emoji: str
    style = discord.ButtonStyle.secondary

    def __init__(self, job_id: str) -> None:
        self.job_id = job_id
        super().__init__(
            discord.ui.Button(
                label=self.label, emoji=self.emoji, style=self.style, custom_id=f"kontext:{self.action}:{job_id}"
            )
        )

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction[Any], item: discord.ui.Item[Any], match: re.Match[str], /
    ) -> Self:
        return cls(match["job_id"])


class CancelButton(_JobButton, template=rf"kontext:cancel:{JOB_ID}"):
    action, label, emoji, style = "cancel", "Cancel", "✖️", discord.ButtonStyle.danger

    async def callback(self, interaction: discord.Interaction[Any]) -> None:
        await _cog(interaction).cancel_pressed(interaction, self.job_id)


class RerollButton(_JobButton, template=rf"kontext:reroll:{JOB_ID}"):
    action, label, emoji = "reroll", "Reroll", "🎲"

    async def callback(self, interaction: discord.Interaction[Any]) -> None:
        await _cog(interaction).reroll_pressed(interaction, self.job_id)


class EditAgainButton(_JobButton, template=rf"kontext:edit:{JOB_ID}"):
    action, label, emoji = "edit", "Edit again", "✏️"

    async def callback(self, interaction: discord.Interaction[Any]) -> None:
        await _cog(interaction).edit_again_pressed(interaction, self.job_id)


class UseAsInputButton(_JobButton, template=rf"kontext:use:{JOB_ID}"):
    action, label, emoji = "use", "Use as input", "📌"

    async def callback(self, interaction: discord.Interaction[Any]) -> None:
        await _cog(interaction).use_as_input_pressed(interaction, self.job_id)


def status_view(job_id: str) -> discord.ui.View:
    view = discord.ui.View(timeout=None)
    view.add_item(CancelButton(job_id))
    return view


def result_view(job_id: str) -> discord.ui.View:
    view = discord.ui.View(timeout=None)
    for item in (RerollButton(job_id), EditAgainButton(job_id), UseAsInputButton(job_id)):
        view.add_item(item)
    return view


SubmitPrompt = Callable[[discord.Interaction[Any], dict[str, str]], Awaitable[None]]


class PromptModal(discord.ui.Modal):
    """Asks for a prompt (and a few options); hands the values to `on_values`."""

    def __init__(self, title: str, on_values: SubmitPrompt, *, default_prompt: str = "", max_length: int = 1500,
                 image_count: int = 0) -> None:  # fmt: skip
        super().__init__(title=title[:45], timeout=600)
        self._on_values = on_values
        self.prompt: discord.ui.TextInput[PromptModal] = discord.ui.TextInput(
            label="Prompt", custom_id="prompt", style=discord.TextStyle.paragraph,
            default=default_prompt[:max_length] or None,
            max_length=min(max_length, 4000), placeholder="What should change? e.g. put the cat from image 2 on a sofa",
        )  # fmt: skip
        self.num_images: discord.ui.TextInput[PromptModal] = discord.ui.TextInput(
            label="Number of results (1-4)", custom_id="num_images", default="1", max_length=1, required=False
        )
        self.add_item(self.prompt)
        self.add_item(self.num_images)
        self.which: discord.ui.TextInput[PromptModal] | None = None
        if image_count > 1:
            self.which = discord.ui.TextInput(label=f"Which result to edit (1-{image_count})", custom_id="which",
                                              default="1", max_length=1, required=False)  # fmt: skip
            self.add_item(self.which)

    async def on_submit(self, interaction: discord.Interaction[Any]) -> None:
        values = {"prompt": self.prompt.value, "num_images": self.num_images.value or "1"}
        if self.which is not None:
            values["which"] = self.which.value or "1"
        await self._on_values(interaction, values)
