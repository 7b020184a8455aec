"""The model a relay request names, read the way the provider will read it.

ALLOWED_MODELS (and a scoped token's `models`) are only as strong as this reading. A
provider may find the model in the path (`{model}` in a path pattern, e.g. Gemini), in a
query parameter (Deepgram's `?model=`), or in a body field (`model`; ElevenLabs'
`model_id`), in a JSON, multipart or form body, labelled or not. When the model must be
checked (`strict`), anything two parsers could read differently is refused with a 400:
duplicate or case-variant field names (`{"model":…,"Model":…}`, escaped spellings),
JSON that is not UTF-8, bodies that cannot be parsed, ambiguous multipart parts. When
nothing is checked, the model is read on a best-effort basis, for the request log.

Every parse here is linear in the body and bounded: JSON is validated by simdjson
(C++, no Python object per value; duplicate keys stay visible), multipart and form
bodies by `bytes` operations and capped field counts. See SECURITY.md ("Parsing").
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Final
from urllib.parse import parse_qsl

import simdjson

from byok_relay.errors import ApiError
from byok_relay.multipart import MultipartRefused, boundary_of, field_value

MAX_MODEL_LENGTH: Final = 256
MAX_JSON_FIELDS: Final = 1024  # top-level fields read in a JSON body
MAX_FORM_FIELDS: Final = 1000
_CONTROL: Final = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_JSON_WS: Final = re.compile(rb"(?:\xef\xbb\xbf)?[ \t\r\n]*")
# JSON in UTF-16/32 (with or without a byte-order mark): a lenient provider may decode it.
_WIDE_JSON: Final = re.compile(
    rb"(?:\xff\xfe)?(?:[ \t\r\n]\x00)*\{\x00"
    rb"|(?:\xfe\xff)?(?:\x00[ \t\r\n])*\x00\{"
    rb"|(?:\xff\xfe\x00\x00)?(?:[ \t\r\n]\x00\x00\x00)*\{\x00\x00\x00"
    rb"|(?:\x00\x00\xfe\xff)?(?:\x00\x00\x00[ \t\r\n])*\x00\x00\x00\{"
)
# Content types whose bodies no provider reads as JSON.
_OPAQUE_TYPES: Final = ("audio/", "image/", "video/")


def check_model_name(model: str) -> str:
    """Any model name the relay stores or logs: bounded, printable."""
    if len(model) > MAX_MODEL_LENGTH:
        raise ApiError(400, f"The model name is longer than {MAX_MODEL_LENGTH} characters.")
    if not model or _CONTROL.search(model):
        raise ApiError(400, "The model name must be non-empty, without control characters.")
    return model


class Unreadable(ValueError):
    """The model cannot be read unambiguously; ``str(exc)`` says what to send instead."""


def query_model(pairs: Iterable[tuple[str, str]], name: str, strict: bool) -> str | None:
    """The model in a query parameter (after `parse_qsl`, as forwarded)."""
    wanted = name.casefold()
    found = [(k, v) for k, v in pairs if k.casefold() == wanted]
    if not found:
        return None
    if strict and (len(found) > 1 or found[0][0] != name):
        raise Unreadable(f'Send the "{name}" query parameter once, spelled exactly so.')
    return check_model_name(found[0][1])


def body_models(content_type: str, body: bytes, field: str, strict: bool) -> list[str]:
    """Every model a provider could read in a request body. `content_type` is the raw
    Content-Type header (its boundary parameter matters), or "" when there is none."""
    if not body:
        return []
    media = content_type.partition(";")[0].strip().lower()
    if media.startswith("multipart/"):
        model = _multipart_model(content_type, body, field) if strict else None
        return [model] if model is not None else []
    if media.startswith(_OPAQUE_TYPES):
        return []
    found: list[str] = []
    start = _JSON_WS.match(body)
    looks_json = start is not None and body[start.end() : start.end() + 1] == b"{"
    if media == "application/x-www-form-urlencoded" and strict:
        # Read as a form and, when it looks like JSON, as JSON too: both readings count.
        model = _form_model(body, field, raw_semicolons=looks_json)
        if model is not None:
            found.append(model)
    if media.endswith("json") or looks_json:
        model = json_model(body, field, strict)
        if model is not None and model not in found:
            found.append(model)
    elif strict and _WIDE_JSON.match(body):
        raise Unreadable("JSON bodies must be UTF-8.")
    return found


def json_model(body: bytes, field: str, strict: bool) -> str | None:
    """The `field` of a JSON object body; with `strict`, refuse what is not exactly one
    top-level string field of that exact name in valid UTF-8 JSON."""
    parser = simdjson.Parser()
    try:
        doc = parser.parse(body)
    except (ValueError, RuntimeError, UnicodeDecodeError):
        if strict:
            raise Unreadable("The request body is not valid UTF-8 JSON.") from None
        return None  # the provider answers malformed bodies in its own words
    try:
        if not isinstance(doc, simdjson.Object):
            return None
        if not strict:
            value = doc.get(field)
            return check_model_name(value) if isinstance(value, str) else None
        if len(doc) > MAX_JSON_FIELDS:
            raise Unreadable(f"The JSON body has more than {MAX_JSON_FIELDS} top-level fields.")
        wanted = field.casefold()
        names = [k for k in doc.keys() if k.casefold() == wanted]
        if not names:
            return None
        if names != [field]:
            raise Unreadable(f'Send the "{field}" field once, spelled exactly so.')
        value = doc[field]
        if not isinstance(value, str):
            raise Unreadable(f'The "{field}" field must be a string.')
        return check_model_name(value)
    finally:
        del doc  # the parser may be reused only once no view into it is alive


def _multipart_model(content_type: str, body: bytes, field: str) -> str | None:
    try:
        boundary = boundary_of(content_type.encode("latin-1"))
        value = field_value(body, boundary, field)
    except MultipartRefused as exc:
        raise Unreadable(str(exc)) from None
    return check_model_name(value) if value is not None else None


def _form_model(body: bytes, field: str, raw_semicolons: bool) -> str | None:
    if b";" in body and not raw_semicolons:
        # Some servers split form fields on ';' as well as '&'.
        raise Unreadable("Form bodies must not contain a raw ';' (percent-encode it).")
    try:
        pairs = parse_qsl(
            body.decode("utf-8"), keep_blank_values=True, max_num_fields=MAX_FORM_FIELDS
        )
    except (UnicodeDecodeError, ValueError):
        raise Unreadable("The form body is not valid UTF-8 or has too many fields.") from None
    return query_model(pairs, field, strict=True)
