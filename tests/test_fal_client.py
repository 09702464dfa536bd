"""FalClient (bot/fal/client.py) on a real aiohttp session against the fake fal queue over HTTP on 127.0.0.1."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import socket
from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from pydantic import SecretStr

import bot.fal.client as client_module
from bot.config import load_settings
from bot.fal import (
    Completed,
    EditRequest,
    FalAuthError,
    FalClient,
    FalClientOptions,
    FalConnectionError,
    FalError,
    FalHTTPError,
    FalProtocolError,
    FalRateLimited,
    FalRequestFailed,
    FalServerError,
    FalSubmitUnconfirmed,
    FalTimeout,
    FalUnsafeURL,
    FalValidationError,
    InProgress,
    Queued,
    QueueHandle,
    QueueStatus,
    app_root,
)
from bot.fal.registry import KONTEXT_MAX_MULTI
from bot.fal.retry import backoff_delay
from bot.messages import describe_failure
from tests.fakes.fake_fal import FakeFal, JobScript, Outcome, image_bytes
from tests.fakes.images import make_jpeg, padded_png

KEY = "kid-4711:s3cr3t-Xq9vLpZt"
SECRET = KEY.split(":")[1]
ENDPOINT = "fal-ai/flux-pro/kontext/max/multi"
APP = "fal-ai/flux-pro"
INPUT = EditRequest(prompt="put the cat on the sofa", image_urls=("https://img.invalid/a.png",))
PAYLOAD = INPUT.to_payload(KONTEXT_MAX_MULTI)
UNKNOWN_ID = "00000000-0000-0000-0000-000000000000"
POLICY_DETAIL = [
    {
        "loc": ["body", "prompt"],
        "msg": "The prompt was flagged by the content checker.",
        "type": "content_policy_violation",
        "url": "https://docs.fal.ai/errors/#content_policy_violation",
    }
]
BASE_OPTIONS = FalClientOptions(
    request_timeout=2.0,
    submit_timeout=2.0,
    poll_interval=0.02,
    poll_max_interval=0.1,
    result_hosts=("127.0.0.1",),
    result_allow_http=True,  # the fake serves its files over http
)


def instant(outcome: Outcome | None = None) -> JobScript:
    """A job that is already COMPLETED when the submit answers."""
    return JobScript(queue_positions=(), progress_steps=0, step_seconds=0.0, outcome=outcome or Outcome())


# -- fixtures and helpers --------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class BackoffCall:
    attempt: int
    base: float
    cap: float
    retry_after: float | None
    delay: float  # what the real policy chose (the test sleeps at most 0.05 s instead)


@pytest.fixture
async def fake() -> AsyncIterator[FakeFal]:
    async with FakeFal(key=KEY) as server:
        yield server


@pytest.fixture(autouse=True)
def backoffs(monkeypatch: pytest.MonkeyPatch) -> list[BackoffCall]:
    """Record every backoff the client asks for; keep the real choice but sleep at most 0.05 s."""
    calls: list[BackoffCall] = []

    def spy(attempt: int, *, base: float, cap: float, retry_after: float | None = None) -> float:
        delay = backoff_delay(attempt, base=base, cap=cap, retry_after=retry_after)
        calls.append(BackoffCall(attempt, base, cap, retry_after, delay))
        return min(delay, 0.05)

    monkeypatch.setattr(client_module, "backoff_delay", spy)
    return calls


def make_client(session: aiohttp.ClientSession, base: FakeFal | str, *, key: str = KEY, **options: Any) -> FalClient:
    if isinstance(base, FakeFal):
        options.setdefault("result_hosts", (base.authority,))
    base_url = base.base_url if isinstance(base, FakeFal) else base
    return FalClient(
        session, key=SecretStr(key), base_url=base_url, options=dataclasses.replace(BASE_OPTIONS, **options)
    )


@pytest.fixture
def client(session: aiohttp.ClientSession, fake: FakeFal) -> FalClient:
    return make_client(session, fake)


async def collect(
    client: FalClient, handle: QueueHandle, *, release: FakeFal | None = None, timeout: float = 5.0
) -> list[QueueStatus]:
    """Every status `watch` yields; releases a held job once the first one arrived."""
    statuses: list[QueueStatus] = []
    async with asyncio.timeout(timeout):
        async for status in client.watch(handle):
            statuses.append(status)
            if release is not None and len(statuses) == 1:
                release.release(handle.request_id)
    return statuses


def assert_no_secret(exc: BaseException, key: str = KEY) -> None:
    """Neither the key nor its secret half may show up in an error's text or in the user-facing message."""
    secret = key.split(":")[-1]
    chained: BaseException | None = exc
    while chained is not None:  # the whole chain: a logged traceback shows every cause
        for text in (str(chained), repr(chained)):
            assert key not in text and secret not in text
        chained = chained.__cause__ or chained.__context__
    if isinstance(exc, FalError):
        user_text = describe_failure(exc)
        assert key not in user_text and secret not in user_text


def paths(fake: FakeFal) -> set[str]:
    """Every path the fake saw outside the submits and the files."""
    return {r.path for r in fake.requests if r.kind not in ("submit", "file")}


def queue_requests(fake: FakeFal) -> list[Any]:
    return [r for r in fake.requests if r.kind != "file"]


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


# -- happy path ------------------------------------------------------------------------------


