"""/kontext-history: a user's recent jobs, ephemeral, a page at a time, with what to do with each result: post it
again here with working buttons (like Midjourney's /show, say after its thread was archived), use it as the
input of the next edit, or delete the result message.

The buttons are `DynamicItem`s whose custom_id carries the page or the job id, so they keep working after a
restart and in whichever process gets the click; each action checks that the job is the presser's own.
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Self

import discord
from discord import app_commands
from discord.ext import commands

from bot.fal import FalError
from bot.i18n import N_, Np_, t
from bot.jobs import BILLABLE_STATES, Job, JobState, ResultImage
from cogs.cards import card_files, result_card
from cogs.delivery import plan_uploads
from cogs.installs import anywhere
from cogs.launch import launcher_of
from cogs.render import job_link, model_name, money, prompt_quote, result_notes
from cogs.replies import UserFacingError, replying, send_ephemeral
from cogs.status import EDIT_ERRORS
from cogs.triggers import origin_of
from cogs.views import button_handler

if TYPE_CHECKING:
    from bot.bot import KontextBot

__all__ = ("History", "HistoryButton")

log = logging.getLogger(__name__)

PAGE_SIZE = 4  # four rows of actions and one of paging: Discord's five rows
PROMPT_SHOWN = 100
Button = discord.ui.Button[discord.ui.View]
STATES = {
    JobState.DELIVERED: "✅", JobState.FAILED: "❌", JobState.CANCELLED: "🚫", JobState.TIMED_OUT: "⌛",
    JobState.UNDELIVERABLE: "⚠️", JobState.UNCONFIRMED: "❓",
}  # fmt: skip


def state_text(state: JobState) -> str:
    texts = {
        JobState.DELIVERED: t("delivered"), JobState.FAILED: t("failed"), JobState.CANCELLED: t("cancelled"),
        JobState.TIMED_OUT: t("timed out"), JobState.UNDELIVERABLE: t("generated, not posted"),
        JobState.UNCONFIRMED: t("unconfirmed"),
    }  # fmt: skip
    text = texts[state] if state in texts else t("in progress")
    return f"{STATES.get(state, '⏳')} {text}"


class HistoryButton(discord.ui.DynamicItem[Button], template=r"kontext-history:(?P<action>[a-z]+):(?P<arg>[0-9a-f]+)"):
    """Paging (`arg`: the page number) or an action on one job (`arg`: its id)."""

    def __init__(self, action: str, arg: str, *, label: str = "", emoji: str | None = None, disabled: bool = False):
        self.action, self.arg = action, arg
        button: Button = discord.ui.Button(label=label or None, emoji=emoji, disabled=disabled,
                                           custom_id=f"kontext-history:{action}:{arg}")  # fmt: skip
        super().__init__(button)

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction[Any], item: discord.ui.Item[Any], match: re.Match[str], /
    ) -> Self:
        return cls(match["action"], match["arg"])

    async def callback(self, interaction: discord.Interaction[Any]) -> None:
        cog = (
            interaction.client.get_cog(History.__cog_name__)
            if isinstance(interaction.client, commands.bot.BotBase)
            else None
        )
        if not isinstance(cog, History):
            raise RuntimeError("the History cog is not loaded")
        await cog.pressed(interaction, self.action, self.arg)


class History(commands.Cog):
    def __init__(self, bot: KontextBot) -> None:
        self.bot = bot

    async def cog_load(self) -> None:
        self.bot.add_dynamic_items(HistoryButton)

    async def cog_unload(self) -> None:
        self.bot.remove_dynamic_items(HistoryButton)

    @anywhere
    @app_commands.command(
        name=Np_("command", "kontext-history"),
        description=N_("Your recent edits: post one again, reuse or delete it"),
    )
    async def history(self, interaction: discord.Interaction[Any]) -> None:
        async with replying(interaction):
            await interaction.response.defer(ephemeral=True, thinking=True)
            content, view = await self._page(interaction.user.id, 0)
            await interaction.followup.send(content, view=view, ephemeral=True, allowed_mentions=_NONE)

    async def pressed(self, interaction: discord.Interaction[Any], action: str, arg: str) -> None:
        async with replying(interaction):
            if action == "page":
                await self._turn(interaction, int(arg))
            elif action == "use":  # the result button's own action: pins the image for the next edit
                await button_handler(interaction.client).job_button(interaction, "use", arg)
            elif action == "repost":
                await self._repost(interaction, arg)
            elif action == "delete":
                await self._delete(interaction, arg)

    # --- pages --------------------------------------------------------------------------------------

    async def _turn(self, interaction: discord.Interaction[Any], page: int) -> None:
        await interaction.response.defer()  # the history message itself is edited
        content, view = await self._page(interaction.user.id, page)
        await interaction.edit_original_response(content=content, view=view, allowed_mentions=_NONE)

    async def _page(self, user_id: int, page: int) -> tuple[str, discord.ui.View]:
        jobs = await self.bot.store.jobs(user_id=user_id, limit=PAGE_SIZE + 1, offset=page * PAGE_SIZE)
        shown, more = jobs[:PAGE_SIZE], len(jobs) > PAGE_SIZE
        deleted = await self.bot.store.deleted_results([job.id for job in shown])
        if not shown:
            return t("You have no jobs here yet.") if page == 0 else t("No older jobs."), _pager(page, more=False)
        lines = [t("**Your edits**, newest first (page {page}):", page=page + 1)]
        lines += [_entry(page * PAGE_SIZE + n, job, job.id in deleted) for n, job in enumerate(shown, start=1)]
        return "\n".join(lines), _view(shown, deleted, page, more)

    # --- actions ---------------------------------------------------------------------------------------

    async def _own_result(self, interaction: discord.Interaction[Any], job_id: str) -> Job:
        job = await self.bot.runner.lookup(job_id)
        if job is None or job.user_id != interaction.user.id:
            raise UserFacingError(t("That is not one of your jobs."))
        if job.result is None or not job.result.images:
            raise UserFacingError(t("This job has no result image."))
        return job

    async def _repost(self, interaction: discord.Interaction[Any], job_id: str) -> None:
        """Post the result again in this channel, under the server's rules, with working buttons."""
        launcher = launcher_of(self.bot)
        launcher.check_access(origin_of(interaction, "history"))
        await interaction.response.defer()  # no message yet: the post below is a new, public one
        job = await self._own_result(interaction, job_id)
        images = await self._download(job)
        nsfw = bool(getattr(interaction.channel, "is_nsfw", lambda: False)())
        policy = self.bot.guild_settings.effective(interaction.guild_id).nsfw_policy
        plan = plan_uploads(job, images, file_limit=interaction.filesize_limit, nsfw_channel=nsfw, policy=policy,
                            max_messages=1)  # fmt: skip
        planned = plan.messages[0].files
        notes = result_notes(posted=len(planned), withheld=plan.withheld, linked=plan.linked, missing=plan.missing,
                             withheld_here=plan.withheld_here)  # fmt: skip
        card = result_card(job, planned, notes, spoiler=plan.spoiler)
        await interaction.followup.send(view=card, files=card_files(planned), wait=True,
                                        allowed_mentions=discord.AllowedMentions.none())  # fmt: skip

    async def _download(self, job: Job) -> list[ResultImage]:
        """The result images from fal's file host (it keeps them for days); one that is gone is reported missing."""
        assert job.result is not None  # noqa: S101  # checked by _own_result
        images = []
        for index, output in enumerate(job.result.images):
            try:
                download = await self.bot.fal.download(output.url)
            except FalError as exc:  # that image is missing from the post
                log.info("job %s: result %d could not be fetched again (%s)", job.id, index + 1, exc)
                images.append(ResultImage(output.url, output.content_type, job.result.is_nsfw(index)))
                continue
            images.append(ResultImage(output.url, download.content_type, job.result.is_nsfw(index), download.data))
        return images

    async def _delete(self, interaction: discord.Interaction[Any], job_id: str) -> None:
        await interaction.response.defer()
        job = await self._own_result(interaction, job_id)
        if not job.result_message_ids:
            raise UserFacingError(t("This job's result was never posted, so there is nothing to delete."))
        channel = self.bot.get_partial_messageable(job.thread_id or job.channel_id, guild_id=job.guild_id)
        try:
            for message_id in job.result_message_ids:
                await _delete_message(channel.get_partial_message(message_id))
        except EDIT_ERRORS as exc:
            raise UserFacingError(t("Discord did not let me delete it ({error}); the thread may be archived or "
                                    "locked.", error=str(exc)[:100])) from exc  # fmt: skip
        await self.bot.store.mark_results_deleted(job.id, datetime.now(UTC))
        await send_ephemeral(interaction, t("🗑️ Deleted the result message. `/kontext-history` can still post it "
                                            "again while the image service keeps the files."))  # fmt: skip


