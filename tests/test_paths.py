"""Relay path normalisation and the path allowlist."""

from __future__ import annotations

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from byok_relay.providers.paths import (
    MAX_PATH_LENGTH,
    PathMatcher,
    PathPatternError,
    PathRefused,
    compile_path_patterns,
    encode_path,
    normalize_path,
)

PROPS = settings(max_examples=200, deadline=None)


# ------------------------------------------------------------------ normalize_path


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("/v1/messages", "/v1/messages"),
        ("v1/messages", "/v1/messages"),
        ("", "/"),
        ("/", "/"),
        (
            "/v1beta/models/gemini-2.0-flash:streamGenerateContent",
            "/v1beta/models/gemini-2.0-flash:streamGenerateContent",
        ),
        ("/v1/messages/", "/v1/messages/"),
        ("/v1/messages/../files", "/v1/files"),
        ("/v1/./messages", "/v1/messages"),
        ("/./v1/messages", "/v1/messages"),
        ("/v1/models/..", "/v1/"),
        ("/v1/models/.", "/v1/models/"),
        ("/v1/models/./", "/v1/models/"),
        ("/v1/a/b/../../c", "/v1/c"),
        ("/a/..", "/"),
        ("/.", "/"),
        # encoded dots are dots
        ("/v1/%2e%2e/x", "/x"),
        ("/v1/%2E%2E/x", "/x"),
        ("/v1/.%2e/x", "/x"),
        ("/v1/%2e/x", "/v1/x"),
        # decoding happens once: double-encoded stays literal text
        ("/v1/%252e%252e/x", "/v1/%2e%2e/x"),
        ("/v1/%252f", "/v1/%2f"),
        ("/v1/%25", "/v1/%"),
        # ordinary decoding
        (
            "/v1/models/gemini-2.0-flash%3AgenerateContent",
            "/v1/models/gemini-2.0-flash:generateContent",
        ),
        ("/v1/voices/caf%C3%A9", "/v1/voices/café"),
        ("/v1/voices/café", "/v1/voices/café"),
        ("/v1/%7Euser", "/v1/~user"),
        ("/.well-known/x", "/.well-known/x"),
        ("/a/...", "/a/..."),
        ("/a/..b/.c", "/a/..b/.c"),
        ("/hf-inference/models/org/model", "/hf-inference/models/org/model"),
        ("/v1/x(1)*+,;=@!$&'", "/v1/x(1)*+,;=@!$&'"),
    ],
)
def test_normalize_accepts(raw: str, expected: str) -> None:
    assert normalize_path(raw) == expected


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        ("/v1%2fmessages", "encoded slashes"),
        ("/v1%2Fmessages", "encoded slashes"),
        ("%2F", "encoded slashes"),
        ("/v1/%2e%2e%2fx", "encoded slashes"),
        ("/a%5cb", "encoded slashes"),
        ("/a%5Cb", "encoded slashes"),
        ("/a\\b", "backslashes"),
        ("/..\\..\\etc", "backslashes"),
        ("/a%00", "NUL"),
        ("/a\x00b", "NUL"),
        ("/a\nb", "control"),
        ("/a\rb", "control"),
        ("/a\x7f", "control"),
        ("/a%0a", "control"),
        ("/a%0D%0AHost:x", "control"),
        ("/a%7f", "control"),
        ("/a%c2%85", "control"),  # NEL, a C1 control
        ("/a%e2%80%a8", "whitespace"),  # U+2028 line separator
        ("/a%20b", "whitespace"),
        ("/a%09b", "control"),
        ("/a b", "whitespace"),
        ("/a?b", "'?'"),
        ("/a#b", "'#'"),
        ("/a%3fkey=x", "'?'"),
        ("/a%3Fb", "'?'"),
        ("/a%23b", "'#'"),
        ("/a//b", "empty path segments"),
        ("//a", "empty path segments"),
        ("/a/", None),
        ("/..", "above the root"),
        ("/../v1/messages", "above the root"),
        ("/v1/../..", "above the root"),
        ("/v1/../../x", "above the root"),
        ("/%2e%2e", "above the root"),
        ("/%2e%2e/", "above the root"),
        ("..", "above the root"),
        ("/a%zz", "percent-encoding"),
        ("/a%4", "percent-encoding"),
        ("/a%", "percent-encoding"),
        ("/a%%32%65", "percent-encoding"),
        ("/a%ff", "UTF-8"),
        ("/a%c3", "UTF-8"),
        ("/a%c0%ae%c0%ae", "UTF-8"),  # overlong "..", invalid UTF-8
        ("/a\udcff", "UTF-8"),
        ("/" + "a" * MAX_PATH_LENGTH, "longer than"),
    ],
)
def test_normalize_refuses(raw: str, why: str | None) -> None:
    if why is None:  # sanity row: a trailing slash alone is fine
        normalize_path(raw)
        return
    with pytest.raises(PathRefused) as info:
        normalize_path(raw)
    assert why in str(info.value)
    assert str(info.value).startswith("Path refused:")


