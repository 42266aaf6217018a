"""The browser pages: the demo chat (``/``), the operator console (``/operator``), the website
widget (``/widget.js``, which any site embeds, and ``/widget``, the chat in its frame), their
shared CSS/JS (``/static/``) and, when installed, the socket.io-client bundle (``/vendor/``)."""

from __future__ import annotations

import html
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from urllib.parse import urlsplit

from aiohttp import web

from ..domain.visitors import WidgetKey

CDN_CLIENT_URL = "https://cdn.socket.io/4.8.1/socket.io.min.js"
# Subresource Integrity of that file: the browser refuses it if the CDN ever serves other bytes
# (tests check it against npm's socket.io-client 4.8.1 dist/socket.io.min.js).
CDN_CLIENT_INTEGRITY = "sha384-mkQ3/7FUtcGyoppY6bz/PORYoGqOl7/aSUMn2ymDOJcapfS6PHqxhRTMh1RR0Q6+"
LOCAL_CLIENT_URL = "/vendor/socket.io.min.js"
STATIC_FILES = {
    "chat.css": "text/css",
    "chat.js": "text/javascript",
    "index.js": "text/javascript",
    "operator.js": "text/javascript",
    "client-fallback.js": "text/javascript",
    "favicon.svg": "image/svg+xml",
    "widget.css": "text/css",
    "widget-app.js": "text/javascript",
}
PAGES = {"/": "index.html", "/operator": "operator.html"}
WIDGET_PAGE = "widget.html"
WIDGET_LOADER = "widget.js"  # served at /widget.js: the one tag a site adds
# Every response (on_response_prepare, so WebSocket upgrades and errors too).
COMMON_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


@dataclass(frozen=True)
class ClientScript:
    """Where the pages load socket.io-client from, and where they fall back to."""

    url: str
    fallback: str | None
    bundle: Path | None  # the local copy served under /vendor/, when there is one

    @classmethod
    def choose(cls, override: str | None, bundle_path: str | None) -> ClientScript:
        """``SOCKETIO_CLIENT_URL`` when set; else the locally installed bundle (works offline);
        else the CDN. Whichever is not first is the fallback."""
        bundle = Path(bundle_path) if bundle_path else None
        if bundle is not None and not bundle.is_file():
            bundle = None
        local = LOCAL_CLIENT_URL if bundle is not None else None
        url = override or local or CDN_CLIENT_URL
        fallback = local if local and url != local else CDN_CLIENT_URL
        return cls(url=url, fallback=fallback if fallback != url else None, bundle=bundle)

    def describe(self) -> str:
        source = (
            f"{self.url} (local bundle {self.bundle})" if self.url == LOCAL_CLIENT_URL else self.url
        )
        extra = f", falling back to {self.fallback}" if self.fallback else ""
        return f"pages: socket.io-client from {source}{extra}"

    def tags(self) -> dict[str, str]:
        fallback = ""
        if self.fallback:
            # Loaded only when the first script did not define io (unreachable CDN, proxy).
            attributes = f'data-src="{html.escape(self.fallback)}"'
            if self.fallback == CDN_CLIENT_URL:
                attributes += f' data-integrity="{CDN_CLIENT_INTEGRITY}"'
            fallback = f'<script src="/static/client-fallback.js" {attributes}></script>'
        return {
            "{{SOCKETIO_CLIENT_SCRIPT}}": f'<script src="{html.escape(self.url)}"{_sri(self.url)}>'
            "</script>",
            "{{SOCKETIO_CLIENT_FALLBACK}}": fallback,
        }

    def script_sources(self) -> list[str]:
        """For the CSP's script-src: this server, and the origin of each absolute URL."""
        sources = ["'self'"]
        for url in (self.url, self.fallback):
            parts = urlsplit(url or "")
            if parts.scheme in {"http", "https"} and parts.netloc:
                origin = f"{parts.scheme}://{parts.netloc}"
                if origin not in sources:
                    sources.append(origin)
        return sources

    def content_security_policy(self, frame_ancestors: str = "'none'") -> str:
        """Scripts only from files (no inline script, no eval); framed by ``frame_ancestors``
        (nobody, but the widget's frame by its key's sites)."""
        return "; ".join(
            [
                "default-src 'self'",
                "script-src " + " ".join(self.script_sources()),
                "style-src 'self'",
                "img-src 'self' data:",
                "connect-src 'self'",  # Socket.IO and /ws/chat on this origin (ws/wss too)
                "object-src 'none'",
                "base-uri 'none'",
                "form-action 'self'",
                f"frame-ancestors {frame_ancestors}",
            ]
        )