async def _delete_message(message: discord.PartialMessage) -> None:
    with contextlib.suppress(discord.NotFound):  # already gone
        await message.delete()


_NONE = discord.AllowedMentions.none()


def _entry(number: int, job: Job, deleted: bool) -> str:
    cost = money(job.cost_usd) if job.state in BILLABLE_STATES else t("not billed")
    head = t("**{number}.** <t:{time}:R> · {state} · {model} · {cost}", number=number,
             time=int(job.created_at.timestamp()), state=state_text(job.state), model=model_name(job.endpoint),
             cost=cost)  # fmt: skip
    return "\n".join([head, prompt_quote(job.request.prompt, PROMPT_SHOWN), _where(job, deleted)])


def _where(job: Job, deleted: bool) -> str:
    if deleted:
        return t("🗑️ result message deleted")
    if not job.result_message_ids:
        return t("no result message")
    return t("🔗 {link}", link=job_link(job.guild_id, job.thread_id or job.channel_id, job.result_message_ids[0]))


def _view(jobs: Sequence[Job], deleted: set[str], page: int, more: bool) -> discord.ui.View:
    view = _pager(page, more=more)
    for row, job in enumerate(jobs, start=1):
        number = page * PAGE_SIZE + row
        has_result = job.result is not None and bool(job.result.images)
        posted = bool(job.result_message_ids) and job.id not in deleted
        for action, label, emoji, enabled in (
            ("repost", t("Post #{number} here", number=number), "📤", has_result),
            ("use", t("Use #{number}", number=number), "📌", has_result),
            ("delete", t("Delete #{number}", number=number), "🗑️", posted),
        ):
            item = HistoryButton(action, job.id, label=label, emoji=emoji, disabled=not enabled)
            item.item.row = row
            view.add_item(item)
    return view


def _pager(page: int, *, more: bool) -> discord.ui.View:
    view = discord.ui.View(timeout=None)
    newer = HistoryButton("page", str(max(page - 1, 0)), label=t("Newer"), emoji="◀️", disabled=page == 0)
    older = HistoryButton("page", str(page + 1), label=t("Older"), emoji="▶️", disabled=not more)
    for item in (newer, older):
        item.item.row = 0
        view.add_item(item)
    return view


async def setup(bot: KontextBot) -> None:
    await bot.add_cog(History(bot))