def test_encode_path_round_trip() -> None:
    assert encode_path("/v1/models/gemini-2.0-flash:generateContent") == (
        "/v1/models/gemini-2.0-flash:generateContent"
    )
    assert encode_path("/v1/%2e%2e/x") == "/v1/%252e%252e/x"
    assert encode_path("/v1/voices/café") == "/v1/voices/caf%C3%A9"
    assert normalize_path(encode_path("/v1/%2e%2e/x")) == "/v1/%2e%2e/x"


# ------------------------------------------------------------------ allowlist

PATTERNS = [
    "/v1/messages",
    "GET /v1/models",
    "GET /v1/models/*",
    "POST /v1beta/models/*:generateContent",
    "/v1/text-to-speech/*",
    "/v1/text-to-speech/*/stream",
    "/hf-inference/models/**",
    "* /any/thing",
    "/v1/a.b",
    "/v1/(x)",
]


@pytest.fixture(scope="module")
def matcher() -> PathMatcher:
    return compile_path_patterns(PATTERNS)


@pytest.mark.parametrize(
    ("method", "path", "ok"),
    [
        ("POST", "/v1/messages", True),
        ("GET", "/v1/messages", False),
        ("PUT", "/v1/messages", False),
        ("POST", "/v1/messages/", False),
        ("POST", "/v1/messages/x", False),
        ("POST", "/v1/message", False),
        ("GET", "/v1/models", True),
        ("get", "/v1/models", True),
        ("POST", "/v1/models", False),
        ("GET", "/v1/models/gpt-4o", True),
        ("GET", "/v1/models/", False),
        ("GET", "/v1/models/a/b", False),
        ("GET", "/v1/models/..", False),  # never a dot segment, even unnormalised
        ("GET", "/v1/models/.", False),
        ("GET", "/v1/models/...", True),
        ("POST", "/v1beta/models/gemini-2.0-flash:generateContent", True),
        ("POST", "/v1beta/models/gemini-2.0-flash:streamGenerateContent", False),
        ("POST", "/v1beta/models/:generateContent", False),
        ("POST", "/v1beta/models/a/b:generateContent", False),
        ("GET", "/v1beta/models/gemini-2.0-flash:generateContent", False),
        ("POST", "/v1/text-to-speech/voice123", True),
        ("POST", "/v1/text-to-speech/voice123/stream", True),
        ("POST", "/v1/text-to-speech/", False),
        ("POST", "/v1/text-to-speech/voice123/other", False),
        ("POST", "/hf-inference/models/org/model", True),
        ("POST", "/hf-inference/models/model", True),
        ("POST", "/hf-inference/models/org/model/pipeline/x", True),
        ("POST", "/hf-inference/models", False),
        ("POST", "/hf-inference/models/", False),
        ("POST", "/hf-inference/models/org/", False),
        ("POST", "/hf-inference/models/org/../x", False),
        ("DELETE", "/any/thing", True),
        ("GET", "/any/thing", True),
        ("PATCH", "/any/thing", True),
        ("POST", "/v1/a.b", True),
        ("POST", "/v1/axb", False),  # '.' is literal
        ("POST", "/v1/(x)", True),
        ("POST", "/v1/x", False),
    ],
)
def test_matcher(matcher: PathMatcher, method: str, path: str, ok: bool) -> None:
    assert matcher.allows(method, path) is ok


def test_matcher_empty_allows_nothing() -> None:
    m = compile_path_patterns([])
    assert not m.allows("POST", "/")
    assert not m.allows("GET", "/v1/models")


def test_matcher_method_forms() -> None:
    m = compile_path_patterns(["get /a", "  PUT   /b  ", "/c"])
    assert m.allows("GET", "/a") and not m.allows("POST", "/a")
    assert m.allows("PUT", "/b")
    assert m.allows("POST", "/c") and not m.allows("GET", "/c")
    assert "PathMatcher" in repr(m)


