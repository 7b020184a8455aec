"""Relay path normalisation and the per-provider path allowlist.

Flow on every ``/relay/{provider}/{path}`` request::

    path = normalize_path(raw_tail)          # PathRefused -> 403
    if not provider.matcher.allows(method, path): ...   # -> 403
    upstream_url = base + encode_path(path)

``normalize_path`` decodes percent-encoding exactly once and removes dot segments, so
the allowlist sees the path the upstream server will see. A pattern may name where the
model sits in the path (``/v1beta/models/{model}:generateContent``): the model must then
have the provider's model shape, so a model name can never carry path syntax (``../``,
a second ``:method``). Its result is *decoded*
text (it may contain a literal ``%`` from a client's ``%25``); always send it upstream
through :func:`encode_path` (and to yarl with ``encoded=True``) so it is re-encoded
once and a client's ``%252e`` reaches the upstream as ``%252e``, not as ``..``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Final
from urllib.parse import quote, unquote_to_bytes

__all__ = [
    "MAX_PATH_LENGTH",
    "PathMatch",
    "PathMatcher",
    "PathPatternError",
    "PathRefused",
    "compile_path_patterns",
    "encode_path",
    "normalize_path",
]

MAX_PATH_LENGTH: Final = 2048


class PathRefused(ValueError):
    """The client's path is malformed or unsafe; ``str(exc)`` is safe to return (403)."""


class PathPatternError(ValueError):
    """An allowlist pattern is malformed (operator configuration error)."""


# Segments of RFC 3986 pchar characters, no '%' and no empty segment: the common case
# ("/v1/chat/completions", "/v1beta/models/gemini-2.0-flash:generateContent") needs no
# decoding. Paths with a segment starting with '.' take the slow path.
_FAST_OK: Final = re.compile(r"(?:/[A-Za-z0-9\-._~:@!$&'()*+,;=]+)*/?")
_BAD_RAW: Final = re.compile(r"[\x00-\x1f\x7f\\?#]")
_BAD_PCT: Final = re.compile(r"%(?![0-9A-Fa-f]{2})")
_FORBIDDEN_PCT: Final = re.compile(r"%(?:2[Ff]|5[Cc]|00)")
# After decoding: control characters (C0, DEL, C1), any whitespace, '?' and '#' (no
# provider path contains them and they would split the URL if ever re-joined raw).
_BAD_DECODED: Final = re.compile(r"[\x00-\x1f\x7f-\x9f\\?#\s]")


def normalize_path(raw: str) -> str:
    """Decode once, remove dot segments; raise :class:`PathRefused` on anything unsafe.

    ``raw`` is the still percent-encoded path after ``/relay/{provider}`` without the
    query string. A missing leading '/' is added. The result starts with '/'.
    """
    if len(raw) > MAX_PATH_LENGTH:
        raise PathRefused(f"Path refused: longer than {MAX_PATH_LENGTH} characters.")
    if not raw.startswith("/"):
        raw = "/" + raw
    if _FAST_OK.fullmatch(raw) and "/." not in raw:
        return raw
    return _normalize_slow(raw)


def _normalize_slow(raw: str) -> str:
    if "\x00" in raw or "%00" in raw:
        raise PathRefused("Path refused: NUL bytes are not allowed.")
    if _FORBIDDEN_PCT.search(raw):
        raise PathRefused("Path refused: encoded slashes and backslashes are not allowed.")
    if _BAD_RAW.search(raw):
        raise PathRefused(
            "Path refused: backslashes, control characters, '?' and '#' are not allowed."
        )
    if _BAD_PCT.search(raw):
        raise PathRefused("Path refused: malformed percent-encoding.")
    if "//" in raw:
        raise PathRefused("Path refused: empty path segments ('//') are not allowed.")
    try:
        # The single decode. unquote_to_bytes encodes literal non-ASCII as UTF-8 first.
        text = unquote_to_bytes(raw).decode("utf-8") if "%" in raw else raw
        text.encode("utf-8")  # lone surrogates
    except UnicodeError:
        raise PathRefused("Path refused: not valid UTF-8.") from None
    if _BAD_DECODED.search(text):
        raise PathRefused(
            "Path refused: control characters, whitespace, '?' and '#' are not allowed."
        )
    if _DOTS_WITH_PARAMS.search(text):
        # "..;x" is ".." to servers that strip path parameters (Tomcat, Spring, Jetty).
        raise PathRefused("Path refused: dot segments with path parameters (';') are not allowed.")
    return _remove_dot_segments(text)


# A segment of dots followed by ';' (e.g. "..;", ".;jsessionid=x").
_DOTS_WITH_PARAMS: Final = re.compile(r"(?:^|/)\.+;")


def _remove_dot_segments(path: str) -> str:
    # RFC 3986 5.2.4 on an absolute path with no empty segments (except a trailing
    # one); climbing above the root is refused rather than silently clamped.
    segments = path[1:].split("/")
    out: list[str] = []
    trailing = False
    last = len(segments) - 1
    for i, seg in enumerate(segments):
        if seg == ".":
            trailing = i == last
        elif seg == "..":
            if not out:
                raise PathRefused("Path refused: it climbs above the root.")
            out.pop()
            trailing = i == last
        elif seg == "":
            trailing = True  # only possible last: '//' was refused
        else:
            out.append(seg)
            trailing = False
    if not out:
        return "/"
    return "/" + "/".join(out) + ("/" if trailing else "")


# pchar minus '%': what may stay literal in an upstream path.
_PATH_SAFE: Final = "/:@!$&'()*+,;="


