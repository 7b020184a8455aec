"""SSRF protection for client-supplied upstream base URLs.

Applies to the ``x-relay-base-url`` header and to the stored ``base_url`` of the
``openai-compatible`` provider. Operator-configured URLs (``PROVIDER_<NAME>_BASE_URL``,
``PROVIDERS_FILE``) are trusted and never pass through here.

Three layers, each closing a different hole:

1. :func:`parse_base_url` — a strict, allocation-light parser. It accepts only a small
   canonical URL grammar and rebuilds the URL from the checked parts (``BaseURL.join``),
   so the string handed to aiohttp is never the client's string: parser differentials
   (``https://a.example\\@127.0.0.1``, tabs, percent-encoded hosts …) cannot reach the
   HTTP client. IP-literal hosts are checked here and only here, because aiohttp does
   not call the resolver for IP literals.
2. :class:`GuardedResolver` — an aiohttp resolver that refuses a hostname when *any*
   address it resolves to is forbidden. aiohttp connects to exactly the addresses the
   resolver returned, so the connection is pinned to the checked addresses: a DNS
   answer that changes between check and connect (DNS rebinding) is impossible.
3. :func:`check_base_url` — parse + one resolution, for an immediate 400 when a user
   stores a ``base_url``. It is advisory (DNS can change later); layer 2 is the
   enforcement on every request.

Caller obligations (the guard is bypassed otherwise):

* build the upstream URL with ``BaseURL.join`` (never from the raw client string);
* use a session whose connector has ``resolver=GuardedResolver(...)``;
* never follow redirects (a 3xx to ``http://127.0.0.1/`` would skip the resolver);
* no HTTP proxy on that session (``trust_env=False``): through a proxy the *proxy*
  resolves the target and this module only sees the proxy's address.

``allow_private`` (operator opt-in ``ALLOW_PRIVATE_UPSTREAMS=true``, for a relay that
serves a LAN Ollama) lifts the https requirement and allows loopback, RFC 1918,
CGNAT (100.64/10, e.g. Tailscale), link-local, unique-local and site-local addresses
and the ``localhost`` names. Decision: cloud metadata endpoints stay refused even
then — credentials of the machine the relay runs on are never a legitimate upstream,
and a LAN model server is never on those addresses. Also refused in every mode:
unspecified (0.0.0.0, ::), multicast, broadcast, reserved, documentation and
benchmarking ranges, IPv4-mapped / IPv4-compatible / IPv4-translated IPv6, NAT64
(64:ff9b::/96, 64:ff9b:1::/48), 6to4 and Teredo (they tunnel to an embedded IPv4 the
check cannot see reliably), IPv6 zone identifiers, and every IPv4 spelling other than
canonical dotted-quad decimal. A relay on an IPv6-only host behind DNS64 therefore
cannot reach client-supplied upstreams that only have IPv4 addresses.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
from dataclasses import dataclass
from typing import Final

import idna
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import AsyncResolver

__all__ = [
    "MAX_URL_LENGTH",
    "BaseURL",
    "ForbiddenAddress",
    "ForbiddenUpstream",
    "GuardedResolver",
    "check_base_url",
    "forbidden_cause",
    "forbidden_ip_reason",
    "is_forbidden_ip",
    "parse_base_url",
]

MAX_URL_LENGTH: Final = 2048

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class ForbiddenUpstream(ValueError):
    """A client-supplied upstream is refused. ``str(exc)`` is safe to return in a 400."""


class ForbiddenAddress(ForbiddenUpstream, OSError):
    """Raised by :class:`GuardedResolver`.

    It is an ``OSError`` so that aiohttp wraps it like any DNS failure
    (``ClientConnectorDNSError`` with it as ``os_error`` and ``__cause__``) instead of
    letting an unexpected exception type escape; :func:`forbidden_cause` digs it out.
    """

    def __init__(self, message: str) -> None:
        # errno None: aiohttp only special-cases errno-less *timeouts*.
        OSError.__init__(self, None, message)
        self.message = message

    def __str__(self) -> str:
        return self.message


def forbidden_cause(exc: BaseException) -> ForbiddenUpstream | None:
    """The :class:`ForbiddenUpstream` behind ``exc`` (itself, a cause, or an ``os_error``)."""
    todo: list[BaseException] = [exc]
    seen: set[int] = set()
    while todo:
        cur = todo.pop()
        if id(cur) in seen:
            continue
        seen.add(id(cur))
        if isinstance(cur, ForbiddenUpstream):
            return cur
        # aiohttp's ClientConnectorError keeps the resolver's exception as os_error.
        os_error = getattr(cur, "os_error", None)
        for nxt in (os_error, cur.__cause__, cur.__context__):
            if isinstance(nxt, BaseException):
                todo.append(nxt)
    return None


# --------------------------------------------------------------------------- addresses

# (network, reason, private_class). First match wins, so specific entries come before
# the ranges that contain them. private_class entries are allowed with allow_private.
_V4_TABLE_SRC: Final = (
    ("0.0.0.0/8", "a 'this network' address (0.0.0.0/8)", False),
    ("127.0.0.0/8", "a loopback address", True),
    ("10.0.0.0/8", "a private address", True),
    ("172.16.0.0/12", "a private address", True),
    ("192.168.0.0/16", "a private address", True),
    ("169.254.0.0/16", "a link-local address", True),
    ("100.64.0.0/10", "a shared (CGNAT) address", True),
    ("192.0.0.0/24", "an IETF protocol address", False),
    ("192.0.2.0/24", "a documentation address", False),
    ("198.51.100.0/24", "a documentation address", False),
    ("203.0.113.0/24", "a documentation address", False),
    ("192.88.99.0/24", "a 6to4 relay address", False),
    ("198.18.0.0/15", "a benchmarking address", False),
    ("224.0.0.0/4", "a multicast address", False),
    ("255.255.255.255/32", "the broadcast address", False),
    ("240.0.0.0/4", "a reserved address", False),
)
_V6_TABLE_SRC: Final = (
    ("::/128", "the unspecified address", False),
    ("::1/128", "a loopback address", True),
    ("::/96", "an IPv4-compatible IPv6 address", False),
    ("::ffff:0:0/96", "an IPv4-mapped IPv6 address", False),
    ("::ffff:0:0:0/96", "an IPv4-translated IPv6 address", False),
    ("64:ff9b::/96", "a NAT64 address", False),
    ("64:ff9b:1::/48", "a NAT64 address", False),
    ("100::/64", "a discard-only address", False),
    ("2001::/32", "a Teredo address", False),
    ("2001:db8::/32", "a documentation address", False),
    ("2001::/23", "an IETF protocol address", False),
    ("2002::/16", "a 6to4 address", False),
    ("3fff::/20", "a documentation address", False),
    ("fc00::/7", "a private (unique local) address", True),
    ("fe80::/10", "a link-local address", True),
    ("fec0::/10", "a site-local address", True),
    ("ff00::/8", "a multicast address", False),
)
# Refused even with allow_private. AWS keeps its instance services in 169.254.169.0/24
# and 169.254.170.0/24 (IMDS, DNS, NTP, ECS task and EKS pod-identity credentials).
_METADATA_SRC: Final = (
    "169.254.169.0/24",  # AWS/GCP/Azure/OCI/DigitalOcean/OpenStack IMDS 169.254.169.254
    "169.254.170.0/24",  # AWS ECS task metadata .2, EKS pod identity .23
    "169.254.0.23/32",  # Tencent Cloud
    "100.100.100.200/32",  # Alibaba Cloud
    "168.63.129.16/32",  # Azure WireServer (a public address: only this list catches it)
    "192.0.0.192/32",  # Oracle Cloud IMDS alternative
    "fd00:ec2::254/128",  # AWS IMDS over IPv6
    "fd00:ec2::23/128",  # AWS EKS pod identity over IPv6
    "fd20:ce::254/128",  # GCP metadata over IPv6
)

_Range = tuple[int, int, str, bool]


def _ranges(src: tuple[tuple[str, str, bool], ...]) -> tuple[_Range, ...]:
    out: list[_Range] = []
    for cidr, reason, private in src:
        net = ipaddress.ip_network(cidr)
        out.append((int(net.network_address), int(net.broadcast_address), reason, private))
    return tuple(out)


_V4_TABLE: Final = _ranges(_V4_TABLE_SRC)
_V6_TABLE: Final = _ranges(_V6_TABLE_SRC)
_METADATA_V4: Final = _ranges(
    tuple((c, "a cloud metadata address", False) for c in _METADATA_SRC if ":" not in c)
)
_METADATA_V6: Final = _ranges(
    tuple((c, "a cloud metadata address", False) for c in _METADATA_SRC if ":" in c)
)
_V6_GLOBAL_UNICAST: Final = _ranges((("2000::/3", "", False),))[0]


def forbidden_ip_reason(addr: IPAddress, *, allow_private: bool = False) -> str | None:
    """Why ``addr`` may not be an upstream (e.g. ``"a loopback address"``), or None."""
    n = int(addr)
    if addr.version == 4:
        meta, table = _METADATA_V4, _V4_TABLE
    else:
        meta, table = _METADATA_V6, _V6_TABLE
    for lo, hi, reason, _ in meta:
        if lo <= n <= hi:
            return reason
    for lo, hi, reason, private in table:
        if lo <= n <= hi:
            return None if (private and allow_private) else reason
    if addr.version == 6 and not (_V6_GLOBAL_UNICAST[0] <= n <= _V6_GLOBAL_UNICAST[1]):
        # Only 2000::/3 is allocated for global unicast; everything else is reserved.
        return "a reserved address"
    # Safety net: whatever this Python's ipaddress knows to be non-global that the
    # tables above miss (the IANA registries grow).
    if not allow_private and not addr.is_global:
        return "a non-public address"
    return None


def is_forbidden_ip(addr: IPAddress, *, allow_private: bool = False) -> bool:
    """True when ``addr`` may not be used as a client-supplied upstream."""
    return forbidden_ip_reason(addr, allow_private=allow_private) is not None


# ------------------------------------------------------------------------------- names

_CANONICAL_V4: Final = re.compile(
    r"(?:(?:25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])\.){3}"
    r"(?:25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])"
)
# A last label like this makes inet_aton / the WHATWG URL parser read the host as IPv4
# ("127.1", "0x7f.1", "2130706433", "0177.0.0.1"), whatever the other labels are.
_NUMERIC_LABEL: Final = re.compile(r"[0-9]+|0x[0-9a-f]*")
_LABEL: Final = re.compile(r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?")
_LOCALHOST_NAMES: Final = frozenset(
    {"localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback"}
)
_METADATA_NAMES: Final = frozenset(
    {
        "metadata",
        "metadata.google.internal",
        "metadata.goog",
        "instance-data",
        "instance-data.ec2.internal",
        "metadata.tencentyun.com",
    }
)


def _show(host: str) -> str:
    # The host as the client gave it, bounded, for the error message.
    return repr(host if len(host) <= 80 else host[:77] + "...")


def _name_reason(name: str, *, allow_private: bool) -> str | None:
    """Refusal reason for a lower-case ASCII hostname without trailing dot, or None."""
    if name in _METADATA_NAMES:
        return "it is a cloud metadata host name"
    if not allow_private and (name in _LOCALHOST_NAMES or name.endswith(".localhost")):
        return "it names the local machine"
    last = name.rpartition(".")[2]
    if _NUMERIC_LABEL.fullmatch(last) and not _CANONICAL_V4.fullmatch(name):
        return "IPv4 addresses must be written as four decimal numbers (a.b.c.d)"
    return None


# --------------------------------------------------------------------------------- URL

_URL_RE: Final = re.compile(
    r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*)://(?P<authority>[^/?#]*)(?P<path>[^?#]*)"
)
# Any control character (C0, DEL, C1), whitespace, or backslash anywhere in the input.
_BAD_CHARS: Final = re.compile(r"[\x00-\x20\x7f-\x9f\\\s]")
_PATH_CHARS: Final = re.compile(r"[A-Za-z0-9\-._~!$&'()*+,;=:@/%]*")
_PCT: Final = re.compile(r"%([0-9A-Fa-f]{2})")
_BAD_PCT: Final = re.compile(r"%(?![0-9A-Fa-f]{2})")
_UNRESERVED: Final = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_DEFAULT_PORT: Final = {"http": 80, "https": 443}

_MSG_PREFIX: Final = "Upstream base URL"


def is_loopback_host(host: str) -> bool:
    """`localhost` or a loopback address (`127.0.0.1`, `::1`, `[::1]`)."""
    host = host.strip("[]").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _refuse(detail: str) -> ForbiddenUpstream:
    return ForbiddenUpstream(f"{_MSG_PREFIX} {detail}.")


# Said only where that setting would admit the URL (a local model server, a LAN host).
_PRIVATE_HINT: Final = (
    " A local or private upstream (such as Ollama on http://localhost:11434/v1) needs "
    "the relay's operator to set ALLOW_PRIVATE_UPSTREAMS=true."
)


def _host_refused(raw_host: str, reason: str, fixable: bool) -> ForbiddenUpstream:
    hint = _PRIVATE_HINT if fixable else ""
    return ForbiddenUpstream(f"Upstream host {_show(raw_host)} is not allowed: {reason}.{hint}")


@dataclass(frozen=True, slots=True)
class BaseURL:
    """A checked upstream base URL in canonical form.

    ``host`` is lower-case ASCII (IDNA-encoded), without trailing dot; an IPv6 literal
    is stored compressed and without brackets. ``path_prefix`` is '' or starts with '/'
    and has no trailing slash.
    """

    scheme: str
    host: str
    port: int
    path_prefix: str = ""

    @property
    def is_ip_literal(self) -> bool:
        return ":" in self.host or _CANONICAL_V4.fullmatch(self.host) is not None

    @property
    def netloc(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        if self.port == _DEFAULT_PORT.get(self.scheme):
            return host
        return f"{host}:{self.port}"

    @property
    def origin(self) -> str:
        return f"{self.scheme}://{self.netloc}"

    def join(self, path: str) -> str:
        """``scheme://host[:port]{path_prefix}{path}``; ``path`` must be percent-encoded."""
        if path and not path.startswith("/"):
            raise ValueError("path must start with '/'")
        return f"{self.origin}{self.path_prefix}{path}"

    def __str__(self) -> str:
        return self.origin + self.path_prefix