@pytest.mark.parametrize(
    "pattern",
    [
        "",
        "v1/x",
        "GET",
        "GET/x",
        "GET v1/x",
        "GE-T /x",
        "/a//b",
        "/a/**b",
        "/a/b**",
        "/a/../b",
        "/a/./b",
        "/a?x=1",
        "/a#x",
        "/a%2fb",
        "/a\\b",
        "/a b",
        "GET /a /b",
    ],
)
def test_bad_patterns(pattern: str) -> None:
    with pytest.raises(PathPatternError):
        compile_path_patterns([pattern])
    assert issubclass(PathPatternError, ValueError)


# ------------------------------------------------------------------ properties

_PATH_TOKENS = st.sampled_from(
    [
        "/",
        "/",
        "/",
        "a",
        "b",
        "v1",
        ".",
        "..",
        "%2e",
        "%2E",
        "%2f",
        "%5c",
        "%00",
        "%25",
        "%252e",
        "%",
        "%4",
        "%c3%a9",
        "%ff",
        "\\",
        "\x00",
        "\n",
        " ",
        ":",
        "~",
        "é",
        "?",
        "%3f",
        "*",
    ]
)
_RAW_PATHS = st.one_of(
    st.lists(_PATH_TOKENS, max_size=16).map("".join),
    st.text(max_size=40),
)


@PROPS
@given(_RAW_PATHS)
def test_prop_normalize_output_is_clean(raw: str) -> None:
    try:
        out = normalize_path(raw)
    except PathRefused:
        return
    assert out.startswith("/")
    for bad in ("/../", "/./", "\\", "\x00", "//"):
        assert bad not in out
    assert not out.endswith(("/..", "/."))
    if "%" not in out:
        assert normalize_path(out) == out
    # Re-encoding for the upstream and decoding again is lossless: the upstream sees
    # exactly the path the allowlist saw.
    assert normalize_path(encode_path(out)) == out


def _wild(pat: str, s: str) -> bool:
    """Reference matcher for one segment: '*' is one or more characters."""
    if not pat:
        return not s
    if pat[0] == "*":
        return any(_wild(pat[1:], s[i:]) for i in range(1, len(s) + 1))
    return bool(s) and s[0] == pat[0] and _wild(pat[1:], s[1:])


def _segs(psegs: list[str], segs: list[str]) -> bool:
    if not psegs:
        return not segs
    head = psegs[0]
    if head == "**":
        return any(
            all(s not in ("", ".", "..") for s in segs[:k]) and _segs(psegs[1:], segs[k:])
            for k in range(1, len(segs) + 1)
        )
    if not segs or (head == "*" and segs[0] in (".", "..")):
        return False
    return _wild(head, segs[0]) and _segs(psegs[1:], segs[1:])


def _reference_allows(patterns: list[str], method: str, path: str) -> bool:
    for pattern in patterns:
        pm, _, pp = pattern.rpartition(" ")
        pm = pm or "POST"
        if pm != "*" and pm != method:
            continue
        if _segs(pp[1:].split("/"), path[1:].split("/")):
            return True
    return False


_PATTERN_SEGS = st.sampled_from(["a", "b", "ab", "*", "**", "a*", "*b", "a*b", "*:x", "x.y"])
_PATTERNS = st.builds(
    lambda method, segs: f"{method}/" + "/".join(segs),
    st.sampled_from(["", "GET ", "POST ", "* "]),
    st.lists(_PATTERN_SEGS, min_size=1, max_size=4),
)
_REQ_SEGS = st.sampled_from(
    ["a", "b", "ab", "aab", "ba", "a:x", ":x", "x.y", "xzy", ".", "..", "%2e"]
)
_REQ_PATHS = st.lists(_REQ_SEGS, min_size=0, max_size=6).map(lambda s: "/" + "/".join(s))
_METHODS = st.sampled_from(["GET", "POST", "PUT"])


@PROPS
@given(st.lists(_PATTERNS, max_size=5), _METHODS, _REQ_PATHS)
def test_prop_matcher_consistent(patterns: list[str], method: str, raw: str) -> None:
    try:
        path = normalize_path(raw)
    except PathRefused:
        assume(False)
        return
    matcher = compile_path_patterns(patterns)
    got = matcher.allows(method, path)
    # One combined regex per method == a naive per-pattern reference matcher ...
    assert got is _reference_allows(patterns, method, path)
    # ... == any single compiled pattern ...
    assert got is any(compile_path_patterns([p]).allows(method, path) for p in patterns)
    # ... and stable under re-encoding for the upstream and normalising again.
    assert matcher.allows(method, normalize_path(encode_path(path))) is got
