"""Texts of status and result messages. Pure functions of a job (and the current locale), so they are
cheap to compare: an edit is only sent when its text changed."""

from __future__ import annotations

from decimal import Decimal

import discord

from bot.fal import ModelSpec, PerImage, find_model
from bot.i18n import t, tn
from bot.jobs import Job, JobState
from bot.quota import Denial, DenialKind

__all__ = (
    "denial_text", "job_link", "model_name", "money", "price_text", "prompt_quote", "render_status", "result_header",
    "result_notes", "result_sizes",
)  # fmt: skip

PROMPT_PREVIEW = 300
CENT = Decimal("0.01")


def money(amount: Decimal) -> str:
    """Dollars with cents, or with tenths of a cent where a price has them ($0.045)."""
    exact = amount.quantize(Decimal("0.001"))
    return f"${exact:.2f}" if exact == exact.quantize(CENT) else f"${exact}"


def model_name(endpoint: str) -> str:
    """The name of the model behind `endpoint` (the endpoint itself for one the registry lost)."""
    model = find_model(endpoint)
    return model.name if model is not None else endpoint


def price_text(model: ModelSpec) -> str:
    pricing = model.pricing
    if isinstance(pricing, PerImage):
        return t("{price} per image", price=money(pricing.usd))
    if pricing.counts_inputs:
        return t("{first} for the first megapixel, {extra} for each further one, input images included",
                 first=money(pricing.first_usd), extra=money(pricing.extra_usd))  # fmt: skip
    return t("{first} for the first megapixel, {extra} for each further one",
             first=money(pricing.first_usd), extra=money(pricing.extra_usd))  # fmt: skip


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


def render_status(job: Job) -> str:
    header = t(
        "**{model}** for <@{user}> · {inputs} image(s) in, {outputs} out · est. {cost}",
        model=model_name(job.endpoint), user=job.user_id, inputs=len(job.request.image_urls), outputs=job.num_images,
        cost=money(job.cost_usd),
    )  # fmt: skip
    return f"{header}\n{prompt_quote(job.request.prompt)}\n{_state_line(job)}"


def _state_line(job: Job) -> str:
    started = t("started <t:{time}:R>", time=int(job.created_at.timestamp()))
    match job.state:
        case JobState.PENDING:
            return t("⏳ Sending to the image service…")
        case JobState.QUEUED:
            return f"🕒 {_queue_place(job.queue_position)} · {started}"
        case JobState.RUNNING:
            return t("🎨 Generating · {started}", started=started)
        case JobState.SUCCEEDED:
            return t("📤 Posting the results…")
        case JobState.DELIVERED:
            return t("✅ Done · results in {where}", where=job_link(job.guild_id, job.thread_id or job.channel_id))
        case JobState.CANCELLED:
            return t("🚫 Cancelled. Nothing was generated.")
        case JobState.UNDELIVERABLE:
            return f"❌ {_escaped_error(job)}{_result_links(job)}"
        case JobState.FAILED | JobState.TIMED_OUT | JobState.UNCONFIRMED:
            return f"❌ {_escaped_error(job)}"


def _escaped_error(job: Job) -> str:
    return discord.utils.escape_markdown(job.error or t("The job failed."))


def _result_links(job: Job) -> str:
    """Where a generated but unposted job's images can still be fetched (fal keeps them for days)."""
    if job.result is None or not job.result.images:
        return ""
    return "\n" + t("📎 Your images: {links}", links=" ".join(f"<{image.url}>" for image in job.result.images))


def _queue_place(ahead: int | None) -> str:
    if ahead is None:
        return t("In the queue")
    if ahead == 0:
        return t("In the queue: next in line")
    return tn("In the queue: {count} job ahead", "In the queue: {count} jobs ahead", ahead)