@pytest.mark.parametrize("use_stream", [True, False], ids=["sse", "polling"])
async def test_submit_watch_result_download(fake: FakeFal, session: aiohttp.ClientSession, use_stream: bool) -> None:
    fake.add_script(JobScript(queue_positions=(2, 1, 0), progress_steps=1, step_seconds=0.1, hold=True))
    client = make_client(session, fake, use_stream=use_stream)

    handle = await client.submit(ENDPOINT, PAYLOAD)
    rid = handle.request_id
    assert (handle, handle.queue_position) == (QueueHandle(ENDPOINT, rid), 2)
    assert list(fake.jobs) == [rid]

    statuses = await collect(client, handle, release=fake)
    assert statuses == [
        Queued(2),
        Queued(1),
        Queued(0),
        InProgress(("step 1/1",)),
        Completed(error=None, error_type=None, inference_seconds=0.1),
    ]
    watched = [r for r in fake.requests if r.kind in ("status", "stream")]
    assert {r.kind for r in watched} == ({"stream"} if use_stream else {"status"})
    assert (len(watched) == 1) if use_stream else (len(watched) >= 5)
    assert all(r.query == {"logs": "1"} and r.path.startswith(f"/{APP}/requests/{rid}/status") for r in watched)

    output = await client.result(handle)
    assert paths(fake) == {
        f"/{APP}/requests/{rid}",
        f"/{APP}/requests/{rid}/status" + ("/stream" if use_stream else ""),
    }
    job = fake.jobs[rid]
    assert (output.seed, output.prompt, output.has_nsfw_concepts) == (job.seed, INPUT.prompt, (False,))
    (image,) = output.images
    assert (image.url, image.width, image.height) == (f"{fake.base_url}/files/{rid}/0.png", 64, 64)
    assert image.content_type == "image/png"

    download = await client.download(image.url)
    assert download.data == image_bytes(job.script.outcome, 0)
    assert download.content_type == "image/png"

    submit, *_ = fake.requests
    assert (submit.kind, submit.method, submit.path) == ("submit", "POST", f"/{ENDPOINT}")
    assert submit.json == {
        "prompt": INPUT.prompt,
        "image_urls": list(INPUT.image_urls),
        "num_images": 1,
        "output_format": "jpeg",
    }
    assert all(r.headers["authorization"] == f"Key {KEY}" for r in queue_requests(fake))
    (file_request,) = [r for r in fake.requests if r.kind == "file"]
    assert "authorization" not in file_request.headers  # the key never goes to the image host
    assert [r.kind for r in fake.requests].count("result") == 1
    assert all(r.status in (200, 202) for r in fake.requests)


async def test_several_images_nsfw_flags_and_jpeg(fake: FakeFal, client: FalClient) -> None:
    jpeg = make_jpeg(40, 30)
    outcome = Outcome(nsfw=(False, True), image_bytes=jpeg, content_type="image/jpeg")
    fake.add_script(instant(outcome))
    handle = await client.submit(
        ENDPOINT, INPUT.model_copy(update={"num_images": 2, "seed": 7}).to_payload(KONTEXT_MAX_MULTI)
    )
    assert await collect(client, handle) == [Completed(inference_seconds=0.0)]
    output = await client.result(handle)
    assert output.seed == 7
    assert [output.is_nsfw(i) for i in range(3)] == [False, True, False]
    assert [(img.width, img.height, img.content_type) for img in output.images] == [(40, 30, "image/jpeg")] * 2
    for img in output.images:
        download = await client.download(img.url)
        assert (download.data, download.content_type) == (jpeg, "image/jpeg")


async def test_client_built_from_settings_like_main(fake: FakeFal, session: aiohttp.ClientSession) -> None:
    from bot.__main__ import fal_client

    settings = load_settings(
        _env_file=None,
        discord_token="discord-token-123",
        fal_key=KEY,
        fal_queue_url=fake.base_url + "/",
        fal_result_hosts=(fake.authority,),
        fal_result_allow_http=True,
        poll_interval_seconds=0.02,
        poll_max_interval_seconds=0.1,
        request_timeout_seconds=2,
        submit_timeout_seconds=2,
        fal_start_timeout_seconds=120,
    )
    client = fal_client(session, settings)
    fake.add_script(JobScript(step_seconds=0.01))
    handle = await client.submit(settings.model(settings.default_model).endpoint, PAYLOAD)
    statuses = await collect(client, handle)
    assert statuses[0] == Queued(2) and isinstance(statuses[-1], Completed)
    output = await client.result(handle)
    assert (await client.download(output.images[0].url)).data.startswith(b"\x89PNG")
    assert fake.requests[0].headers["x-fal-request-timeout"] == "120.0"


# -- submit --------------------------------------------------------------------------------


async def test_submit_sends_start_timeout_header(fake: FakeFal, session: aiohttp.ClientSession) -> None:
    await make_client(session, fake, start_timeout=300.0).submit(ENDPOINT, PAYLOAD)
    await make_client(session, fake, start_timeout=None).submit(ENDPOINT, PAYLOAD)
    with_header, without_header = fake.requests
    assert with_header.headers["x-fal-request-timeout"] == "300.0"
    assert "x-fal-request-timeout" not in without_header.headers
    assert with_header.headers["content-type"].startswith("application/json")


