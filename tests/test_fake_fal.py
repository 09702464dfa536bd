"""Fidelity tests for the fake fal queue (tests/fakes/fake_fal.py) and the image helpers."""

from __future__ import annotations

import asyncio
import base64
import io
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import fal_client
import pytest
from PIL import Image

from tests.fakes.fake_fal import FakeFal, JobScript, Outcome, State
from tests.fakes.images import make_jpeg, make_png, padded_png

KEY = "fake-key:secret"
AUTH = {"Authorization": f"Key {KEY}"}
ENDPOINT = "fal-ai/flux-pro/kontext/max/multi"
APP = "fal-ai/flux-pro"
VALID: dict[str, Any] = {"prompt": "put the cat on the sofa", "image_urls": ["https://img.invalid/a.png"]}
POLICY_422 = {
    "detail": [
        {"loc": ["body", "prompt"], "msg": "flagged", "type": "content_policy_violation", "url": "https://x"},
    ]
}


# -- fixtures and helpers --------------------------------------------------------------------


@pytest.fixture
async def fake() -> AsyncIterator[FakeFal]:
    async with FakeFal() as server:
        yield server


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
async def fal(fake: FakeFal, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[fal_client.AsyncClient]:
    monkeypatch.setattr(fal_client.client, "QUEUE_URL_FORMAT", f"{fake.base_url}/")
    client = fal_client.AsyncClient(key=KEY)
    yield client
    await (await client._client).aclose()  # fal_client never closes its httpx pool itself


async def submit(http: aiohttp.ClientSession, fake: FakeFal, body: Any = VALID, **kw: Any) -> dict[str, Any]:
    headers = kw.pop("headers", AUTH)
    async with http.post(f"{fake.base_url}/{ENDPOINT}", json=body, headers=headers, **kw) as resp:
        assert resp.status == 200, await resp.text()
        data: dict[str, Any] = await resp.json()
        return data


async def get_json(http: aiohttp.ClientSession, url: str, **kw: Any) -> tuple[int, Any]:
    async with http.get(url, headers=kw.pop("headers", AUTH), **kw) as resp:
        assert resp.content_type == "application/json"
        return resp.status, await resp.json()


async def wait_state(fake: FakeFal, request_id: str, state: State) -> None:
    async with asyncio.timeout(3):
        await fake.jobs[request_id].wait_state(state)


async def read_sse(resp: aiohttp.ClientResponse) -> tuple[list[dict[str, Any]], int]:
    """All `data:` events (JSON) and the number of `: ping` comments until EOF."""
    events: list[dict[str, Any]] = []
    pings = 0
    async for raw in resp.content:
        line = raw.decode().rstrip("\n")
        if line.startswith("data: "):
            events.append(json.loads(line[len("data: ") :]))
        elif line == ": ping":
            pings += 1
    return events, pings


# -- official fal_client against the fake ----------------------------------------------------


async def test_fal_client_full_flow(fake: FakeFal, fal: fal_client.AsyncClient, http: aiohttp.ClientSession) -> None:
    fake.add_script(JobScript(step_seconds=0.08))
    body = {**VALID, "seed": 42, "num_images": 2}
    handle = await fal.submit(ENDPOINT, body, webhook_url="https://hook.invalid/x", priority="low", start_timeout=30)
    assert handle.status_url == f"{fake.base_url}/{APP}/requests/{handle.request_id}/status"

    events = [ev async for ev in handle.iter_events(with_logs=True, interval=0.005)]
    positions = [ev.position for ev in events if isinstance(ev, fal_client.Queued)]
    assert positions[0] == 2 and set(positions) == {2, 1, 0} and positions == sorted(positions, reverse=True)
    assert any(isinstance(ev, fal_client.InProgress) and ev.logs for ev in events)
    done = events[-1]
    assert isinstance(done, fal_client.Completed) and done.error is None
    assert [log["message"] for log in done.logs or []] == ["step 1/2", "step 2/2"]
    assert done.metrics == {"inference_time": 0.16}

    result = await handle.get()
    assert result["seed"] == 42 and result["prompt"] == VALID["prompt"]
    assert result["has_nsfw_concepts"] == [False, False]
    urls = [img["url"] for img in result["images"]]
    assert urls == [f"{fake.base_url}/files/{handle.request_id}/{i}.png" for i in range(2)]
    async with http.get(urls[0]) as resp:  # public CDN: no auth header
        assert resp.content_type == "image/png"
        image = result["images"][0]
        assert Image.open(io.BytesIO(await resp.read())).size == (image["width"], image["height"]) == (64, 64)

    sub = fake.requests[0]
    assert (sub.kind, sub.method, sub.path) == ("submit", "POST", f"/{ENDPOINT}")
    assert sub.query == {"fal_webhook": "https://hook.invalid/x"} and sub.json == body
    assert sub.headers["x-fal-queue-priority"] == "low" and sub.headers["x-fal-request-timeout"] == "30.0"
    assert sub.headers["authorization"] == f"Key {KEY}"
    assert {r.query["logs"] for r in fake.requests if r.kind == "status"} == {"true", "false"}


async def test_fal_client_cancel_in_queue(fake: FakeFal, fal: fal_client.AsyncClient) -> None:
    fake.add_script(JobScript(hold=True))
    handle = await fal.submit(ENDPOINT, VALID)
    assert await handle.status() == fal_client.Queued(position=2)
    await handle.cancel()
    status = await handle.status()
    assert isinstance(status, fal_client.Completed)
    assert (status.error, status.error_type) == ("Request cancelled by client", "client_cancelled")
    with pytest.raises(fal_client.FalClientHTTPError) as result_err:
        await handle.get()
    assert (result_err.value.status_code, result_err.value.error_type) == (400, "client_cancelled")
    with pytest.raises(fal_client.FalClientHTTPError) as cancel_err:
        await handle.cancel()
    assert cancel_err.value.status_code == 400
    assert json.loads(cancel_err.value.message) == {"status": "ALREADY_COMPLETED"}  # no `detail`: raw text
    assert fake.jobs[handle.request_id].cancelled


async def test_fal_client_error_outcome_raises_on_get(fake: FakeFal, fal: fal_client.AsyncClient) -> None:
    fake.add_script(
        JobScript(queue_positions=(), step_seconds=0, outcome=Outcome(kind="error", result_body=POLICY_422))
    )
    handle = await fal.submit(ENDPOINT, VALID)
    with pytest.raises(fal_client.FalClientHTTPError) as err:
        await handle.get(interval=0.005)
    assert err.value.status_code == 422
    message: Any = err.value.message  # typed str, but it is the detail list
    assert message == POLICY_422["detail"]


async def test_fal_client_rebuilt_handle_uses_app_root(fake: FakeFal, fal: fal_client.AsyncClient) -> None:
    handle = await fal.submit(ENDPOINT, VALID)
    rebuilt = await fal.get_handle(ENDPOINT, handle.request_id)
    assert rebuilt.status_url == handle.status_url
    assert isinstance(await rebuilt.status(), fal_client.Queued | fal_client.InProgress | fal_client.Completed)


async def test_fal_client_retries_429_and_ingress_errors_only(fake: FakeFal, fal: fal_client.AsyncClient) -> None:
    fake.add_script(JobScript(hold=True))
    handle = await fal.submit(ENDPOINT, VALID)
    fake.fail_next("status", 429, times=2)
    fake.fail_next("status", 503, b"<html>502 Bad Gateway nginx</html>")
    assert await handle.status() == fal_client.Queued(position=2)
    assert fake.count("status") == 4
    fake.fail_next("status", 503, {"detail": "runner down", "error_type": "runner_disconnected"})
    with pytest.raises(fal_client.FalClientHTTPError) as err:
        await handle.status()
    assert (err.value.status_code, err.value.error_type) == (503, "runner_disconnected")
    assert fake.count("status") == 5


async def test_fal_client_resends_submit_after_dropped_connection(fake: FakeFal, fal: fal_client.AsyncClient) -> None:
    fake.fail_next("submit", 0, drop=True)
    handle = await fal.submit(ENDPOINT, VALID)
    assert [r.status for r in fake.requests if r.kind == "submit"] == [0, 200]
    assert list(fake.jobs) == [handle.request_id]


async def test_fal_client_bearer_override_only_applies_to_submit(monkeypatch: pytest.MonkeyPatch) -> None:
    async with FakeFal(key="sk-reseller", auth_scheme="Bearer") as reseller:
        monkeypatch.setattr(fal_client.client, "QUEUE_URL_FORMAT", f"{reseller.base_url}/")
        client = fal_client.AsyncClient(key="ignored:key")
        try:
            handle = await client.submit(ENDPOINT, VALID, headers={"Authorization": "Bearer sk-reseller"})
            with pytest.raises(fal_client.FalClientHTTPError) as err:
                await handle.status()
        finally:
            await (await client._client).aclose()
    assert (err.value.status_code, err.value.message) == (401, "No user found for Key ID and Secret")


async def test_advertised_base_is_returned_but_routes_stay_local(monkeypatch: pytest.MonkeyPatch) -> None:
    async with FakeFal(advertised_base="https://queue.fal.run") as reseller:
        monkeypatch.setattr(fal_client.client, "QUEUE_URL_FORMAT", f"{reseller.base_url}/")
        client = fal_client.AsyncClient(key=KEY)
        try:
            handle = await client.submit(ENDPOINT, VALID)  # never follow the returned URLs: no internet
        finally:
            await (await client._client).aclose()
        assert handle.response_url == f"https://queue.fal.run/{APP}/requests/{handle.request_id}"
        async with aiohttp.ClientSession() as http:
            status, _ = await get_json(http, f"{reseller.base_url}/{APP}/requests/{handle.request_id}/status")
        assert status == 202


# -- submit --------------------------------------------------------------------------------


async def test_submit_envelope(fake: FakeFal, http: aiohttp.ClientSession) -> None:
    async with http.post(f"{fake.base_url}/{ENDPOINT}", json=VALID, headers=AUTH) as resp:
        assert resp.status == 200 and resp.content_type == "application/json"
        env = await resp.json()
        assert resp.headers["x-fal-request-id"] == env["request_id"]
    base = f"{fake.base_url}/{APP}/requests/{env['request_id']}"
    assert env == {
        "status": "IN_QUEUE",
        "request_id": env["request_id"],
        "response_url": base,
        "status_url": f"{base}/status",
        "cancel_url": f"{base}/cancel",
        "logs": None,
        "metrics": {},
        "queue_position": 2,
    }
    assert fake.jobs[env["request_id"]].input == VALID


async def test_submit_without_queue_starts_in_progress(fake: FakeFal, http: aiohttp.ClientSession) -> None:
    fake.add_script(JobScript(queue_positions=(), hold=True))
    env = await submit(http, fake)
    assert env["status"] == "IN_PROGRESS" and "queue_position" not in env


async def test_scripts_are_fifo_then_default(fake: FakeFal, http: aiohttp.ClientSession) -> None:
    first, second = JobScript(queue_positions=(7,), hold=True), JobScript(queue_positions=(5,), hold=True)
    fake.add_script(first)
    fake.add_script(second)
    fake.default_script = JobScript(queue_positions=(3,), hold=True)
    envs = [await submit(http, fake) for _ in range(3)]
    assert [e["queue_position"] for e in envs] == [7, 5, 3]
    assert fake.jobs[envs[0]["request_id"]].script is first


@pytest.mark.parametrize(
    ("body", "loc", "type_", "ctx"),
    [
        ({"image_urls": ["u"]}, ["body", "prompt"], "missing", None),
        ({"prompt": "", "image_urls": ["u"]}, ["body", "prompt"], "string_too_short", {"min_length": 1}),
        ({"prompt": "p"}, ["body", "image_urls"], "missing", None),
        ({"prompt": "p", "image_urls": []}, ["body", "image_urls"], "sequence_too_short", {"min_length": 1}),
        ({"prompt": "p", "image_urls": ["u", 3]}, ["body", "image_urls", 1], "string_type", None),
        ({**VALID, "num_images": 5}, ["body", "num_images"], "less_than_equal", {"le": 4}),
        ({**VALID, "num_images": 0}, ["body", "num_images"], "greater_than_equal", {"ge": 1}),
        ({**VALID, "guidance_scale": 20.5}, ["body", "guidance_scale"], "less_than_equal", {"le": 20}),
        ({**VALID, "guidance_scale": 0.5}, ["body", "guidance_scale"], "greater_than_equal", {"ge": 1}),
        ({**VALID, "safety_tolerance": 2}, ["body", "safety_tolerance"], "one_of", {"expected": list("123456")}),
        ({**VALID, "output_format": "webp"}, ["body", "output_format"], "one_of", {"expected": ["jpeg", "png"]}),
        ({**VALID, "aspect_ratio": "5:4"}, ["body", "aspect_ratio"], "one_of", None),
        ({**VALID, "seed": "1"}, ["body", "seed"], "int_type", None),
        ([1, 2], ["body"], "dict_type", None),
    ],
)
async def test_submit_validation_422(
    fake: FakeFal, http: aiohttp.ClientSession, body: Any, loc: list[Any], type_: str, ctx: Any
) -> None:
    async with http.post(f"{fake.base_url}/{ENDPOINT}", json=body, headers=AUTH) as resp:
        assert resp.status == 422 and resp.content_type == "application/json"
        (err,) = (await resp.json())["detail"]
    assert (err["loc"], err["type"]) == (loc, type_)
    assert err["msg"] and err["url"].endswith(f"#{type_}")
    if ctx is not None:
        assert err["ctx"] == ctx
    assert not fake.jobs


async def test_submit_accepts_full_valid_input_and_invalid_json_is_422(
    fake: FakeFal, http: aiohttp.ClientSession
) -> None:
    full = {
        **VALID,
        "seed": 1,
        "guidance_scale": 3.5,
        "num_images": 4,
        "output_format": "png",
        "safety_tolerance": "6",
        "aspect_ratio": "9:21",
        "sync_mode": False,
        "enhance_prompt": True,
    }
    await submit(http, fake, full)
    async with http.post(f"{fake.base_url}/{ENDPOINT}", data=b"{nope", headers=AUTH) as resp:
        assert resp.status == 422
        assert (await resp.json())["detail"][0]["type"] == "json_invalid"
    assert fake.requests[-1].json == "{nope"


FLUX_2 = "fal-ai/flux-2-pro/edit"
SEEDREAM = "fal-ai/bytedance/seedream/v4/edit"


@pytest.mark.parametrize(
    ("endpoint", "body", "expected"),
    [
        (FLUX_2, {**VALID, "guidance_scale": 3.5}, {("guidance_scale", "extra_forbidden")}),  # FLUX.2 has none
        (FLUX_2, {**VALID, "num_images": 2, "aspect_ratio": "1:1"},
         {("num_images", "extra_forbidden"), ("aspect_ratio", "extra_forbidden")}),
        (FLUX_2, {**VALID, "safety_tolerance": "6", "image_size": "auto_2K"},
         {("safety_tolerance", "one_of"), ("image_size", "one_of")}),
        (SEEDREAM, {**VALID, "output_format": "png", "safety_tolerance": "2"},
         {("output_format", "extra_forbidden"), ("safety_tolerance", "extra_forbidden")}),
        (SEEDREAM, {**VALID, "num_images": 7, "enable_safety_checker": "yes"},
         {("num_images", "less_than_equal"), ("enable_safety_checker", "bool_type")}),
        ("fal-ai/flux-pro/kontext", VALID, {("image_url", "missing"), ("image_urls", "extra_forbidden")}),
        (ENDPOINT, {**VALID, "image_size": "square_hd"}, {("image_size", "extra_forbidden")}),
    ],
)  # fmt: skip
async def test_each_endpoint_validates_its_own_schema(
    fake: FakeFal, http: aiohttp.ClientSession, endpoint: str, body: Any, expected: set[tuple[str, str]]
) -> None:
    async with http.post(f"{fake.base_url}/{endpoint}", json=body, headers=AUTH) as resp:
        assert resp.status == 422
        detail = (await resp.json())["detail"]
    assert {(err["loc"][1], err["type"]) for err in detail} == expected
    assert all(err["loc"][0] == "body" and err["msg"] for err in detail) and not fake.jobs


@pytest.mark.parametrize(
    ("endpoint", "body", "keys", "image_keys", "count"),
    [
        (ENDPOINT, {**VALID, "num_images": 2}, {"images", "seed", "timings", "has_nsfw_concepts", "prompt"},
         {"url", "width", "height", "content_type"}, 2),
        (FLUX_2, {**VALID, "image_size": {"width": 640, "height": 480}, "enable_safety_checker": True},
         {"images", "seed"}, {"url", "width", "height", "content_type", "file_name", "file_size"}, 1),
        (SEEDREAM, {**VALID, "num_images": 3, "image_size": "auto_4K"}, {"images", "seed"},
         {"url", "width", "height", "content_type"}, 3),
        ("fal-ai/flux-pro/kontext", {"prompt": "p", "image_url": "https://img.invalid/a.png"},
         {"images", "seed", "timings", "has_nsfw_concepts", "prompt"}, {"url", "width", "height", "content_type"}, 1),
    ],
)  # fmt: skip
async def test_each_endpoint_answers_in_its_own_output_shape(
    fake: FakeFal, http: aiohttp.ClientSession, endpoint: str, body: Any, keys: set[str], image_keys: set[str],
    count: int,
) -> None:  # fmt: skip
    fake.add_script(JobScript(queue_positions=(), progress_steps=0))
    async with http.post(f"{fake.base_url}/{endpoint}", json=body, headers=AUTH) as resp:
        assert resp.status == 200, await resp.text()
        rid = (await resp.json())["request_id"]
    await wait_state(fake, rid, "COMPLETED")
    code, result = await get_json(http, f"{fake.base_url}/{endpoint}/requests/{rid}")
    assert code == 200 and set(result) == keys and len(result["images"]) == count
    assert all(set(image) == image_keys for image in result["images"])


async def test_balance_exhausted_blocks_submit_only(fake: FakeFal, http: aiohttp.ClientSession) -> None:
    fake.add_script(JobScript(hold=True))
    env = await submit(http, fake)
    fake.balance_exhausted = True
    async with http.post(f"{fake.base_url}/{ENDPOINT}", json=VALID, headers=AUTH) as resp:
        assert resp.status == 403
        assert (await resp.json())["detail"].startswith("User is locked. Reason: Exhausted balance.")
    assert (await get_json(http, env["status_url"]))[0] == 202


# -- status, result, routes ------------------------------------------------------------------


async def test_status_progression_codes_and_logs(fake: FakeFal, http: aiohttp.ClientSession) -> None:
    fake.add_script(JobScript(queue_positions=(0,), progress_steps=1, step_seconds=0.3, hold=True))
    env = await submit(http, fake)
    rid, url = env["request_id"], env["status_url"]
    assert await get_json(http, url) == (202, {k: env[k] for k in env if k not in ("logs", "metrics")})
    fake.release(rid)
    await wait_state(fake, rid, "IN_PROGRESS")
    code, running = await get_json(http, url, params={"logs": "0"})
    assert (code, running["status"], running["logs"]) == (202, "IN_PROGRESS", None)
    assert "queue_position" not in running
    _, with_logs = await get_json(http, url, params={"logs": "1"})
    (log,) = with_logs["logs"]
    assert (log["message"], log["level"], log["source"]) == ("step 1/1", "INFO", "user") and log["timestamp"]
    await wait_state(fake, rid, "COMPLETED")
    code, done = await get_json(http, url, params={"logs": "true"})
    assert (code, done["status"], len(done["logs"])) == (200, "COMPLETED", 1)
    assert done["metrics"] == {"inference_time": 0.3} and "error" not in done


async def test_result_before_completion_is_400(fake: FakeFal, http: aiohttp.ClientSession) -> None:
    fake.add_script(JobScript(hold=True))
    env = await submit(http, fake)
    assert await get_json(http, env["response_url"]) == (400, {"detail": "Request is still in progress"})


async def test_full_endpoint_prefix_and_response_suffix_are_accepted(
    fake: FakeFal, http: aiohttp.ClientSession
) -> None:
    fake.add_script(JobScript(queue_positions=(), progress_steps=0))
    rid = (await submit(http, fake))["request_id"]
    long_base = f"{fake.base_url}/{ENDPOINT}/requests/{rid}"
    assert (await get_json(http, f"{long_base}/status"))[1]["status"] == "COMPLETED"
    code, result = await get_json(http, f"{long_base}/response")
    assert code == 200 and len(result["images"]) == 1
    assert (await get_json(http, f"{fake.base_url}/other/app/requests/{rid}/status"))[0] == 404
    assert (await get_json(http, f"{fake.base_url}/{APP}/requests/nope/status"))[0] == 404
    assert [r.kind for r in fake.requests[1:]] == ["status", "result", "status", "status"]


async def test_success_outcome_variants(fake: FakeFal, http: aiohttp.ClientSession) -> None:
    jpeg = make_jpeg(30, 20)
    out = Outcome(nsfw=(False, True), image_bytes=jpeg, content_type="image/jpeg", result_host="http://evil.invalid")
    fake.add_script(JobScript(queue_positions=(), progress_steps=0, outcome=out))
    rid = (await submit(http, fake, {**VALID, "num_images": 2}))["request_id"]
    _, result = await get_json(http, f"{fake.base_url}/{APP}/requests/{rid}")
    assert result["has_nsfw_concepts"] == [False, True]
    assert result["images"][1] == {
        "url": f"http://evil.invalid/files/{rid}/1.jpeg",
        "width": 30,
        "height": 20,
        "content_type": "image/jpeg",
    }
    async with http.get(f"{fake.base_url}/files/{rid}/1.jpeg") as resp:
        assert resp.content_type == "image/jpeg" and await resp.read() == jpeg
    async with http.get(f"{fake.base_url}/files/{rid}/2.jpeg") as resp:
        assert resp.status == 404


async def test_default_images_differ_per_index_and_sync_mode_inlines(
    fake: FakeFal, http: aiohttp.ClientSession
) -> None:
    fake.default_script = JobScript(queue_positions=(), progress_steps=0)
    rid = (await submit(http, fake, {**VALID, "num_images": 3}))["request_id"]
    blobs = []
    for i in range(3):
        async with http.get(f"{fake.base_url}/files/{rid}/{i}.png") as resp:
            blobs.append(await resp.read())
    assert len(set(blobs)) == 3 and all(b.startswith(b"\x89PNG") for b in blobs)
    sync_id = (await submit(http, fake, {**VALID, "sync_mode": True}))["request_id"]
    _, result = await get_json(http, f"{fake.base_url}/{APP}/requests/{sync_id}")
    prefix = "data:image/png;base64,"
    assert result["images"][0]["url"].startswith(prefix)
    assert base64.b64decode(result["images"][0]["url"][len(prefix) :]) == blobs[0]


async def test_error_and_raw_outcomes(fake: FakeFal, http: aiohttp.ClientSession) -> None:
    infra = Outcome(
        kind="error", status_error="Runner disconnected", error_type="runner_disconnected", result_status=503
    )
    for outcome in (infra, Outcome(raw_result={"images": "garbage"})):
        fake.add_script(JobScript(queue_positions=(), progress_steps=0, outcome=outcome))
    ids = [(await submit(http, fake))["request_id"] for _ in range(2)]
    _, status = await get_json(http, f"{fake.base_url}/{APP}/requests/{ids[0]}/status")
    assert (status["error"], status["error_type"]) == ("Runner disconnected", "runner_disconnected")
    async with http.get(f"{fake.base_url}/{APP}/requests/{ids[0]}", headers=AUTH) as resp:
        assert resp.status == 503 and resp.headers["X-Fal-Error-Type"] == "runner_disconnected"
        assert await resp.json() == {"detail": "Runner disconnected", "error_type": "runner_disconnected"}
    assert await get_json(http, f"{fake.base_url}/{APP}/requests/{ids[1]}") == (200, {"images": "garbage"})


# -- SSE stream ------------------------------------------------------------------------------


async def test_sse_stream_events_and_pings(fake: FakeFal, http: aiohttp.ClientSession) -> None:
    fake.add_script(JobScript(queue_positions=(1, 0), progress_steps=2, hold=True))
    env = await submit(http, fake)
    async with http.get(f"{env['status_url']}/stream", params={"logs": "1"}, headers=AUTH) as resp:
        assert resp.status == 200 and resp.content_type == "text/event-stream"
        await asyncio.sleep(0.15)  # held: only pings flow
        fake.release(env["request_id"])
        events, pings = await read_sse(resp)  # ends by itself after COMPLETED
    assert pings >= 2
    assert [(e["status"], e.get("queue_position")) for e in events] == [
        ("IN_QUEUE", 1),
        ("IN_QUEUE", 0),
        ("IN_PROGRESS", None),
        ("IN_PROGRESS", None),
        ("COMPLETED", None),
    ]
    assert [len(e["logs"]) for e in events[2:]] == [1, 2, 2]
    assert events[-1]["metrics"] == {"inference_time": 0.04}
    assert all(e["cancel_url"] == env["cancel_url"] for e in events)


async def test_sse_stream_of_completed_job_sends_one_event(fake: FakeFal, http: aiohttp.ClientSession) -> None:
    fake.add_script(JobScript(queue_positions=(), progress_steps=0))
    env = await submit(http, fake)
    async with http.get(f"{env['status_url']}/stream", headers=AUTH) as resp:
        events, _ = await read_sse(resp)
    assert [e["status"] for e in events] == ["COMPLETED"] and events[0]["logs"] is None


async def test_sse_stream_drop_fault(fake: FakeFal, http: aiohttp.ClientSession) -> None:
    fake.add_script(JobScript(hold=True))
    env = await submit(http, fake)
    fake.fail_next("stream", 200, drop=True)
    events: list[dict[str, Any]] = []
    with pytest.raises(aiohttp.ClientPayloadError):
        async with http.get(f"{env['status_url']}/stream", headers=AUTH) as resp:
            async for raw in resp.content:
                if raw.startswith(b"data: "):
                    events.append(json.loads(raw[6:]))
    assert [e["queue_position"] for e in events] == [2]


# -- cancel ----------------------------------------------------------------------------------


async def cancel(http: aiohttp.ClientSession, url: str) -> tuple[int, Any]:
    async with http.put(url, headers=AUTH) as resp:
        assert resp.content_type == "application/json"
        return resp.status, await resp.json()


async def test_cancel_codes(fake: FakeFal, http: aiohttp.ClientSession) -> None:
    fake.add_script(JobScript(hold=True))
    queued = await submit(http, fake)
    assert await cancel(http, queued["cancel_url"]) == (202, {"status": "CANCELLATION_REQUESTED"})
    assert fake.jobs[queued["request_id"]].state == "COMPLETED"
    assert await get_json(http, queued["response_url"]) == (
        400,
        {"detail": "Request was cancelled", "error_type": "client_cancelled"},
    )
    assert await cancel(http, queued["cancel_url"]) == (400, {"status": "ALREADY_COMPLETED"})
    unknown = f"{fake.base_url}/{APP}/requests/00000000-0000-0000-0000-000000000000/cancel"
    assert await cancel(http, unknown) == (404, {"status": "NOT_FOUND"})


async def test_cancel_in_progress_still_completes(fake: FakeFal, http: aiohttp.ClientSession) -> None:
    fake.add_script(JobScript(queue_positions=(), progress_steps=2, step_seconds=0.2))
    env = await submit(http, fake)
    assert await cancel(http, env["cancel_url"]) == (202, {"status": "CANCELLATION_REQUESTED"})
    job = fake.jobs[env["request_id"]]
    assert job.cancelled and job.state == "IN_PROGRESS"
    await wait_state(fake, job.request_id, "COMPLETED")
    code, result = await get_json(http, env["response_url"])
    assert code == 200 and len(result["images"]) == 1


# -- auth, faults, recording -----------------------------------------------------------------


async def test_auth_required_on_queue_routes_not_on_files(fake: FakeFal, http: aiohttp.ClientSession) -> None:
    fake.add_script(JobScript(queue_positions=(), progress_steps=0))
    env = await submit(http, fake)
    bad = {"Authorization": "Bearer fake-key:secret"}
    for method, url in [
        ("POST", f"{fake.base_url}/{ENDPOINT}"),
        ("GET", env["status_url"]),
        ("GET", f"{env['status_url']}/stream"),
        ("GET", env["response_url"]),
        ("PUT", env["cancel_url"]),
    ]:
        for headers in ({}, bad):
            async with http.request(method, url, json=VALID, headers=headers) as resp:
                assert resp.status == 401 and resp.content_type == "application/json"
                assert await resp.json() == {"detail": "No user found for Key ID and Secret"}
    async with http.get(f"{fake.base_url}/files/{env['request_id']}/0.png") as resp:
        assert resp.status == 200
    assert len(fake.jobs) == 1


async def test_custom_auth_scheme() -> None:
    async with (
        FakeFal(key="sk-1", auth_scheme="Bearer") as reseller,
        aiohttp.ClientSession() as http,
        http.post(f"{reseller.base_url}/{ENDPOINT}", json=VALID, headers={"Authorization": "Bearer sk-1"}) as resp,
    ):
        assert resp.status == 200


async def test_fail_next_answers_times_then_recovers(fake: FakeFal, http: aiohttp.ClientSession) -> None:
    fake.fail_next("submit", 429, {"detail": "busy"}, headers={"Retry-After": "1"}, times=2)
    for _ in range(2):
        async with http.post(f"{fake.base_url}/{ENDPOINT}", json=VALID, headers=AUTH) as resp:
            assert (resp.status, resp.headers["Retry-After"], await resp.json()) == (429, "1", {"detail": "busy"})
    await submit(http, fake)
    fake.fail_next("status", 500)
    status_url = f"{fake.base_url}/{APP}/requests/x/status"
    assert await get_json(http, status_url) == (500, {"detail": "Internal Server Error"})
    assert [r.status for r in fake.requests] == [429, 429, 200, 500]
    with pytest.raises(ValueError, match="unknown request kind"):
        fake.fail_next("bogus", 500)


async def test_delay_fault_triggers_client_timeout_and_slow_keeps_answer(
    fake: FakeFal, http: aiohttp.ClientSession
) -> None:
    fake.add_script(JobScript(hold=True))
    env = await submit(http, fake)
    fake.fail_next("status", 200, {"status": "IN_QUEUE"}, delay=1.0)
    with pytest.raises(TimeoutError):
        await get_json(http, env["status_url"], timeout=aiohttp.ClientTimeout(total=0.1))
    fake.slow("status", 0.1)
    loop = asyncio.get_running_loop()
    start = loop.time()
    code, status = await get_json(http, env["status_url"])
    assert loop.time() - start >= 0.09
    assert (code, status["queue_position"]) == (202, 2)


async def test_drop_fault_closes_without_response(fake: FakeFal, http: aiohttp.ClientSession) -> None:
    fake.fail_next("submit", 0, drop=True)
    with pytest.raises(aiohttp.ServerDisconnectedError):
        await submit(http, fake)
    assert not fake.jobs and fake.requests[0].status == 0
    await submit(http, fake)  # the fault is used up


async def test_recording_and_count(fake: FakeFal, http: aiohttp.ClientSession) -> None:
    env = await submit(http, fake, headers={**AUTH, "X-Fal-No-Retry": "1"})
    await get_json(http, env["status_url"], params={"logs": "1"})
    async with http.get(f"{fake.base_url}/nowhere", headers=AUTH) as resp:
        assert resp.status == 404
    sub, stat, unknown = fake.requests
    assert sub.headers["x-fal-no-retry"] == "1" and sub.json == VALID and sub.status == 200
    assert (stat.kind, stat.method, stat.query, stat.json, stat.status) == ("status", "GET", {"logs": "1"}, None, 202)
    assert (unknown.kind, unknown.status) == ("unknown", 404)
    assert (fake.count("submit"), fake.count("status"), fake.count("result")) == (1, 1, 0)


# -- faults for hostile answers ----------------------------------------------------------------


async def test_advertised_urls_replace_the_urls_in_every_answer(fake: FakeFal, http: aiohttp.ClientSession) -> None:
    hostile = {"status_url": "http://[::1", "response_url": 42, "cancel_url": "https://elsewhere.invalid/x"}
    fake.add_script(JobScript(queue_positions=(0,), progress_steps=0, step_seconds=0.01, advertised_urls=hostile))
    env = await submit(http, fake)
    assert {k: env[k] for k in hostile} == hostile
    rid = env["request_id"]
    await wait_state(fake, rid, "COMPLETED")
    _, status = await get_json(http, f"{fake.base_url}/{APP}/requests/{rid}/status")
    async with http.get(f"{fake.base_url}/{APP}/requests/{rid}/status/stream", headers=AUTH) as resp:
        events, _ = await read_sse(resp)
    assert all({k: answer[k] for k in hostile} == hostile for answer in (status, *events))


async def test_stream_fault_bytes_are_the_event_stream(fake: FakeFal, http: aiohttp.ClientSession) -> None:
    env = await submit(http, fake)
    garbage = b'data: {"status": "\xff"}\n\n'
    fake.fail_next("stream", 200, garbage)
    async with http.get(f"{env['status_url']}/stream", headers=AUTH) as resp:
        assert (resp.status, resp.content_type) == (200, "text/event-stream")
        assert await resp.read() == garbage


async def test_trickle_sends_the_normal_answer_slowly(fake: FakeFal, http: aiohttp.ClientSession) -> None:
    fake.trickle_next("submit", 0.01)
    loop = asyncio.get_running_loop()
    start = loop.time()
    env = await submit(http, fake)
    assert loop.time() - start >= 0.01 * 100  # well over a hundred bytes, one per interval
    assert list(fake.jobs) == [env["request_id"]]  # the job exists: fal took it
    start = loop.time()
    await submit(http, fake)
    assert loop.time() - start < 0.5  # used up
    assert [r.status for r in fake.requests] == [200, 200]


async def test_padded_result_is_valid_streamed_json(fake: FakeFal, http: aiohttp.ClientSession) -> None:
    fake.add_script(JobScript(queue_positions=(), progress_steps=0, outcome=Outcome(result_padding=3_000_000)))
    env = await submit(http, fake)
    async with http.get(env["response_url"], headers=AUTH) as resp:
        assert resp.content_length is None and resp.content_type == "application/json"
        body = json.loads(await resp.read())
    assert len(body.pop("padding")) == 3_000_000 and len(body["images"]) == 1
    assert fake.jobs[env["request_id"]].result_bytes_sent == 3_000_000


async def test_image_count_ignores_num_images(fake: FakeFal, http: aiohttp.ClientSession) -> None:
    fake.add_script(JobScript(queue_positions=(), progress_steps=0, outcome=Outcome(image_count=5)))
    env = await submit(http, fake, {**VALID, "num_images": 2})
    _, result = await get_json(http, env["response_url"])
    assert len(result["images"]) == 5 and result["has_nsfw_concepts"] == [False] * 5
    async with http.get(result["images"][4]["url"]) as resp:
        assert resp.status == 200


async def test_file_redirect(fake: FakeFal, http: aiohttp.ClientSession) -> None:
    target = "http://10.0.0.1/internal.png"
    fake.add_script(JobScript(queue_positions=(), progress_steps=0, outcome=Outcome(file_redirect=target)))
    env = await submit(http, fake)
    _, result = await get_json(http, env["response_url"])
    async with http.get(result["images"][0]["url"], allow_redirects=False) as resp:
        assert (resp.status, resp.headers["Location"]) == (302, target)


async def test_authorization_is_recorded_per_request(fake: FakeFal, http: aiohttp.ClientSession) -> None:
    env = await submit(http, fake)
    async with http.get(env["status_url"], headers={"Authorization": "Bearer other"}) as resp:
        assert resp.status == 401
    async with http.get(env["status_url"]) as resp:
        assert resp.status == 401
    assert [r.authorization for r in fake.requests] == [f"Key {KEY}", "Bearer other", None]


async def test_path_prefix(http: aiohttp.ClientSession) -> None:
    async with FakeFal(path_prefix="/fal/") as reseller:
        assert reseller.base_url.endswith("/fal")
        env = await submit(http, reseller)
        assert env["status_url"].startswith(f"{reseller.base_url}/{APP}/requests/")
        status, _ = await get_json(http, env["status_url"])
        assert status == 202
        async with http.post(f"{reseller.base_url.removesuffix('/fal')}/{ENDPOINT}", json=VALID, headers=AUTH) as resp:
            assert resp.status == 404  # outside the prefix
        assert len(reseller.jobs) == 1


# -- lifecycle and scale ---------------------------------------------------------------------


async def test_close_cancels_job_tasks_and_open_streams() -> None:
    fake = FakeFal(ping_interval=10)
    await fake.start()
    fake.default_script = JobScript(hold=True)
    async with aiohttp.ClientSession() as http:
        env = await submit(http, fake)
        async with http.get(f"{env['status_url']}/stream", headers=AUTH) as resp:
            first = await resp.content.readline()
            await fake.close()
            rest = await resp.read()
    assert first.startswith(b"data: ") and b"data: " not in rest
    task = fake.jobs[env["request_id"]].task
    assert task is not None and task.cancelled()


async def test_many_concurrent_jobs(fake: FakeFal, http: aiohttp.ClientSession) -> None:
    fake.default_script = JobScript(step_seconds=0.01)
    envs = await asyncio.gather(*(submit(http, fake) for _ in range(200)))
    async with asyncio.timeout(5):
        await asyncio.gather(*(job.wait_state("COMPLETED") for job in fake.jobs.values()))
    assert len({e["request_id"] for e in envs}) == 200
    assert all(job.task is not None and job.task.done() for job in fake.jobs.values())


# -- image helpers ---------------------------------------------------------------------------


def test_make_png_and_jpeg() -> None:
    png = Image.open(io.BytesIO(make_png(12, 7, (1, 2, 3))))
    assert (png.format, png.size, png.getpixel((0, 0))) == ("PNG", (12, 7), (1, 2, 3))
    jpeg = Image.open(io.BytesIO(make_jpeg(16, 9)))
    assert (jpeg.format, jpeg.size) == ("JPEG", (16, 9))


@pytest.mark.parametrize("size", [0, 5_000, 10 * 1024 * 1024 + 1])
def test_padded_png_is_valid_and_big_enough(size: int) -> None:
    data = padded_png(size)
    assert len(data) >= size
    Image.open(io.BytesIO(data)).verify()  # checks every chunk CRC
    with Image.open(io.BytesIO(data)) as img:
        img.load()
        assert img.size == (8, 8)
