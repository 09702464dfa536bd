"""Pure tests of the fal wire models, the error mapping, the retry policy and the user-facing texts."""

from __future__ import annotations

import random
from typing import Any

import pytest
from multidict import CIMultiDict
from pydantic import ValidationError

from bot.fal import (
    Completed,
    EditRequest,
    FalAuthError,
    FalConnectionError,
    FalError,
    FalHTTPError,
    FalProtocolError,
    FalRateLimited,
    FalRequestFailed,
    FalServerError,
    FalSubmitUnconfirmed,
    FalTimeout,
    FalValidationError,
    InProgress,
    KontextOutput,
    Queued,
    ValidationIssue,
)
from bot.fal.errors import http_error
from bot.fal.models import parse_status
from bot.fal.registry import KONTEXT_MAX_MULTI
from bot.fal.retry import backoff_delay, retryable_read, retryable_submit
from bot.messages import describe_failure
from tests.fakes.fake_fal import validate_input

KEY = "kid-4711:s3cr3t-Xq9vLpZt"
UNAUTHORIZED = {"detail": "No user found for Key ID and Secret"}
EXHAUSTED = {"detail": "User is locked. Reason: Exhausted balance. Top up your balance at fal.ai/dashboard/billing."}
ADMIN_LOCK = {"detail": "User is locked. Reason: Admin lock. Please contact support@fal.ai"}
POLICY_ITEM = {
    "loc": ["body", "prompt"],
    "msg": "The prompt was flagged.",
    "type": "content_policy_violation",
    "url": "https://docs.fal.ai/errors/#content_policy_violation",
}
RANGE_ITEM = {
    "loc": ["body", "guidance_scale"],
    "msg": "Input should be less than or equal to 20",
    "type": "less_than_equal",
}
BASE_INPUT: dict[str, Any] = {"prompt": "put the cat on the sofa", "image_urls": ("https://img.invalid/a.png",)}
OUTPUT: dict[str, Any] = {
    "images": [{"url": "https://v3.fal.media/files/a.jpg", "width": 1024, "height": 768, "content_type": "image/jpeg"}],
    "timings": {"inference": 1.22},
    "seed": 2841475369,
    "has_nsfw_concepts": [False],
    "prompt": "put the cat on the sofa",
}


# -- parse_status ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        ({"status": "IN_QUEUE", "queue_position": 3, "request_id": "r"}, Queued(3)),
        ({"status": "IN_QUEUE", "queue_position": 0}, Queued(0)),
        ({"status": "IN_QUEUE"}, Queued(0)),
        ({"status": "IN_QUEUE", "queue_position": None}, Queued(0)),
        ({"status": "IN_QUEUE", "queue_position": -1}, Queued(0)),
        ({"status": "IN_QUEUE", "queue_position": "5"}, Queued(0)),
        ({"status": "IN_PROGRESS", "logs": None}, InProgress(())),
        ({"status": "IN_PROGRESS"}, InProgress(())),
        (
            {
                "status": "IN_PROGRESS",
                "logs": [
                    {"message": "step 1", "level": "INFO", "source": "user", "timestamp": "2025-01-01T00:00:00Z"},
                    {"level": "INFO"},
                    "not a mapping",
                ],
            },
            InProgress(("step 1", "")),
        ),
        ({"status": "COMPLETED", "logs": None, "metrics": {"inference_time": 3.42}}, Completed(inference_seconds=3.42)),
        ({"status": "COMPLETED", "metrics": {"inference_time": 2}}, Completed(inference_seconds=2.0)),
        ({"status": "COMPLETED"}, Completed()),
        ({"status": "COMPLETED", "metrics": None}, Completed()),
        ({"status": "COMPLETED", "metrics": {"inference_time": "fast"}}, Completed()),
        (
            {
                "status": "COMPLETED",
                "metrics": {},
                "error": "Request cancelled by client",
                "error_type": "client_cancelled",
            },
            Completed(error="Request cancelled by client", error_type="client_cancelled"),
        ),
        ({"status": "COMPLETED", "error": "", "error_type": None}, Completed()),
        # hostile values: never an exception, never a non-string where a string is typed
        ({"status": "COMPLETED", "metrics": {"inference_time": 10**400}}, Completed()),
        ({"status": "COMPLETED", "metrics": {"inference_time": float("nan")}}, Completed()),
        ({"status": "COMPLETED", "metrics": {"inference_time": True}}, Completed()),
        ({"status": "COMPLETED", "error": ["x"], "error_type": {"a": 1}}, Completed(error="fal reported an error")),
        ({"status": "IN_QUEUE", "queue_position": True}, Queued(0)),
        ({"status": "IN_PROGRESS", "logs": [{"message": {"nested": 1}}]}, InProgress(("",))),
        # states fal does not document, seen by others: treated as still running
        ({"status": "CANCELLATION_REQUESTED"}, InProgress(())),
        ({"status": "SOMETHING_NEW", "logs": [{"message": "hi"}]}, InProgress(("hi",))),
    ],
)
def test_parse_status(payload: dict[str, Any], expected: object) -> None:
    assert parse_status(payload) == expected


