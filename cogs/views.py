"""The job buttons. They are `DynamicItem`s: their custom_id carries the job id, so they keep working after a
restart (and in whichever process gets the click); the job behind them is in the store. The result card
(`cogs.cards`) shows the result buttons, the status message the Cancel button."""

from __future__ import annotations

import re
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