def _sri(url: str) -> str:
    """For the known CDN file: its integrity, fetched without credentials."""
    if url != CDN_CLIENT_URL:
        return ""
    return f' integrity="{CDN_CLIENT_INTEGRITY}" crossorigin="anonymous"'


class Pages:
    def __init__(self, client: ClientScript, widget_keys: Mapping[str, WidgetKey]) -> None:
        self._client = client
        self._widget_keys = widget_keys
        folder = resources.files(__package__).joinpath("static")
        self._pages: dict[str, str] = {}
        for route, name in [*PAGES.items(), ("/widget", WIDGET_PAGE)]:
            text = folder.joinpath(name).read_text("utf-8")
            for placeholder, value in client.tags().items():
                text = text.replace(placeholder, value)
            self._pages[route] = text
        self._loader = folder.joinpath(WIDGET_LOADER).read_bytes()
        self._static = {name: folder.joinpath(name).read_bytes() for name in STATIC_FILES}
        self._page_headers = {
            "Content-Security-Policy": client.content_security_policy(),
            "X-Frame-Options": "DENY",  # frame-ancestors, for browsers that predate it
            "Cache-Control": "no-cache",
        }

    def install(self, app: web.Application) -> None:
        app.on_response_prepare.append(_common_headers)
        for route in PAGES:
            app.router.add_get(route, self.page)
        app.router.add_get("/widget", self.widget)
        app.router.add_get("/widget.js", self.widget_loader)
        app.router.add_get("/static/{name}", self.static)
        if self._client.bundle is not None:
            app.router.add_get(LOCAL_CLIENT_URL, self.bundle)
            app.router.add_get(LOCAL_CLIENT_URL + ".map", self.bundle_map)

    async def page(self, request: web.Request) -> web.Response:
        return web.Response(
            text=self._pages[request.path], content_type="text/html", headers=self._page_headers
        )

    async def widget(self, request: web.Request) -> web.Response:
        """The chat in the widget's frame: only the key's sites may frame it (any site for a
        key without origins)."""
        key = self._widget_keys.get(request.query.get("key", ""))
        if key is None:
            return web.Response(
                status=404,
                text="Unknown widget key: check data-widget-key against WIDGET_KEYS.",
                headers={"Cache-Control": "no-cache"},
            )
        ancestors = " ".join(key.origins) if key.origins else "*"
        headers = {
            "Content-Security-Policy": self._client.content_security_policy(ancestors),
            "Cache-Control": "no-cache",
        }
        return web.Response(text=self._pages["/widget"], content_type="text/html", headers=headers)

    async def widget_loader(self, request: web.Request) -> web.Response:
        """The one script a site embeds: loaded cross-origin by every page of it."""
        return web.Response(
            body=self._loader,
            content_type="text/javascript",
            charset="utf-8",
            headers={
                "Cache-Control": "max-age=300",
                "Cross-Origin-Resource-Policy": "cross-origin",
            },
        )

    async def static(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in self._static:
            raise web.HTTPNotFound()
        return web.Response(
            body=self._static[name],
            content_type=STATIC_FILES[name],
            charset="utf-8",
            headers={"Cache-Control": "no-cache"},
        )

    async def bundle(self, request: web.Request) -> web.FileResponse:
        assert self._client.bundle is not None
        return web.FileResponse(self._client.bundle, headers={"Cache-Control": "max-age=3600"})

    async def bundle_map(self, request: web.Request) -> web.StreamResponse:
        assert self._client.bundle is not None
        source_map = self._client.bundle.with_name(self._client.bundle.name + ".map")
        if not source_map.is_file():
            raise web.HTTPNotFound()
        return web.FileResponse(source_map)


async def _common_headers(request: web.Request, response: web.StreamResponse) -> None:
    for name, value in COMMON_HEADERS.items():
        response.headers.setdefault(name, value)