@pytest.mark.parametrize(
    "payload",
    [{}, {"queue_position": 1}, {"status": None}, {"status": 3}, None, "IN_QUEUE", ["IN_QUEUE"]],
)
def test_parse_status_without_status_is_protocol_error(payload: Any) -> None:
    with pytest.raises(FalProtocolError, match="without a status"):
        parse_status(payload)


# -- EditRequest and a model's payload (more per model in test_models.py) ----------------------


def test_kontext_payload_sends_its_defaults_and_omits_unset_options() -> None:
    payload = EditRequest(**BASE_INPUT).to_payload(KONTEXT_MAX_MULTI)
    assert payload == {
        "prompt": "put the cat on the sofa",
        "image_urls": ["https://img.invalid/a.png"],
        "num_images": 1,
        "output_format": "jpeg",
    }
    assert validate_input(payload) == []  # the fake's fal-style validator accepts it


def test_kontext_payload_with_every_option() -> None:
    full = EditRequest(
        **{**BASE_INPUT, "image_urls": ("https://a.invalid/1.png", "data:image/png;base64,AAAA")},
        seed=0,
        guidance_scale=3.5,
        num_images=4,
        output_format="png",
        safety_tolerance="6",
        aspect_ratio="9:21",
    )
    payload = full.to_payload(KONTEXT_MAX_MULTI)
    assert payload == {
        "prompt": "put the cat on the sofa",
        "image_urls": ["https://a.invalid/1.png", "data:image/png;base64,AAAA"],
        "seed": 0,
        "guidance_scale": 3.5,
        "num_images": 4,
        "output_format": "png",
        "safety_tolerance": "6",  # a string on the wire
        "aspect_ratio": "9:21",
    }
    assert validate_input(payload) == []


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"prompt": ""}, "prompt"),
        ({"image_urls": ()}, "image_urls"),
        ({"safety_tolerance": 2}, "safety_tolerance"),  # fal wants the string "2"
        ({"sync_mode": True}, "sync_mode"),  # extra fields are refused
    ],
)
def test_request_rejects_what_no_model_takes(changes: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError) as err:
        EditRequest(**{**BASE_INPUT, **changes})
    assert [e["loc"][0] for e in err.value.errors()] == [field]


def test_request_is_frozen_and_a_stored_kontext_body_still_parses() -> None:
    stored = (
        '{"prompt":"p","image_urls":["https://x/a.png"],"seed":7,"guidance_scale":null,"num_images":2,'
        '"output_format":"png","safety_tolerance":"3","aspect_ratio":null,"enhance_prompt":null}'
    )
    request = EditRequest.from_json(stored)
    assert (request.seed, request.num_images, request.output_format, request.safety_tolerance) == (7, 2, "png", "3")
    assert EditRequest.from_json(request.model_dump_json()) == request
    with pytest.raises(ValidationError):
        request.prompt = "changed"  # type: ignore[misc]


# -- KontextOutput ---------------------------------------------------------------------------


def test_output_parses_fal_result() -> None:
    output = KontextOutput.from_payload(OUTPUT)
    (image,) = output.images
    assert (image.url, image.width, image.height, image.content_type) == (
        "https://v3.fal.media/files/a.jpg",
        1024,
        768,
        "image/jpeg",
    )
    assert (output.seed, output.prompt, output.timings) == (2841475369, "put the cat on the sofa", {"inference": 1.22})
    assert output.has_nsfw_concepts == (False,)


def test_output_is_lenient() -> None:
    reseller = {
        **OUTPUT,
        "images": [{"url": "https://v3.fal.media/files/b.png", "file_name": "b.png"}],  # no size, extra key
        "request": {"prompt": "p", "image_urls": ["u"]},  # resellers echo the request
        "extra": 1,
    }
    output = KontextOutput.from_payload(reseller)
    assert output.images[0].url == "https://v3.fal.media/files/b.png"
    assert (output.images[0].width, output.images[0].height, output.images[0].content_type) == (
        None,
        None,
        "image/jpeg",
    )
    minimal = KontextOutput.from_payload({"images": [{"url": "https://v3.fal.media/files/c.png"}]})
    assert (minimal.seed, minimal.has_nsfw_concepts, minimal.prompt, minimal.timings) == (None, (), "", {})
    with pytest.raises(FalProtocolError):
        KontextOutput.from_payload({"images": []})  # nothing generated is not a result


