"""Property tests: whatever bytes or JSON fal sends, the parsers return a typed value or raise `FalProtocolError`.

No ValueError, TypeError, KeyError, AttributeError, UnicodeDecodeError or RecursionError may escape.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings, strategies as st
from multidict import CIMultiDict

from bot.fal import Completed, FalHTTPError, FalProtocolError, FalUnsafeURL, InProgress, KontextOutput, Queued
from bot.fal.errors import FalValidationError, http_error
from bot.fal.models import QueueHandle, parse_status
from bot.fal.urls import QueueURLs, ResultHosts
from bot.fal.wire import MAX_JSON_DEPTH, decode_data_uri, loads_json, sse_data
from bot.messages import describe_failure

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
KEYS = st.sampled_from(
    [
        "status", "queue_position", "logs", "message", "metrics", "inference_time", "error", "error_type",
        "request_id", "images", "url", "width", "height", "content_type", "has_nsfw_concepts", "seed",
        "timings", "prompt", "detail", "loc", "msg", "type",
    ]
)  # fmt: skip
STATUSES = st.sampled_from(["IN_QUEUE", "IN_PROGRESS", "COMPLETED", "CANCELLED", ""])
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.sampled_from([10**400, -(10**400)])
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20)
    | STATUSES
)
JSON = st.recursive(
    SCALARS,
    lambda children: st.lists(children, max_size=5) | st.dictionaries(KEYS | st.text(max_size=8), children, max_size=6),
    max_leaves=30,
)
# objects shaped like fal's, with any value in any field
FAL_LIKE = st.dictionaries(KEYS, JSON, max_size=8) | st.fixed_dictionaries({"status": STATUSES}, optional={
    "queue_position": JSON, "logs": st.lists(st.dictionaries(KEYS, JSON, max_size=3) | JSON, max_size=3),
    "metrics": st.dictionaries(KEYS, JSON, max_size=2) | JSON, "error": JSON, "error_type": JSON,
})  # fmt: skip
IMAGE = st.fixed_dictionaries({"url": JSON}, optional={"width": JSON, "height": JSON, "content_type": JSON})
OUTPUT_LIKE = st.fixed_dictionaries(
    {"images": st.lists(IMAGE | JSON, max_size=4)},
    optional={"has_nsfw_concepts": st.lists(JSON, max_size=4) | JSON, "seed": JSON, "prompt": JSON, "timings": JSON},
)
TEXT_BYTES = (
    st.binary(max_size=300) | JSON.map(lambda v: json.dumps(v).encode()) | st.text(max_size=100).map(str.encode)
)


@FUZZ
@given(JSON | FAL_LIKE)
@example({"status": "COMPLETED", "metrics": {"inference_time": 10**400}, "error": [[]], "error_type": {}})
@example({"status": "IN_QUEUE", "queue_position": True})
def test_parse_status_returns_a_status_or_a_protocol_error(payload: Any) -> None:
    try:
        status = parse_status(payload)
    except FalProtocolError:
        return
    assert isinstance(status, Queued | InProgress | Completed)
    assert hash(status) is not None  # compared and de-duplicated by `watch`
    if isinstance(status, Queued):
        assert status.position >= 0


@FUZZ
@given(TEXT_BYTES)
def test_loads_json_returns_json_or_a_protocol_error(raw: bytes) -> None:
    with contextlib.suppress(FalProtocolError):
        loads_json(raw, "answer")


@FUZZ
@given(JSON | OUTPUT_LIKE)
def test_output_parser_returns_an_output_or_a_protocol_error(payload: Any) -> None:
    try:
        output = KontextOutput.from_payload(payload)
    except FalProtocolError:
        return
    assert output.images and all(isinstance(image.url, str) for image in output.images)
    assert len(output.first(1).images) == 1
    assert all(isinstance(output.is_nsfw(i), bool) for i in range(len(output.images) + 1))


async def _chunks(data: bytes, cuts: list[int]) -> AsyncIterator[bytes]:
    start = 0
    for cut in sorted({min(c, len(data)) for c in cuts}):
        yield data[start:cut]
        start = cut
    yield data[start:]


async def _read_events(data: bytes, cuts: list[int], limit: int) -> list[Any]:
    statuses = []
    async for event in sse_data(_chunks(data, cuts), limit):
        assert len(event) <= limit
        statuses.append(parse_status(loads_json(event, "status event")))
    return statuses


SSE_LINES = st.lists(
    st.sampled_from([b"", b": ping", b"data: ", b"data:", b"event: x", b"\r"])
    | FAL_LIKE.map(lambda v: b"data: " + json.dumps(v).encode())
    | st.binary(max_size=40),
    max_size=12,
).map(lambda lines: b"\n".join(lines))


@FUZZ
@given(SSE_LINES | st.binary(max_size=400), st.lists(st.integers(0, 400), max_size=8), st.integers(1, 200))
def test_sse_reader_yields_statuses_or_a_protocol_error(data: bytes, cuts: list[int], limit: int) -> None:
    with contextlib.suppress(FalProtocolError):
        asyncio.run(_read_events(data, cuts, limit))


def test_sse_reader_splits_events_wherever_the_chunks_end() -> None:
    event = (
        b'data: {"status": "IN_QUEUE", "queue_position": 3}\r\n\r\n: ping\n\ndata: {"status":\ndata: "COMPLETED"}\n\n'
    )
    for cut in range(len(event) + 1):
        assert asyncio.run(_read_events(event, [cut], 1000)) == [Queued(3), Completed()]


@FUZZ
@given(
    st.integers(300, 599),
    JSON | FAL_LIKE,
    st.dictionaries(st.sampled_from(["retry-after", "x-fal-error-type"]), st.text(max_size=10)),
)
def test_http_errors_are_usable_whatever_the_body(status: int, body: Any, headers: dict[str, str]) -> None:
    for during_result in (False, True):
        error = http_error(status, body, CIMultiDict(headers), during_result=during_result)
        assert isinstance(error, FalHTTPError) and error.status == status
        assert isinstance(error.summary, str) and isinstance(error.moderated, bool)
        assert all(isinstance(kind, str) for kind in error.error_types)
        if isinstance(error, FalValidationError):
            assert all(isinstance(issue.field, str) for issue in error.issues)
        assert len(str(error)) < 1000 and describe_failure(error)


@FUZZ
@given(st.text(max_size=80), st.integers(0, 64))
def test_data_uris_decode_or_raise_a_protocol_error(text: str, limit: int) -> None:
    for uri in (text, "data:" + text, "data:image/png;base64," + text):
        try:
            data, media_type = decode_data_uri(uri, limit)
        except FalProtocolError:
            continue
        assert len(data) <= limit and media_type.startswith("image/")


@FUZZ
@given(st.text(max_size=60))
def test_result_hosts_accept_only_allowed_https_urls(text: str) -> None:
    rules = ResultHosts(("fal.media",))
    for raw in (text, "https://" + text, "https://fal.media/" + text, "https://" + text + ".fal.media/x"):
        try:
            url = rules.check(raw)
        except FalUnsafeURL:
            continue
        assert url.scheme == "https" and url.port == 443
        assert (url.host or "").rstrip(".").lower().endswith("fal.media")


@FUZZ
@given(st.text(max_size=30), st.text(max_size=30))
def test_queue_urls_stay_under_the_base(endpoint: str, request_id: str) -> None:
    urls = QueueURLs("https://reseller.example/fal/")
    for suffix in ("", "status", "status/stream", "cancel"):
        try:
            url = urls.request(QueueHandle(endpoint, request_id), suffix)
        except FalUnsafeURL:
            continue
        assert (url.scheme, url.host, url.port) == ("https", "reseller.example", 443)
        assert url.raw_path.startswith("/fal/") and f"/requests/{request_id}" in url.raw_path
        assert not url.query_string and not url.fragment
    with contextlib.suppress(FalUnsafeURL):
        assert urls.submit(endpoint).raw_path.startswith("/fal/")


@pytest.mark.parametrize("outer", ["[{}]", '{{"a": {}}}'])
def test_nesting_up_to_the_limit_is_read_and_one_more_is_refused(outer: str) -> None:
    def nested(depth: int) -> bytes:
        text = "1"
        for _ in range(depth):
            text = outer.format(text)
        return text.encode()

    assert loads_json(nested(MAX_JSON_DEPTH), "answer") is not None
    with pytest.raises(FalProtocolError, match="nests deeper"):
        loads_json(nested(MAX_JSON_DEPTH + 1), "answer")


@pytest.mark.parametrize("depth", [33, 1000, 100_000])
def test_deep_nesting_is_refused_not_a_recursion_error(depth: int) -> None:
    with pytest.raises(FalProtocolError):
        parse_status(loads_json(b'{"status": ' + b"[" * depth + b"]" * depth + b"}", "answer"))
