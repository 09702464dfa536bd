"""An async client for fal's queue API, on a shared aiohttp session.

Every request goes through `_send`, the one place that reads HTTP statuses. Submits are never
resent once they may have reached fal: a duplicate would be a second paid job.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Collection, Mapping
from contextlib import aclosing
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
    http_error,
)
from .models import Completed, KontextOutput, QueueHandle, QueueStatus, parse_status
from .retry import backoff_delay, retryable_read, retryable_submit

__all__ = ("Download", "FalClient", "FalClientOptions", "app_root")

log = logging.getLogger(__name__)
T = TypeVar("T")
NAMESPACES = ("workflows", "comfy")  # these keep one more path segment in the app root


@dataclass(frozen=True, slots=True)
class FalClientOptions:
    """Tunables, with the defaults the bot uses."""

    auth_scheme: str = "Key"
    request_timeout: float = 30.0
    submit_timeout: float = 60.0
    start_timeout: float | None = 900.0
    poll_interval: float = 1.0
    poll_max_interval: float = 10.0
    use_stream: bool = True
    max_streams: int = 200
    stream_attempts: int = 3
    max_attempts: int = 4
    result_hosts: Collection[str] = ()
    max_download_bytes: int = 50 * 1024 * 1024


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
        self._base = URL(base_url.rstrip("/"))
        self._options = options
        self._streams = asyncio.Semaphore(options.max_streams)

    # --- queue operations -------------------------------------------------------------------

    async def submit(self, endpoint: str, payload: Mapping[str, Any]) -> QueueHandle:
        """Put a job in fal's queue. Raises `FalSubmitUnconfirmed` when fal may have taken it."""
        endpoint = endpoint.strip("/")
        headers = {}
        if self._options.start_timeout:
            headers["X-Fal-Request-Timeout"] = f"{self._options.start_timeout:.1f}"
        body = await self._with_retries(
            lambda: self._send("POST", self._join(endpoint), json_body=dict(payload), headers=headers),
            retryable_submit,
        )
        return self._handle_from(endpoint, body)

    @staticmethod
    def handle_for(endpoint: str, request_id: str) -> QueueHandle:
        """A handle for a stored request id."""
        return QueueHandle(endpoint.strip("/"), request_id)

    async def status(self, handle: QueueHandle) -> QueueStatus:
        return parse_status(await self._send("GET", self._request_url(handle, "status").update_query(logs="1")))

    async def watch(self, handle: QueueHandle) -> AsyncGenerator[QueueStatus, None]:
        """Yield each new status until `Completed`. Use it in `contextlib.aclosing` to free its stream at once."""
        last: QueueStatus | None = None
        async with aclosing(self._statuses(handle)) as statuses:
            async for status in statuses:
                if status != last:
                    last = status
                    yield status
                if isinstance(status, Completed):
                    return

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

    async def result(self, handle: QueueHandle, *, max_images: int | None = None) -> KontextOutput:
        """Fetch the output of a completed job; a failed job raises `FalRequestFailed`.

        With `max_images`, extra images (fal or a reseller ignoring `num_images`) are dropped and logged."""
        fetch = lambda: self._send("GET", self._request_url(handle), result=True)  # noqa: E731
        output = KontextOutput.from_payload(await self._with_retries(fetch, retryable_read))
        if max_images is not None and len(output.images) > max_images:
            log.warning(
                "fal returned %d images for request %s; keeping %d", len(output.images), handle.request_id, max_images
            )
            output = output.first(max_images)
        return output

    async def cancel(self, handle: QueueHandle) -> bool:
        """Ask fal to cancel. True if accepted (a running job may still finish), False if already done."""
        try:
            await self._with_retries(lambda: self._send("PUT", self._request_url(handle, "cancel")), retryable_read)
        except FalHTTPError as exc:
            if exc.status == 400 and "ALREADY_COMPLETED" in exc.summary:
                return False
            raise
        return True

    async def download(self, url: str) -> Download:
        """Download a result image, only from fal's result hosts, at most `max_download_bytes`."""
        if url.startswith("data:"):
            return _decode_data_uri(url)
        target = URL(url)
        if not self._allowed_result_host(target):
            raise FalProtocolError(f"result image on an unexpected host: {target.host}")
        return await self._with_retries(lambda: self._fetch_bytes(target), retryable_read)

    # --- status sources -----------------------------------------------------------------------

    async def _stream_statuses(self, handle: QueueHandle) -> AsyncIterator[QueueStatus]:
        """Follow `/status/stream`; reconnect a few times, then give up quietly so polling takes over."""
        failures, last = 0, None
        url = self._request_url(handle, "status/stream").update_query(logs="1")
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
        """Poll `/status` every `poll_interval`, backing off on errors up to `poll_max_interval`."""
        errors = 0
        while True:
            try:
                status = await self.status(handle)
            except FalError as exc:
                if not retryable_read(exc):
                    raise
                errors += 1
                await asyncio.sleep(self._poll_backoff(errors, exc))
                continue
            errors = 0
            yield status
            if isinstance(status, Completed):
                return
            await asyncio.sleep(self._options.poll_interval)

    def _poll_backoff(self, errors: int, exc: FalError) -> float:
        retry_after = exc.retry_after if isinstance(exc, FalRateLimited) else None
        return backoff_delay(
            errors, base=self._options.poll_interval, cap=self._options.poll_max_interval, retry_after=retry_after
        )

    async def _read_stream(self, url: URL) -> AsyncIterator[QueueStatus]:
        timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=self._options.request_timeout, sock_read=self._options.request_timeout
        )
        try:
            async with self._session.get(url, headers=self._auth_headers(), timeout=timeout) as response:
                if response.status >= 300:
                    raise http_error(response.status, await _read_json_or_text(response), response.headers)
                async for data in _sse_data(response.content):
                    yield parse_status(_loads(data))
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise _connection_error(exc) from exc

    # --- transport ----------------------------------------------------------------------------

    async def _send(
        self,
        method: str,
        url: URL,
        *,
        json_body: Any = None,
        headers: dict[str, str] | None = None,
        result: bool = False,
    ) -> Any:
        """One HTTP exchange; maps every failure to a `FalError`."""
        is_submit = method == "POST"
        timeout = self._options.submit_timeout if is_submit else self._options.request_timeout
        try:
            async with self._session.request(
                method,
                url,
                json=json_body,
                headers={**self._auth_headers(), **(headers or {})},
                timeout=self._timeout(timeout),
            ) as response:
                body = await _read_json_or_text(response)
                if response.status >= 300:
                    raise http_error(response.status, body, response.headers, during_result=result)
                return body
        except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as exc:  # nothing was sent
            raise FalConnectionError(f"no connection to {url.host} ({type(exc).__name__})") from exc
        except (TimeoutError, aiohttp.ClientError) as exc:
            if is_submit:
                raise FalSubmitUnconfirmed(f"no answer to the submit ({type(exc).__name__})") from exc
            raise _connection_error(exc) from exc

    def _timeout(self, read: float) -> aiohttp.ClientTimeout:
        """`connect` covers waiting for a pooled connection too: a timeout there means nothing was sent."""
        return aiohttp.ClientTimeout(total=None, connect=self._options.request_timeout, sock_read=read)

    async def _fetch_bytes(self, url: URL) -> Download:
        limit = self._options.max_download_bytes
        try:
            async with self._session.get(
                url, timeout=aiohttp.ClientTimeout(total=self._options.request_timeout * 4)
            ) as response:
                if response.status >= 300:
                    raise http_error(response.status, await _read_json_or_text(response), response.headers)
                if (response.content_length or 0) > limit:
                    raise FalProtocolError(f"result image larger than {limit} bytes")
                data = await _read_at_most(response.content, limit)
                return Download(data, response.content_type or "application/octet-stream")
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise _connection_error(exc) from exc

    async def _with_retries(self, call: Callable[[], Awaitable[T]], retryable: Callable[[FalError], bool]) -> T:
        for attempt in range(1, self._options.max_attempts + 1):
            try:
                return await call()
            except FalError as exc:
                if attempt == self._options.max_attempts or not retryable(exc):
                    raise
                retry_after = exc.retry_after if isinstance(exc, FalRateLimited) else None
                delay = backoff_delay(attempt, base=0.5, cap=10.0, retry_after=retry_after)
                log.warning("fal request failed (%s); retry %d in %.1fs", exc, attempt, delay)
                await asyncio.sleep(delay)
        raise AssertionError("unreachable")  # pragma: no cover

    # --- helpers ------------------------------------------------------------------------------

    def _auth_headers(self) -> dict[str, str]:
        return {"Authorization": f"{self._options.auth_scheme} {self._key.get_secret_value()}"}

    def _join(self, path: str) -> URL:
        return self._base.with_path(f"{self._base.path.rstrip('/')}/{path.lstrip('/')}", encoded=False)

    def _request_url(self, handle: QueueHandle, suffix: str = "") -> URL:
        """`{base}/{app root}/requests/{id}[/suffix]`, always on the configured base."""
        path = f"{app_root(handle.endpoint)}/requests/{handle.request_id}"
        return self._join(f"{path}/{suffix}" if suffix else path)

    @staticmethod
    def _handle_from(endpoint: str, body: Any) -> QueueHandle:
        """Only the request id of the answer is used: its URLs are ignored (a reseller passes fal's on)."""
        if not isinstance(body, dict) or not isinstance(body.get("request_id"), str):
            raise FalProtocolError("submit answer without a request_id")
        position = body.get("queue_position")
        return QueueHandle(endpoint, body["request_id"], position if isinstance(position, int) else None)

    def _allowed_result_host(self, url: URL) -> bool:
        host = (url.host or "").lower()
        return url.scheme in ("https", "http") and any(
            host == allowed or host.endswith("." + allowed) for allowed in self._options.result_hosts
        )