def _normalize_prefix(path: str) -> str:
    """Canonical path prefix: validated, dot segments removed, no trailing slash."""
    if not path or path == "/":
        return ""
    if not _PATH_CHARS.fullmatch(path):
        raise _refuse("path contains characters that must be percent-encoded")
    if _BAD_PCT.search(path):
        raise _refuse("path has malformed percent-encoding")

    def fix(m: re.Match[str]) -> str:
        byte = int(m.group(1), 16)
        if byte in (0x2F, 0x5C) or byte < 0x20 or byte == 0x7F:
            raise _refuse("path must not contain encoded slashes, backslashes or control bytes")
        ch = chr(byte)
        # RFC 3986 6.2.2: decode unreserved characters, upper-case the rest.
        return ch if ch in _UNRESERVED else f"%{byte:02X}"

    if "%" in path:
        path = _PCT.sub(fix, path)
    segments = path[1:].split("/")
    if segments[-1] == "":
        segments.pop()  # trailing slash
    out: list[str] = []
    for seg in segments:
        if seg == "":
            raise _refuse("path must not contain empty segments ('//')")
        if seg == ".":
            continue
        if seg == "..":
            if not out:
                raise _refuse("path climbs above the root")
            out.pop()
            continue
        out.append(seg)
    return "".join("/" + s for s in out)