async def test_submit_401_bad_key(fake: FakeFal, session: aiohttp.ClientSession) -> None:
    wrong = "kid-4711:wr0ng-S3cret-value"
    with pytest.raises(FalAuthError) as err:
        await make_client(session, fake, key=wrong).submit(ENDPOINT, PAYLOAD)
    assert (err.value.status, err.value.balance_exhausted) == (401, False)
    assert err.value.summary == "No user found for Key ID and Secret"
    assert fake.count("submit") == 1 and not fake.jobs  # auth errors are not retried
    assert_no_secret(err.value, wrong)
    assert "key was refused" in describe_failure(err.value)


async def test_auth_error_while_watching_is_raised_not_swallowed(fake: FakeFal, session: aiohttp.ClientSession) -> None:
    fake.add_script(JobScript(hold=True))
    handle = await make_client(session, fake).submit(ENDPOINT, PAYLOAD)
    wrong = "kid-4711:wr0ng-S3cret-value"
    with pytest.raises(FalAuthError) as err:
        await collect(make_client(session, fake, key=wrong), handle)
    assert err.value.status == 401
    assert (fake.count("stream"), fake.count("status")) == (1, 0)  # no stream retry, no polling fallback
    assert_no_secret(err.value, wrong)


async def test_submit_403_exhausted_balance(fake: FakeFal, client: FalClient) -> None:
    fake.balance_exhausted = True
    with pytest.raises(FalAuthError) as err:
        await client.submit(ENDPOINT, PAYLOAD)
    assert (err.value.status, err.value.balance_exhausted) == (403, True)
    assert fake.count("submit") == 1 and not fake.jobs
    assert "out of credit" in describe_failure(err.value)
    assert_no_secret(err.value)


async def test_submit_422_validation_issues(fake: FakeFal, client: FalClient) -> None:
    # a body our own checks would never build, so the fake's (fal-style) validator answers
    bad = {**PAYLOAD, "prompt": "", "num_images": 9}
    with pytest.raises(FalValidationError) as err:
        await client.submit(ENDPOINT, bad)
    assert err.value.status == 422 and not err.value.moderated
    issues = {(issue.field, issue.type) for issue in err.value.issues}
    assert issues == {("prompt", "string_too_short"), ("num_images", "less_than_equal")}
    assert all(issue.message for issue in err.value.issues)
    assert fake.count("submit") == 1 and not fake.jobs
    assert_no_secret(err.value)


async def test_submit_422_content_policy_is_moderated(fake: FakeFal, client: FalClient) -> None:
    fake.fail_next("submit", 422, {"detail": POLICY_DETAIL})
    with pytest.raises(FalValidationError) as err:
        await client.submit(ENDPOINT, PAYLOAD)
    assert err.value.moderated
    assert [(i.field, i.type) for i in err.value.issues] == [("prompt", "content_policy_violation")]
    assert "safety filter" in describe_failure(err.value)
    assert fake.count("submit") == 1


async def test_submit_429_retried_once_then_succeeds(
    fake: FakeFal, client: FalClient, backoffs: list[BackoffCall]
) -> None:
    fake.fail_next("submit", 429, {"detail": "Too many requests"}, headers={"Retry-After": "0.3"})
    handle = await client.submit(ENDPOINT, PAYLOAD)
    assert [r.status for r in fake.requests] == [429, 200]
    assert list(fake.jobs) == [handle.request_id]  # exactly one job
    (call,) = backoffs
    assert (call.attempt, call.retry_after) == (1, 0.3)
    assert call.delay >= 0.3  # Retry-After is honoured


async def test_submit_429_gives_up_after_max_attempts(
    fake: FakeFal, session: aiohttp.ClientSession, backoffs: list[BackoffCall]
) -> None:
    fake.fail_next("submit", 429, {"detail": "Too many requests"}, times=10)
    with pytest.raises(FalRateLimited) as err:
        await make_client(session, fake, max_attempts=3).submit(ENDPOINT, PAYLOAD)
    assert err.value.status == 429 and err.value.retry_after is None
    assert fake.count("submit") == 3 and not fake.jobs
    assert [c.attempt for c in backoffs] == [1, 2]
    assert "busy" in describe_failure(err.value)
    assert_no_secret(err.value)


async def test_submit_503_retried(fake: FakeFal, client: FalClient, backoffs: list[BackoffCall]) -> None:
    fake.fail_next("submit", 503, {"detail": "Service Unavailable"}, times=2)
    handle = await client.submit(ENDPOINT, PAYLOAD)
    assert [r.status for r in fake.requests] == [503, 503, 200]
    assert list(fake.jobs) == [handle.request_id]
    assert [c.attempt for c in backoffs] == [1, 2]


@pytest.mark.parametrize("status", [500, 502, 504])
async def test_submit_other_5xx_not_retried(
    fake: FakeFal, client: FalClient, backoffs: list[BackoffCall], status: int
) -> None:
    fake.fail_next("submit", status)
    fake.fail_next("submit", 200)  # would be answered normally if the client came back
    with pytest.raises(FalServerError) as err:
        await client.submit(ENDPOINT, PAYLOAD)
    assert err.value.status == status
    assert fake.count("submit") == 1 and not fake.jobs and not backoffs
    assert "having trouble" in describe_failure(err.value)
    assert_no_secret(err.value)