@pytest.mark.parametrize(
    "payload",
    [
        {},
        {"images": "garbage"},
        {"images": [{"width": 1}]},
        {"images": [{"url": None}]},
        {"images": [], "has_nsfw_concepts": "no"},
        None,
        "text",
        [OUTPUT],
    ],
)
def test_output_bad_shape_is_protocol_error(payload: Any) -> None:
    with pytest.raises(FalProtocolError, match="unexpected result shape"):
        KontextOutput.from_payload(payload)


def test_is_nsfw() -> None:
    output = KontextOutput.from_payload({**OUTPUT, "images": OUTPUT["images"] * 3, "has_nsfw_concepts": [False, True]})
    assert [output.is_nsfw(i) for i in range(4)] == [False, True, False, False]  # missing flags count as safe
    assert not KontextOutput.from_payload({"images": OUTPUT["images"]}).is_nsfw(0)


# -- http_error mapping ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "body", "headers", "during_result", "expected"),
    [
        (401, UNAUTHORIZED, {}, False, FalAuthError),
        (403, EXHAUSTED, {}, False, FalAuthError),
        (401, UNAUTHORIZED, {}, True, FalAuthError),
        (403, ADMIN_LOCK, {}, True, FalAuthError),
        (422, {"detail": [POLICY_ITEM]}, {}, False, FalValidationError),
        (422, {"detail": [RANGE_ITEM]}, {}, True, FalRequestFailed),
        (429, {"detail": "Too many requests"}, {"Retry-After": "2"}, False, FalRateLimited),
        (429, {"detail": "Too many requests"}, {}, True, FalRateLimited),  # the gateway's, not the job's
        (500, {"detail": "Internal Server Error"}, {}, False, FalServerError),
        (502, "<html>502 Bad Gateway nginx</html>", {}, False, FalServerError),
        (502, "<html>502 Bad Gateway nginx</html>", {}, True, FalServerError),  # a bare 5xx is the proxy
        (503, {"detail": "Runner disconnected", "error_type": "runner_disconnected"}, {}, True, FalRequestFailed),
        (504, {"detail": "Timed out"}, {"X-Fal-Error-Type": "request_timeout"}, True, FalRequestFailed),
        (504, {"detail": "Timed out"}, {"X-Fal-Error-Type": "startup_timeout"}, False, FalServerError),
        (400, {"detail": "Request was cancelled", "error_type": "client_cancelled"}, {}, True, FalRequestFailed),
        (400, {"status": "ALREADY_COMPLETED"}, {}, False, FalHTTPError),
        (404, {"status": "NOT_FOUND"}, {}, False, FalHTTPError),
        (404, None, {}, False, FalHTTPError),
    ],
)
def test_http_error_mapping(
    status: int, body: Any, headers: dict[str, str], during_result: bool, expected: type[FalHTTPError]
) -> None:
    error = http_error(status, body, CIMultiDict(headers), during_result=during_result)
    assert type(error) is expected
    assert error.status == status
    assert str(error).startswith(f"fal answered {status}: ")


def test_http_error_fields() -> None:
    limited = http_error(429, {"detail": "slow down"}, CIMultiDict({"retry-after": "2.5"}))
    assert isinstance(limited, FalRateLimited) and limited.retry_after == 2.5
    for value in ("Wed, 21 Oct 2015 07:28:00 GMT", ""):
        dated = http_error(429, None, CIMultiDict({"Retry-After": value}))
        assert isinstance(dated, FalRateLimited) and dated.retry_after is None
    bare = http_error(429, None, CIMultiDict())
    assert isinstance(bare, FalRateLimited) and bare.retry_after is None

    from_header = http_error(503, {"detail": "down"}, CIMultiDict({"X-Fal-Error-Type": "runner_disconnected"}))
    from_body = http_error(503, {"detail": "x", "error_type": "a"}, CIMultiDict({"x-fal-error-type": "b"}))
    assert (from_header.error_type, from_body.error_type) == ("runner_disconnected", "a")

    auth = http_error(403, EXHAUSTED, CIMultiDict())
    assert isinstance(auth, FalAuthError) and auth.balance_exhausted
    assert auth.detail == EXHAUSTED["detail"]
    for body in (UNAUTHORIZED, ADMIN_LOCK):
        other = http_error(403, body, CIMultiDict())
        assert isinstance(other, FalAuthError) and not other.balance_exhausted


