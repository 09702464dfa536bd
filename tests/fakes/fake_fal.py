"""Fake fal.ai queue server (aiohttp.web on 127.0.0.1), faithful to fal's queue REST protocol.

Routes (see /work/shared/reference/fal-queue-and-kontext.md §1):
  POST /{endpoint...}                              submit
  GET  /{app}/requests/{id}/status[?logs=1]        status (202 running, 200 completed)
  GET  /{app}/requests/{id}/status/stream          SSE status stream with ": ping" comments
  GET  /{app}/requests/{id}[/response]             result
  PUT  /{app}/requests/{id}/cancel                 cancel
  GET  /files/{id}/{index}.{ext}                   result images (public, no auth)
`{app}` is the app root (`owner/alias`) or the full endpoint id.

Each known endpoint validates its input the way fal does (422 with a `detail` list for a missing, unknown or
out-of-range field) and answers in its own output shape (`SCHEMAS`); other endpoints behave as Kontext.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import io
import json
import random
import uuid
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http import HTTPStatus
from types import TracebackType
from typing import Any, Literal, Self

from aiohttp import web
from PIL import Image

from tests.fakes.images import make_png

State = Literal["IN_QUEUE", "IN_PROGRESS", "COMPLETED"]
_ORDER: dict[State, int] = {"IN_QUEUE": 0, "IN_PROGRESS": 1, "COMPLETED": 2}
KINDS = ("submit", "status", "stream", "result", "cancel", "file")
DROPPED = 0  # Recorded.status of a request whose connection was closed without an answer
ASPECT_RATIOS = ("21:9", "16:9", "4:3", "3:2", "1:1", "2:3", "3:4", "9:16", "9:21")
NAMESPACES = ("workflows", "comfy")  # these keep one more path segment in the app root
UNAUTHORIZED = {"detail": "No user found for Key ID and Secret"}
EXHAUSTED = {"detail": "User is locked. Reason: Exhausted balance. Top up your balance at fal.ai/dashboard/billing."}
CANCELLED_RESULT = {"detail": "Request was cancelled", "error_type": "client_cancelled"}
_PALETTE = ((220, 40, 40), (40, 180, 60), (40, 80, 220), (230, 200, 30))


@dataclass
class Outcome:
    """How a job ends."""

    kind: Literal["success", "error"] = "success"
    nsfw: tuple[bool, ...] | None = None
    image_bytes: bytes | None = None
    content_type: str = "image/png"
    result_host: str | None = None
    raw_result: Any = None
    status_error: str | None = None
    error_type: str | None = None
    result_status: int = 422
    result_body: Any = None
    image_count: int | None = None  # images in the result whatever `num_images` asked for
    result_padding: int = 0  # bytes of filler streamed (chunked, no Content-Length) ahead of the result JSON
    file_redirect: str | None = None  # result files answer 302 to this URL


@dataclass
class JobScript:
    """The states a job walks through: queue positions, then progress steps, then COMPLETED."""

    queue_positions: tuple[int, ...] = (2, 1, 0)
    progress_steps: int = 2
    step_seconds: float = 0.02
    hold: bool = False
    outcome: Outcome = field(default_factory=Outcome)
    advertised_urls: dict[str, Any] | None = None  # replaces status_url/response_url/cancel_url in every answer


@dataclass
class Recorded:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    json: Any
    status: int
    kind: str

    @property
    def authorization(self) -> str | None:
        return self.headers.get("authorization")


@dataclass
class _Fault:
    status: int | None  # None: answer normally after the delay
    body: Any
    headers: dict[str, str]
    times: int
    delay: float
    drop: bool
    trickle: float = 0.0  # answer normally, one body byte every `trickle` seconds


@dataclass(frozen=True)
class _Route:
    kind: str
    prefix: str = ""  # endpoint id for submit, app prefix for request routes
    request_id: str = ""
    index: int = -1  # image index for files


class FakeJob:
    """One queued request. `history` holds every (state, queue_position, log_count) it went through."""

    def __init__(self, request_id: str, endpoint: str, body: dict[str, Any], script: JobScript, base: str) -> None:
        self.request_id = request_id
        self.endpoint = endpoint
        self.app_root = app_root(endpoint)
        self.schema = schema_of(endpoint)
        self.input = body
        self.script = script
        self.seed = body["seed"] if _is_int(body.get("seed")) else random.randint(0, 2**32 - 1)
        self.state: State = "IN_QUEUE"
        self.cancelled = False
        self.cancelled_in_queue = False
        self.logs: list[dict[str, Any]] = []
        self.history: list[tuple[State, int | None, int]] = []
        self.released = asyncio.Event()
        self.changed = asyncio.Event()
        self.task: asyncio.Task[None] | None = None
        self.response_url = f"{base}/{self.app_root}/requests/{request_id}"
        self.result_bytes_sent = 0  # filler bytes of a padded result that went out

    @property
    def image_count(self) -> int:
        count = self.script.outcome.image_count
        return count if count is not None else self.num_images

    @property
    def num_images(self) -> int:
        n = self.input.get("num_images", 1) if self.schema.multi_output else 1
        return n if _is_int(n) else 1

    @property
    def inference_time(self) -> float:
        return round(self.script.progress_steps * self.script.step_seconds, 3)

    def steps(self) -> list[tuple[State, int | None]]:
        s = self.script
        queued: list[tuple[State, int | None]] = [("IN_QUEUE", p) for p in s.queue_positions]
        running: list[tuple[State, int | None]] = [("IN_PROGRESS", None)] * s.progress_steps
        return [*queued, *running, ("COMPLETED", None)]

    def advance(self, state: State, position: int | None = None) -> None:
        if state == "IN_PROGRESS":
            self.logs.append(_log_line(f"step {len(self.logs) + 1}/{self.script.progress_steps}"))
        self.state = state
        self.history.append((state, position, len(self.logs)))
        self.notify()

    async def wait_state(self, state: State) -> None:
        """Return once the job has reached `state` or a later one (wakes on each change, no polling)."""
        while _ORDER[self.state] < _ORDER[state]:
            await self.changed.wait()

    def notify(self) -> None:
        self.changed.set()
        self.changed = asyncio.Event()

    def urls(self) -> dict[str, str]:
        url = self.response_url
        urls = {"response_url": url, "status_url": f"{url}/status", "cancel_url": f"{url}/cancel"}
        return {**urls, **(self.script.advertised_urls or {})}

    def payload(self, index: int = -1, *, with_logs: bool = False) -> dict[str, Any]:
        """Status JSON for history entry `index` (default: the current one)."""
        state, position, log_count = self.history[index]
        data: dict[str, Any] = {"status": state, "request_id": self.request_id, **self.urls()}
        if state == "IN_QUEUE":
            data["queue_position"] = position
            return data
        data["logs"] = self.logs[:log_count] if with_logs else None
        if state == "COMPLETED":
            data["metrics"] = {} if self.cancelled_in_queue else {"inference_time": self.inference_time}
            data.update(self.error_fields())
        return data

    def error_fields(self) -> dict[str, str]:
        if self.cancelled_in_queue:
            return {"error": "Request cancelled by client", "error_type": "client_cancelled"}
        out = self.script.outcome
        if out.kind != "error":
            return {}
        fields = {"error": out.status_error, "error_type": out.error_type}
        return {k: v for k, v in fields.items() if v is not None}


class FakeFal:
    """Fake fal queue. Use `async with FakeFal() as fake:`; point clients at `fake.base_url`."""

    def __init__(
        self,
        *,
        key: str = "fake-key:secret",
        auth_scheme: str = "Key",
        advertised_base: str | None = None,
        ping_interval: float = 0.05,
        path_prefix: str = "",
    ) -> None:
        self.key = key
        self.path_prefix = path_prefix.rstrip("/")  # serve under `/prefix/...`, like a reseller mounted on a path
        self.auth_scheme = auth_scheme
        self.advertised_base = advertised_base
        self.ping_interval = ping_interval
        self.requests: list[Recorded] = []
        self.jobs: dict[str, FakeJob] = {}
        self.default_script = JobScript()
        self.balance_exhausted = False
        self._scripts: deque[JobScript] = deque()
        self._faults: dict[str, deque[_Fault]] = {kind: deque() for kind in KINDS}
        self._tasks: set[asyncio.Task[None]] = set()
        self._runner: web.AppRunner | None = None
        self._base_url = ""
        self._closing = asyncio.Event()

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._dispatch)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        host, port = self._runner.addresses[0][:2]
        self._base_url = f"http://{host}:{port}{self.path_prefix}"

    async def close(self) -> None:
        self._closing.set()  # ends fault delays and SSE loops
        for job in self.jobs.values():
            job.notify()  # wake SSE streams so they end
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    @property
    def base_url(self) -> str:
        if not self._base_url:
            raise RuntimeError("FakeFal not started")
        return self._base_url

    @property
    def authority(self) -> str:
        """`127.0.0.1:<port>`: the entry that lets a client download this fake's result files."""
        return self.base_url.split("/")[2]

    # -- scripting -------------------------------------------------------------------------

    def add_script(self, script: JobScript) -> None:
        """The next successful submit uses `script` (FIFO)."""
        self._scripts.append(script)

    def release(self, request_id: str) -> None:
        self.jobs[request_id].released.set()

    def fail_next(
        self,
        kind: str,
        status: int,
        body: Any = None,
        *,
        headers: dict[str, str] | None = None,
        times: int = 1,
        delay: float = 0.0,
        drop: bool = False,
    ) -> None:
        """Answer the next `times` requests of `kind` with `status`/`body`. Bytes are sent raw: as text/html, or
        for `fail_next("stream", 200, b"data: ...")` as the event stream itself (garbled or huge events)."""
        self._add_fault(kind, _Fault(status, body, headers or {}, times, delay, drop))

    def slow(self, kind: str, seconds: float, times: int = 1) -> None:
        """Delay the next `times` requests of `kind` without changing their answer."""
        self._add_fault(kind, _Fault(None, None, {}, times, seconds, False))

    def trickle_next(self, kind: str, interval: float = 0.5, times: int = 1) -> None:
        """Answer the next `times` requests of `kind` normally (a submit creates its job), but send the body
        one byte every `interval` seconds, Content-Length announced: a server that never quite times out."""
        self._add_fault(kind, _Fault(None, None, {}, times, 0.0, False, trickle=interval))

    def count(self, kind: str) -> int:
        return sum(1 for r in self.requests if r.kind == kind)

    def _add_fault(self, kind: str, fault: _Fault) -> None:
        if kind not in KINDS:
            raise ValueError(f"unknown request kind {kind!r}; expected one of {KINDS}")
        self._faults[kind].append(fault)

    def _take_fault(self, kind: str) -> _Fault | None:
        queue = self._faults.get(kind)
        if not queue:
            return None
        fault = queue[0]
        fault.times -= 1
        if fault.times <= 0:
            queue.popleft()
        return fault

    # -- request handling ------------------------------------------------------------------

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        route = self._route(request)
        raw = await request.read()
        rec = Recorded(
            method=request.method,
            path=request.path,
            query=dict(request.query.items()),
            headers={k.lower(): v for k, v in request.headers.items()},
            json=_parse_json(raw),
            status=DROPPED,
            kind=route.kind,
        )
        self.requests.append(rec)
        resp = await self._answer(request, route, raw)
        rec.status = DROPPED if resp is None else resp.status
        return web.Response() if resp is None else resp

    def _route(self, request: web.Request) -> _Route:
        path = request.path
        if not path.startswith(self.path_prefix + "/"):
            return _Route("unknown")
        return parse_route(request.method, path[len(self.path_prefix) :])

    async def _answer(self, request: web.Request, route: _Route, raw: bytes) -> web.StreamResponse | None:
        fault = self._take_fault(route.kind)
        if fault is not None:
            await self._pause(fault.delay)
            if fault.drop and route.kind != "stream":
                _close_connection(request)
                return None
            if fault.status is not None and not fault.drop:
                return _fault_response(fault, route.kind)
        if route.kind != "file" and not self._authorized(request):
            return _json(UNAUTHORIZED, 401)
        resp = await self._handle(request, route, raw, drop=fault is not None and fault.drop)
        if fault is not None and fault.trickle > 0 and isinstance(resp, web.Response):
            return await self._trickle(request, resp, fault.trickle)
        return resp

    async def _trickle(self, request: web.Request, resp: web.Response, interval: float) -> web.StreamResponse:
        body = resp.body if isinstance(resp.body, bytes) else b""
        slow = web.StreamResponse(status=resp.status, headers={"Content-Type": resp.content_type})
        slow.content_length = len(body)
        await slow.prepare(request)
        with contextlib.suppress(ConnectionResetError):
            for i in range(len(body)):
                await self._pause(interval)
                if self._closing.is_set():
                    break
                await slow.write(body[i : i + 1])
        return slow

    async def _pause(self, seconds: float) -> None:
        if seconds > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closing.wait(), seconds)

    def _authorized(self, request: web.Request) -> bool:
        return request.headers.get("Authorization") == f"{self.auth_scheme} {self.key}"

    async def _handle(self, request: web.Request, route: _Route, raw: bytes, *, drop: bool) -> web.StreamResponse:
        if route.kind == "submit":
            return self._submit(route.prefix, raw)
        if route.kind == "unknown":
            return _json({"detail": "Not Found"}, 404)
        job = self._find(route)
        if job is None:
            return _json({"status": "NOT_FOUND"} if route.kind == "cancel" else {"detail": "Request not found"}, 404)
        if route.kind == "status":
            return _json(job.payload(with_logs=_wants_logs(request)), 200 if job.state == "COMPLETED" else 202)
        if route.kind == "stream":
            return await self._stream(request, job, drop=drop)
        if route.kind == "result":
            return await self._result(request, job)
        if route.kind == "cancel":
            return self._cancel(job)
        return self._file(job, route.index)

    def _find(self, route: _Route) -> FakeJob | None:
        job = self.jobs.get(route.request_id)
        if job is None or (route.kind != "file" and route.prefix not in (job.app_root, job.endpoint)):
            return None
        return job

    # -- submit ----------------------------------------------------------------------------

    def _submit(self, endpoint: str, raw: bytes) -> web.Response:
        try:
            body = json.loads(raw)
        except ValueError:
            return _json({"detail": [_error([], "JSON decode error", "json_invalid")]}, 422)
        errors = validate_input(body, endpoint)
        if errors:
            return _json({"detail": errors}, 422)
        if self.balance_exhausted:
            return _json(EXHAUSTED, 403)
        script = self._scripts.popleft() if self._scripts else self.default_script
        job = FakeJob(str(uuid.uuid4()), endpoint, body, script, self.advertised_base or self.base_url)
        self.jobs[job.request_id] = job
        steps = job.steps()
        job.advance(*steps[0])
        if len(steps) > 1:
            self._spawn(job, steps[1:])
        envelope = {**job.payload(), "logs": None, "metrics": {}}
        return _json(envelope, 200, headers={"x-fal-request-id": job.request_id})

    def _spawn(self, job: FakeJob, steps: list[tuple[State, int | None]]) -> None:
        job.task = asyncio.create_task(self._run(job, steps), name=f"fake-fal-job-{job.request_id}")
        self._tasks.add(job.task)
        job.task.add_done_callback(self._tasks.discard)

    @staticmethod
    async def _run(job: FakeJob, steps: list[tuple[State, int | None]]) -> None:
        if job.script.hold:
            await job.released.wait()
        for state, position in steps:
            await asyncio.sleep(job.script.step_seconds)
            job.advance(state, position)

    # -- status stream ---------------------------------------------------------------------

    async def _stream(self, request: web.Request, job: FakeJob, *, drop: bool) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await resp.prepare(request)
        with_logs = _wants_logs(request)
        sent = len(job.history) - 1  # start with the current status
        try:
            while not self._closing.is_set():
                while sent < len(job.history):
                    await resp.write(_sse_event(job.payload(sent, with_logs=with_logs)))
                    sent += 1
                    if drop:
                        _close_connection(request)
                        return resp
                if job.state == "COMPLETED":
                    break
                await self._wait_or_ping(job, resp)
            await resp.write_eof()
        except ConnectionResetError:
            pass  # client went away
        return resp

    async def _wait_or_ping(self, job: FakeJob, resp: web.StreamResponse) -> None:
        try:
            await asyncio.wait_for(job.changed.wait(), self.ping_interval)
        except TimeoutError:
            await resp.write(b": ping\n\n")

    # -- result, cancel, files -------------------------------------------------------------

    async def _result(self, request: web.Request, job: FakeJob) -> web.StreamResponse:
        if job.state != "COMPLETED":
            return _json({"detail": "Request is still in progress"}, 400)
        if job.cancelled_in_queue:
            return _json(CANCELLED_RESULT, 400, headers={"X-Fal-Error-Type": "client_cancelled"})
        out = job.script.outcome
        if out.kind == "error":
            body = out.result_body if out.result_body is not None else _default_error_body(out)
            headers = {"X-Fal-Error-Type": out.error_type} if out.error_type else None
            return _json(body, out.result_status, headers=headers)
        if out.raw_result is not None:
            return _json(out.raw_result, 200)
        if out.result_padding:
            return await self._padded_result(request, job)
        return _json(self._success_body(job), 200)

    async def _padded_result(self, request: web.Request, job: FakeJob) -> web.StreamResponse:
        """`{"padding": "xxx…", <the result's keys>}`: valid JSON, streamed without a Content-Length."""
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        filler, left = b"x" * (1 << 20), job.script.outcome.result_padding
        with contextlib.suppress(ConnectionResetError):
            await resp.write(b'{"padding": "')
            while left > 0 and not self._closing.is_set():
                part = filler[: min(left, len(filler))]
                await resp.write(part)
                job.result_bytes_sent += len(part)
                left -= len(part)
            await resp.write(b'", ' + json.dumps(self._success_body(job))[1:].encode())
            await resp.write_eof()
        return resp

    def _success_body(self, job: FakeJob) -> dict[str, Any]:
        """The endpoint's output shape: Kontext adds timings, NSFW flags and the prompt to `images` and `seed`."""
        out = job.script.outcome
        n = job.image_count
        host = out.result_host or self.base_url
        body: dict[str, Any] = {"images": [_image_entry(job, i, host) for i in range(n)], "seed": job.seed}
        if job.schema.nsfw_flags:
            body.update(
                timings={"inference": job.inference_time},
                has_nsfw_concepts=list(out.nsfw) if out.nsfw is not None else [False] * n,
                prompt=job.input.get("prompt"),
            )
        return body

    def _cancel(self, job: FakeJob) -> web.Response:
        if job.state == "COMPLETED":
            return _json({"status": "ALREADY_COMPLETED"}, 400)
        job.cancelled = True
        if job.state == "IN_QUEUE":  # removed from the queue, never runs
            if job.task is not None:
                job.task.cancel()
            job.cancelled_in_queue = True
            job.advance("COMPLETED")
        return _json({"status": "CANCELLATION_REQUESTED"}, 202)

    def _file(self, job: FakeJob, index: int) -> web.Response:
        if not 0 <= index < job.image_count:
            return _json({"detail": "Not Found"}, 404)
        if job.script.outcome.file_redirect:
            return web.Response(status=302, headers={"Location": job.script.outcome.file_redirect})
        return web.Response(body=image_bytes(job.script.outcome, index), content_type=job.script.outcome.content_type)