async def test_submit_timeout_is_never_resent(fake: FakeFal, session: aiohttp.ClientSession) -> None:
    """The submit reaches fal but the answer comes too late: no second POST, ever (it would bill twice)."""
    fake.slow("submit", 1.0)
    client = make_client(session, fake, submit_timeout=0.3)
    loop = asyncio.get_running_loop()
    start = loop.time()
    with pytest.raises(FalSubmitUnconfirmed) as err:
        await client.submit(ENDPOINT, PAYLOAD)
    assert 0.25 <= loop.time() - start < 0.9
    assert_no_secret(err.value)
    assert "not sent again" in describe_failure(err.value)
    async with asyncio.timeout(3):  # the fake finishes the slow submit at ~1.0 s and creates the job
        while not fake.jobs:  # noqa: ASYNC110 - the fake has no event for this
            await asyncio.sleep(0.02)
    await asyncio.sleep(0.15)  # room for a (wrong) second POST to arrive
    assert loop.time() - start > 1.0
    assert fake.count("submit") == 1 and len(fake.jobs) == 1


async def test_submit_dropped_connection_is_never_resent(fake: FakeFal, client: FalClient) -> None:
    fake.fail_next("submit", 0, drop=True)
    with pytest.raises(FalSubmitUnconfirmed):
        await client.submit(ENDPOINT, PAYLOAD)
    await asyncio.sleep(0.05)
    assert fake.count("submit") == 1 and not fake.jobs


async def test_submit_connection_refused_is_retried(
    session: aiohttp.ClientSession, backoffs: list[BackoffCall]
) -> None:
    client = make_client(session, f"http://127.0.0.1:{closed_port()}", max_attempts=3)
    with pytest.raises(FalConnectionError) as err:
        await client.submit(ENDPOINT, PAYLOAD)
    assert not isinstance(err.value, FalSubmitUnconfirmed)  # never connected: safe to retry
    assert [c.attempt for c in backoffs] == [1, 2]
    assert "127.0.0.1" in str(err.value)
    assert_no_secret(err.value)


async def test_submit_answer_without_request_id_is_unconfirmed(fake: FakeFal, client: FalClient) -> None:
    """fal answered 2xx, so it may have taken the job: without a request id the submit is unconfirmed, not resent."""
    fake.fail_next("submit", 200, {"status": "IN_QUEUE"})
    with pytest.raises(FalSubmitUnconfirmed, match="request id") as err:
        await client.submit(ENDPOINT, PAYLOAD)
    assert isinstance(err.value.__cause__, FalProtocolError)
    assert fake.count("submit") == 1


# -- watching ----------------------------------------------------------------------------------


async def test_stream_dropped_midway_reconnects(fake: FakeFal, client: FalClient) -> None:
    fake.add_script(JobScript(queue_positions=(2, 1, 0), progress_steps=1, step_seconds=0.02, hold=True))
    fake.fail_next("stream", 200, drop=True)  # sends the current status, then closes the connection
    handle = await client.submit(ENDPOINT, PAYLOAD)
    statuses = await collect(client, handle, release=fake)
    assert statuses[0] == Queued(2)
    assert statuses[-1] == Completed(inference_seconds=0.02)
    assert InProgress(("step 1/1",)) in statuses
    assert len(statuses) == len(set(statuses))  # the replayed status after the reconnect is not repeated
    assert fake.count("stream") == 2
    assert (await client.result(handle)).images


async def test_stream_unavailable_falls_back_to_polling(fake: FakeFal, session: aiohttp.ClientSession) -> None:
    fake.add_script(JobScript(queue_positions=(1, 0), progress_steps=1, step_seconds=0.1, hold=True))
    fake.fail_next("stream", 404, {"detail": "Not Found"}, times=2)  # a reseller without /status/stream
    fake.fail_next("stream", 503)
    client = make_client(session, fake, stream_attempts=3)
    handle = await client.submit(ENDPOINT, PAYLOAD)
    statuses = await collect(client, handle, release=fake)
    assert statuses == [Queued(1), Queued(0), InProgress(("step 1/1",)), Completed(inference_seconds=0.1)]
    assert fake.count("stream") == 3
    assert fake.count("status") >= 4
    assert (await client.result(handle)).images


async def test_status_5xx_burst_survived_with_backoff(
    fake: FakeFal, session: aiohttp.ClientSession, backoffs: list[BackoffCall]
) -> None:
    fake.add_script(JobScript(queue_positions=(0,), progress_steps=1, step_seconds=0.1, hold=True))
    client = make_client(session, fake, use_stream=False, poll_interval=0.02, poll_max_interval=0.1)
    handle = await client.submit(ENDPOINT, PAYLOAD)
    fake.fail_next("status", 503, times=2)
    fake.fail_next("status", 502, b"<html>502 Bad Gateway nginx</html>")
    fake.fail_next("status", 500)
    fake.fail_next("status", 429, {"detail": "slow down"}, headers={"Retry-After": "0.04"})
    statuses = await collect(client, handle, release=fake)
    assert statuses == [Queued(0), InProgress(("step 1/1",)), Completed(inference_seconds=0.1)]
    codes = [r.status for r in fake.requests if r.kind == "status"]
    assert codes[:6] == [503, 503, 502, 500, 429, 202]
    assert [c.attempt for c in backoffs] == [1, 2, 3, 4, 5]  # grows while the errors last
    assert all((c.base, c.cap) == (0.02, 0.1) for c in backoffs)
    assert all(0.01 <= c.delay <= min(0.1, 0.02 * 2**c.attempt) for c in backoffs)
    assert backoffs[-1].retry_after == 0.04 and backoffs[-1].delay >= 0.04


