"""An async client for fal's queue API, on a shared aiohttp session.

Every queue request goes through `_open`, the one place that attaches the key, and only after
`QueueURLs.check` has confirmed the URL lies under the configured base. Every answer is read with a size
cap and parsed into typed values or a `FalError`. Submits are never resent once they may have reached
fal: a duplicate would be a second paid job.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Collection, Mapping
from contextlib import aclosing, asynccontextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import aiohttp
from pydantic import SecretStr
from yarl import URL

from .errors import (
    FalAuthError,
    FalConnectionError,
    FalError,
    FalHTTPError,
    FalProtocolError,
    FalRateLimited,
    FalSubmitUnconfirmed,
    FalTimeout,
    FalUnsafeURL,
    http_error,
)
from .models import Completed, KontextOutput, QueueHandle, QueueStatus, parse_status
from .retry import backoff_delay, retryable_read, retryable_submit, retryable_watch
from .urls import QueueURLs, ResultHosts, app_root, check_endpoint, check_request_id
from .wire import decode_data_uri, loads_json, read_capped, sse_data

__all__ = ("Download", "FalClient", "FalClientOptions", "app_root")

log = logging.getLogger(__name__)
T = TypeVar("T")
CHUNK = 64 * 1024


@dataclass(frozen=True, slots=True)
class FalClientOptions:
    """Tunables, with the defaults the bot uses."""

    auth_scheme: str = "Key"
    request_timeout: float = 30.0  # whole status/result exchange; whole cancel call, retries included
    submit_timeout: float = 60.0  # whole submit call, retries included
    start_timeout: float | None = 900.0
    poll_interval: float = 1.0
    poll_max_interval: float = 10.0
    use_stream: bool = True
    max_streams: int = 200
    stream_attempts: int = 3
    max_attempts: int = 4
    result_hosts: Collection[str] = ()  # `host` or `host:port`; a name covers its subdomains
    result_allow_http: bool = False  # plain-http result files: only for tests
    max_download_bytes: int = 50 * 1024 * 1024
    max_response_bytes: int = 1024 * 1024  # one JSON answer, or one SSE line/event


@dataclass(frozen=True, slots=True)
class Download:
    data: bytes
    content_type: str


class FalClient:
    """submit → watch (SSE, falling back to polling) → result → download, plus cancel."""

    def __init__(
        self, session: aiohttp.ClientSession, *, key: SecretStr, base_url: str, options: FalClientOptions
    ) -> None:
        self._session = session
        self._key = key
        self._urls = QueueURLs(base_url)
        self._result_hosts = ResultHosts(options.result_hosts, allow_http=options.result_allow_http)
        self._options = options
        self._streams = asyncio.Semaphore(options.max_streams)

    # --- queue operations -------------------------------------------------------------------

    async def submit(self, endpoint: str, payload: Mapping[str, Any]) -> QueueHandle:
        """Put a job in fal's queue, within `submit_timeout` overall.

        Raises `FalSubmitUnconfirmed` when fal may have taken the job but gave us no usable request id."""
        endpoint = check_endpoint(endpoint)  # a bad endpoint fails here, before anything is sent
        url = self._urls.submit(endpoint)
        headers = {}
        if self._options.start_timeout:
            headers["X-Fal-Request-Timeout"] = f"{self._options.start_timeout:.1f}"
        body = dict(payload)
        send = lambda left: self._submit_once(endpoint, url, body, headers, left)  # noqa: E731
        return await self._with_retries(send, retryable_submit, seconds=self._options.submit_timeout, overall=True)

    @staticmethod
    def handle_for(endpoint: str, request_id: str) -> QueueHandle:
        """A handle for a stored request id (checked when it is used)."""
        return QueueHandle(endpoint.strip("/"), request_id)

    async def status(self, handle: QueueHandle) -> QueueStatus:
        return await self._status_once(self._urls.request(handle, "status"))

    async def watch(self, handle: QueueHandle) -> AsyncGenerator[QueueStatus, None]:
        """Yield each new status until `Completed`. Use it in `contextlib.aclosing` to free its stream at once.

        Garbled answers and dropped connections are retried (stream, then polling with backoff): only the
        caller's own deadline, an auth error or a definite HTTP refusal such as 404 ends the watch early."""
        self._urls.request(handle)  # a hostile request id fails at once, not after retries
        last: QueueStatus | None = None
        async with aclosing(self._statuses(handle)) as statuses:
            async for status in statuses:
                if status != last:
                    last = status
                    yield status
                if isinstance(status, Completed):
                    return

    async def result(self, handle: QueueHandle, *, max_images: int | None = None) -> KontextOutput:
        """Fetch the output of a completed job; a failed job raises `FalRequestFailed`.

        With `max_images`, extra images (fal or a reseller ignoring `num_images`) are dropped and logged."""
        url = self._urls.request(handle)
        fetch = lambda left: self._send("GET", url, seconds=left, result=True)  # noqa: E731
        body = await self._with_retries(fetch, retryable_read, seconds=self._options.request_timeout)
        output = KontextOutput.from_payload(body)
        if max_images is not None and len(output.images) > max_images:
            log.warning(
                "fal returned %d images for request %s; keeping %d", len(output.images), handle.request_id, max_images
            )
            output = output.first(max_images)
        return output

    async def cancel(self, handle: QueueHandle) -> bool:
        """Ask fal to cancel, within `request_timeout` overall. True if accepted (a running job may still
        finish), False if already done."""
        url = self._urls.request(handle, "cancel")
        send = lambda left: self._send("PUT", url, seconds=left)  # noqa: E731
        try:
            await self._with_retries(send, retryable_read, seconds=self._options.request_timeout, overall=True)
        except FalHTTPError as exc:
            if exc.status == 400 and "ALREADY_COMPLETED" in exc.summary:
                return False
            raise
        return True

    async def download(self, url: str) -> Download:
        """A result image: a base64 `data:image/...` URI, or an https file on an allowed host, never following
        a redirect; at most `max_download_bytes`."""
        if url[:5].lower() == "data:":
            data, media_type = decode_data_uri(url, self._options.max_download_bytes)
            return Download(data, media_type)
        target = self._result_hosts.check(url)
        fetch = lambda left: self._fetch_bytes(target, left)  # noqa: E731
        return await self._with_retries(fetch, retryable_read, seconds=self._options.request_timeout * 4)

    # --- status sources -----------------------------------------------------------------------

    async def _statuses(self, handle: QueueHandle) -> AsyncGenerator[QueueStatus, None]:
        """The SSE stream while one of `max_streams` is free (each holds a connection for the whole job),
        then, or else, polling."""
        if self._options.use_stream and not self._streams.locked():
            async with self._streams:
                async for status in self._stream_statuses(handle):
                    yield status
                    if isinstance(status, Completed):
                        return
        async for status in self._poll_statuses(handle):
            yield status

    async def _stream_statuses(self, handle: QueueHandle) -> AsyncIterator[QueueStatus]:
        """Follow `/status/stream`; reconnect a few times, then give up quietly so polling takes over."""
        failures, last = 0, None
        url = self._urls.request(handle, "status/stream").update_query(logs="1")
        while failures < self._options.stream_attempts:
            try:
                async for status in self._read_stream(url):
                    if status != last:  # only progress earns more reconnects: a stream cut after
                        failures, last = 0, status  # every event must not loop forever
                    yield status
                    if isinstance(status, Completed):
                        return
                failures += 1  # stream closed before COMPLETED
            except FalAuthError:
                raise
            except FalError as exc:
                failures += 1
                log.info("status stream for %s failed (%s); attempt %d", handle.request_id, exc, failures)
        log.info("status stream for %s unavailable; polling", handle.request_id)

    async def _poll_statuses(self, handle: QueueHandle) -> AsyncIterator[QueueStatus]:
        """Poll `/status` every `poll_interval`, backing off on errors (garbled answers too) up to
        `poll_max_interval`."""
        errors = 0
        url = self._urls.request(handle, "status")
        while True:
            try:
                status = await self._status_once(url)
            except FalError as exc:
                if not retryable_watch(exc):
                    raise
                errors += 1
                log.info("status poll for %s failed (%s); attempt %d", handle.request_id, exc, errors)
                options = self._options
                await asyncio.sleep(
                    _retry_delay(errors, exc, base=options.poll_interval, cap=options.poll_max_interval)
                )
                continue
            errors = 0
            yield status
            if isinstance(status, Completed):
                return
            await asyncio.sleep(self._options.poll_interval)

    async def _status_once(self, url: URL) -> QueueStatus:
        body = await self._send("GET", url.update_query(logs="1"), seconds=self._options.request_timeout)
        return parse_status(body)

    async def _read_stream(self, url: URL) -> AsyncIterator[QueueStatus]:
        """Statuses from one SSE connection; each read may wait `request_timeout` (fal pings in between)."""
        limit = self._options.max_response_bytes
        per_read = self._options.request_timeout
        try:
            async with self._open("GET", url, aiohttp.ClientTimeout(sock_connect=per_read, sock_read=per_read)) as resp:
                if resp.status >= 300:
                    raise http_error(resp.status, await _error_body(resp, limit), resp.headers)
                async for data in sse_data(resp.content.iter_any(), limit):
                    yield parse_status(loads_json(data, "status event"))
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise _connection_error(exc, per_read) from exc

    # --- transport ----------------------------------------------------------------------------

    @asynccontextmanager
    async def _open(
        self,
        method: str,
        url: URL,
        client_timeout: aiohttp.ClientTimeout,
        *,
        json_body: Any = None,
        headers: Mapping[str, str] | None = None,
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        """The one door to the queue: only here does the key go out, and only to a URL under the base."""
        self._urls.check(url)
        auth = {"Authorization": f"{self._options.auth_scheme} {self._key.get_secret_value()}"}
        async with self._session.request(
            method,
            url,
            json=json_body,
            headers={**(headers or {}), **auth},
            timeout=client_timeout,
            allow_redirects=False,
        ) as response:
            yield response

    async def _send(
        self,
        method: str,
        url: URL,
        *,
        seconds: float,
        json_body: Any = None,
        headers: Mapping[str, str] | None = None,
        result: bool = False,
    ) -> Any:
        """One JSON exchange, all of it (connect, send, every byte of the answer) within `seconds`.

        A submit cut by `seconds` is unconfirmed even if it was still connecting: from outside aiohttp the two
        cannot be told apart, and "maybe taken" is the side that never bills twice. aiohttp's own connect
        timeout (at most `request_timeout`) usually fires first and is reported as the safe-to-retry failure."""
        connect = aiohttp.ClientTimeout(total=None, connect=min(seconds, self._options.request_timeout))
        limit = self._options.max_response_bytes
        try:
            async with (
                asyncio.timeout(seconds),
                self._open(method, url, connect, json_body=json_body, headers=headers) as resp,
            ):
                if resp.status >= 300:
                    raise http_error(resp.status, await _error_body(resp, limit), resp.headers, during_result=result)
                return await _json_answer(resp, limit)
        except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as exc:  # nothing was sent
            raise FalConnectionError(f"no connection to {url.host} ({type(exc).__name__})") from exc
        except (TimeoutError, aiohttp.ClientError) as exc:
            if method == "POST":
                raise _unconfirmed(exc, seconds) from exc
            raise _connection_error(exc, seconds) from exc

    async def _submit_once(
        self, endpoint: str, url: URL, body: dict[str, Any], headers: dict[str, str], seconds: float
    ) -> QueueHandle:
        try:
            answer = await self._send("POST", url, seconds=seconds, json_body=body, headers=headers)
            request_id = check_request_id(answer.get("request_id") if isinstance(answer, dict) else None)
        except FalProtocolError as exc:  # a 2xx answer: fal may well have taken the job
            raise FalSubmitUnconfirmed(f"fal's answer to the submit is unusable ({exc}); not resent") from exc
        position = answer.get("queue_position")
        return QueueHandle(endpoint, request_id, position if type(position) is int else None)

    async def _fetch_bytes(self, url: URL, seconds: float) -> Download:
        limit = self._options.max_download_bytes
        connect = aiohttp.ClientTimeout(total=None, connect=min(seconds, self._options.request_timeout))
        try:
            async with asyncio.timeout(seconds), self._session.get(url, timeout=connect, allow_redirects=False) as resp:
                if 300 <= resp.status < 400:  # an allowed host may point anywhere, internal addresses included
                    raise FalUnsafeURL(f"result image redirected (HTTP {resp.status}); redirects are not followed")
                if resp.status >= 300:
                    raise http_error(resp.status, await _error_body(resp, limit), resp.headers)
                data = await _read_body(resp, limit, "result image")
                return Download(data, resp.content_type or "application/octet-stream")
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise _connection_error(exc, seconds) from exc

    async def _with_retries(
        self,
        call: Callable[[float], Awaitable[T]],
        retryable: Callable[[FalError], bool],
        *,
        seconds: float,
        overall: bool = False,
    ) -> T:
        """`call(seconds)` with retries. Each attempt gets `seconds`; with `overall`, `seconds` bounds the whole
        call instead: an attempt gets what is left and no retry starts after the deadline."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        for attempt in range(1, self._options.max_attempts + 1):
            try:
                return await call(deadline - loop.time() if overall else seconds)
            except FalError as exc:
                if attempt == self._options.max_attempts or not retryable(exc):
                    raise
                delay = _retry_delay(attempt, exc, base=0.5, cap=10.0)
                if overall and loop.time() + delay >= deadline:
                    raise
                log.warning("fal request failed (%s); retry %d in %.1fs", exc, attempt, delay)
                await asyncio.sleep(delay)
        raise AssertionError("unreachable")  # pragma: no cover


def _retry_delay(attempt: int, exc: FalError, *, base: float, cap: float) -> float:
    retry_after = exc.retry_after if isinstance(exc, FalRateLimited) else None
    return backoff_delay(attempt, base=base, cap=cap, retry_after=retry_after)


async def _json_answer(response: aiohttp.ClientResponse, limit: int) -> Any:
    try:
        return loads_json(await _read_body(response, limit), "answer")
    except FalProtocolError as exc:
        raise FalProtocolError(f"{exc} (HTTP {response.status})") from None


async def _read_body(response: aiohttp.ClientResponse, limit: int, what: str = "answer") -> bytes:
    if (response.content_length or 0) > limit:
        raise FalProtocolError(f"{what} larger than {limit} bytes")
    return await read_capped(response.content.iter_chunked(CHUNK), limit, what)


async def _error_body(response: aiohttp.ClientResponse, limit: int) -> Any:
    """A non-2xx answer's body for the error: JSON when it is, else the start of its text."""
    try:
        raw = await _read_body(response, limit)
    except FalProtocolError:
        return "(error answer too large)"
    try:
        return loads_json(raw, "error answer")
    except FalProtocolError:
        return raw[:500].decode("utf-8", "replace")


def _connection_error(exc: BaseException, seconds: float) -> FalError:
    if isinstance(exc, TimeoutError):
        return FalTimeout(f"fal did not answer within {seconds:g} s")
    return FalConnectionError(f"connection to fal failed ({type(exc).__name__})")


def _unconfirmed(exc: BaseException, seconds: float) -> FalSubmitUnconfirmed:
    if isinstance(exc, TimeoutError):
        return FalSubmitUnconfirmed(f"no complete answer to the submit within {seconds:.3g} s; not resent")
    return FalSubmitUnconfirmed(f"no answer to the submit ({type(exc).__name__}); not resent")