def test_http_error_with_hostile_fields() -> None:
    """Regression: a non-string error_type made `.moderated` raise TypeError; a non-list `loc` broke `.issues`."""
    odd = http_error(422, {"detail": [{"loc": 5, "msg": ["x"], "type": {}}], "error_type": {"a": 1}}, CIMultiDict())
    assert isinstance(odd, FalValidationError)
    assert (odd.error_type, odd.error_types, odd.moderated) == (None, [""], False)
    assert [(i.field, i.message, i.type) for i in odd.issues] == [("", "", "")]
    assert describe_failure(odd)
    for value in ("inf", "nan", "-1", "1e400"):
        limited = http_error(429, None, CIMultiDict({"Retry-After": value}))
        assert isinstance(limited, FalRateLimited) and limited.retry_after is None
    huge = http_error(500, {"detail": "x" * 100_000}, CIMultiDict())
    assert len(str(huge)) < 1000 and len(huge.summary) == 100_000


@pytest.mark.parametrize(
    ("detail", "summary"),
    [
        ([POLICY_ITEM, RANGE_ITEM], "The prompt was flagged.; Input should be less than or equal to 20"),
        (["plain", {"no_msg": 1}], "plain; {'no_msg': 1}"),
        ({"status": "ALREADY_COMPLETED"}, "ALREADY_COMPLETED"),
        ({"message": "OpenAI-style", "type": "x"}, "OpenAI-style"),
        ("Request failed", "Request failed"),
        (None, ""),
    ],
)
def test_summary_shapes(detail: Any, summary: str) -> None:
    assert FalHTTPError(500, detail).summary == summary


def test_validation_issues_and_moderation() -> None:
    item = {"loc": ["body", "image_urls", 0], "msg": "Image too large", "type": "image_too_large"}
    error = FalValidationError(422, [item, POLICY_ITEM, {"msg": "no loc"}, "not a mapping"])
    assert [(i.field, i.type, i.message) for i in error.issues] == [
        ("image_urls.0", "image_too_large", "Image too large"),
        ("prompt", "content_policy_violation", "The prompt was flagged."),
        ("", "", "no loc"),
    ]
    assert error.moderated
    assert "field='image_urls.0'" in repr(error.issues[0])
    assert not FalValidationError(422, [RANGE_ITEM]).moderated
    assert FalValidationError(422, "flagged", "content_policy_violation").moderated
    assert FalValidationError(422, "text detail").issues == []
    assert ValidationIssue.from_payload({}).field == ""


def test_request_failed_moderation() -> None:
    assert FalRequestFailed(422, [POLICY_ITEM]).moderated
    assert FalRequestFailed(422, "flagged", "content_policy_violation").moderated
    assert not FalRequestFailed(422, [RANGE_ITEM], "less_than_equal").moderated
    assert not FalRequestFailed(503, "Runner disconnected", "runner_disconnected").moderated


# -- retry policy ----------------------------------------------------------------------------

ERRORS: dict[str, FalError] = {
    "auth": FalAuthError(401, UNAUTHORIZED["detail"]),
    "validation": FalValidationError(422, [RANGE_ITEM]),
    "rate_limited": FalRateLimited(429, "busy"),
    "500": FalServerError(500, "Internal Server Error"),
    "502": FalServerError(502, "Bad Gateway"),
    "503": FalServerError(503, "Service Unavailable"),
    "504": FalServerError(504, "Gateway Timeout", "request_timeout"),
    "request_failed": FalRequestFailed(422, [POLICY_ITEM]),
    "http_404": FalHTTPError(404, {"status": "NOT_FOUND"}),
    "protocol": FalProtocolError("bad"),
    "connection": FalConnectionError("refused"),
    "unconfirmed": FalSubmitUnconfirmed("no answer"),
    "timeout": FalTimeout("late"),
}


@pytest.mark.parametrize(
    ("name", "submit", "read"),
    [
        ("auth", False, False),
        ("validation", False, False),
        ("rate_limited", True, True),
        ("500", False, True),
        ("502", False, True),
        ("503", True, True),
        ("504", False, True),
        ("request_failed", False, False),
        ("http_404", False, False),
        ("protocol", False, False),
        ("connection", True, True),
        ("unconfirmed", False, True),  # a submit that may have reached fal is never resent
        ("timeout", False, True),
    ],
)
def test_retry_policy(name: str, submit: bool, read: bool) -> None:
    assert (retryable_submit(ERRORS[name]), retryable_read(ERRORS[name])) == (submit, read)


