"""FalClient against hostile or broken answers, over the wire: real aiohttp against the fake fal on 127.0.0.1.

Where the key may go, what a garbled answer turns into, how long a trickling server can hold a call, how big
an answer may grow, and where result images may come from.
"""

from __future__ import annotations

import asyncio
import base64
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest
from yarl import URL

from bot.fal import (
    Completed,
    FalClient,
    FalConnectionError,
    FalError,
    FalProtocolError,
    FalSubmitUnconfirmed,
    FalTimeout,
    FalUnsafeURL,
    QueueHandle,
)
from bot.fal.urls import ResultHosts
from tests.fakes.fake_fal import FakeFal, JobScript, Outcome, image_bytes
from tests.test_fal_client import APP, ENDPOINT, INPUT, KEY, PAYLOAD, assert_no_secret, collect, instant, make_client

MiB = 1024 * 1024


@pytest.fixture
async def fake() -> AsyncIterator[FakeFal]:
    async with FakeFal(key=KEY) as server:
        yield server


@pytest.fixture
async def elsewhere() -> AsyncIterator[FakeFal]:
    """A second server on another port: whatever points there must never be called."""
    async with FakeFal(key=KEY) as server:
        yield server


@pytest.fixture
def client(session: aiohttp.ClientSession, fake: FakeFal) -> FalClient:
    return make_client(session, fake)


def elapsed_since(start: float) -> float:
    return asyncio.get_running_loop().time() - start


# -- the key stays on FAL_QUEUE_URL ------------------------------------------------------------


HOSTILE_URLS: dict[str, Callable[[str], dict[str, Any]]] = {
    "another-host": lambda other: {
        key: f"{other}/{APP}/requests/stolen{suffix}"
        for key, suffix in (("status_url", "/status"), ("response_url", ""), ("cancel_url", "/cancel"))
    },
    "not-a-url": lambda other: {"status_url": "http://[::1", "response_url": "::::", "cancel_url": "not a url"},
    "not-a-string": lambda other: {"status_url": 42, "response_url": ["x"], "cancel_url": {"a": None}},
    "climbing-out": lambda other: {"status_url": "/../../admin", "response_url": f"{other}/../x", "cancel_url": ""},
}


@pytest.mark.parametrize("kind", HOSTILE_URLS)
async def test_urls_in_answers_are_ignored_and_the_key_stays_on_the_base(
    fake: FakeFal, elsewhere: FakeFal, session: aiohttp.ClientSession, kind: str
) -> None:
    urls = HOSTILE_URLS[kind](elsewhere.base_url)
    fake.default_script = JobScript(queue_positions=(0,), progress_steps=1, step_seconds=0.02, advertised_urls=urls)
    for use_stream in (True, False):
        client = make_client(session, fake, use_stream=use_stream)
        handle = await client.submit(ENDPOINT, PAYLOAD)
        assert isinstance((await collect(client, handle))[-1], Completed)
        assert isinstance(await client.status(handle), Completed)
        output = await client.result(handle)
        await client.download(output.images[0].url)
        assert await client.cancel(handle) is False
    assert fake.requests[0].json["prompt"] == INPUT.prompt
    assert {r.kind for r in fake.requests} == {"submit", "stream", "status", "result", "file", "cancel"}
    assert all(r.authorization == f"Key {KEY}" for r in fake.requests if r.kind != "file")
    assert all(r.authorization is None for r in fake.requests if r.kind == "file")
    assert all(r.status in (200, 202, 400) for r in fake.requests)
    assert elsewhere.requests == []


@pytest.mark.parametrize(
    "request_id", ["../../x", "..", ".", "", "a/b", "a?b=1", "a#b", "%2e%2e", "a b", "ü", "x" * 200, "a\r\nHost: x"]
)
async def test_a_hostile_request_id_never_reaches_a_url(fake: FakeFal, client: FalClient, request_id: str) -> None:
    handle = client.handle_for(ENDPOINT, request_id)
    calls = (client.status(handle), client.result(handle), client.cancel(handle), collect(client, handle))
    for call in calls:
        with pytest.raises(FalUnsafeURL, match="request id"):
            await call
    assert fake.requests == []