def app_root(endpoint: str) -> str:
    """`owner/alias` of an endpoint: fal serves status and results there, without the sub-path."""
    parts = endpoint.strip("/").split("/")
    return "/".join(parts[: 3 if parts[0] in NAMESPACES else 2])


async def _sse_data(stream: aiohttp.StreamReader) -> AsyncIterator[str]:
    """Yield the `data` of each server-sent event; comment lines (`: ping`) are keep-alives."""
    data: list[str] = []
    async for raw in stream:
        line = raw.decode("utf-8").rstrip("\r\n")
        if not line:
            if data:
                yield "\n".join(data)
            data = []
        elif line.startswith("data:"):
            data.append(line[5:].lstrip(" "))
    if data:
        yield "\n".join(data)


async def _read_at_most(stream: aiohttp.StreamReader, limit: int) -> bytes:
    """The whole body, refusing it once it grows past `limit` (a lying or missing Content-Length)."""
    body = bytearray()
    async for chunk in stream.iter_chunked(64 * 1024):
        body += chunk
        if len(body) > limit:
            raise FalProtocolError(f"result image larger than {limit} bytes")
    return bytes(body)


async def _read_json_or_text(response: aiohttp.ClientResponse) -> Any:
    text = await response.text()
    try:
        return json.loads(text) if text else None
    except ValueError:
        if response.status < 300:
            raise FalProtocolError(f"answer is not JSON (HTTP {response.status})") from None
        return text[:500]


def _loads(data: str) -> Any:
    try:
        return json.loads(data)
    except ValueError:
        raise FalProtocolError("status event is not JSON") from None


def _connection_error(exc: BaseException) -> FalError:
    if isinstance(exc, TimeoutError):
        return FalTimeout("fal did not answer in time")
    return FalConnectionError(f"connection to fal failed ({type(exc).__name__})")


def _decode_data_uri(uri: str) -> Download:
    header, _, payload = uri.partition(",")
    content_type = header[5:].split(";")[0] or "application/octet-stream"
    try:
        return Download(base64.b64decode(payload, validate=True), content_type)
    except ValueError:
        raise FalProtocolError("malformed data URI in result") from None
