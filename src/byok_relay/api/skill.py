"""The coding-agent skill (`GET /skill`) and its index (`GET /llms.txt`), SPEC §12.

Both carry the relay's public base URL: `PUBLIC_URL` when set, else the URL the request
came in on. That URL is built from request headers, which a client controls, so:

- `X-Forwarded-Proto` / `X-Forwarded-Host` are read only when `TRUSTED_PROXIES` says a
  proxy sets them (a hop count: the value that many entries from the right, as the
  proxies appended it; CIDRs: only from a peer inside them, the last value);
- the host must match `HOST_PORT` (letters, digits, `.-_`, a port, a bracketed IPv6
  address), so it cannot carry Markdown, links or line breaks; anything else and the
  skill keeps its `{{RELAY_URL}}` placeholder (which it tells the reader how to fill in)
  and /llms.txt links relatively;
- an answer derived from headers is `Cache-Control: private` with `Vary`, so a shared
  cache cannot be poisoned into serving one client's Host to everyone.

The canonical skill is `skills/byok-relay/SKILL.md` in the repository; the package ships
an identical copy as `static/SKILL.md` (a test keeps them equal), because a wheel or a
container image holds only the package.
"""

from __future__ import annotations

import re

from aiohttp import web

from byok_relay.api.assets import static_bytes
from byok_relay.api.endpoints import endpoint
from byok_relay.config import HOST_PORT
from byok_relay.services import Services

PLACEHOLDER = "{{RELAY_URL}}"
_UNFILLED_NOTE = re.compile(r"<!-- unfilled:.*?<!-- /unfilled -->\n", re.S)
_DERIVED_VARY = "Host, X-Forwarded-Host, X-Forwarded-Proto, Origin"  # Origin: CORS

_LLMS_TXT = """\
# byok-relay

> A self-hostable relay that lets apps call AI providers (OpenAI, Anthropic, Gemini and \
more) with each user's own API key: register a user, store their key once, then call the \
provider's API through the relay with the relay token where the SDK expects its API key.

{where}

## Docs

- [Coding-agent skill]({base}/skill): how to add BYOK to an app: register, store a key, \
call through the official SDKs (Python, JavaScript, curl), scoped tokens for browsers, errors
- [OpenAPI description]({base}/openapi.json): every route with its fields and errors
- [API reference]({base}/docs): the same, for people

## Optional

- [Browser client]({base}/client.js): a dependency-free ES module (register, store keys, \
stream)
- [Routing table]({base}/models): providers and the models `POST /relay` can route
"""


def public_base(request: web.Request, svc: Services) -> tuple[str | None, bool]:
    """(base URL without a trailing slash or None when it cannot be trusted, whether it
    came from the request's headers)."""
    if svc.settings.PUBLIC_URL:
        return svc.settings.PUBLIC_URL, False
    proto = svc.client_address.forwarded(request, "X-Forwarded-Proto") or request.scheme
    host = svc.client_address.forwarded(request, "X-Forwarded-Host") or request.host
    if proto not in ("http", "https") or len(host) > 261 or not HOST_PORT.fullmatch(host):
        return None, True
    return f"{proto}://{host.lower()}", True


def _text(body: str, content_type: str, derived: bool) -> web.Response:
    headers = (
        {"Cache-Control": "private, max-age=300", "Vary": _DERIVED_VARY}
        if derived
        else {"Cache-Control": "public, max-age=300"}
    )
    return web.Response(text=body, content_type=content_type, charset="utf-8", headers=headers)


def skill_markdown(base: str | None) -> str:
    """The skill with `base` filled in and its "not filled in" note dropped; unchanged when
    there is no base to trust."""
    text = static_bytes("SKILL.md").decode("utf-8")
    if base is None:
        return text
    return _UNFILLED_NOTE.sub("", text).replace(PLACEHOLDER, base)


@endpoint(
    "GET", "/skill", summary="Coding-agent skill (Agent Skills SKILL.md): how to add BYOK to an "
    "app", auth="none", tag="clients",
)  # fmt: skip
async def skill(request: web.Request, svc: Services) -> web.Response:
    """Markdown with YAML front matter, the relay's public URL filled in (PUBLIC_URL, else
    the URL of this request)."""
    base, derived = public_base(request, svc)
    return _text(skill_markdown(base), "text/markdown", derived)


@endpoint("GET", "/llms.txt", summary="llms.txt index: the skill, the OpenAPI description, "
          "the docs", auth="none", tag="clients")  # fmt: skip
async def llms_txt(request: web.Request, svc: Services) -> web.Response:
    base, derived = public_base(request, svc)
    where = (
        f"This relay is at {base}. To add BYOK to an app, read the skill first."
        if base
        else "This relay is at the origin that served this file. To add BYOK to an app, "
        "read the skill first."
    )
    return _text(_LLMS_TXT.format(base=base or "", where=where), "text/plain", derived)