def _parse_host(raw_host: str, *, allow_private: bool) -> str:
    """Canonical host (see BaseURL.host), or ForbiddenUpstream."""
    if not raw_host:
        raise _refuse("has no host")
    if raw_host.startswith("["):
        if not raw_host.endswith("]"):
            raise _refuse("has a malformed IPv6 address")
        inner = raw_host[1:-1]
        if "%" in inner:
            raise _refuse("must not use IPv6 zone identifiers")
        try:
            v6 = ipaddress.IPv6Address(inner)
        except ValueError:
            # Also IPvFuture ("[v1.x]"), which no HTTP client should be handed.
            raise _refuse("has a malformed IPv6 address") from None
        reason = forbidden_ip_reason(v6, allow_private=allow_private)
        if reason:
            fixable = not allow_private and not forbidden_ip_reason(v6, allow_private=True)
            raise _host_refused(raw_host, reason, fixable)
        return v6.compressed

    name = raw_host.lower()
    if not name.isascii():
        try:
            # UTS 46 maps e.g. fullwidth digits to ASCII, so the checks below run on
            # what DNS and the HTTP client will actually see.
            name = idna.encode(name, uts46=True).decode("ascii")
        except (idna.IDNAError, UnicodeError):
            raise _refuse(f"has an invalid host name {_show(raw_host)}") from None
    if name.endswith("."):
        name = name[:-1]  # one trailing dot (FQDN) is the same host
    if not name or len(name) > 253 or not all(_LABEL.fullmatch(x) for x in name.split(".")):
        raise _refuse(f"has an invalid host name {_show(raw_host)}")
    reason = _name_reason(name, allow_private=allow_private)
    if reason:
        fixable = not allow_private and not _name_reason(name, allow_private=True)
        raise _host_refused(raw_host, reason, fixable)
    if _CANONICAL_V4.fullmatch(name):
        # IP literal: aiohttp connects without calling the resolver, so this is the
        # only check it gets.
        v4 = ipaddress.IPv4Address(name)
        reason = forbidden_ip_reason(v4, allow_private=allow_private)
        if reason:
            fixable = not allow_private and not forbidden_ip_reason(v4, allow_private=True)
            raise _host_refused(raw_host, reason, fixable)
    return name