@pytest.mark.parametrize("request_id", ["../../x", "a/b", "a?b", "", 42, None])
async def test_a_submit_answer_with_a_hostile_request_id_is_unconfirmed(
    fake: FakeFal, client: FalClient, request_id: Any
) -> None:
    fake.fail_next("submit", 200, {"status": "IN_QUEUE", "request_id": request_id, "queue_position": 0})
    with pytest.raises(FalSubmitUnconfirmed) as err:
        await client.submit(ENDPOINT, PAYLOAD)
    assert isinstance(err.value.__cause__, FalProtocolError)
    assert fake.count("submit") == 1  # never resent
    assert_no_secret(err.value)


@pytest.mark.parametrize("endpoint", ["fal-ai", "fal-ai/../x", "fal-ai//flux", "fal-ai/flux?x=1", "a/b#c", "a/b c"])
async def test_a_hostile_endpoint_is_refused_before_sending(fake: FakeFal, client: FalClient, endpoint: str) -> None:
    with pytest.raises(FalUnsafeURL):
        await client.submit(endpoint, PAYLOAD)
    with pytest.raises(FalUnsafeURL):
        await client.status(QueueHandle(endpoint, "abc"))
    assert fake.requests == []


async def test_the_one_request_door_refuses_urls_off_the_base(
    session: aiohttp.ClientSession, elsewhere: FakeFal
) -> None:
    """Defence in depth under the URL builder: `_send` and the SSE reader share one check."""
    async with FakeFal(key=KEY, path_prefix="/fal") as reseller:
        client = make_client(session, reseller)
        origin = reseller.base_url.removesuffix("/fal")
        foreign = [
            f"{elsewhere.base_url}/{APP}/requests/x/status",  # another port
            f"{origin}/{APP}/requests/x/status",  # right origin, outside the base path
            f"{origin}/falx/{APP}/requests/x/status",  # a prefix of the base path is not under it
            f"{reseller.base_url.replace('http:', 'https:')}/{APP}/requests/x/status",  # another scheme
            f"{reseller.base_url.replace('127.0.0.1', 'localhost')}/{APP}/requests/x/status",  # another host name
        ]
        for url in foreign:
            with pytest.raises(FalUnsafeURL):
                await client._send("GET", URL(url), seconds=1.0)
            with pytest.raises(FalUnsafeURL):
                async for _ in client._read_stream(URL(url)):
                    pass
        assert reseller.requests == []
    assert elsewhere.requests == []


# -- garbled answers while following a job --------------------------------------------------------


GARBLED_EVENTS = {
    "invalid-utf8": b'data: {"status": "IN_QUEUE", "queue_position": 1, "x": "\xff\xfe"}\n\n',
    "not-json": b"data: {oops\n\n",
    "wrong-shape": b'data: [1, 2]\n\ndata: {"status": 7}\n\n',
    "deep-nesting": b"data: " + b"[" * 100_000 + b"\n\n",
    "huge-line": b"data: " + b"x" * (2 * MiB),
    "huge-event": b"data: xxxxxxxx\n" * (MiB // 8) + b"\n",
}


@pytest.mark.parametrize("kind", GARBLED_EVENTS)
async def test_garbled_stream_events_do_not_end_the_job(fake: FakeFal, client: FalClient, kind: str) -> None:
    fake.add_script(JobScript(queue_positions=(0,), progress_steps=1, step_seconds=0.05))
    fake.fail_next("stream", 200, GARBLED_EVENTS[kind], times=5)  # past stream_attempts: polling takes over
    handle = await client.submit(ENDPOINT, PAYLOAD)
    statuses = await collect(client, handle)
    assert statuses[-1] == Completed(inference_seconds=0.05)
    assert fake.count("stream") == 3 and fake.count("status") >= 1
    assert len((await client.result(handle)).images) == 1


GARBLED_ANSWERS = {
    "html": b"<html>hello</html>",
    "invalid-utf8": b'{"status": "IN_QUEUE\xff"}',
    "no-status": {"queue_position": 1},
    "status-not-a-string": {"status": ["IN_QUEUE"]},
    "a-list": [1, 2, 3],
    "deep-nesting": b"[" * 100_000,
    "empty": b"",
}


async def test_garbled_status_polls_are_retried_with_backoff(fake: FakeFal, session: aiohttp.ClientSession) -> None:
    fake.add_script(JobScript(queue_positions=(0,), progress_steps=1, step_seconds=0.05, hold=True))
    client = make_client(session, fake, use_stream=False)
    handle = await client.submit(ENDPOINT, PAYLOAD)
    for body in GARBLED_ANSWERS.values():
        fake.fail_next("status", 200, body)
    statuses = await collect(client, handle, release=fake)
    assert isinstance(statuses[-1], Completed)
    codes = [r.status for r in fake.requests if r.kind == "status"]
    assert codes[: len(GARBLED_ANSWERS)] == [200] * len(GARBLED_ANSWERS) and codes[-1] == 200


@pytest.mark.parametrize("kind", GARBLED_ANSWERS)
async def test_a_single_garbled_status_is_a_protocol_error(fake: FakeFal, client: FalClient, kind: str) -> None:
    handle = await client.submit(ENDPOINT, PAYLOAD)
    fake.fail_next("status", 200, GARBLED_ANSWERS[kind])
    with pytest.raises(FalProtocolError) as err:
        await client.status(handle)
    assert type(err.value) is FalProtocolError
    assert_no_secret(err.value)


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b"<html>not json</html>", id="html"),
        pytest.param(b'{"request_id": "\xff"}', id="invalid-utf8"),
        pytest.param(b"", id="empty"),
        pytest.param(["a", "list"], id="a-list"),
        pytest.param({"status": "IN_QUEUE"}, id="no-request-id"),
        pytest.param(b"[" * 100_000, id="deep-nesting"),
    ],
)
async def test_a_garbled_submit_answer_is_unconfirmed(fake: FakeFal, client: FalClient, body: Any) -> None:
    fake.fail_next("submit", 200, body)
    with pytest.raises(FalSubmitUnconfirmed, match="not resent"):
        await client.submit(ENDPOINT, PAYLOAD)
    assert fake.count("submit") == 1