def test_backoff_delay_bounds() -> None:
    for attempt in range(1, 9):
        for base, cap in ((0.5, 10.0), (1.0, 10.0), (0.02, 0.1)):
            for _ in range(50):
                delay = backoff_delay(attempt, base=base, cap=cap)
                assert base / 2 <= delay <= min(cap, base * 2**attempt)


def test_backoff_delay_upper_bound_grows_then_caps(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(random, "uniform", lambda low, high: high)
    assert [backoff_delay(n, base=0.5, cap=10.0) for n in range(1, 7)] == [1.0, 2.0, 4.0, 8.0, 10.0, 10.0]
    monkeypatch.setattr(random, "uniform", lambda low, high: low)
    assert {backoff_delay(n, base=0.5, cap=10.0) for n in range(1, 7)} == {0.25}


def test_backoff_delay_never_exceeds_cap() -> None:
    assert max(backoff_delay(n, base=4.0, cap=1.0) for n in range(1, 20)) <= 1.0


@pytest.mark.parametrize(
    ("retry_after", "low", "high"),
    [
        (None, 0.25, 1.0),
        (0.0, 0.25, 1.0),
        (0.1, 0.25, 1.0),  # smaller than the backoff: no effect
        (5.0, 5.0, 5.0),  # larger: wins
        (100.0, 10.0, 10.0),  # but never beyond the cap
    ],
)
def test_backoff_delay_retry_after(retry_after: float | None, low: float, high: float) -> None:
    for _ in range(50):
        assert low <= backoff_delay(1, base=0.5, cap=10.0, retry_after=retry_after) <= high


# -- describe_failure ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (FalTimeout("late"), "did not answer in time"),
        (FalSubmitUnconfirmed("no answer"), "It was not sent again"),
        (FalAuthError(401, UNAUTHORIZED["detail"]), "key was refused"),
        (FalAuthError(403, ADMIN_LOCK["detail"]), "key was refused"),
        (FalAuthError(403, EXHAUSTED["detail"]), "out of credit"),
        (FalValidationError(422, [POLICY_ITEM]), "safety filter"),
        (FalRequestFailed(422, [POLICY_ITEM]), "safety filter"),
        (FalRequestFailed(422, "flagged", "content_policy_violation"), "safety filter"),
        (
            FalRequestFailed(422, [{"loc": ["body", "image_urls", 0], "type": "file_download_error"}]),
            "could not download",
        ),
        (FalRequestFailed(504, "slow", "generation_timeout"), "took too long"),
        (FalRequestFailed(400, "Request was cancelled", "client_cancelled"), "was cancelled"),
        (FalValidationError(422, [RANGE_ITEM]), "refused the request: Input should be less than or equal to 20"),
        (FalValidationError(422, None), "refused the request: error 422"),
        (FalRateLimited(429, "busy"), "busy right now"),
        (FalServerError(502, "<html>nginx</html>"), "having trouble"),
        (FalConnectionError("refused"), "having trouble"),
        (FalProtocolError("status event is not JSON"), "sent something unexpected (status event is not JSON)"),
        (FalHTTPError(404, {"status": "NOT_FOUND"}), "Something went wrong"),
        (None, "Something went wrong"),
    ],
)
def test_describe_failure(error: FalError | None, expected: str) -> None:
    text = describe_failure(error)
    assert expected in text
    assert "Traceback" not in text and "\n" not in text


def test_describe_failure_timed_out_wins() -> None:
    assert "did not finish in time" in describe_failure(FalServerError(500, "x"), timed_out=True)
    assert "did not finish in time" in describe_failure(None, timed_out=True)


def test_describe_failure_never_echoes_auth_details() -> None:
    """A server (or reseller) may echo the header it refused: auth texts are fixed, never the detail."""
    for status in (401, 403):
        error = FalAuthError(status, f"Invalid Key Authorization header format: 'Key {KEY}'")
        text = describe_failure(error)
        assert KEY not in text and KEY.split(":")[1] not in text


def test_describe_failure_caps_server_text() -> None:
    text = describe_failure(FalValidationError(422, [{"msg": "x" * 1000, "type": "odd"}]))
    assert text.startswith("Sorry, the image service refused the request: ")
    assert len(text) < 400
