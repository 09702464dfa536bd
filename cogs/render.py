"""Texts of status and result messages. Pure functions of a job, so they are cheap to compare."""

from __future__ import annotations

from decimal import Decimal

import discord

from bot.jobs import Job, JobState

__all__ = ("job_link", "money", "prompt_quote", "render_result", "render_status")

PROMPT_PREVIEW = 300


def money(amount: Decimal) -> str:
    return f"${amount:.2f}"


def prompt_quote(prompt: str, limit: int = PROMPT_PREVIEW) -> str:
    """The prompt as a block quote, markdown escaped and cut to `limit` characters."""
    text = prompt if len(prompt) <= limit else prompt[: limit - 1] + "…"
    escaped = discord.utils.escape_mentions(discord.utils.escape_markdown(text))
    return "\n".join(f"> {line}" for line in escaped.splitlines() or [""])


def job_link(guild_id: int | None, channel_id: int, message_id: int | None = None) -> str:
    """A jump link; `<#id>` when only the channel is known."""
    if message_id is None:
        return f"<#{channel_id}>"
    return f"https://discord.com/channels/{guild_id or '@me'}/{channel_id}/{message_id}"


def render_status(job: Job, *, submitting: bool = False) -> str:
    started = int(job.created_at.timestamp())
    header = (
        f"**Kontext** for <@{job.user_id}> · {len(job.request.image_urls)} image(s) in, "
        f"{job.request.num_images} out · est. {money(job.cost_usd)}"
    )
    return f"{header}\n{prompt_quote(job.request.prompt)}\n{_state_line(job, started, submitting)}"


def _state_line(job: Job, started: int, submitting: bool) -> str:
    if submitting:
        return "⏳ Sending to the image service…"
    match job.state:
        case JobState.QUEUED:
            return f"🕒 {_queue_place(job.queue_position)} · started <t:{started}:R>"
        case JobState.RUNNING:
            return f"🎨 Generating · started <t:{started}:R>"
        case JobState.SUCCEEDED:
            return "📤 Posting the results…"
        case JobState.DELIVERED:
            where = job_link(job.guild_id, job.thread_id or job.channel_id)
            return f"✅ Done · results in {where}"
        case JobState.CANCELLED:
            return "🚫 Cancelled. Nothing was generated."
        case JobState.FAILED:
            return f"❌ {discord.utils.escape_markdown(job.error or 'The job failed.')}"


def _queue_place(ahead: int | None) -> str:
    if ahead is None:
        return "In the queue"
    return "In the queue: next in line" if ahead == 0 else f"In the queue: {ahead} job(s) ahead"


def render_result(job: Job, *, posted: int, withheld: int, linked: list[str]) -> str:
    """The text above the result files."""
    seed = job.result.seed if job.result else None
    lines = [
        f"<@{job.user_id}> here is your edit · seed `{seed}` · cost {money(job.cost_usd)}",
        prompt_quote(job.request.prompt),
    ]
    if withheld:
        lines.append(f"🙈 {withheld} image(s) withheld: the safety filter flagged them and this channel is not NSFW.")
    if linked:
        lines.append("📎 Too large to upload here: " + " ".join(f"<{url}>" for url in linked))
    if not posted and not linked and not withheld:
        lines.append("The image service returned no images.")
    return "\n".join(lines)