async def test_an_oversized_submit_answer_is_unconfirmed(fake: FakeFal, session: aiohttp.ClientSession) -> None:
    client = make_client(session, fake, max_response_bytes=100)
    fake.fail_next("submit", 200, {"request_id": "abc", "padding": "x" * 200})
    with pytest.raises(FalSubmitUnconfirmed, match="larger than 100 bytes"):
        await client.submit(ENDPOINT, PAYLOAD)
    assert fake.count("submit") == 1


# -- overall deadlines ---------------------------------------------------------------------------


async def test_a_trickling_submit_answer_hits_the_overall_deadline(
    fake: FakeFal, session: aiohttp.ClientSession
) -> None:
    """One byte every 0.5 s never trips a per-read timeout; the submit's own deadline still ends it."""
    fake.trickle_next("submit", 0.5)
    client = make_client(session, fake, submit_timeout=1.0, request_timeout=5.0)
    start = asyncio.get_running_loop().time()
    async with asyncio.timeout(15):  # the whole answer would take minutes at this pace
        with pytest.raises(FalSubmitUnconfirmed, match="within 1 s") as err:
            await client.submit(ENDPOINT, PAYLOAD)
    assert 0.9 <= elapsed_since(start) < 5
    assert fake.count("submit") == 1 and len(fake.jobs) == 1  # fal took it; it is not sent again
    assert_no_secret(err.value)


async def test_a_trickling_cancel_hits_its_overall_deadline(fake: FakeFal, session: aiohttp.ClientSession) -> None:
    fake.add_script(JobScript(hold=True))
    client = make_client(session, fake, request_timeout=1.0)
    handle = await client.submit(ENDPOINT, PAYLOAD)
    fake.trickle_next("cancel", 0.5, times=10)
    start = asyncio.get_running_loop().time()
    async with asyncio.timeout(15):
        with pytest.raises(FalTimeout):
            await client.cancel(handle)
    assert 0.9 <= elapsed_since(start) < 5  # one deadline for the call, retries included
    assert fake.count("cancel") == 1


async def test_a_trickling_status_hits_its_deadline(fake: FakeFal, session: aiohttp.ClientSession) -> None:
    client = make_client(session, fake, request_timeout=1.0)
    handle = await client.submit(ENDPOINT, PAYLOAD)
    fake.trickle_next("status", 0.5)
    start = asyncio.get_running_loop().time()
    async with asyncio.timeout(15):
        with pytest.raises(FalTimeout):
            await client.status(handle)
    assert 0.9 <= elapsed_since(start) < 5


async def test_a_trickling_result_is_cut_and_retried(fake: FakeFal, session: aiohttp.ClientSession) -> None:
    fake.add_script(instant())
    client = make_client(session, fake, request_timeout=1.0)
    handle = await client.submit(ENDPOINT, PAYLOAD)
    fake.trickle_next("result", 0.5)
    start = asyncio.get_running_loop().time()
    async with asyncio.timeout(15):
        output = await client.result(handle)
    assert len(output.images) == 1
    assert fake.count("result") == 2 and elapsed_since(start) < 8


