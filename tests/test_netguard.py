# ruff: noqa: RUF001  (fullwidth look-alike characters are the point of some cases)
"""SSRF guard for client-supplied base URLs. No traffic leaves 127.0.0.1: only
"localhost", IP literals and fake resolvers are resolved."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import socket
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.abc import AbstractResolver, ResolveResult
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from byok_relay.netguard import (
    MAX_URL_LENGTH,
    BaseURL,
    ForbiddenAddress,
    ForbiddenUpstream,
    GuardedResolver,
    check_base_url,
    forbidden_cause,
    forbidden_ip_reason,
    is_forbidden_ip,
    parse_base_url,
)

PROPS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def refused(raw: str, *, allow_private: bool = False) -> str:
    with pytest.raises(ForbiddenUpstream) as info:
        parse_base_url(raw, allow_private=allow_private)
    return str(info.value)


# ---------------------------------------------------------------- parse: refused


@pytest.mark.parametrize(
    "raw",
    [
        # non-canonical IPv4 spellings
        "https://2130706433/",
        "https://017700000001/",
        "https://0x7f000001/",
        "https://0177.0.0.1/",
        "https://0x7f.1/",
        "https://0x7F.0.0.1/",
        "https://127.1/",
        "https://127.0.1/",
        "https://127.000.000.001/",
        "https://010.0.0.1/",
        "https://8.8.8.08/",
        "https://0/",
        "https://0x/",
        "https://1.2.3.4.5/",
        "https://256.1.1.1/",
        "https://foo.0x7f/",
        "https://example.123/",
        "https://８.８.８.０８/",  # fullwidth digits, mapped by IDNA first
    ],
)
def test_non_canonical_ipv4_refused(raw: str) -> None:
    assert "four decimal numbers" in refused(raw)
    assert "four decimal numbers" in refused(raw.replace("https", "http"), allow_private=True)


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ("https://127.0.0.1/", "loopback"),
        ("https://127.255.255.254/", "loopback"),
        ("https://[::1]/", "loopback"),
        ("https://[0:0:0:0:0:0:0:1]/", "loopback"),
        ("https://[::ffff:127.0.0.1]/", "IPv4-mapped"),
        ("https://[::ffff:7f00:1]/", "IPv4-mapped"),
        ("https://[::ffff:8.8.8.8]/", "IPv4-mapped"),  # mapped anything
        ("https://[::127.0.0.1]/", "IPv4-compatible"),
        ("https://[::ffff:0:7f00:1]/", "IPv4-translated"),
        ("https://[64:ff9b::a9fe:a9fe]/", "NAT64"),
        ("https://[64:ff9b::8.8.8.8]/", "NAT64"),
        ("https://[64:ff9b:1::1]/", "NAT64"),
        ("https://[2002:7f00:1::]/", "6to4"),
        ("https://[2001:0:4136:e378:8000:63bf:3fff:fdd2]/", "Teredo"),
        ("https://[fe80::1]/", "link-local"),
        ("https://[fec0::1]/", "site-local"),
        ("https://[fc00::1]/", "unique local"),
        ("https://[fd12:3456::1]/", "unique local"),
        ("https://[ff02::1]/", "multicast"),
        ("https://[::]/", "unspecified"),
        ("https://[2001:db8::1]/", "documentation"),
        ("https://[100::1]/", "discard"),
        ("https://[4000::1]/", "reserved"),
        ("https://0.0.0.0/", "0.0.0.0/8"),
        ("https://0.1.2.3/", "0.0.0.0/8"),
        ("https://10.0.0.1/", "private"),
        ("https://172.16.0.1/", "private"),
        ("https://172.31.255.255/", "private"),
        ("https://192.168.1.1/", "private"),
        ("https://169.254.1.1/", "link-local"),
        ("https://100.64.0.1/", "CGNAT"),
        ("https://100.127.255.255/", "CGNAT"),
        ("https://198.18.0.1/", "benchmarking"),
        ("https://198.19.255.255/", "benchmarking"),
        ("https://192.0.2.1/", "documentation"),
        ("https://198.51.100.7/", "documentation"),
        ("https://203.0.113.9/", "documentation"),
        ("https://192.0.0.8/", "IETF"),
        ("https://224.0.0.1/", "multicast"),
        ("https://239.255.255.250/", "multicast"),
        ("https://240.0.0.1/", "reserved"),
        ("https://255.255.255.255/", "broadcast"),
        # cloud metadata
        ("https://169.254.169.254/", "metadata"),
        ("https://169.254.170.2/", "metadata"),
        ("https://169.254.170.23/", "metadata"),
        ("https://100.100.100.200/", "metadata"),
        ("https://168.63.129.16/", "metadata"),
        ("https://[fd00:ec2::254]/", "metadata"),
        ("https://metadata.google.internal/", "metadata"),
        ("https://METADATA.google.internal./", "metadata"),
        # localhost names
        ("https://localhost/", "local machine"),
        ("https://LOCALHOST/", "local machine"),
        ("https://localhost./", "local machine"),
        ("https://localhost:8080/", "local machine"),
        ("https://api.localhost/", "local machine"),
        ("https://a.b.localhost./", "local machine"),
        ("https://localhost.localdomain/", "local machine"),
        ("https://ip6-localhost/", "local machine"),
        # fullwidth / ideographic spellings are IDNA-mapped before the checks
        ("https://１２７.０.０.１/", "loopback"),
        ("https://127。0。0。1/", "loopback"),
        ("https://ｌｏｃａｌｈｏｓｔ/", "local machine"),
    ],
)
def test_forbidden_hosts_refused(raw: str, reason: str) -> None:
    assert reason in refused(raw)


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        ("http://api.example.com/", "https"),
        ("ftp://api.example.com/", "https"),
        ("file:///etc/passwd", "https"),
        ("gopher://127.0.0.1:6379/", "https"),
        ("//api.example.com/", "absolute"),
        ("api.example.com", "absolute"),
        ("https:/api.example.com", "absolute"),
        ("", "absolute"),
        ("https://", "no host"),
        ("https:///v1", "no host"),
        ("https://:443/", "no host"),
        # userinfo tricks
        ("https://api.example.com@127.0.0.1/", "credentials"),
        ("https://user:pass@api.example.com/", "credentials"),
        ("https://@api.example.com/", "credentials"),
        ("https://api.example.com%40127.0.0.1/", "invalid host"),
        ("https://api.example.com\\@127.0.0.1/", "backslashes"),
        ("https://api.example.com\\.127.0.0.1/", "backslashes"),
        ("https://api.example.com/\\..\\", "backslashes"),
        # query / fragment
        ("https://api.example.com/v1?x=1", "query"),
        ("https://api.example.com/?", "query"),
        ("https://api.example.com/#frag", "query"),
        ("https://api.example.com#@127.0.0.1", "query"),
        ("https://api.example.com?@127.0.0.1/", "query"),
        # whitespace and control characters anywhere
        ("https://api.exa mple.com/", "spaces"),
        ("https://api.example.com/\tv1", "spaces"),
        ("https://127.0.0.1\n.example.com/", "spaces"),
        ("https://api.example.com/\x00", "control"),
        ("https://api.example.com\u00a0/", "spaces"),
        # ports
        ("https://api.example.com:/", "port"),
        ("https://api.example.com:0/", "port"),
        ("https://api.example.com:65536/", "port"),
        ("https://api.example.com:+443/", "port"),
        ("https://api.example.com:44a/", "port"),
        ("https://api.example.com:443:443/", "port"),
        ("https://[2606:4700::1111]:/", "port"),
        ("https://api.example.com:４４３/", "port"),
        # IPv6 syntax
        ("https://[fe80::1%25eth0]/", "zone"),
        ("https://[fe80::1%eth0]/", "zone"),
        ("https://[::1/", "IPv6"),
        ("https://[not-v6]/", "IPv6"),
        ("https://[v1.fe]/", "IPv6"),
        ("https://[2606:4700::1111]x/", "malformed host"),
        ("https://2606:4700::1111/", "port"),
        # host names
        ("https://a..b/", "invalid host"),
        ("https://example.com../", "invalid host"),
        ("https://./", "invalid host"),
        ("https://-a.example/", "invalid host"),
        ("https://a-.example/", "invalid host"),
        ("https://a%2eexample/", "invalid host"),
        ("https://" + "a" * 64 + ".example/", "invalid host"),
        ("https://a,b.example/", "invalid host"),
        # path prefix
        ("https://gw.example/a%2fb", "encoded slashes"),
        ("https://gw.example/a%2Fb", "encoded slashes"),
        ("https://gw.example/a%5cb", "encoded slashes"),
        ("https://gw.example/a%00b", "encoded slashes"),
        ("https://gw.example/a%0ab", "encoded slashes"),
        ("https://gw.example/a%zz", "percent-encoding"),
        ("https://gw.example/a%4", "percent-encoding"),
        ("https://gw.example//api", "empty segments"),
        ("https://gw.example/api//v1", "empty segments"),
        ("https://gw.example/../api", "above the root"),
        ("https://gw.example/api/../../x", "above the root"),
        ("https://gw.example/%2e%2e/api", "above the root"),
        ('https://gw.example/a"b', "percent-encoded"),
        ("https://gw.example/a<b>", "percent-encoded"),
        ("https://gw.example/é", "percent-encoded"),
        ("https://a.example/" + "x" * MAX_URL_LENGTH, "too long"),
    ],
)
def test_malformed_refused(raw: str, why: str) -> None:
    assert why in refused(raw)


def test_http_allowed_only_with_allow_private() -> None:
    assert "https" in refused("http://api.example.com/")
    base = parse_base_url("http://api.example.com/", allow_private=True)
    assert base == BaseURL("http", "api.example.com", 80, "")


# ---------------------------------------------------------------- parse: accepted


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("https://api.example.com", BaseURL("https", "api.example.com", 443, "")),
        ("https://api.example.com/", BaseURL("https", "api.example.com", 443, "")),
        ("HTTPS://API.Example.COM./", BaseURL("https", "api.example.com", 443, "")),
        ("  https://api.example.com/v1  ", BaseURL("https", "api.example.com", 443, "/v1")),
        ("https://gw.example/api/", BaseURL("https", "gw.example", 443, "/api")),
        ("https://gw.example/api/v1", BaseURL("https", "gw.example", 443, "/api/v1")),
        ("https://gw.example/api/v1/../v2/./", BaseURL("https", "gw.example", 443, "/api/v2")),
        ("https://gw.example/api/%2e%2E/v2", BaseURL("https", "gw.example", 443, "/v2")),
        ("https://gw.example/api/.", BaseURL("https", "gw.example", 443, "/api")),
        ("https://gw.example/api/..", BaseURL("https", "gw.example", 443, "")),
        ("https://gw.example/%7euser/a%3ab", BaseURL("https", "gw.example", 443, "/~user/a%3Ab")),
        ("https://gw.example/%252e%252e", BaseURL("https", "gw.example", 443, "/%252e%252e")),
        (
            "https://gw.example/openai/deployments/gpt-4o:x@y",
            BaseURL("https", "gw.example", 443, "/openai/deployments/gpt-4o:x@y"),
        ),
        ("https://gw.example:8443/x", BaseURL("https", "gw.example", 8443, "/x")),
        ("https://gw.example:443/", BaseURL("https", "gw.example", 443, "")),
        ("https://gw.example:00443/", BaseURL("https", "gw.example", 443, "")),
        ("https://8.8.8.8/", BaseURL("https", "8.8.8.8", 443, "")),
        ("https://1.1.1.1:8443/v1", BaseURL("https", "1.1.1.1", 8443, "/v1")),
        ("https://[2606:4700:4700::1111]/", BaseURL("https", "2606:4700:4700::1111", 443, "")),
        (
            "https://[2606:4700:4700:0000:0000:0000:0000:1111]:8443/",
            BaseURL("https", "2606:4700:4700::1111", 8443, ""),
        ),
        ("https://bücher.example/", BaseURL("https", "xn--bcher-kva.example", 443, "")),
        ("https://xn--bcher-kva.example/", BaseURL("https", "xn--bcher-kva.example", 443, "")),
        ("https://1.2.3.4.example.com/", BaseURL("https", "1.2.3.4.example.com", 443, "")),
        ("https://0x7f.example/", BaseURL("https", "0x7f.example", 443, "")),
        ("https://my_gateway.example/", BaseURL("https", "my_gateway.example", 443, "")),
        ("https://ollama/", BaseURL("https", "ollama", 443, "")),
        ("https://localhost.example.com/", BaseURL("https", "localhost.example.com", 443, "")),
    ],
)
def test_accepted(raw: str, expected: BaseURL) -> None:
    assert parse_base_url(raw, allow_private=False) == expected


def test_base_url_rendering() -> None:
    base = parse_base_url("https://gw.example:8443/api/", allow_private=False)
    assert base.origin == "https://gw.example:8443"
    assert base.netloc == "gw.example:8443"
    assert base.join("/v1/chat/completions") == "https://gw.example:8443/api/v1/chat/completions"
    assert base.join("") == "https://gw.example:8443/api"
    assert str(base) == "https://gw.example:8443/api"
    assert not base.is_ip_literal

    v6 = parse_base_url("https://[2606:4700:4700::1111]/", allow_private=False)
    assert v6.origin == "https://[2606:4700:4700::1111]"
    assert v6.join("/v1/models") == "https://[2606:4700:4700::1111]/v1/models"
    assert v6.is_ip_literal
    assert parse_base_url("https://8.8.8.8", allow_private=False).is_ip_literal

    plain = parse_base_url("http://ollama.lan:11434", allow_private=True)
    assert plain.join("/api/chat") == "http://ollama.lan:11434/api/chat"
    assert parse_base_url("http://ollama.lan:80", allow_private=True).origin == "http://ollama.lan"
    with pytest.raises(ValueError):
        base.join("v1/models")


@pytest.mark.parametrize(
    "raw",
    [
        "http://localhost:11434",
        "http://localhost.:11434/",
        "http://ollama.localhost/",
        "http://127.0.0.1:11434/",
        "http://[::1]:8080/",
        "http://10.0.0.5:8000/v1",
        "http://192.168.1.10:11434",
        "http://172.20.0.2/",
        "http://100.101.102.103/",  # Tailscale (CGNAT range)
        "http://169.254.10.1/",
        "http://[fd12:3456::1]/",
        "http://[fe80::1]/",
    ],
)
def test_allow_private_accepts_lan(raw: str) -> None:
    parse_base_url(raw, allow_private=True)
    with pytest.raises(ForbiddenUpstream):
        parse_base_url(raw.replace("http://", "https://"), allow_private=False)


@pytest.mark.parametrize(
    "raw",
    [
        "http://169.254.169.254/latest/meta-data/",
        "http://169.254.169.253/",
        "http://169.254.170.2/v2/credentials",
        "http://169.254.170.23/",
        "http://169.254.0.23/",
        "http://100.100.100.200/",
        "http://168.63.129.16/",
        "http://192.0.0.192/",
        "http://[fd00:ec2::254]/",
        "http://[fd00:ec2::23]/",
        "http://[fd20:ce::254]/",
        "http://metadata.google.internal/",
        "http://metadata/",
        "http://instance-data/",
        "http://0.0.0.0:11434/",
        "http://[::]/",
        "http://[::ffff:127.0.0.1]/",
        "http://[::ffff:192.168.1.1]/",
        "http://[64:ff9b::a9fe:a9fe]/",
        "http://224.0.0.1/",
        "http://255.255.255.255/",
        "http://2130706433/",
        "http://127.1/",
        "http://user:pw@localhost/",
        "http://localhost/?x",
        "http://[fe80::1%25eth0]/",
    ],
)
def test_allow_private_still_refuses(raw: str) -> None:
    refused(raw, allow_private=True)


def test_error_messages_are_user_facing() -> None:
    msg = refused("https://api.example.com@127.0.0.1/")
    assert msg.startswith("Upstream base URL") and msg.endswith(".")
    msg = refused("https://localhost/")
    assert "'localhost'" in msg
    long_host = "a" * 60 + "." + "b" * 60 + ".localhost"
    assert "..." in refused(f"https://{long_host}/")  # echoed host is bounded
    assert issubclass(ForbiddenUpstream, ValueError)
    assert issubclass(ForbiddenAddress, ForbiddenUpstream)
    assert issubclass(ForbiddenAddress, OSError)


# ---------------------------------------------------------------- is_forbidden_ip


@pytest.mark.parametrize(
    ("addr", "strict", "lenient"),
    [
        ("8.8.8.8", False, False),
        ("2606:4700:4700::1111", False, False),
        ("127.0.0.1", True, False),
        ("::1", True, False),
        ("10.1.2.3", True, False),
        ("fd00::1", True, False),
        ("fe80::1", True, False),
        ("100.64.1.1", True, False),
        ("169.254.169.254", True, True),
        ("fd00:ec2::254", True, True),
        ("168.63.129.16", True, True),
        ("0.0.0.0", True, True),
        ("::", True, True),
        ("::ffff:8.8.8.8", True, True),
        ("::8.8.8.8", True, True),
        ("64:ff9b::808:808", True, True),
        ("2002:808:808::1", True, True),
        ("2001::1", True, True),
        ("ff02::1", True, True),
        ("233.252.0.1", True, True),
    ],
)
def test_is_forbidden_ip(addr: str, strict: bool, lenient: bool) -> None:
    ip = ipaddress.ip_address(addr)
    assert is_forbidden_ip(ip) is strict
    assert is_forbidden_ip(ip, allow_private=True) is lenient


def _literal(addr: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
    return f"[{addr}]" if addr.version == 6 else str(addr)


def _accepts(raw: str, *, allow_private: bool) -> bool:
    try:
        parse_base_url(raw, allow_private=allow_private)
    except ForbiddenUpstream:
        return False
    return True


@PROPS
@given(st.ip_addresses())
def test_prop_literal_accepted_iff_global_and_not_forbidden(
    addr: ipaddress.IPv4Address | ipaddress.IPv6Address,
) -> None:
    expected = addr.is_global and not is_forbidden_ip(addr)
    assert _accepts(f"https://{_literal(addr)}/", allow_private=False) is expected
    # allow_private only ever widens, and never to metadata addresses.
    lenient = not is_forbidden_ip(addr, allow_private=True)
    assert _accepts(f"http://{_literal(addr)}:8080/", allow_private=True) is lenient
    if not is_forbidden_ip(addr):
        assert lenient
    if forbidden_ip_reason(addr) == "a cloud metadata address":
        assert not lenient


@st.composite
def _odd_ipv4(draw: st.DrawFn) -> str:
    """An IPv4 address in one of the legacy inet_aton spellings."""
    value = draw(st.integers(0, 2**32 - 1))
    parts = draw(st.integers(1, 4))
    octets = list(value.to_bytes(4, "big"))
    # inet_aton: with n parts the last one holds the remaining 5-n bytes.
    nums = [*octets[: parts - 1], int.from_bytes(bytes(octets[parts - 1 :]), "big")]
    fmt = st.sampled_from(["dec", "zero", "oct", "hex", "HEX"])
    out = []
    for n in nums:
        f = draw(fmt)
        out.append(
            {
                "dec": str(n),
                "zero": f"0{n}",
                "oct": f"0{n:o}",
                "hex": f"0x{n:x}",
                "HEX": f"0X{n:X}",
            }[f]
        )
    text = ".".join(out)
    assume(text != str(ipaddress.IPv4Address(value)))
    return text


@PROPS
@given(_odd_ipv4(), st.booleans())
def test_prop_legacy_ipv4_spellings_refused(host: str, trailing_dot: bool) -> None:
    host += "." if trailing_dot else ""
    for allow_private in (False, True):
        with pytest.raises(ForbiddenUpstream, match="four decimal numbers"):
            parse_base_url(f"https://{host}/v1", allow_private=allow_private)


_URLISH = st.lists(
    st.sampled_from(
        [
            "https://",
            "http://",
            "HTTPS://",
            "a",
            "example",
            ".",
            "..",
            "/",
            ":",
            "@",
            "[",
            "]",
            "%",
            "%2e",
            "%2f",
            "%25",
            "%00",
            "?",
            "#",
            "\\",
            " ",
            "\t",
            "0x7f",
            "127",
            "0",
            "1",
            "::1",
            "::ffff:",
            "localhost",
            "ü",
            "１",
            "。",
            "443",
            "-",
            "_",
        ]
    ),
    max_size=14,
).map("".join)


@PROPS
@given(st.one_of(_URLISH, st.text(max_size=60)), st.booleans())
def test_prop_parse_total_and_canonical(raw: str, allow_private: bool) -> None:
    """Only ForbiddenUpstream ever escapes, and the canonical form re-parses to itself."""
    try:
        base = parse_base_url(raw, allow_private=allow_private)
    except ForbiddenUpstream:
        return
    assert parse_base_url(str(base), allow_private=allow_private) == base
    assert base.host == base.host.lower() and base.host.isascii()
    assert not base.host.endswith(".")
    assert not base.path_prefix.endswith("/")
    assert "//" not in base.path_prefix and "/./" not in base.path_prefix + "/"
    assert "/../" not in base.path_prefix + "/"


# ---------------------------------------------------------------- forbidden_cause


def test_forbidden_cause_walks_chains() -> None:
    inner = ForbiddenAddress("Upstream host 'x' is not allowed: it names the local machine.")
    assert forbidden_cause(inner) is inner
    try:
        try:
            raise inner
        except OSError as exc:
            raise RuntimeError("wrapped") from exc
    except RuntimeError as outer:
        assert forbidden_cause(outer) is inner

    class HasOsError(Exception):
        os_error = inner

    assert forbidden_cause(HasOsError()) is inner

    a, b = ValueError("a"), ValueError("b")
    a.__context__, b.__context__ = b, a  # a cycle must not hang
    assert forbidden_cause(a) is None
    assert forbidden_cause(RuntimeError("x")) is None


# ---------------------------------------------------------------- resolver


class FakeResolver(AbstractResolver):
    """Answers every name with fixed addresses: simulates hostile DNS offline."""

    def __init__(self, addrs: list[str]) -> None:
        self.addrs = addrs
        self.calls: list[str] = []

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        self.calls.append(host)
        return [
            ResolveResult(
                hostname=host,
                host=a,
                port=port,
                family=socket.AF_INET6 if ":" in a else socket.AF_INET,
                proto=0,
                flags=socket.AI_NUMERICHOST,
            )
            for a in self.addrs
        ]

    async def close(self) -> None:
        pass


async def test_guarded_resolver_localhost() -> None:
    strict = GuardedResolver(allow_private=False)
    with pytest.raises(ForbiddenUpstream):
        await strict.resolve("localhost", 80)
    with pytest.raises(ForbiddenUpstream):
        await strict.resolve("LocalHost.", 80)
    lenient = GuardedResolver(allow_private=True)
    res = await lenient.resolve("localhost", 80)
    assert res and all(ipaddress.ip_address(r["host"]).is_loopback for r in res)
    await strict.close()
    await lenient.close()


@pytest.mark.parametrize(
    ("addrs", "strict_ok", "lenient_ok"),
    [
        (["93.184.216.34"], True, True),
        (["93.184.216.34", "2606:2800:220:1:248:1893:25c8:1946"], True, True),
        (["127.0.0.1"], False, True),
        (["93.184.216.34", "10.0.0.1"], False, True),  # any bad address refuses all
        (["fe80::1%eth0"], False, True),
        (["169.254.169.254"], False, False),
        (["93.184.216.34", "fd00:ec2::254"], False, False),
        (["::ffff:127.0.0.1"], False, False),
        (["0.0.0.0"], False, False),
    ],
)
async def test_guarded_resolver_checks_every_answer(
    addrs: list[str], strict_ok: bool, lenient_ok: bool
) -> None:
    for allow_private, ok in ((False, strict_ok), (True, lenient_ok)):
        resolver = GuardedResolver(allow_private=allow_private, resolver=FakeResolver(addrs))
        if ok:
            assert [r["host"] for r in await resolver.resolve("rebind.test", 443)] == addrs
        else:
            with pytest.raises(ForbiddenAddress) as info:
                await resolver.resolve("rebind.test", 443)
            # The resolved address is an internal detail: never in the message.
            assert all(a not in str(info.value) for a in addrs)


@pytest.mark.parametrize("host", ["0x7f.1", "2130706433", "127.1", "localhost", "a.localhost."])
async def test_guarded_resolver_refuses_names_before_lookup(host: str) -> None:
    fake = FakeResolver(["93.184.216.34"])
    with pytest.raises(ForbiddenAddress):
        await GuardedResolver(allow_private=False, resolver=fake).resolve(host, 443)
    assert fake.calls == []


async def test_guarded_resolver_empty_answer() -> None:
    with pytest.raises(OSError):
        await GuardedResolver(allow_private=False, resolver=FakeResolver([])).resolve("x.test")


@contextlib.asynccontextmanager
async def local_server() -> AsyncIterator[int]:
    """A plain HTTP server on 127.0.0.1; yields its port. (A context manager rather
    than a fixture so it always runs on the test's own event loop.)"""

    async def hello(_: web.Request) -> web.Response:
        return web.Response(text="hello")

    app = web.Application()
    app.router.add_get("/", hello)
    runner = web.AppRunner(app)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        server: Any = site._server
        yield int(server.sockets[0].getsockname()[1])
    finally:
        await runner.cleanup()


async def _get(resolver: AbstractResolver, url: str) -> str:
    connector = aiohttp.TCPConnector(resolver=resolver)
    async with (
        aiohttp.ClientSession(connector=connector, trust_env=False) as session,
        session.get(url, allow_redirects=False) as resp,
    ):
        return await resp.text()


async def test_session_refuses_localhost() -> None:
    async with local_server() as port:
        url = f"http://localhost:{port}/"
        with pytest.raises(aiohttp.ClientError) as info:
            await _get(GuardedResolver(allow_private=False), url)
        cause = forbidden_cause(info.value)
        assert isinstance(cause, ForbiddenUpstream)
        assert "localhost" in str(cause)
        # The operator opt-in reaches the very same server.
        assert await _get(GuardedResolver(allow_private=True), url) == "hello"


async def test_session_pins_to_checked_address() -> None:
    """A public-looking name whose DNS says 127.0.0.1 is refused; when allowed, the
    connection goes to exactly the address the resolver returned."""
    async with local_server() as port:
        url = f"http://rebind.test:{port}/"
        fake = FakeResolver(["127.0.0.1"])
        with pytest.raises(aiohttp.ClientError) as info:
            await _get(GuardedResolver(allow_private=False, resolver=fake), url)
        assert forbidden_cause(info.value) is not None
        ok = GuardedResolver(allow_private=True, resolver=FakeResolver(["127.0.0.1"]))
        assert await _get(ok, url) == "hello"


async def test_session_unrelated_errors_have_no_forbidden_cause() -> None:
    # A closed port on an allowed address: a plain connection error.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(aiohttp.ClientError) as info:
        await _get(GuardedResolver(allow_private=True), f"http://localhost:{port}/")
    assert forbidden_cause(info.value) is None


# ---------------------------------------------------------------- check_base_url


class RaisingResolver(FakeResolver):
    def __init__(self, error: Exception) -> None:
        super().__init__([])
        self.error = error

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        self.calls.append(host)
        raise self.error


class HangingResolver(FakeResolver):
    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        await asyncio.sleep(30)
        return []


def _guard(fake: AbstractResolver, allow_private: bool = False, **kw: Any) -> GuardedResolver:
    return GuardedResolver(allow_private=allow_private, resolver=fake, **kw)


async def test_check_base_url_resolves_once() -> None:
    fake = FakeResolver(["93.184.216.34"])
    base = await check_base_url(
        "https://gw.example/api/", allow_private=False, resolver=_guard(fake)
    )
    assert base == BaseURL("https", "gw.example", 443, "/api")
    assert fake.calls == ["gw.example"]


async def test_check_base_url_refuses_private_answer() -> None:
    fake = FakeResolver(["93.184.216.34", "10.0.0.7"])
    with pytest.raises(ForbiddenUpstream) as info:
        await check_base_url("https://gw.example/", allow_private=False, resolver=_guard(fake))
    assert "non-public" in str(info.value) and "10.0.0.7" not in str(info.value)
    lenient = _guard(fake, allow_private=True)
    assert await check_base_url("http://gw.example/", allow_private=True, resolver=lenient)


async def test_check_base_url_refuses_metadata_even_when_private_allowed() -> None:
    lenient = _guard(FakeResolver(["fd00:ec2::254"]), allow_private=True)
    with pytest.raises(ForbiddenUpstream):
        await check_base_url("http://gw.example/", allow_private=True, resolver=lenient)


async def test_check_base_url_unresolvable() -> None:
    failing = _guard(RaisingResolver(OSError(None, "Domain name not found")))
    with pytest.raises(ForbiddenUpstream, match="could not be resolved"):
        await check_base_url("https://nope.example/", allow_private=False, resolver=failing)
    with pytest.raises(ForbiddenUpstream, match="could not be resolved"):
        await check_base_url(
            "https://nope.example/", allow_private=False, resolver=_guard(FakeResolver([]))
        )


async def test_check_base_url_timeout() -> None:
    # The guard bounds a resolver that never answers (c-ares has its own timeout too).
    slow = _guard(HangingResolver([]), timeout=0.05)
    started = asyncio.get_running_loop().time()
    with pytest.raises(ForbiddenUpstream, match="could not be resolved"):
        await check_base_url("https://slow.example/", allow_private=False, resolver=slow)
    assert asyncio.get_running_loop().time() - started < 5


async def test_check_base_url_skips_lookup() -> None:
    fake = RaisingResolver(AssertionError("must not resolve"))
    await check_base_url("https://gw.example/", allow_private=False)  # no resolver: parse only
    await check_base_url("https://8.8.8.8/", allow_private=False, resolver=_guard(fake))
    await check_base_url(
        "https://[2606:4700:4700::1111]/", allow_private=False, resolver=_guard(fake)
    )
    with pytest.raises(ForbiddenUpstream):  # refused by name, before any lookup
        await check_base_url("https://localhost/", allow_private=False, resolver=_guard(fake))
    assert fake.calls == []


async def test_check_base_url_real_localhost() -> None:
    # The real c-ares resolver reads /etc/hosts: localhost is loopback, allowed here.
    resolver = GuardedResolver(allow_private=True)
    try:
        base = await check_base_url("http://localhost:11434", allow_private=True, resolver=resolver)
    finally:
        await resolver.close()
    assert base.join("/api/tags") == "http://localhost:11434/api/tags"