async def test_status_non_retryable_error_ends_watch(fake: FakeFal, session: aiohttp.ClientSession) -> None:
    client = make_client(session, fake, use_stream=False)
    with pytest.raises(FalHTTPError) as err:
        await collect(client, client.handle_for(ENDPOINT, UNKNOWN_ID))
    assert type(err.value) is FalHTTPError and err.value.status == 404
    assert fake.count("status") == 1
    assert_no_secret(err.value)


async def test_status_timeout_and_connection_errors(fake: FakeFal, session: aiohttp.ClientSession) -> None:
    fake.add_script(JobScript(hold=True))
    client = make_client(session, fake, request_timeout=0.2)
    handle = await client.submit(ENDPOINT, PAYLOAD)
    fake.slow("status", 1.0)
    with pytest.raises(FalTimeout) as timed_out:
        await client.status(handle)
    assert_no_secret(timed_out.value)
    assert await client.status(handle) == Queued(2)

    refused = make_client(session, f"http://127.0.0.1:{closed_port()}")
    with pytest.raises(FalConnectionError) as err:
        await refused.status(handle)
    assert_no_secret(err.value)


async def test_status_not_json_is_protocol_error(fake: FakeFal, client: FalClient) -> None:
    handle = await client.submit(ENDPOINT, PAYLOAD)
    fake.fail_next("status", 200, b"<html>hello</html>")
    with pytest.raises(FalProtocolError) as err:
        await client.status(handle)
    assert_no_secret(err.value)


async def test_stream_that_keeps_closing_falls_back_to_polling(fake: FakeFal, session: aiohttp.ClientSession) -> None:
    """Regression: a stream cut after every event used to be reconnected in a tight loop, forever."""
    fake.add_script(JobScript(hold=True))
    fake.fail_next("stream", 200, drop=True, times=30)  # a proxy that ends the SSE response after one event
    client = make_client(session, fake, stream_attempts=3)
    handle = await client.submit(ENDPOINT, PAYLOAD)
    watcher = asyncio.create_task(collect(client, handle))
    await asyncio.sleep(0.3)
    fake.release(handle.request_id)
    statuses = await watcher
    assert statuses[0] == Queued(2) and isinstance(statuses[-1], Completed)
    assert fake.count("stream") == 3  # only progress earns another reconnect
    assert fake.count("status") >= 2  # then polling took over


# -- result ------------------------------------------------------------------------------------


async def test_moderated_result(fake: FakeFal, client: FalClient) -> None:
    outcome = Outcome(kind="error", error_type="content_policy_violation", result_body={"detail": POLICY_DETAIL})
    fake.add_script(instant(outcome))
    handle = await client.submit(ENDPOINT, PAYLOAD)
    (done,) = await collect(client, handle)
    assert isinstance(done, Completed) and done.error_type == "content_policy_violation"
    with pytest.raises(FalRequestFailed) as err:
        await client.result(handle)
    assert (err.value.status, err.value.moderated) == (422, True)
    assert "safety filter" in describe_failure(err.value)
    assert fake.count("result") == 1
    assert_no_secret(err.value)


async def test_completed_with_error_and_result_422(fake: FakeFal, client: FalClient) -> None:
    detail = [{"loc": ["body", "image_urls", 0], "msg": "Image too large", "type": "image_too_large"}]
    outcome = Outcome(
        kind="error", status_error="Image too large", error_type="image_too_large", result_body={"detail": detail}
    )
    fake.add_script(JobScript(queue_positions=(0,), progress_steps=1, step_seconds=0.02, outcome=outcome))
    handle = await client.submit(ENDPOINT, PAYLOAD)
    statuses = await collect(client, handle)
    assert statuses[-1] == Completed(error="Image too large", error_type="image_too_large", inference_seconds=0.02)
    with pytest.raises(FalRequestFailed) as err:
        await client.result(handle)
    assert (err.value.status, err.value.error_type, err.value.moderated) == (422, "image_too_large", False)
    assert err.value.summary == "Image too large"
    assert "too large (in pixels)" in describe_failure(err.value)
    assert fake.count("result") == 1  # a failed job is final: no retry
    assert_no_secret(err.value)


async def test_infra_failure_result_is_not_retried(fake: FakeFal, client: FalClient) -> None:
    outcome = Outcome(
        kind="error", status_error="Runner disconnected", error_type="runner_disconnected", result_status=503
    )
    fake.add_script(instant(outcome))
    handle = await client.submit(ENDPOINT, PAYLOAD)
    with pytest.raises(FalRequestFailed) as err:
        await client.result(handle)
    assert (err.value.status, err.value.error_type) == (503, "runner_disconnected")
    assert fake.count("result") == 1


async def test_bare_5xx_on_result_is_retried(fake: FakeFal, client: FalClient, backoffs: list[BackoffCall]) -> None:
    fake.add_script(instant())
    handle = await client.submit(ENDPOINT, PAYLOAD)
    fake.fail_next("result", 502, b"<html>502 Bad Gateway nginx</html>")
    output = await client.result(handle)
    assert len(output.images) == 1
    assert [r.status for r in fake.requests if r.kind == "result"] == [502, 200]
    assert [c.attempt for c in backoffs] == [1]