# -- size caps -----------------------------------------------------------------------------------


async def test_a_huge_result_is_refused_while_streaming(fake: FakeFal, client: FalClient) -> None:
    fake.add_script(instant(Outcome(result_padding=60 * MiB)))
    handle = await client.submit(ENDPOINT, PAYLOAD)
    with pytest.raises(FalProtocolError, match=f"larger than {MiB} bytes") as err:
        await client.result(handle)
    assert fake.count("result") == 1  # not retried
    assert fake.jobs[handle.request_id].result_bytes_sent < 20 * MiB  # read up to the cap, then hung up
    assert_no_secret(err.value)


async def test_the_answer_cap_is_an_option(fake: FakeFal, session: aiohttp.ClientSession) -> None:
    fake.add_script(instant(Outcome(result_padding=100_000)))
    fake.add_script(instant())
    small = make_client(session, fake, max_response_bytes=64 * 1024)
    with pytest.raises(FalProtocolError, match="larger than 65536 bytes"):
        await small.result(await small.submit(ENDPOINT, PAYLOAD))
    assert len((await small.result(await small.submit(ENDPOINT, PAYLOAD))).images) == 1
    fake.add_script(instant(Outcome(result_padding=100_000)))
    roomy = make_client(session, fake)  # the default cap, 1 MiB
    assert len((await roomy.result(await roomy.submit(ENDPOINT, PAYLOAD))).images) == 1


async def test_an_oversized_error_body_still_gives_the_http_error(
    fake: FakeFal, session: aiohttp.ClientSession
) -> None:
    client = make_client(session, fake, max_response_bytes=1000)
    fake.fail_next("status", 404, {"detail": "x" * 5000})
    with pytest.raises(FalError) as err:
        await client.status(QueueHandle(ENDPOINT, "abc"))
    assert getattr(err.value, "status", None) == 404


# -- more images than asked for -------------------------------------------------------------------


async def test_result_keeps_at_most_max_images(
    fake: FakeFal, client: FalClient, caplog: pytest.LogCaptureFixture
) -> None:
    fake.add_script(instant(Outcome(image_count=50)))
    handle = await client.submit(ENDPOINT, PAYLOAD)  # num_images 1
    with caplog.at_level(logging.WARNING, logger="bot.fal.client"):
        output = await client.result(handle, max_images=1)
    assert len(output.images) == 1 and output.has_nsfw_concepts == (False,)
    (record,) = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert handle.request_id in record.getMessage() and "50" in record.getMessage()
    assert len((await client.result(handle)).images) == 50  # without a limit, all of them

    fake.add_script(instant(Outcome(image_count=3, nsfw=(True, False, True))))
    flagged = await client.result(await client.submit(ENDPOINT, PAYLOAD), max_images=2)
    assert flagged.has_nsfw_concepts == (True, False) and len(flagged.images) == 2


# -- result downloads ------------------------------------------------------------------------------


async def test_a_redirecting_file_is_refused(fake: FakeFal, elsewhere: FakeFal, session: aiohttp.ClientSession) -> None:
    """Seen in production: an allowed host redirected to an internal address, whose bytes were posted."""
    fake.add_script(instant())
    handle = await make_client(session, fake).submit(ENDPOINT, PAYLOAD)
    target = f"{elsewhere.base_url}/files/{handle.request_id}/0.png"
    fake.jobs[handle.request_id].script = instant(Outcome(file_redirect=target))
    client = make_client(session, fake, result_hosts=(fake.authority, elsewhere.authority))  # even to an allowed one
    output = await client.result(handle)
    with pytest.raises(FalUnsafeURL, match="redirect") as err:
        await client.download(output.images[0].url)
    assert [r.status for r in fake.requests if r.kind == "file"] == [302]  # not retried
    assert elsewhere.requests == []
    assert_no_secret(err.value)


async def test_downloads_are_https_only_unless_allowed(fake: FakeFal, session: aiohttp.ClientSession) -> None:
    fake.add_script(instant())
    client = make_client(session, fake, result_allow_http=False)
    output = await client.result(await client.submit(ENDPOINT, PAYLOAD))
    with pytest.raises(FalUnsafeURL, match="allowed: https"):
        await client.download(output.images[0].url)
    assert fake.count("file") == 0
    allowed = make_client(session, fake, result_allow_http=True)
    assert (await allowed.download(output.images[0].url)).data == image_bytes(Outcome(), 0)


