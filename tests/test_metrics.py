"""Metrics: scraped over HTTP from the real bot after real jobs (in-process and through `python -m bot`), and the
job observer's arithmetic with a clock of its own."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace
from decimal import Decimal
from pathlib import Path

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from bot.__main__ import fal_client
from bot.bot import KontextBot
from bot.fal import EditRequest, FalAuthError, FalConnectionError, FalSubmitUnconfirmed, FalValidationError
from bot.jobs import Job, JobState
from bot.metrics import Metrics, fal_error_kind
from bot.metrics_server import MetricsError, serve_metrics
from bot.store import SqliteJobStore
from tests.bot_process import BotProcess, bot_environment
from tests.conftest import SettingsFactory, StartBot
from tests.fakes.fake_discord import FakeDiscord
from tests.fakes.fake_fal import FakeFal
from tests.harness import Harness
from tests.test_log_process import deliver_one_job

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]
LIFE = ("pending", "queued", "running", "succeeded", "delivered")


async def scrape(base: str) -> Samples:
    async with aiohttp.ClientSession() as http, http.get(f"{base}/metrics") as response:
        assert response.status == 200
        assert response.content_type == "text/plain"
        text = await response.text()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


async def health(base: str) -> int:
    async with aiohttp.ClientSession() as http, http.get(f"{base}/healthz") as response:
        return response.status


@pytest.fixture
async def metered(harness: Harness) -> AsyncIterator[tuple[Harness, str]]:
    """The running bot with its metrics endpoint on a free port."""
    bot = harness.bot
    async with serve_metrics(bot.metrics.registry, bot.gateway_connected, "127.0.0.1", 0) as url:
        yield harness, url


# --- over HTTP, in-process ------------------------------------------------------------------------------


async def test_a_scrape_after_one_job_shows_it_counted_and_timed(metered: tuple[Harness, str]):
    harness, url = metered
    before = await scrape(url)
    payload = await harness.kontext(num_images=2)
    await harness.final_status(payload["token"])
    [job] = await harness.finish_jobs()
    assert job.state is JobState.DELIVERED

    samples = await scrape(url)

    assert value(before, "kontext_jobs_total", source=job.source, state="delivered") == 0
    for state in LIFE:
        assert value(samples, "kontext_jobs_total", source=job.source, state=state) == 1, state
        assert value(samples, "kontext_jobs_active", source=job.source, state=state) == 0, state
    for histogram in (
        "kontext_fal_queue_wait_seconds",
        "kontext_fal_run_seconds",
        "kontext_interaction_answer_seconds",
    ):
        assert value(samples, f"{histogram}_count") == 1, histogram
        assert value(samples, f"{histogram}_sum") >= 0, histogram
    assert value(samples, "kontext_status_edit_lag_seconds_count") >= 1  # queued → running → done, coalesced
    assert value(samples, "kontext_estimated_spend_usd_total", source=job.source) == pytest.approx(0.16)
    assert all(value(samples, "kontext_discord_rate_limited_total", scope=s) == 0 for s in ("webhook", "bot", "global"))
    assert await health(url) == 200


async def test_discord_429s_are_counted_by_where_they_were_met(metered: tuple[Harness, str]):
    harness, url = metered
    harness.errors.allowed.append("is rate limited. Retrying")  # discord.py's warning; it waits and retries
    harness.discord.fail_next("PATCH", r"/webhooks/.*", 429, headers={"X-RateLimit-Scope": "user"})
    payload = await harness.kontext()
    await harness.final_status(payload["token"])
    [job] = await harness.finish_jobs()

    samples = await scrape(url)

    assert job.state is JobState.DELIVERED
    assert value(samples, "kontext_discord_rate_limited_total", scope="webhook") == 1  # the status edit's token


async def test_fal_errors_are_counted_by_call_and_kind(metered: tuple[Harness, str]):
    harness, url = metered
    harness.fal.fail_next("submit", 401, {"detail": "No user found for Key ID and Secret"})
    payload = await harness.kontext()
    await harness.final_status(payload["token"])
    [job] = await harness.finish_jobs()

    samples = await scrape(url)

    assert job.state is JobState.FAILED
    assert value(samples, "kontext_fal_errors_total", operation="submit", kind="auth") == 1
    assert value(samples, "kontext_jobs_total", source=job.source, state="failed") == 1
    assert value(samples, "kontext_estimated_spend_usd_total", source=job.source) == 0  # fal billed nothing


async def test_healthz_is_503_until_the_gateway_is_ready(
    make_settings: SettingsFactory, fake_fal: FakeFal, tmp_path: Path
):
    settings = make_settings(fal_queue_url=fake_fal.base_url)
    async with aiohttp.ClientSession() as session, SqliteJobStore(tmp_path / "db.sqlite3") as store:
        bot = KontextBot(settings=settings, session=session, fal=fal_client(session, settings), store=store)
        async with serve_metrics(bot.metrics.registry, bot.gateway_connected, "127.0.0.1", 0) as url:
            assert await health(url) == 503
            assert value(await scrape(url), "kontext_fal_queue_wait_seconds_count") == 0


async def test_a_taken_port_is_one_clear_error(start_bot: StartBot):
    async with (
        start_bot() as harness,
        serve_metrics(harness.bot.metrics.registry, harness.bot.gateway_connected, "127.0.0.1", 0) as url,
    ):
        port = int(url.rsplit(":", 1)[1])
        with pytest.raises(MetricsError, match=f"cannot listen on 127.0.0.1:{port}"):
            async with serve_metrics(harness.bot.metrics.registry, harness.bot.gateway_connected, "127.0.0.1", port):
                pass


# --- through python -m bot ------------------------------------------------------------------------------


async def test_python_m_bot_serves_metrics_on_metrics_port(
    fake_discord: FakeDiscord, fake_fal: FakeFal, tmp_path: Path
):
    env = bot_environment(fake_discord, fake_fal, tmp_path / "kontext.sqlite3", METRICS_PORT="0")
    bot = BotProcess(env, tmp_path)
    await bot.start()
    try:
        [line] = await bot.wait_for_lines("metrics on http://127.0.0.1:")
        url = line.split("metrics on ", 1)[1].split("/metrics")[0]
        assert await health(url) == 200
        await deliver_one_job(fake_discord)
        samples = await scrape(url)
    finally:
        assert await bot.terminate() == 0
    assert value(samples, "kontext_jobs_total", source="slash", state="delivered") == 1
    assert value(samples, "kontext_interaction_answer_seconds_count") == 1
    assert value(samples, "kontext_fal_queue_wait_seconds_count") == 1
    assert bot.errors() == []


# --- the observer's arithmetic --------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def a_job(state: JobState = JobState.PENDING, request_id: str | None = None) -> Job:
    request = EditRequest(prompt="p", image_urls=("https://cdn.example/a.png",), num_images=2)
    job = Job(request=request, user_id=1, channel_id=2, guild_id=3, source="menu", cost_usd=Decimal("0.16"))
    return replace(job, state=state, request_id=request_id)


def samples_of(metrics: Metrics) -> Samples:
    return {
        (s.name, frozenset(s.labels.items())): s.value for family in metrics.registry.collect() for s in family.samples
    }


def test_queue_wait_and_run_time_come_from_the_state_changes():
    clock = Clock()
    metrics = Metrics(clock)
    job = a_job()
    metrics.changed(None, job)
    clock.now += 1
    metrics.changed(job, queued := job.advance(JobState.QUEUED, request_id="r"))
    metrics.changed(queued, moved := queued.update(queue_position=1))  # not a change of state: nothing
    clock.now += 7
    metrics.changed(moved, running := moved.advance(JobState.RUNNING))
    clock.now += 12
    metrics.changed(running, done := running.advance(JobState.SUCCEEDED))
    metrics.changed(done, done.advance(JobState.DELIVERED))

    samples = samples_of(metrics)
    assert value(samples, "kontext_fal_queue_wait_seconds_sum") == 7
    assert value(samples, "kontext_fal_run_seconds_sum") == 12
    assert value(samples, "kontext_jobs_total", source="menu", state="queued") == 1
    assert value(samples, "kontext_estimated_spend_usd_total", source="menu") == pytest.approx(0.16)
    assert all(v == 0 for (name, _), v in samples.items() if name == "kontext_jobs_active")


def test_a_resumed_job_is_followed_but_its_unknown_wait_is_not_timed():
    clock = Clock()
    metrics = Metrics(clock)
    queued = a_job(state=JobState.QUEUED, request_id="r")
    metrics.changed(None, queued)  # resumed after a restart: when it entered the queue is unknown
    assert value(samples_of(metrics), "kontext_jobs_active", source="menu", state="queued") == 1
    clock.now += 30
    metrics.changed(queued, running := queued.advance(JobState.RUNNING))
    clock.now += 5
    metrics.changed(running, running.advance(JobState.SUCCEEDED))

    samples = samples_of(metrics)
    assert value(samples, "kontext_fal_queue_wait_seconds_count") == 0
    assert value(samples, "kontext_fal_run_seconds_sum") == 5
    assert value(samples, "kontext_jobs_total", source="menu", state="queued") == 0  # counted before the restart
    assert value(samples, "kontext_jobs_active", source="menu", state="succeeded") == 1


@pytest.mark.parametrize(
    ("end", "billed"),
    [(JobState.FAILED, False), (JobState.CANCELLED, False), (JobState.TIMED_OUT, True), (JobState.UNDELIVERABLE, True)],
)
def test_spend_counts_only_jobs_that_end_billable(end: JobState, billed: bool):
    metrics = Metrics(Clock())
    job = a_job(state=JobState.QUEUED, request_id="r")
    metrics.changed(None, job)
    metrics.changed(job, job.advance(end))

    assert value(samples_of(metrics), "kontext_estimated_spend_usd_total", source="menu") == (0.16 if billed else 0)


def test_two_bots_never_share_a_number():
    first, second = Metrics(), Metrics()
    first.status_shown(0.5)

    assert value(samples_of(first), "kontext_status_edit_lag_seconds_count") == 1
    assert value(samples_of(second), "kontext_status_edit_lag_seconds_count") == 0


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        (FalSubmitUnconfirmed("x"), "submit_unconfirmed"),
        (FalConnectionError("x"), "connection"),
        (FalAuthError(401, "no"), "auth"),
        (FalValidationError(422, []), "validation"),
    ],
)
def test_fal_error_kinds_name_the_most_specific_class(error, kind):
    assert fal_error_kind(error) == kind
