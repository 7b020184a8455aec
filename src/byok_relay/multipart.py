"""Reading one field of a multipart/form-data body the way *any* parser could read it.

The relay only needs the `model` field of an upload (audio transcription, image edit) to
apply ALLOWED_MODELS and token scopes. Parsers disagree on the edges of the format (CRLF
or bare LF, backslash escapes in quoted names, RFC 2231 `name*=`, parameters without a
`;`, parts after the closing delimiter), so this reader takes the *union* of those
readings: a part that some reading names as the field is a field part, and anything
that lets two readings disagree about the field is refused (`MultipartRefused`).

Cost is linear and bounded: delimiters are found with `bytes.count`/`split` (C speed),
at most MAX_PARTS parts are examined, and only the first HEADER_SCAN_BYTES of each.
"""

from __future__ import annotations

import re
from typing import Final
from urllib.parse import unquote_to_bytes

MAX_PARTS: Final = 256
HEADER_SCAN_BYTES: Final = 8192

# RFC 2046 boundary: 1-70 characters from a restricted set, not ending in a space.
_BOUNDARY: Final = re.compile(rb"[0-9A-Za-z'()+_,\-./:=? ]{0,69}[0-9A-Za-z'()+_,\-./:=?]")
# Content-Type parameters, quoted or not (for `boundary`).
_CT_PARAM: Final = re.compile(rb';\s*([^=;\s]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^;\s]*)')
# Readings of Content-Disposition parameters (see `_names`).
_PARAM_ESCAPED: Final = re.compile(rb';\s*([^=;\s]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^;]*)')
_PARAM_NAIVE: Final = re.compile(rb';\s*([^=;\s]+)\s*=\s*("[^"]*"|[^;]*)')
_NAME_ANYWHERE: Final = re.compile(rb'\bname\s*=\s*("[^"]*"|[^;\s]*)', re.IGNORECASE)
_NAME_EXT_ANYWHERE: Final = re.compile(rb"\bname\*\s*=\s*([^;\s]*)", re.IGNORECASE)
_PLAIN_ENCODINGS: Final = frozenset({b"7bit", b"8bit", b"binary"})


class MultipartRefused(ValueError):
    """The body cannot be read unambiguously; ``str(exc)`` is safe to return (400)."""


def boundary_of(content_type: bytes) -> bytes:
    """The boundary parameter of a multipart Content-Type (exactly one, RFC 2046 shape)."""
    found = [value for key, value in _CT_PARAM.findall(content_type) if key.lower() == b"boundary"]
    if len(found) != 1:
        raise MultipartRefused(
            "multipart/form-data needs exactly one boundary parameter in its Content-Type."
        )
    value: bytes = found[0]
    if value.startswith(b'"'):
        value = value[1:-1]
    if not _BOUNDARY.fullmatch(value):
        raise MultipartRefused("The multipart boundary is malformed.")
    return value


def field_value(body: bytes, boundary: bytes, field: str) -> str | None:
    """The value of `field`, None when no part is named so; refuse ambiguity."""
    delimiter = b"--" + boundary
    count = body.count(delimiter)
    if count == 0:
        raise MultipartRefused("The multipart body has no part with its boundary.")
    if count > MAX_PARTS + 1:
        raise MultipartRefused(f"The multipart body has more than {MAX_PARTS} parts.")
    wanted = field.casefold()
    values: list[str] = []
    # Every occurrence of the delimiter splits, wherever it is and even after the
    # closing one: a lenient parser may split there.
    for segment in body.split(delimiter)[1:]:
        if segment.startswith(b"--"):
            segment = segment[2:]
        value = _field_part(segment, wanted, field)
        if value is not None:
            values.append(value)
    if len(values) > 1:
        raise MultipartRefused(f'The multipart body has more than one "{field}" field.')
    return values[0] if values else None


def _field_part(segment: bytes, wanted: str, field: str) -> str | None:
    head = segment[:HEADER_SCAN_BYTES]
    crlf, lf = head.find(b"\r\n\r\n"), head.find(b"\n\n")
    if crlf < 0 and lf < 0:
        return None  # no header block: no parser can name this part
    # The longer of the two header-block readings holds every header either one sees.
    block = head[: max(crlf, lf)]
    names: set[str] = set()
    dispositions = 0
    encodings: set[bytes] = set()
    for line in re.split(rb"\r?\n", block):
        key, sep, value = line.partition(b":")
        if not sep:
            continue
        key = key.strip().lower()
        if key == b"content-disposition":
            dispositions += 1
            names |= _names(value)
        elif key == b"content-transfer-encoding":
            encodings.add(value.strip().lower())
    if not any(n.casefold() == wanted for n in names):
        return None
    if names != {field}:
        raise MultipartRefused(
            f'A multipart part is named ambiguously; name the field exactly "{field}" '
            f'(Content-Disposition: form-data; name="{field}").'
        )
    if dispositions != 1 or b"filename" in block.lower():
        raise MultipartRefused(f'The "{field}" part must be a plain form field.')
    if encodings - _PLAIN_ENCODINGS:
        raise MultipartRefused(f'The "{field}" part must not use a Content-Transfer-Encoding.')
    if crlf >= 0 and lf >= 0:
        # CRLF and bare-LF parsers would end its headers, so start its value, apart.
        raise MultipartRefused(f'The "{field}" part mixes CRLF and LF line endings.')
    raw = segment[crlf + 4 :] if crlf >= 0 else segment[lf + 2 :]
    for ending in (b"\r\n", b"\n"):
        if raw.endswith(ending):
            raw = raw[: -len(ending)]
            break
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise MultipartRefused(f'The "{field}" field is not valid UTF-8.') from None


def _names(disposition: bytes) -> set[str]:
    """Every name a parser could read from one Content-Disposition value."""
    raw: list[bytes] = []
    for pattern in (_PARAM_ESCAPED, _PARAM_NAIVE):
        for key, value in pattern.findall(disposition):
            key = key.lower()
            if key == b"name":
                raw.extend(_unquoted(value))
            elif key == b"name*":
                raw.append(_rfc2231(value))
    for value in _NAME_ANYWHERE.findall(disposition):
        raw.extend(_unquoted(value))
    for value in _NAME_EXT_ANYWHERE.findall(disposition):
        raw.append(_rfc2231(value))
    return {r.decode("utf-8", "replace").strip() for r in raw}


def _unquoted(value: bytes) -> list[bytes]:
    value = value.strip()
    if not value.startswith(b'"'):
        return [value]
    inner = value[1:-1] if value.endswith(b'"') and len(value) > 1 else value[1:]
    # With and without backslash escapes: parsers differ.
    return [inner, re.sub(rb"\\(.)", rb"\1", inner)]


def _rfc2231(value: bytes) -> bytes:
    # charset'language'percent-encoded-value
    value = value.strip().strip(b'"')
    parts = value.split(b"'", 2)
    encoded = parts[2] if len(parts) == 3 else value
    return unquote_to_bytes(encoded)