# -- helpers ---------------------------------------------------------------------------------


def app_root(endpoint: str) -> str:
    """`fal-ai/flux-pro/kontext/max/multi` -> `fal-ai/flux-pro` (namespaced apps keep 3 segments)."""
    segments = endpoint.split("/")
    keep = 3 if segments[0] in NAMESPACES else 2
    return "/".join(segments[:keep])


def parse_route(method: str, path: str) -> _Route:
    segs = [s for s in path.split("/") if s]
    if segs[:1] == ["files"]:
        return _file_route(method, segs)
    if "requests" in segs[2:]:
        return _request_route(method, segs)
    if method == "POST" and len(segs) >= 2:
        return _Route("submit", prefix="/".join(segs))
    return _Route("unknown")


def _file_route(method: str, segs: list[str]) -> _Route:
    stem = segs[2].split(".")[0] if len(segs) == 3 else ""
    if method != "GET" or not stem.isdigit():
        return _Route("unknown")
    return _Route("file", request_id=segs[1], index=int(stem))


_REQUEST_ROUTES = {
    ("GET", ()): "result",
    ("GET", ("response",)): "result",
    ("GET", ("status",)): "status",
    ("GET", ("status", "stream")): "stream",
    ("PUT", ("cancel",)): "cancel",
}