async def test_rate_limited_result_is_retried(fake: FakeFal, client: FalClient, backoffs: list[BackoffCall]) -> None:
    """Regression: a 429 on the result GET is the gateway's, not the job's; the job must not be reported failed."""
    fake.add_script(instant())
    handle = await client.submit(ENDPOINT, PAYLOAD)
    fake.fail_next("result", 429, {"detail": "Too many requests"}, headers={"Retry-After": "0.01"})
    output = await client.result(handle)
    assert len(output.images) == 1
    assert [r.status for r in fake.requests if r.kind == "result"] == [429, 200]
    assert [(c.attempt, c.retry_after) for c in backoffs] == [(1, 0.01)]


async def test_request_timeout_408_on_result_is_retried(fake: FakeFal, client: FalClient) -> None:
    fake.add_script(instant())
    handle = await client.submit(ENDPOINT, PAYLOAD)
    fake.fail_next("result", 408, {"detail": "Request Timeout"})
    output = await client.result(handle)
    assert len(output.images) == 1
    assert [r.status for r in fake.requests if r.kind == "result"] == [408, 200]


@pytest.mark.parametrize(
    "fault",
    [
        pytest.param({"body": b"<html>not json</html>"}, id="not-json"),
        pytest.param({"body": {"images": "garbage"}}, id="wrong-shape"),
        pytest.param({"body": {"images": [{"width": 1}]}}, id="image-without-url"),
        pytest.param({"body": ["a", "list"]}, id="not-an-object"),
    ],
)
async def test_malformed_result_is_protocol_error(fake: FakeFal, client: FalClient, fault: dict[str, Any]) -> None:
    fake.add_script(instant())
    handle = await client.submit(ENDPOINT, PAYLOAD)
    fake.fail_next("result", 200, fault["body"])
    with pytest.raises(FalProtocolError) as err:
        await client.result(handle)
    assert fake.count("result") == 1
    assert "sent something unexpected" in describe_failure(err.value)
    assert_no_secret(err.value)


async def test_raw_result_with_extra_keys_is_accepted(fake: FakeFal, client: FalClient) -> None:
    raw = {
        "images": [{"url": "https://v3.fal.media/files/x.jpg", "width": 8, "height": 8}],
        "seed": 3,
        "has_nsfw_concepts": [False],
        "prompt": "p",
        "timings": {"inference": 1.0},
        "request": {"prompt": "p", "image_urls": ["u"]},  # resellers echo the input
    }
    fake.add_script(instant(Outcome(raw_result=raw)))
    output = await client.result(await client.submit(ENDPOINT, PAYLOAD))
    assert output.images[0].url == "https://v3.fal.media/files/x.jpg"
    assert output.images[0].content_type == "image/jpeg"  # default when fal leaves it out


# -- download ----------------------------------------------------------------------------------


async def test_download_from_unexpected_host_is_refused(fake: FakeFal, client: FalClient) -> None:
    async with FakeFal(key=KEY) as elsewhere:
        port = elsewhere.base_url.rsplit(":", 1)[1]
        fake.add_script(instant(Outcome(result_host=f"http://localhost:{port}")))
        output = await client.result(await client.submit(ENDPOINT, PAYLOAD))
        url = output.images[0].url
        assert url.startswith(f"http://localhost:{port}/files/")
        with pytest.raises(FalProtocolError, match="unexpected host") as err:
            await client.download(url)
        assert elsewhere.requests == []
    assert fake.count("file") == 0
    assert_no_secret(err.value)


@pytest.mark.parametrize(
    "url",
    [
        "https://evilfal.media/files/x.png",
        "https://fal.media.evil.example/files/x.png",
        "ftp://v3.fal.media/files/x.png",
        "file:///etc/passwd",
    ],
)
async def test_result_host_allow_list(session: aiohttp.ClientSession, url: str) -> None:
    client = make_client(session, f"http://127.0.0.1:{closed_port()}", result_hosts=("fal.media",))
    with pytest.raises(FalUnsafeURL, match=r"unexpected host|allowed: https"):
        await client.download(url)


async def test_download_oversized_is_refused(fake: FakeFal, session: aiohttp.ClientSession) -> None:
    big = padded_png(5000)
    fake.add_script(instant(Outcome(image_bytes=big)))
    client = make_client(session, fake, max_download_bytes=4999)
    output = await client.result(await client.submit(ENDPOINT, PAYLOAD))
    with pytest.raises(FalProtocolError, match="larger than 4999 bytes") as err:
        await client.download(output.images[0].url)
    assert fake.count("file") == 1  # not retried
    assert_no_secret(err.value)
    exact = make_client(session, fake, max_download_bytes=len(big))
    assert (await exact.download(output.images[0].url)).data == big


async def test_download_large_image_is_complete(fake: FakeFal, client: FalClient) -> None:
    big = padded_png(3_000_000)  # many network chunks
    fake.add_script(instant(Outcome(image_bytes=big)))
    output = await client.result(await client.submit(ENDPOINT, PAYLOAD))
    download = await client.download(output.images[0].url)
    assert len(download.data) == len(big)
    assert download.data == big


