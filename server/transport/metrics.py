"""``GET /metrics`` (Prometheus exposition), behind credentials.

With ``METRICS_TOKEN`` only ``Authorization: Bearer <METRICS_TOKEN>`` may read it (compared in
constant time; a user's JWT is not a metrics credential). Without a token it is served on the
public port only in dev auth. ``METRICS_PORT`` adds a listener of its own (on ``METRICS_HOST``,
loopback by default) for a scraper on a private network; the token applies there too when set.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Callable

from aiohttp import web

from .auth import bearer_token

log = logging.getLogger(__name__)

METRICS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class MetricsEndpoint:
    def __init__(
        self, exposition: Callable[[], bytes], *, token: str | None, public_without_token: bool
    ) -> None:
        self._exposition = exposition
        self._token = token.encode() if token else None
        self._public_without_token = public_without_token
        self._runner: web.AppRunner | None = None
        self.port: int | None = None  # the separate listener's, once started

    def install(self, app: web.Application) -> None:
        """The public port serves /metrics only with a token, or open in dev auth."""
        if self._token is not None or self._public_without_token:
            app.router.add_get("/metrics", self.metrics)

    async def metrics(self, request: web.Request) -> web.Response:
        if self._token is not None and not self._authorized(request):
            return web.Response(
                status=401,
                text="metrics need Authorization: Bearer <METRICS_TOKEN>\n",
                headers={"WWW-Authenticate": 'Bearer realm="metrics"'},
            )
        return web.Response(body=self._exposition(), headers={"Content-Type": METRICS_CONTENT_TYPE})

    def _authorized(self, request: web.Request) -> bool:
        assert self._token is not None
        given = bearer_token(request.headers.get("Authorization"))
        return given is not None and hmac.compare_digest(given.encode(), self._token)

    async def listen(self, host: str, port: int) -> None:
        """Serve /metrics alone on ``host:port`` (port 0: any free port, see :attr:`port`)."""
        app = web.Application()
        app.router.add_get("/metrics", self.metrics)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, host, port)
        await site.start()
        self._runner = runner
        self.port = _bound_port(runner, port)
        log.info("metrics listening on http://%s:%s/metrics", host, self.port)

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None


def _bound_port(runner: web.AppRunner, asked: int) -> int:
    for address in runner.addresses:
        if isinstance(address, tuple) and len(address) >= 2:
            return int(address[1])
    return asked