def parse_base_url(raw: str, *, allow_private: bool) -> BaseURL:
    """Parse and check a client-supplied base URL; raise :class:`ForbiddenUpstream`.

    Pure and cheap (no I/O): callers may cache results keyed by ``(raw, allow_private)``.
    """
    raw = raw.strip(" \t\r\n")
    if len(raw) > MAX_URL_LENGTH:
        raise _refuse(f"is too long (at most {MAX_URL_LENGTH} characters)")
    if _BAD_CHARS.search(raw):
        raise _refuse("must not contain spaces, control characters or backslashes")
    m = _URL_RE.match(raw)
    if not m:
        raise _refuse("must be an absolute URL such as https://api.example.com/v1")
    if m.end() != len(raw):
        raise _refuse("must not contain a query string or fragment")
    scheme = m["scheme"].lower()
    if scheme not in _DEFAULT_PORT or (scheme == "http" and not allow_private):
        if scheme == "http":  # then allow_private is off
            raise ForbiddenUpstream(f"{_MSG_PREFIX} must use https.{_PRIVATE_HINT}")
        raise _refuse("must use http or https" if allow_private else "must use https")
    authority = m["authority"]
    if "@" in authority:
        raise _refuse("must not contain credentials (user:password@)")

    # Split host and port; a bracketed IPv6 literal may contain ':'.
    if authority.startswith("["):
        end = authority.find("]")
        if end < 0:
            raise _refuse("has a malformed IPv6 address")
        raw_host, rest = authority[: end + 1], authority[end + 1 :]
        if rest and not rest.startswith(":"):
            raise _refuse("has a malformed host")
        port_text = rest[1:] if rest else None
    elif ":" in authority:
        raw_host, _, port_text = authority.partition(":")
    else:
        raw_host, port_text = authority, None
    if port_text is None:
        port = _DEFAULT_PORT[scheme]
    else:
        if not (port_text.isascii() and port_text.isdigit() and len(port_text) <= 5):
            raise _refuse("has an invalid port")
        port = int(port_text)
        if not 0 < port < 65536:
            raise _refuse("has an invalid port")
    if not m["path"].isascii():
        raise _refuse("path contains characters that must be percent-encoded")

    host = _parse_host(raw_host, allow_private=allow_private)
    return BaseURL(scheme, host, port, _normalize_prefix(m["path"]))