async def test_a_host_entry_without_a_port_allows_only_the_default_port(
    fake: FakeFal, session: aiohttp.ClientSession
) -> None:
    fake.add_script(instant())
    output = await make_client(session, fake).result(await make_client(session, fake).submit(ENDPOINT, PAYLOAD))
    url = output.images[0].url
    for entry in ("127.0.0.1", "127.0.0.1:1", "0.0.1"):
        with pytest.raises(FalUnsafeURL, match="unexpected host"):
            await make_client(session, fake, result_hosts=(entry,)).download(url)
    assert fake.count("file") == 0
    assert await make_client(session, fake, result_hosts=(fake.authority,)).download(url)


@pytest.mark.parametrize(
    ("url", "allowed"),
    [
        ("https://fal.media/files/a.png", True),
        ("https://v3.fal.media/files/a.png", True),
        ("https://v3b.fal.media/files/a.png", True),
        ("https://V3.FAL.MEDIA./files/a.png", True),
        ("https://fal.media:443/files/a.png", True),
        ("https://fal.media:8443/files/a.png", False),
        ("http://v3.fal.media/files/a.png", False),
        ("https://evilfal.media/a.png", False),
        ("https://fal.media.evil.example/a.png", False),
        ("https://fal.media@evil.example/a.png", False),
        ("https://storage.googleapis.com/anyone/a.png", False),
        ("https://cdn.example:8443/a.png", True),
        ("https://cdn.example/a.png", False),
        ("https://127.0.0.1:8443/a.png", True),
        ("https://x.127.0.0.1:8443/a.png", False),
        ("https://[::1", False),
        ("//fal.media/a.png", False),
        ("javascript:alert(1)", False),
    ],
)
def test_result_host_rules(url: str, allowed: bool) -> None:
    rules = ResultHosts(("fal.media", "cdn.example:8443", "127.0.0.1:8443"))
    if allowed:
        assert rules.check(url).path.endswith(".png")
    else:
        with pytest.raises(FalUnsafeURL):
            rules.check(url)


@pytest.mark.parametrize("entry", ["https://fal.media", "fal.media/files", "user@fal.media", "", "[::1"])
def test_result_host_entries_must_be_host_or_host_port(entry: str) -> None:
    with pytest.raises(ValueError, match="host or host:port"):
        ResultHosts((entry,))


def data_uri(data: bytes, media_type: str = "image/png", params: str = ";base64") -> str:
    return f"data:{media_type}{params},{base64.b64encode(data).decode()}"


@pytest.mark.parametrize(
    ("uri", "error"),
    [
        pytest.param(data_uri(b"12345"), "larger than 4 bytes", id="decoded-too-large"),
        pytest.param("data:image/png;base64," + "@" * 10_000, "larger than 4 bytes", id="checked-before-decoding"),
        pytest.param(data_uri(b"1234", "text/html"), "not an image", id="not-an-image"),
        pytest.param(data_uri(b"1234", ""), "not an image", id="no-media-type"),
        pytest.param("data:image/png,1234", "not base64", id="not-base64"),
        pytest.param("data:image/png;base64", "not base64", id="no-comma"),
        pytest.param("data:image/png;base64,@@@@", "bad base64", id="bad-base64"),
        pytest.param("data:image/png;base64,ééé", "bad base64", id="not-ascii"),
    ],
)
async def test_data_uris_are_capped_and_images_only(session: aiohttp.ClientSession, uri: str, error: str) -> None:
    client = make_client(session, "http://127.0.0.1:9", max_download_bytes=4)
    with pytest.raises(FalProtocolError, match=error):
        await client.download(uri)


async def test_a_data_uri_at_the_limit_is_accepted(session: aiohttp.ClientSession) -> None:
    client = make_client(session, "http://127.0.0.1:9", max_download_bytes=4)
    download = await client.download(data_uri(b"1234", "IMAGE/PNG", ";BASE64").replace("data:", "DATA:"))
    assert (download.data, download.content_type) == (b"1234", "image/png")


async def test_a_connection_error_is_not_a_refusal(session: aiohttp.ClientSession) -> None:
    """The rules let an allowed URL through to the network; only then does the connection fail."""
    client = make_client(session, "http://127.0.0.1:9", result_hosts=("127.0.0.1:9",), max_attempts=1)
    with pytest.raises(FalConnectionError):
        await client.download("http://127.0.0.1:9/files/a.png")