def encode_path(path: str) -> str:
    """Percent-encode a :func:`normalize_path` result for the upstream URL."""
    return quote(path, safe=_PATH_SAFE)


# ------------------------------------------------------------------------- allowlist

_PATTERN_RE: Final = re.compile(r"(?:(?P<method>[A-Za-z]+|\*)\s+)?(?P<path>/\S*)")
MODEL_PLACEHOLDER: Final = "{model}"
#: The default shape of a model named in a path: one segment, no ':' (Gemini's method
#: separator), no '%', starting with a letter or digit.
DEFAULT_MODEL_SHAPE: Final = r"[A-Za-z0-9][A-Za-z0-9._-]{0,255}"
# `*` and `**` never match a dot segment, even if a caller skipped normalize_path.
_SEG: Final = r"(?![.]{1,2}(?:/|\Z))[^/]+"
_STAR_IN_SEGMENT: Final = r"[^/]+"
_MULTI: Final = rf"{_SEG}(?:/{_SEG})*"


def _pattern_regex(path: str, pattern: str, model_group: str, model_shape: str) -> str:
    if "//" in path or any(c in path for c in "?#%\\") or any(c.isspace() for c in path):
        raise PathPatternError(f"path pattern {pattern!r} is malformed")
    if path.count(MODEL_PLACEHOLDER) > 1:
        raise PathPatternError(f"path pattern {pattern!r} names {{model}} more than once")
    parts: list[str] = []
    for seg in path[1:].split("/"):
        if MODEL_PLACEHOLDER in seg:
            before, _, after = seg.partition(MODEL_PLACEHOLDER)
            if "*" in before or "*" in after or "{" in before + after:
                raise PathPatternError(f"path pattern {pattern!r}: no '*' beside {{model}}")
            group = f"(?P<{model_group}>{model_shape})"
            parts.append(re.escape(before) + group + re.escape(after))
            continue
        if "{" in seg or "}" in seg:
            raise PathPatternError(f"path pattern {pattern!r}: only {{model}} may be braced")
        if seg in (".", ".."):
            raise PathPatternError(f"path pattern {pattern!r} contains a dot segment")
        if seg == "**":
            parts.append(_MULTI)
        elif "**" in seg:
            raise PathPatternError(f"path pattern {pattern!r}: '**' must be a whole segment")
        elif seg == "*":
            parts.append(_SEG)
        else:
            parts.append(_STAR_IN_SEGMENT.join(re.escape(p) for p in seg.split("*")))
    return "/" + "/".join(parts)


class PathMatch:
    """An allowed path, and the model it names when its pattern has ``{model}``."""

    __slots__ = ("model",)

    def __init__(self, model: str | None) -> None:
        self.model = model


_NO_MODEL: Final = PathMatch(None)


class PathMatcher:
    """Compiled allowlist: one alternation regex per HTTP method."""

    __slots__ = ("_any", "_by_method", "patterns")

    def __init__(
        self, by_method: dict[str, list[str]], any_method: list[str], patterns: tuple[str, ...]
    ) -> None:
        self.patterns = patterns

        def compile_(frags: list[str]) -> re.Pattern[str] | None:
            if not frags:
                return None
            return re.compile("(?:" + "|".join(dict.fromkeys(frags)) + ")")

        # "* /x" patterns join every method's regex, and serve methods not named at all.
        self._by_method: dict[str, re.Pattern[str] | None] = {
            m: compile_(frags + any_method) for m, frags in by_method.items()
        }
        self._any: re.Pattern[str] | None = compile_(any_method)

    def match(self, method: str, path: str) -> PathMatch | None:
        """The match when ``path`` (a :func:`normalize_path` result) is allowed for
        ``method``; None when it is not."""
        try:
            rx = self._by_method[method]
        except KeyError:
            rx = self._by_method.get(method.upper(), self._any)
        m = rx.fullmatch(path) if rx is not None else None
        if m is None:
            return None
        # Each {model} group has its own name; the one that matched is the last group.
        group = m.lastgroup
        return PathMatch(m.group(group)) if group is not None else _NO_MODEL

    def allows(self, method: str, path: str) -> bool:
        return self.match(method, path) is not None

    def __repr__(self) -> str:
        return f"PathMatcher({list(self.patterns)!r})"


def compile_path_patterns(
    patterns: Iterable[str], model_shape: str = DEFAULT_MODEL_SHAPE
) -> PathMatcher:
    """Compile allowlist patterns; raise :class:`PathPatternError` (a ValueError).

    ``"/v1/messages"`` is POST only; ``"GET /v1/models"`` names the method; ``"* /x"``
    allows any method. In the path, ``*`` matches a non-empty part of one segment,
    ``**`` (a whole segment) one or more segments, and ``{model}`` a model name of
    ``model_shape`` (a regex), which :meth:`PathMatcher.match` returns.
    """
    try:
        re.compile(model_shape)
    except re.error as exc:
        raise PathPatternError(f"model shape {model_shape!r} is not a regex: {exc}") from None
    by_method: dict[str, list[str]] = {}
    any_method: list[str] = []
    kept: list[str] = []
    for pattern in patterns:
        m = _PATTERN_RE.fullmatch(pattern.strip())
        if not m:
            raise PathPatternError(
                f"path pattern {pattern!r} must look like '/v1/x' or 'GET /v1/x'"
            )
        method = (m["method"] or "POST").upper()
        frag = _pattern_regex(m["path"], pattern, f"model{len(kept)}", model_shape)
        kept.append(pattern)
        if method == "*":
            any_method.append(frag)
        else:
            by_method.setdefault(method, []).append(frag)
    return PathMatcher(by_method, any_method, tuple(kept))