@pytest.fixture
async def chunked_server() -> AsyncIterator[str]:
    """A server that streams `/{size}` bytes without a Content-Length (what a lying CDN or proxy does)."""

    async def handler(request: web.Request) -> web.StreamResponse:
        size = int(request.match_info["size"])
        response = web.StreamResponse(headers={"Content-Type": "image/png"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        for start in range(0, size, 50_000):
            await response.write(bytes(min(50_000, size - start)))
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_get("/{size}", handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    try:
        yield f"http://{host}:{port}"
    finally:
        await runner.cleanup()


async def test_download_limit_without_content_length(session: aiohttp.ClientSession, chunked_server: str) -> None:
    client = make_client(session, chunked_server, max_download_bytes=300_000, result_hosts=(chunked_server[7:],))
    download = await client.download(f"{chunked_server}/300000")
    assert download.data == bytes(300_000) and download.content_type == "image/png"
    with pytest.raises(FalProtocolError, match="larger than 300000 bytes"):
        await client.download(f"{chunked_server}/300001")


async def test_download_missing_file_is_http_error(fake: FakeFal, client: FalClient) -> None:
    fake.add_script(instant())
    output = await client.result(await client.submit(ENDPOINT, PAYLOAD))
    with pytest.raises(FalHTTPError) as err:
        await client.download(output.images[0].url.replace("/0.png", "/3.png"))
    assert err.value.status == 404


async def test_download_data_uri(session: aiohttp.ClientSession) -> None:
    client = make_client(session, f"http://127.0.0.1:{closed_port()}")
    payload = b"\x89PNG fake bytes"
    download = await client.download("data:image/png;base64," + base64.b64encode(payload).decode())
    assert (download.data, download.content_type) == (payload, "image/png")
    with pytest.raises(FalProtocolError, match="data URI"):
        await client.download("data:image/png;base64,@@not base64@@")


# -- cancel ------------------------------------------------------------------------------------


async def test_cancel_queued_then_already_completed_then_unknown(fake: FakeFal, client: FalClient) -> None:
    fake.add_script(JobScript(hold=True))
    handle = await client.submit(ENDPOINT, PAYLOAD)
    assert await client.cancel(handle) is True
    assert fake.jobs[handle.request_id].cancelled_in_queue
    (done,) = await collect(client, handle)
    assert done == Completed(error="Request cancelled by client", error_type="client_cancelled")
    with pytest.raises(FalRequestFailed) as failed:
        await client.result(handle)
    assert (failed.value.status, failed.value.error_type) == (400, "client_cancelled")
    assert "cancelled" in describe_failure(failed.value)

    assert await client.cancel(handle) is False  # ALREADY_COMPLETED

    with pytest.raises(FalHTTPError) as err:
        await client.cancel(client.handle_for(ENDPOINT, UNKNOWN_ID))
    assert type(err.value) is FalHTTPError and err.value.status == 404
    assert err.value.summary == "NOT_FOUND"
    assert_no_secret(err.value)
    assert [r.status for r in fake.requests if r.kind == "cancel"] == [202, 400, 404]
    assert all(r.method == "PUT" for r in fake.requests if r.kind == "cancel")


async def test_cancel_running_job_still_completes(fake: FakeFal, client: FalClient) -> None:
    fake.add_script(JobScript(queue_positions=(), progress_steps=2, step_seconds=0.05))
    handle = await client.submit(ENDPOINT, PAYLOAD)
    assert await client.cancel(handle) is True
    statuses = await collect(client, handle)
    assert statuses[-1] == Completed(inference_seconds=0.1)
    assert len((await client.result(handle)).images) == 1


# -- resellers: URL rewriting and Bearer auth --------------------------------------------------


async def test_reseller_urls_are_rewritten_onto_the_base(session: aiohttp.ClientSession) -> None:
    async with FakeFal(key=KEY, advertised_base="https://queue.fal.run") as reseller:
        reseller.default_script = JobScript(queue_positions=(1, 0), progress_steps=1, step_seconds=0.02)
        client = make_client(session, reseller)
        async with asyncio.timeout(5):
            handle = await client.submit(ENDPOINT, PAYLOAD)
            advertised = reseller.jobs[handle.request_id].response_url
            assert advertised == f"https://queue.fal.run/{APP}/requests/{handle.request_id}"
            assert handle == client.handle_for(ENDPOINT, handle.request_id)

            assert isinstance((await collect(client, handle))[-1], Completed)
            assert isinstance(await client.status(handle), Completed)
            output = await client.result(handle)
            await client.download(output.images[0].url)
            assert await client.cancel(handle) is False
            polling = make_client(session, reseller, use_stream=False)
            assert isinstance((await collect(polling, await polling.submit(ENDPOINT, PAYLOAD)))[-1], Completed)
        kinds = {r.kind for r in reseller.requests}
        assert kinds == {"submit", "stream", "status", "result", "cancel", "file"}
        assert all(r.status in (200, 202, 400) for r in reseller.requests)


async def test_bearer_auth_on_every_request_kind(session: aiohttp.ClientSession) -> None:
    token = "sk-reseller-Zq81xYw"
    async with FakeFal(key=token, auth_scheme="Bearer") as reseller:
        reseller.default_script = JobScript(queue_positions=(0,), progress_steps=1, step_seconds=0.02)
        client = make_client(session, reseller, key=token, auth_scheme="Bearer")
        handle = await client.submit(ENDPOINT, PAYLOAD)
        assert isinstance((await collect(client, handle))[-1], Completed)
        assert isinstance(await client.status(handle), Completed)
        output = await client.result(handle)
        await client.download(output.images[0].url)
        reseller.add_script(JobScript(hold=True))
        assert await client.cancel(await client.submit(ENDPOINT, PAYLOAD)) is True

        kinds = {r.kind for r in reseller.requests}
        assert kinds == {"submit", "stream", "status", "result", "cancel", "file"}
        assert all(r.headers["authorization"] == f"Bearer {token}" for r in queue_requests(reseller))
        assert all("authorization" not in r.headers for r in reseller.requests if r.kind == "file")
        assert all(r.status in (200, 202) for r in reseller.requests)

        with pytest.raises(FalAuthError) as err:  # the fal scheme is refused by a Bearer reseller
            await make_client(session, reseller, key=token, auth_scheme="Key").submit(ENDPOINT, PAYLOAD)
        assert err.value.status == 401
        assert_no_secret(err.value, token)


# -- handles rebuilt from a stored request id --------------------------------------------------


async def test_handle_for_rebuilds_a_stored_job(fake: FakeFal, client: FalClient) -> None:
    fake.add_script(instant())
    handle = await client.submit(ENDPOINT, PAYLOAD)
    rebuilt = client.handle_for(f"/{ENDPOINT}/", handle.request_id)
    assert rebuilt == QueueHandle(ENDPOINT, handle.request_id)
    assert isinstance(await client.status(rebuilt), Completed)
    assert len((await client.result(rebuilt)).images) == 1
    assert await client.cancel(rebuilt) is False
    root = f"/{APP}/requests/{handle.request_id}"
    assert paths(fake) == {f"{root}/status", root, f"{root}/cancel"}


@pytest.mark.parametrize(
    ("endpoint", "root"),
    [
        ("fal-ai/flux-pro/kontext/max/multi", "fal-ai/flux-pro"),
        ("/fal-ai/flux-pro/kontext/max/multi/", "fal-ai/flux-pro"),
        ("fal-ai/flux-pro", "fal-ai/flux-pro"),
        ("workflows/someone/my-flow/sub", "workflows/someone/my-flow"),
        ("comfy/someone/graph", "comfy/someone/graph"),
    ],
)
def test_app_root(endpoint: str, root: str) -> None:
    assert app_root(endpoint) == root


async def test_urls_follow_a_base_with_a_path_prefix(session: aiohttp.ClientSession) -> None:
    """A reseller mounted under a path (`https://reseller.example/fal/`) gets every URL under that path."""
    async with FakeFal(key=KEY, path_prefix="/fal") as reseller:
        reseller.default_script = instant()
        client = make_client(session, reseller.base_url + "/")
        handle = await client.submit(ENDPOINT, PAYLOAD)
        assert isinstance((await collect(client, handle))[-1], Completed)
        assert isinstance(await client.status(handle), Completed)
        assert len((await client.result(handle)).images) == 1
        assert await client.cancel(handle) is False
        root = f"/fal/{APP}/requests/{handle.request_id}"
        assert {r.path for r in reseller.requests} == {
            f"/fal/{ENDPOINT}",
            f"{root}/status/stream",
            f"{root}/status",
            root,
            f"{root}/cancel",
        }
        assert all(r.status in (200, 400) for r in reseller.requests)


async def test_handle_for_namespaced_endpoint(fake: FakeFal, client: FalClient) -> None:
    """Regression: `workflows`/`comfy` apps keep three path segments in their app root, like fal's own clients."""
    handle = await client.submit("workflows/someone/my-flow", PAYLOAD)
    assert isinstance(await client.status(client.handle_for("workflows/someone/my-flow", handle.request_id)), Queued)
    assert paths(fake) == {f"/workflows/someone/my-flow/requests/{handle.request_id}/status"}


async def test_streams_beyond_the_cap_poll_instead(fake: FakeFal, session: aiohttp.ClientSession) -> None:
    client = make_client(session, fake, max_streams=1)
    for _ in range(2):
        fake.add_script(JobScript(queue_positions=(1, 0), progress_steps=1, step_seconds=0.05))
    handles = [await client.submit(ENDPOINT, PAYLOAD) for _ in range(2)]

    results = await asyncio.gather(*(collect(client, handle) for handle in handles))

    assert all(isinstance(statuses[-1], Completed) for statuses in results)
    assert fake.count("stream") == 1  # one job held the only stream; the other polled
    assert fake.count("status") >= 2


async def test_a_submit_that_never_got_a_connection_is_not_unconfirmed(fake: FakeFal) -> None:
    connector = aiohttp.TCPConnector(limit=1)
    async with aiohttp.ClientSession(connector=connector) as tight:
        client = make_client(tight, fake, request_timeout=0.2, max_attempts=1)
        fake.slow("submit", 1.0)
        first = asyncio.create_task(client.submit(ENDPOINT, PAYLOAD))  # holds the only connection for a second
        await asyncio.sleep(0.05)

        with pytest.raises(FalConnectionError) as caught:
            await client.submit(ENDPOINT, PAYLOAD)

        assert not isinstance(caught.value, FalSubmitUnconfirmed)  # never sent, so safe to say so
        await first
    assert fake.count("submit") == 1


async def test_a_finished_watch_frees_its_stream_at_once(fake: FakeFal, session: aiohttp.ClientSession) -> None:
    client = make_client(session, fake, max_streams=1)
    for _ in range(2):
        fake.add_script(JobScript(queue_positions=(0,), progress_steps=1, step_seconds=0.02))
        handle = await client.submit(ENDPOINT, PAYLOAD)
        async with aclosing(client.watch(handle)) as statuses:
            async for status in statuses:
                if isinstance(status, Completed):
                    break

    assert fake.count("stream") == 2 and fake.count("status") == 0