# ---------------------------------------------------------------------------- resolving


def _addr(text: str) -> IPAddress:
    # getnameinfo renders link-local IPv6 with a "%scope" suffix.
    return ipaddress.ip_address(text.partition("%")[0])


class GuardedResolver(AbstractResolver):
    """aiohttp resolver that refuses hosts resolving to any forbidden address.

    aiohttp does not call resolvers for IP-literal hosts; those are checked by
    :func:`parse_base_url`, which every client-supplied URL passes first.

    Names are resolved by c-ares (aiodns), on the event loop, under ``timeout`` seconds:
    a client naming a host whose name server never answers costs only its own request,
    never a thread of the shared pool that other requests need (``getaddrinfo`` would).
    """

    def __init__(
        self,
        *,
        allow_private: bool,
        resolver: AbstractResolver | None = None,
        nameservers: list[str] | None = None,
        timeout: float = 5.0,
    ) -> None:
        self.allow_private = allow_private
        self._resolver = resolver
        self._nameservers = nameservers or None
        self._timeout = timeout
        # The c-ares channel binds the running loop, so create it on first use.
        self._owns_resolver = resolver is None

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        name = host.rstrip(".").lower()
        reason = _name_reason(name, allow_private=self.allow_private)
        if reason:
            raise ForbiddenAddress(f"Upstream host {_show(host)} is not allowed: {reason}.")
        if self._resolver is None:
            self._resolver = AsyncResolver(
                nameservers=self._nameservers, timeout=self._timeout, tries=1
            )
        try:
            # c-ares honours its own timeout; this bounds a misbehaving channel too.
            async with asyncio.timeout(self._timeout + 1.0):
                results = await self._resolver.resolve(host, port, family)
        except TimeoutError:
            raise OSError(f"Upstream host {_show(host)} could not be resolved in time.") from None
        if not results:
            raise OSError(f"Upstream host {_show(host)} could not be resolved.")
        for res in results:
            try:
                addr = _addr(res["host"])
            except ValueError:
                raise ForbiddenAddress(
                    f"Upstream host {_show(host)} could not be resolved."
                ) from None
            # Refuse if *any* address is bad: a mixed answer would otherwise let the
            # connector fall through to the private one.
            if is_forbidden_ip(addr, allow_private=self.allow_private):
                raise ForbiddenAddress(
                    f"Upstream host {_show(host)} is not allowed: "
                    "it resolves to a non-public address."
                )
        return results

    async def close(self) -> None:
        if self._owns_resolver and self._resolver is not None:
            await self._resolver.close()
            self._resolver = None


async def check_base_url(
    raw: str, *, allow_private: bool, resolver: GuardedResolver | None = None
) -> BaseURL:
    """:func:`parse_base_url`, then (with a ``resolver``) resolve the host once through
    it and refuse forbidden answers. For an immediate 400 when a ``base_url`` is stored;
    requests are still guarded by :class:`GuardedResolver` at connect time.
    """
    base = parse_base_url(raw, allow_private=allow_private)
    if resolver is None or base.is_ip_literal:
        return base
    try:
        await resolver.resolve(base.host, base.port, socket.AF_UNSPEC)
    except ForbiddenUpstream:
        raise
    except OSError:
        host = _show(base.host)
        raise ForbiddenUpstream(f"Upstream host {host} could not be resolved.") from None
    return base
