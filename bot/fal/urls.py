"""Where the client may send requests: queue URLs built on the configured base, result files on allowed hosts.

Nothing fal answers is turned into a queue URL: a request id becomes one path segment after a strict check,
and every queue request passes `QueueURLs.check`, which keeps the key on the base's origin and path.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass

from yarl import URL

from .errors import FalUnsafeURL
from .models import QueueHandle

__all__ = ("QueueURLs", "ResultHosts", "app_root", "check_endpoint", "check_request_id")

NAMESPACES = ("workflows", "comfy")  # these keep one more path segment in the app root
_SEGMENT = re.compile(r"[A-Za-z0-9._-]{1,128}")
DEFAULT_PORTS = {"http": 80, "https": 443}


def _safe_segment(segment: str) -> bool:
    """Letters, digits, `.`, `_`, `-`; and not `.`/`..`, which a server would resolve as a step up."""
    return _SEGMENT.fullmatch(segment) is not None and segment.strip(".") != ""


def check_request_id(request_id: object) -> str:
    """The request id as one safe path segment, or `FalUnsafeURL` (fal ids are UUIDs)."""
    if not isinstance(request_id, str) or not _safe_segment(request_id):
        raise FalUnsafeURL("request id is not a plain identifier")
    return request_id


def check_endpoint(endpoint: str) -> str:
    """`owner/alias[/path...]` with safe segments, without surrounding slashes."""
    segments = endpoint.strip("/").split("/")
    if len(segments) < 2 or not all(_safe_segment(s) for s in segments):
        raise FalUnsafeURL(f"endpoint {endpoint[:100]!r} is not owner/alias[/path] of plain names")
    return "/".join(segments)


def app_root(endpoint: str) -> str:
    """`owner/alias` of an endpoint: fal serves status and results there, without the sub-path."""
    parts = endpoint.strip("/").split("/")
    return "/".join(parts[: 3 if parts[0] in NAMESPACES else 2])


class QueueURLs:
    """Every queue URL, built from the configured base on each use."""

    def __init__(self, base_url: str) -> None:
        self.base = URL(base_url.rstrip("/"))
        if self.base.scheme not in DEFAULT_PORTS or not self.base.host:
            raise ValueError("the fal queue URL must be an absolute http(s) URL")
        self._prefix = self.base.raw_path.rstrip("/")

    def submit(self, endpoint: str) -> URL:
        return self._under_base(check_endpoint(endpoint))

    def request(self, handle: QueueHandle, suffix: str = "") -> URL:
        """`{base}/{app root}/requests/{id}[/suffix]`."""
        root = app_root(check_endpoint(handle.endpoint))
        path = f"{root}/requests/{check_request_id(handle.request_id)}"
        return self._under_base(f"{path}/{suffix}" if suffix else path)

    def check(self, url: URL) -> URL:
        """Refuse a URL off the base's origin, outside its path, or with a segment that could climb out of it."""
        same_origin = (url.scheme, url.host, url.port) == (self.base.scheme, self.base.host, self.base.port)
        inside = url.raw_path.startswith(self._prefix + "/") and url.user is None and url.password is None
        rest = url.raw_path[len(self._prefix) + 1 :].split("/") if inside else []
        if not (same_origin and inside and all(_safe_segment(s) for s in rest)):
            raise FalUnsafeURL(f"refusing a queue request to {url.host}: not under FAL_QUEUE_URL")
        return url

    def _under_base(self, path: str) -> URL:
        return self.check(self.base.with_path(f"{self._prefix}/{path}", encoded=True))


@dataclass(frozen=True, slots=True)
class _HostRule:
    host: str
    port: int | None  # None: the scheme's default port only
    subdomains: bool  # names match their subdomains too; IP addresses only themselves

    def matches(self, host: str, port: int | None, scheme: str) -> bool:
        if port != (self.port if self.port is not None else DEFAULT_PORTS[scheme]):
            return False
        return host == self.host or (self.subdomains and host.endswith("." + self.host))


class ResultHosts:
    """The hosts result images may come from. An entry is `host` or `host:port`: a name matches itself and its
    subdomains, an IP address only itself; without a port only the scheme's default port is allowed."""

    def __init__(self, entries: Iterable[str], *, allow_http: bool = False) -> None:
        self._rules = tuple(_rule(entry) for entry in entries)
        self._schemes = ("https", "http") if allow_http else ("https",)

    def check(self, raw: str) -> URL:
        try:
            url = URL(raw)
            host, port = (url.host or "").rstrip(".").lower(), url.port
        except ValueError:
            raise FalUnsafeURL("result image URL is not a URL") from None
        if url.scheme not in self._schemes:
            raise FalUnsafeURL(f"result image over {url.scheme or 'no scheme'!r}; allowed: {', '.join(self._schemes)}")
        if not any(rule.matches(host, port, url.scheme) for rule in self._rules):
            raise FalUnsafeURL(f"result image on an unexpected host: {host}:{port}")
        return url


def _rule(entry: str) -> _HostRule:
    try:
        parsed = URL(f"//{entry.strip()}")
        host = (parsed.host or "").rstrip(".").lower()
        port = parsed.explicit_port
    except ValueError:
        host, port = "", None
    if not host or parsed.raw_path not in ("", "/") or parsed.user or parsed.query_string:
        raise ValueError(f"result host entry {entry!r} is not host or host:port")
    return _HostRule(host, port, subdomains=not _is_ip(host))


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True