def result_notes(
    *, posted: int, withheld: int, linked: list[str], missing: int, withheld_here: bool = False
) -> list[str]:
    """What the user should know beyond the posted files: withheld, linked and missing images.
    `withheld_here`: withheld by the server's policy, in an NSFW channel."""
    lines = []
    if withheld and withheld_here:
        lines.append(tn("🙈 {count} image withheld: the safety filter flagged it and this server's admins withhold "
                        "flagged images everywhere.", "🙈 {count} images withheld: the safety filter flagged them and "
                        "this server's admins withhold flagged images everywhere.", withheld))  # fmt: skip
    elif withheld:
        lines.append(tn("🙈 {count} image withheld: the safety filter flagged it and this channel is not NSFW.",
                        "🙈 {count} images withheld: the safety filter flagged them and this channel is not NSFW.",
                        withheld))  # fmt: skip
    if linked:
        lines.append(t("📎 Too large to upload here: {links}", links=" ".join(f"<{url}>" for url in linked)))
    if missing:
        lines.append(tn("⚠️ {count} image could not be fetched from the image service.",
                        "⚠️ {count} images could not be fetched from the image service.", missing))  # fmt: skip
    if not posted and not linked and not withheld and not missing:
        lines.append(t("The image service returned no images."))
    return lines


def result_header(job: Job) -> str:
    seed = job.result.seed if job.result else None
    params = {"user": job.user_id, "model": model_name(job.endpoint), "cost": money(job.cost_usd), "seed": seed}
    if seed is None:  # a model that reports no seed
        return t("<@{user}> here is your edit · {model} · est. {cost}", **params)
    return t("<@{user}> here is your edit · {model} · seed `{seed}` · est. {cost}", **params)


def result_sizes(job: Job) -> str | None:
    """The sizes of the result images (each size once), None when fal reported none."""
    images = job.result.images if job.result else ()
    sizes = dict.fromkeys(f"{image.width}×{image.height}" for image in images if image.width and image.height)  # noqa: RUF001
    if not sizes:
        return None
    return tn("Size: {sizes}", "Sizes: {sizes}", len(sizes), sizes=", ".join(sizes))


def denial_text(denial: Denial) -> str:
    """Why a job may not start, and when the user can go again."""
    match denial.kind:
        case DenialKind.CONCURRENCY:
            reason = tn("You already have {count} job running; wait for it to finish.",
                        "You already have {count} jobs running; wait for one to finish.", int(denial.used))  # fmt: skip
        case DenialKind.COOLDOWN:
            reason = t("You are on cooldown.")
        case DenialKind.USER_DAILY:
            reason = t("You have used {used} of {limit} images today.", used=denial.used, limit=denial.limit)
        case DenialKind.MEMBER_DAILY:
            reason = t("You have used {used} of the {limit} images this server allows each member per day; its "
                       "admins (Manage Server) set that.", used=denial.used, limit=denial.limit)  # fmt: skip
        case DenialKind.GUILD_DAILY:
            reason = t("This server has used {used} of {limit} images today; its admins (Manage Server) can set "
                       "that limit, up to the bot operator's.", used=denial.used, limit=denial.limit)  # fmt: skip
        case DenialKind.BUDGET:
            return _budget_text(denial)
    if denial.retry_at is None:
        return reason
    again = t("You can go again <t:{time}:R>.", time=int(denial.retry_at.timestamp()))
    # TRANSLATORS: two sentences in a row: why a job may not start, and when the user can go again.
    return t("{reason} {again}", reason=reason, again=again)


def _budget_text(denial: Denial) -> str:
    params = {"budget": money(Decimal(denial.limit)), "spent": money(Decimal(denial.used)), "cost": money(denial.cost),
              "time": int(denial.retry_at.timestamp()) if denial.retry_at else 0}  # fmt: skip
    return t("This server's monthly budget of {budget} is used up: {spent} spent this month, and this job would cost "
             "about {cost}. Its admins (Manage Server) set the budget, within the bot operator's limit; it renews "
             "<t:{time}:R>.", **params)  # fmt: skip