def _request_route(method: str, segs: list[str]) -> _Route:
    i = segs.index("requests", 2)
    rest = segs[i + 1 :]
    kind = _REQUEST_ROUTES.get((method, tuple(rest[1:]))) if rest else None
    if kind is None:
        return _Route("unknown")
    return _Route(kind, prefix="/".join(segs[:i]), request_id=rest[0])


def _json(data: Any, status: int, *, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response(data, status=status, headers=headers)


def _fault_response(fault: _Fault, kind: str) -> web.Response:
    """Bytes are sent raw: as text/html, or for a 2xx status stream as the event stream itself (garbage events)."""
    assert fault.status is not None
    if isinstance(fault.body, bytes):
        sse = kind == "stream" and fault.status < 300
        content_type = "text/event-stream" if sse else "text/html"
        return web.Response(body=fault.body, status=fault.status, headers=fault.headers, content_type=content_type)
    body = fault.body if fault.body is not None else {"detail": _reason(fault.status)}
    return _json(body, fault.status, headers=fault.headers)


def _reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def _close_connection(request: web.Request) -> None:
    if request.transport is not None:
        request.transport.close()


def _parse_json(raw: bytes) -> Any:
    if not raw:
        return None
    try:
        return json.loads(raw)
    except ValueError:
        return raw.decode("utf-8", "replace")


def _wants_logs(request: web.Request) -> bool:
    return request.query.get("logs", "0").lower() in ("1", "true")


def _sse_event(data: dict[str, Any]) -> bytes:
    return f"data: {json.dumps(data)}\n\n".encode()


def _log_line(message: str) -> dict[str, Any]:
    now = datetime.now(UTC).isoformat()
    return {"message": message, "level": "INFO", "source": "user", "timestamp": now}


def _default_error_body(out: Outcome) -> dict[str, Any]:
    body: dict[str, Any] = {"detail": out.status_error or "Request failed"}
    if out.error_type:
        body["error_type"] = out.error_type
    return body


@functools.lru_cache(maxsize=8)
def _default_png(index: int) -> bytes:
    return make_png(64, 64, _PALETTE[index % len(_PALETTE)])


def image_bytes(outcome: Outcome, index: int) -> bytes:
    """Bytes served for result image `index`."""
    return outcome.image_bytes if outcome.image_bytes is not None else _default_png(index)


@functools.lru_cache(maxsize=4)
def _image_size(data: bytes) -> tuple[int, int]:
    try:
        with Image.open(io.BytesIO(data)) as img:
            return img.size
    except Exception:  # not an image: report a typical size
        return (1024, 1024)


def _image_entry(job: FakeJob, index: int, host: str) -> dict[str, Any]:
    out = job.script.outcome
    data = image_bytes(out, index)
    width, height = _image_size(data)
    if job.input.get("sync_mode") is True:
        url = f"data:{out.content_type};base64,{base64.b64encode(data).decode()}"
    else:
        url = f"{host}/files/{job.request_id}/{index}.{_extension(out.content_type)}"
    entry: dict[str, Any] = {"url": url, "width": width, "height": height, "content_type": out.content_type}
    if job.schema.file_fields:
        entry.update(file_name=f"{index}.{_extension(out.content_type)}", file_size=len(data))
    return entry


def _extension(content_type: str) -> str:
    return content_type.split("/")[-1].split(";")[0].strip() or "bin"


# -- input validation (pydantic-style 422 details, fal vocabulary) ---------------------------


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _error(loc: Iterable[str | int], msg: str, type_: str, ctx: dict[str, Any] | None = None) -> dict[str, Any]:
    err: dict[str, Any] = {
        "loc": ["body", *loc],
        "msg": msg,
        "type": type_,
        "url": f"https://docs.fal.ai/errors/#{type_}",
    }
    if ctx is not None:
        err["ctx"] = ctx
    return err


@dataclass(frozen=True)
class FalSchema:
    """One endpoint's input and output as fal documents them: written from fal's generated types (fal-js
    endpoints.ts @381105e) and the models' llms.txt, never from the bot's registry, so that a wrong mapping
    there fails here."""

    image_field: Literal["image_urls", "image_url"] = "image_urls"
    ranges: Mapping[str, tuple[int, int, bool]] = field(default_factory=dict)  # name: (low, high, integer)
    choices: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    bools: tuple[str, ...] = ("sync_mode",)
    image_sizes: tuple[str, ...] = ()  # presets of `image_size` (which also takes {width, height})
    multi_output: bool = True  # honours `num_images`
    nsfw_flags: bool = False  # Kontext's output: also timings, has_nsfw_concepts, prompt
    file_fields: bool = False  # output images also carry file_name and file_size

    @property
    def fields(self) -> frozenset[str]:
        sized = ("image_size",) if self.image_sizes else ()
        return frozenset(("prompt", "seed", self.image_field, *self.ranges, *self.choices, *self.bools, *sized))


_SAFETY_6 = ("1", "2", "3", "4", "5", "6")
_PRESETS = ("square_hd", "square", "portrait_4_3", "portrait_16_9", "landscape_4_3", "landscape_16_9")
KONTEXT = FalSchema(  # FluxKontextMultiInput -> FluxProV11Output
    ranges={"num_images": (1, 4, True), "guidance_scale": (1, 20, False)},
    choices={"safety_tolerance": _SAFETY_6, "output_format": ("jpeg", "png"), "aspect_ratio": ASPECT_RATIOS},
    bools=("sync_mode", "enhance_prompt"),
    nsfw_flags=True,
)
KONTEXT_SINGLE = FalSchema(  # FluxKontextInput: the same with one `image_url`
    image_field="image_url", ranges=KONTEXT.ranges, choices=KONTEXT.choices, bools=KONTEXT.bools, nsfw_flags=True
)
FLUX_2_EDIT = FalSchema(  # Flux2MaxEditInput (= Flux2ProEditInput) -> images (ImageFile), seed; one image per call
    choices={"safety_tolerance": _SAFETY_6[:5], "output_format": ("jpeg", "png")},
    bools=("sync_mode", "enable_safety_checker"),
    image_sizes=("auto", *_PRESETS),
    multi_output=False,
    file_fields=True,
)
SEEDREAM_4_EDIT = FalSchema(  # SeedDream4EditInput -> images, seed; num_images and max_images 1-6 (llms.txt)
    ranges={"num_images": (1, 6, True), "max_images": (1, 6, True)},
    choices={"enhance_prompt_mode": ("standard", "fast")},
    bools=("sync_mode", "enable_safety_checker"),
    image_sizes=(*_PRESETS, "auto", "auto_2K", "auto_4K"),
)
SCHEMAS: dict[str, FalSchema] = {
    "fal-ai/flux-pro/kontext/max/multi": KONTEXT,
    "fal-ai/flux-pro/kontext/multi": KONTEXT,
    "fal-ai/flux-pro/kontext/max": KONTEXT_SINGLE,
    "fal-ai/flux-pro/kontext": KONTEXT_SINGLE,
    "fal-ai/flux-2-pro/edit": FLUX_2_EDIT,
    "fal-ai/bytedance/seedream/v4/edit": SEEDREAM_4_EDIT,
}


def schema_of(endpoint: str) -> FalSchema:
    """The endpoint's schema; Kontext's for one this fake does not know (the app-root tests' made-up ids)."""
    return SCHEMAS.get(endpoint.strip("/"), KONTEXT)


def validate_input(body: Any, endpoint: str = "fal-ai/flux-pro/kontext/max/multi") -> list[dict[str, Any]]:
    """fal-style validation of `endpoint`'s input; [] when valid."""
    if not isinstance(body, dict):
        return [_error([], "Input should be a valid dictionary", "dict_type")]
    schema = schema_of(endpoint)
    errors = [*_check_prompt(body), *_check_images(body, schema.image_field)]
    errors += [_error([name], "Extra inputs are not permitted", "extra_forbidden") for name in body
               if name not in schema.fields]  # fmt: skip
    for name, (low, high, integer) in schema.ranges.items():
        errors += _check_range(body, name, low, high, integer=integer)
    for name, choices in schema.choices.items():
        errors += _check_choice(body, name, choices)
    errors += [_error([n], "Input should be a valid boolean", "bool_type") for n in schema.bools if _bad_bool(body, n)]
    if "seed" in body and not _is_int(body["seed"]):
        errors.append(_error(["seed"], "Input should be a valid integer", "int_type"))
    if schema.image_sizes and "image_size" in body:
        errors += _check_image_size(body["image_size"], schema.image_sizes)
    return errors


def _check_image_size(value: Any, presets: tuple[str, ...]) -> list[dict[str, Any]]:
    if isinstance(value, dict) and set(value) <= {"width", "height"} and all(map(_is_int, value.values())):
        return []
    return _check_choice({"image_size": value}, "image_size", presets)


def _bad_bool(body: dict[str, Any], name: str) -> bool:
    return name in body and not isinstance(body[name], bool)


def _check_prompt(body: dict[str, Any]) -> list[dict[str, Any]]:
    if "prompt" not in body:
        return [_error(["prompt"], "Field required", "missing")]
    prompt = body["prompt"]
    if not isinstance(prompt, str):
        return [_error(["prompt"], "Input should be a valid string", "string_type")]
    if not prompt:
        return [_error(["prompt"], "String should have at least 1 character", "string_too_short", {"min_length": 1})]
    return []


def _check_images(body: dict[str, Any], name: str) -> list[dict[str, Any]]:
    if name == "image_url":
        return _check_image_url(body)
    if "image_urls" not in body:
        return [_error(["image_urls"], "Field required", "missing")]
    urls = body["image_urls"]
    if not isinstance(urls, list):
        return [_error(["image_urls"], "Input should be a valid list", "list_type")]
    if not urls:
        msg = "List should have at least 1 item after validation, not 0"
        return [_error(["image_urls"], msg, "sequence_too_short", {"min_length": 1})]
    return [
        _error(["image_urls", i], "Input should be a valid string", "string_type")
        for i, url in enumerate(urls)
        if not isinstance(url, str)
    ]


def _check_image_url(body: dict[str, Any]) -> list[dict[str, Any]]:
    if "image_url" not in body:
        return [_error(["image_url"], "Field required", "missing")]
    if not isinstance(body["image_url"], str):
        return [_error(["image_url"], "Input should be a valid string", "string_type")]
    return []


def _check_range(body: dict[str, Any], name: str, low: int, high: int, *, integer: bool) -> list[dict[str, Any]]:
    if name not in body:
        return []
    value = body[name]
    if not (_is_int(value) if integer else _is_number(value)):
        kind = ("int_type", "integer") if integer else ("float_type", "number")
        return [_error([name], f"Input should be a valid {kind[1]}", kind[0])]
    if value < low:
        return [_error([name], f"Input should be greater than or equal to {low}", "greater_than_equal", {"ge": low})]
    if value > high:
        return [_error([name], f"Input should be less than or equal to {high}", "less_than_equal", {"le": high})]
    return []


def _check_choice(body: dict[str, Any], name: str, choices: tuple[str, ...]) -> list[dict[str, Any]]:
    if name not in body or body[name] in choices:
        return []
    quoted = [f"'{c}'" for c in choices]
    msg = f"Input should be {', '.join(quoted[:-1])} or {quoted[-1]}"
    return [_error([name], msg, "one_of", {"expected": list(choices)})]
