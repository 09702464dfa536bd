"""`/metrics` (Prometheus text format) and `/healthz` on METRICS_PORT, served by aiohttp.web."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

__all__ = ("MetricsError", "serve_metrics")

log = logging.getLogger(__name__)


class MetricsError(Exception):
    """The endpoint cannot listen (the port is taken, the address is not this machine's)."""


def metrics_app(registry: CollectorRegistry, healthy: Callable[[], bool]) -> web.Application:
    async def metrics(request: web.Request) -> web.Response:
        response = web.Response(body=generate_latest(registry))
        response.headers["Content-Type"] = CONTENT_TYPE_LATEST
        return response

    async def healthz(request: web.Request) -> web.Response:
        if healthy():
            return web.Response(text="ok\n")
        return web.Response(status=503, text="not connected to Discord\n")

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    return app


@asynccontextmanager
async def serve_metrics(
    registry: CollectorRegistry, healthy: Callable[[], bool], host: str, port: int
) -> AsyncIterator[str]:
    """Serve while the block runs; yields the base URL (port 0 picks a free port)."""
    runner = web.AppRunner(metrics_app(registry, healthy), access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    try:
        try:
            await web.TCPSite(runner, host, port).start()
        except OSError as exc:
            raise MetricsError(f"cannot listen on {host}:{port} ({exc.strerror or exc})") from None
        bound_host, bound_port = runner.addresses[0][:2]
        url = f"http://{_url_host(bound_host)}:{bound_port}"
        log.info("metrics on %s/metrics, health on %s/healthz", url, url)
        yield url
    finally:
        await runner.cleanup()


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host
