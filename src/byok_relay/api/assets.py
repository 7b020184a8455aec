"""The relay's own pages, `GET /` and `GET /docs`, and the files they load.

`/docs` is Swagger UI (vendored in static/vendor/swagger-ui/, see its README.md) over
`/openapi.json`; `/` is a static landing page. Both load nothing from another host,
which their Content-Security-Policy enforces in the browser as well.

The files are served from an allow-list built from the package's own files: a name
taken from the URL is only ever a dictionary key, never part of a file-system path.
"""

from __future__ import annotations

import asyncio
import base64
import gzip
import hashlib
import html
import re
from dataclasses import dataclass
from functools import cache
from importlib.resources import files
from importlib.resources.abc import Traversable

from aiohttp import web

from byok_relay import __version__

_STATIC = files("byok_relay") / "static"
VIEWER_DIR = _STATIC / "vendor" / "swagger-ui"

_TEXT = "; charset=utf-8"
#: What may be served, by file suffix ("" is LICENSE and NOTICE).
CONTENT_TYPES = {
    ".js": "text/javascript" + _TEXT,
    ".css": "text/css" + _TEXT,
    ".txt": "text/plain" + _TEXT,
    ".md": "text/markdown" + _TEXT,
    "": "text/plain" + _TEXT,
}
ASSET_CACHE = "public, max-age=86400"
PAGE_CACHE = "public, max-age=300"

# Swagger UI needs no inline script or style, no eval, no fonts and no other host:
# its CSS inlines its icons as data: URIs, and "Try it out" calls this same origin.
DOCS_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)


@dataclass(frozen=True)
class Asset:
    body: bytes
    gzipped: bytes | None
    content_type: str
    etag: str


def _suffix(name: str) -> str:
    return "." + name.rsplit(".", 1)[1] if "." in name else ""


@cache
def asset_files() -> dict[str, Traversable]:
    """Name → file: the viewer's files, and the page script that starts it."""
    found = {
        f.name: f
        for f in VIEWER_DIR.iterdir()
        if f.is_file() and not f.name.startswith(".") and _suffix(f.name) in CONTENT_TYPES
    }
    found["docs.js"] = _STATIC / "docs.js"
    return found


def _load(name: str) -> Asset:
    body = asset_files()[name].read_bytes()
    digest = hashlib.sha256(body).hexdigest()[:20]
    # mtime=0: the same bytes in every process, so every instance answers the same ETag.
    gzipped = gzip.compress(body, compresslevel=6, mtime=0) if len(body) > 1024 else None
    return Asset(body, gzipped, CONTENT_TYPES[_suffix(name)], f'"{digest}"')


_loaded: dict[str, Asset] = {}


async def _asset(name: str) -> Asset | None:
    if name not in asset_files():
        return None
    asset = _loaded.get(name)
    if asset is None:
        # Read and compressed once per process, off the event loop (the bundle is ~2 MB).
        asset = _loaded[name] = await asyncio.to_thread(_load, name)
    return asset


def _accepts_gzip(request: web.Request) -> bool:
    for part in request.headers.get("Accept-Encoding", "").split(","):
        coding, _, params = part.strip().partition(";")
        if coding.strip().lower() in ("gzip", "*"):
            q = params.strip().removeprefix("q=").strip()
            return not params or q not in ("0", "0.0", "0.00", "0.000")
    return False


async def asset_response(request: web.Request, name: str) -> web.Response:
    """One allow-listed file, gzipped when the client takes it, 304 when its copy is
    current. Anything else is the relay's JSON 404."""
    asset = await _asset(name)
    if asset is None:
        raise web.HTTPNotFound()
    gz = asset.gzipped is not None and _accepts_gzip(request)
    etag = asset.etag[:-1] + '-gz"' if gz else asset.etag
    headers = {
        "Content-Type": asset.content_type,
        "Cache-Control": ASSET_CACHE,
        "ETag": etag,
        "Vary": "Accept-Encoding, Origin",
    }
    sent = [t.strip() for t in request.headers.get("If-None-Match", "").split(",")]
    if etag in sent or "*" in sent:
        del headers["Content-Type"]
        return web.Response(status=304, headers=headers)
    if gz:
        headers["Content-Encoding"] = "gzip"
    return web.Response(body=asset.gzipped if gz else asset.body, headers=headers)


def _page(body: bytes, csp: str) -> web.Response:
    return web.Response(
        body=body,
        headers={
            "Content-Type": "text/html" + _TEXT,
            "Cache-Control": PAGE_CACHE,
            "Content-Security-Policy": csp,
        },
    )


def docs_response() -> web.Response:
    return _page(_docs_html(), DOCS_CSP)


def landing_response() -> web.Response:
    body, csp = _landing()
    return _page(body, csp)


@cache
def static_bytes(name: str) -> bytes:
    """A file of the package's static/ folder, read once per process (the package does
    not change under a running relay)."""
    return (_STATIC / name).read_bytes()


def _docs_html() -> bytes:
    return static_bytes("docs.html")


@cache
def _landing() -> tuple[bytes, str]:
    """static/index.html with the version filled in, and a CSP that allows exactly its
    own inline <style> (by hash) and nothing else: the page has no script."""
    text = static_bytes("index.html").decode("utf-8")
    text = text.replace("{{version}}", html.escape(__version__))
    hashes = " ".join(
        "'sha256-" + base64.b64encode(hashlib.sha256(css.encode()).digest()).decode() + "'"
        for css in re.findall(r"<style>(.*?)</style>", text, re.S)
    )
    styles = hashes or "'none'"
    csp = (
        f"default-src 'none'; style-src {styles}; img-src data:; "
        "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    )
    return text.encode(), csp
