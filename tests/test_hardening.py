"""The hardening pass (SECURITY.md, "Attack classes"): one request must never freeze the
relay, and no allowlist may be talked around. Every row goes over real HTTP to real relay
processes; the bypass classes are generated (Hypothesis), not listed, and each forwarded
request is read back by independent lenient parsers, which must find only allowed models.
"""

from __future__ import annotations

import contextlib
import email.parser
import email.policy
import fnmatch
import json
import re
import socket
import sqlite3
import subprocess
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, unquote

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from providers.mock import MockProviders, RecordedRequest
from providers.relay import (
    FAKE_KEY,
    Relay,
    User,
    error_of,
    fake_secret,
    http_client,
    register_user,
    relay_process,
)
from python_multipart import MultipartParser
from python_multipart.multipart import parse_options_header
from test_cli import run_cli

from byok_relay.providers import ProviderRegistry

HTTP = http_client()
ALLOWED = ["gpt-4o-mini", "whisper-1", "gemini-2.0-flash*", "nova-2", "eleven_v2", "org/allowed"]
CHAT_PATH = "/relay/openai/v1/chat/completions"
UPLOAD_PATH = "/relay/openai/v1/audio/transcriptions"
FUZZ = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def allowed(model: str) -> bool:
    return any(
        fnmatch.fnmatch(m.lower(), p.lower()) for p in ALLOWED for m in (model, f"x/{model}")
    )


@pytest.fixture(scope="module")
def strict(mocks: MockProviders, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Relay]:
    with relay_process(
        mocks, tmp_path_factory.mktemp("hardening"), ALLOWED_MODELS=",".join(ALLOWED)
    ) as relay:
        yield relay


@pytest.fixture(scope="module")
def alice(strict: Relay) -> User:
    user = register_user(strict, "hardening")
    for provider in ("openai", "google", "deepgram", "elevenlabs", "huggingface"):
        user.store_key(provider, FAKE_KEY)
    return user


@contextlib.contextmanager
def health_watch(relay: Relay) -> Iterator[list[float]]:
    """Poll /health every 20 ms meanwhile; yields the list of latencies (seconds)."""
    latencies: list[float] = []
    stop = threading.Event()

    def poll() -> None:
        with httpx.Client(timeout=30, trust_env=False) as client:
            while not stop.is_set():
                started = time.perf_counter()
                client.get(f"{relay.url}/health")
                latencies.append(time.perf_counter() - started)
                time.sleep(0.02)

    thread = threading.Thread(target=poll)
    thread.start()
    time.sleep(0.1)
    try:
        yield latencies
    finally:
        time.sleep(0.1)
        stop.set()
        thread.join()


# ======================================================================================
# 1. Parsing untrusted bodies: linear, bounded, never a frozen event loop
# ======================================================================================

MULTIPART_FLOOD = b"content-disposition: form-data; name=model\r\n" * 8000  # 352 KB


def _many_parts(count: int, header_bytes: int) -> bytes:
    filler = b"x-filler: " + b"a" * header_bytes + b"\r\n"
    part = b"--B\r\ncontent-disposition: form-data; name=f\r\n" + filler + b"\r\nv\r\n"
    return part * count + b"--B--\r\n"


@pytest.mark.parametrize(
    ("name", "headers", "body"),
    [
        ("multipart flood, no token", {"x-relay-token": "junk"}, MULTIPART_FLOOD),
        ("multipart flood", None, MULTIPART_FLOOD),
        ("256 parts with 8 KB headers", None, _many_parts(256, 8000)),
        ("too many parts", None, _many_parts(5000, 10)),
        ("CRLF-less flood", None, b"--B" * 3_000_000),
    ],
)
def test_multipart_scan_never_freezes_the_relay(
    strict: Relay, alice: User, name: str, headers: dict[str, str] | None, body: bytes
) -> None:
    sent = {**(headers or alice.headers), "content-type": "multipart/form-data; boundary=B"}
    with health_watch(strict) as latencies:
        r = HTTP.post(f"{strict.url}{UPLOAD_PATH}", content=body, headers=sent, timeout=60)
    if r.status_code != 200:  # forwarded (no model field) or refused in JSON, never a 500
        error_of(r, (400, 401, 403))
    assert latencies and max(latencies) < 1.0, (name, max(latencies))


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(
            b'{"model":"gpt-4o-mini","x":' + b"[" * 100_000 + b"]" * 100_000 + b"}", id="deep"
        ),
        pytest.param(
            b'{"model":"gpt-4o-mini","x":[' + b'{"a":1},' * 1_100_000 + b"{}]}", id="wide"
        ),
        pytest.param(
            b'{"model":"gpt-4o-mini","x":"\\ud800' + b"a" * 9_000_000 + b'"}', id="surrogate"
        ),
    ],
)
def test_json_bodies_cost_little_and_never_500(
    strict: Relay, alice: User, mocks: MockProviders, body: bytes
) -> None:
    headers = {**alice.headers, "content-type": "application/json"}
    with health_watch(strict) as latencies:
        r = HTTP.post(f"{strict.url}{CHAT_PATH}", content=body, headers=headers, timeout=60)
    assert r.status_code != 500, r.text[:200]
    assert latencies and max(latencies) < 1.0, max(latencies)


def test_unreadable_json_is_forwarded_when_nothing_is_checked(
    relay: Relay, user: User, mocks: MockProviders
) -> None:
    # Without ALLOWED_MODELS, the provider answers malformed bodies in its own words.
    deep = b'{"model":"gpt-4o-mini","x":' + b"[" * 5000 + b"]" * 5000 + b"}"
    headers = {**user.headers, "content-type": "application/json"}
    r = HTTP.post(f"{relay.url}{CHAT_PATH}", content=deep, headers=headers)
    assert r.status_code != 500
    assert mocks.openai.requests and mocks.openai.requests[-1].body == deep


# ======================================================================================
# 2. A model name is data, never path syntax
# ======================================================================================


@pytest.mark.parametrize(
    "model",
    [
        "google/gemini-2.0-flash/../gemini-ultra",
        "gemini-2.0-flash/../../v1beta/files",
        "google/gemini-2.0-flash:countTokens",
        "google/gemini-2.0-flash%2f..%2fx",
        "google/gemini-2.0-flash?alt=json",
        "google/gemini-2.0-flash#x",
        "google/gemini-2.0-flash/",
    ],
)
def test_unified_model_cannot_carry_path_syntax(
    strict: Relay, alice: User, mocks: MockProviders, model: str
) -> None:
    r = HTTP.post(
        f"{strict.url}/relay", json={"model": model, "contents": []}, headers=alice.headers
    )
    error_of(r, (400, 403))
    assert mocks.gemini.requests == []


def test_unified_gemini_model_still_routes(
    strict: Relay, alice: User, mocks: MockProviders
) -> None:
    body = {"model": "google/gemini-2.0-flash", "stream": True, "contents": []}
    r = HTTP.post(f"{strict.url}/relay", json=body, headers=alice.headers)
    assert r.status_code == 200, r.text
    (request,) = mocks.gemini.requests
    assert request.path == "/v1beta/models/gemini-2.0-flash:streamGenerateContent"
    assert request.query.getall("alt") == ["sse"]
    assert "model" not in json.loads(request.body) and "stream" not in json.loads(request.body)


# ======================================================================================
# 3. ALLOWED_MODELS read the way the provider reads it (generated bypass classes)
# ======================================================================================


def _escape_char(c: str, upper_hex: bool) -> str:
    code = f"{ord(c):04x}"
    return "\\u" + (code.upper() if upper_hex else code)


def _spelling(field: str) -> st.SearchStrategy[str]:
    """Every JSON spelling of a key that case-insensitive decoders read as `field`."""
    per_char = [
        st.sampled_from(
            [
                c,
                c.upper(),
                _escape_char(c, False),
                _escape_char(c, True),
                _escape_char(c.upper(), False),
            ]
        )
        for c in field
    ]
    return st.tuples(*per_char).map("".join)


MODELS = st.sampled_from(["gpt-4o-mini", "gpt-4o", "o1", "whisper-1", "gpt-4o-mini-x"])
JSON_WS = st.text(alphabet=" \t\r\n", max_size=200)


@st.composite
def json_requests(draw: st.DrawFn) -> tuple[dict[str, str], bytes]:
    entries = draw(st.lists(st.tuples(_spelling("model"), MODELS), min_size=1, max_size=3))
    members = [f'"{key}":{json.dumps(value)}' for key, value in entries]
    if draw(st.booleans()):
        nested_model = draw(MODELS)
        members.append(f'"metadata":{{"model":{json.dumps(nested_model)}}}')
    members.append('"messages":[]')
    members = draw(st.permutations(members))
    text = draw(JSON_WS) + "{" + ",".join(members) + "}" + draw(JSON_WS)
    encoding = draw(
        st.sampled_from(["utf-8", "utf-8-sig", "utf-16", "utf-16-le", "utf-16-be", "utf-32"])
    )
    content_type = draw(
        st.sampled_from(
            [
                None,
                "application/json",
                "application/json; charset=utf-16",
                "text/plain",
                "application/x-www-form-urlencoded",
                "application/octet-stream",
                "application/vnd.api+json",
            ]
        )
    )
    headers = {"content-type": content_type} if content_type else {}
    return headers, text.encode(encoding)


def _json_readings(body: bytes) -> list[str]:
    """Models that lenient JSON decoders (any Unicode encoding, first or last duplicate,
    case-insensitive field names) read from a body."""
    found: list[str] = []
    for encoding in ("utf-8-sig", "utf-16", "utf-16-le", "utf-16-be", "utf-32"):
        try:
            text = body.decode(encoding).lstrip("\ufeff")
            pairs = json.loads(text, object_pairs_hook=lambda p: p)
        except (UnicodeDecodeError, ValueError, RecursionError):
            continue
        if isinstance(pairs, list):
            found += [v for k, v in pairs if k.casefold() == "model" and isinstance(v, str)]
    if body.lstrip().startswith((b"model", b"Model", b"MODEL")) or b"&" in body:
        with contextlib.suppress(UnicodeDecodeError):
            for sep in ("&", ";"):
                pairs2 = parse_qsl(body.decode(), keep_blank_values=True, separator=sep)
                found += [v for k, v in pairs2 if k.casefold() == "model"]
    return found


def _forwarded(mocks: MockProviders) -> RecordedRequest | None:
    requests = mocks.openai.requests
    return requests[-1] if requests else None


@FUZZ
@given(request=json_requests())
def test_json_model_bypasses_are_closed(
    strict: Relay, alice: User, mocks: MockProviders, request: tuple[dict[str, str], bytes]
) -> None:
    headers, body = request
    mocks.openai.clear()
    r = HTTP.post(f"{strict.url}{CHAT_PATH}", content=body, headers={**alice.headers, **headers})
    sent = _forwarded(mocks)
    if sent is None:
        error_of(r, (400, 403))
        return
    readings = _json_readings(sent.body)
    assert all(allowed(m) for m in readings), (readings, body[:200])


def test_exact_single_allowed_model_passes(
    strict: Relay, alice: User, mocks: MockProviders
) -> None:
    # The control: the one unambiguous spelling still works, labelled or not.
    for headers in ({}, {"content-type": "application/json"}, {"content-type": "text/plain"}):
        mocks.openai.clear()
        body = b'\n  {"model": "gpt-4o-mini", "metadata": {"model": "x"}, "messages": []}'
        r = HTTP.post(
            f"{strict.url}{CHAT_PATH}", content=body, headers={**alice.headers, **headers}
        )
        assert r.status_code == 200, r.text
        assert _forwarded(mocks) is not None


DISPOSITIONS = st.sampled_from(
    [
        'form-data; name="{n}"',
        "form-data; name={n}",
        'form-data; foo=bar; name="{n}"',
        "form-data; name*=UTF-8''{n}",
        "form-data; name*=UTF-8''%6D%6F%64%65%6C",
        'form-data; NAME="{n}"',
        'form-data;name="{n}"',
        'form-data; name = "{n}"',
        'form-data; name="{n}"; name="x"',
        'form-data; name="x"; name="{n}"',
        'form-data; name="x" name="{n}"',
        'form-data; name="{N}"',
        'form-data; name="mo\\"del"',
    ]
)


@st.composite
def multipart_requests(draw: st.DrawFn) -> tuple[str, bytes]:
    newline = draw(st.sampled_from([b"\r\n", b"\n"]))
    parts = []
    for _ in range(draw(st.integers(1, 3))):
        disposition = draw(DISPOSITIONS).replace("{n}", "model").replace("{N}", "MODEL")
        parts.append((disposition.encode(), draw(MODELS).encode()))
    parts.append((b'form-data; name="file"; filename="a.wav"', b"RIFF0000WAVEfmt "))
    parts = draw(st.permutations(parts))
    body = b""
    for disposition, value in parts:
        body += b"--BOUNDARY" + newline + b"content-disposition: " + disposition + newline
        body += newline + value + newline
    body += b"--BOUNDARY--" + newline
    if draw(st.booleans()):  # a part after the closing delimiter
        body += b"--BOUNDARY\r\ncontent-disposition: form-data; name=model\r\n\r\ngpt-4o\r\n"
    return "multipart/form-data; boundary=BOUNDARY", body


def _multipart_readings(content_type: str, body: bytes) -> list[str]:
    """Models that three independent multipart parsers read: the standard library's
    email parser, python-multipart (Starlette's) and a naive regex reader."""
    found: list[str] = []
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + body
    )
    if message.is_multipart():
        for part in message.iter_parts():
            name = part.get_param("name", header="content-disposition")
            if isinstance(name, str) and name.casefold() == "model":
                payload = part.get_payload(decode=True)
                found.append(payload.decode("utf-8", "replace") if payload else "")
    _, params = parse_options_header(content_type)
    current: dict[str, Any] = {}

    def on_header_field(data: bytes, start: int, end: int) -> None:
        current["field"] = current.get("field", b"") + data[start:end]

    def on_header_value(data: bytes, start: int, end: int) -> None:
        current["value"] = current.get("value", b"") + data[start:end]

    def on_header_end() -> None:
        if current.get("field", b"").lower() == b"content-disposition":
            current["name"] = parse_options_header(current.get("value", b""))[1].get(b"name")
        current["field"] = current["value"] = b""

    def on_part_begin() -> None:
        current.clear()

    def on_part_data(data: bytes, start: int, end: int) -> None:
        current["data"] = current.get("data", b"") + data[start:end]

    def on_part_end() -> None:
        name = current.get("name")
        if isinstance(name, bytes) and name.decode("utf-8", "replace").casefold() == "model":
            found.append(current.get("data", b"").decode("utf-8", "replace"))

    with contextlib.suppress(Exception):
        parser = MultipartParser(
            params[b"boundary"],
            {
                "on_part_begin": on_part_begin,
                "on_part_data": on_part_data,
                "on_part_end": on_part_end,
                "on_header_field": on_header_field,
                "on_header_value": on_header_value,
                "on_header_end": on_header_end,
            },
        )
        parser.write(body)
        parser.finalize()
    for segment in body.split(b"--" + params[b"boundary"]):
        pieces = re.split(rb"\r?\n\r?\n", segment, maxsplit=1)
        if len(pieces) != 2:
            continue
        head, rest = pieces
        names = re.findall(rb"name\*?\s*=\s*\"?(?:UTF-8'')?([^\";\r\n]*)", head, re.I)
        if any(unquote(n.decode("latin-1")).casefold() == "model" for n in names):
            found.append(rest.split(b"\n", 1)[0].rstrip(b"\r").decode("utf-8", "replace"))
    return found


@FUZZ
@given(request=multipart_requests())
def test_multipart_model_bypasses_are_closed(
    strict: Relay, alice: User, mocks: MockProviders, request: tuple[str, bytes]
) -> None:
    content_type, body = request
    mocks.openai.clear()
    r = HTTP.post(
        f"{strict.url}{UPLOAD_PATH}",
        content=body,
        headers={**alice.headers, "content-type": content_type},
    )
    sent = _forwarded(mocks)
    if sent is None:
        error_of(r, (400, 403))
        return
    readings = _multipart_readings(sent.headers["content-type"], sent.body)
    assert all(allowed(m) for m in readings), (readings, body[:300])


def test_plain_multipart_upload_with_an_allowed_model_passes(
    strict: Relay, alice: User, mocks: MockProviders
) -> None:
    mocks.openai.clear()
    r = HTTP.post(
        f"{strict.url}{UPLOAD_PATH}",
        data={"model": "whisper-1"},
        files={"file": ("a.wav", b"RIFF0000WAVEfmt ")},
        headers=alice.headers,
    )
    assert r.status_code == 200, r.text
    assert _forwarded(mocks) is not None


@pytest.mark.parametrize(
    ("path", "kwargs", "ok"),
    [
        ("/relay/deepgram/v1/listen?model=nova-3", {"content": b"RIFF"}, False),
        ("/relay/deepgram/v1/listen?model=nova-2&model=nova-3", {"content": b"RIFF"}, False),
        ("/relay/deepgram/v1/listen?MODEL=nova-3", {"content": b"RIFF"}, False),
        ("/relay/deepgram/v1/listen?model=nova-2", {"content": b"RIFF"}, True),
        ("/relay/elevenlabs/v1/text-to-speech/v1", {"json": {"model_id": "eleven_v3"}}, False),
        ("/relay/elevenlabs/v1/text-to-speech/v1", {"json": {"Model_Id": "eleven_v3"}}, False),
        ("/relay/elevenlabs/v1/text-to-speech/v1", {"json": {"model_id": "eleven_v2"}}, True),
        ("/relay/huggingface/hf-inference/models/evil/model-x", {"json": {}}, False),
        ("/relay/huggingface/hf-inference/models/org/allowed", {"json": {}}, True),
        ("/relay/huggingface/hf-inference/models/org/allowed/pipeline/x", {"json": {}}, True),
        ("/relay/huggingface/models/org/..%2fallowed", {"json": {}}, False),
        ("/relay/google/v1beta/models/gemini-1.5-pro:generateContent", {"json": {}}, False),
    ],
)
def test_models_outside_the_body_are_checked(
    strict: Relay, alice: User, mocks: MockProviders, path: str, kwargs: dict[str, Any], ok: bool
) -> None:
    mocks.clear()
    headers = dict(alice.headers)
    if "content" in kwargs:
        headers["content-type"] = "audio/wav"
    r = HTTP.post(f"{strict.url}{path}", headers=headers, **kwargs)
    if ok:
        assert r.status_code == 200, r.text
    else:
        error_of(r, (400, 403))
        assert not (mocks.generic.requests or mocks.gemini.requests)


def test_one_content_type(strict: Relay, alice: User, mocks: MockProviders) -> None:
    # Two Content-Type headers: the relay and the provider could read different ones.
    mocks.openai.clear()
    raw = (
        b"POST " + CHAT_PATH.encode() + b" HTTP/1.1\r\nHost: x\r\n"
        b"x-relay-token: " + alice.token.encode() + b"\r\n"
        b"content-type: text/plain\r\ncontent-type: application/json\r\n"
        b'content-length: 37\r\nconnection: close\r\n\r\n{"model":"gpt-4o","messages":[],"":0}'
    )
    with socket.create_connection(("127.0.0.1", strict.port), timeout=10) as sock:
        sock.sendall(raw)
        answer = sock.recv(65536)
    assert answer.split(b" ")[1] == b"400", answer[:200]  # aiohttp refuses it first
    assert mocks.openai.requests == []


def _part(disposition: bytes, value: bytes, extra: bytes = b"", nl: bytes = b"\r\n") -> bytes:
    return b"--B" + nl + b"content-disposition: " + disposition + nl + extra + nl + value + nl


_MP = "multipart/form-data; boundary=B"
_FILE = _part(b'form-data; name="file"; filename="a.wav"', b"RIFF")


@pytest.mark.parametrize(
    ("path", "content_type", "body", "phrase"),
    [
        (CHAT_PATH, "application/json", b'{"model": ["gpt-4o-mini"]}', "must be a string"),
        (CHAT_PATH, "application/json", b'{"model": "gpt-4o-mini", "x": "\xff"}', "UTF-8 JSON"),
        (CHAT_PATH, "text/plain", '{"model":"gpt-4o"}'.encode("utf-16"), "must be UTF-8"),
        (CHAT_PATH, "application/x-www-form-urlencoded", b"a=1;model=gpt-4o", "raw ';'"),
        (CHAT_PATH, "application/x-www-form-urlencoded", b"a=1&" * 1001, "too many fields"),
        (UPLOAD_PATH, "multipart/form-data", _FILE + b"--B--\r\n", "one boundary"),
        (UPLOAD_PATH, _MP, b"no delimiter at all", "no part"),
        (UPLOAD_PATH, _MP, _part(b'form-data; name="f"', b"v") * 300, "more than 256"),
        (
            UPLOAD_PATH,
            _MP,
            _part(b'form-data; name="model"; filename="m"', b"whisper-1") + _FILE,
            "plain form field",
        ),
        (
            UPLOAD_PATH,
            _MP,
            _part(
                b'form-data; name="model"',
                b"d2hpc3Blci0x",
                b"content-transfer-encoding: base64\r\n",
            )
            + _FILE,
            "Content-Transfer-Encoding",
        ),
        (
            UPLOAD_PATH,
            _MP,
            _part(b'form-data; name="model"', b"whisper-1\n\nx") + _FILE,
            "CRLF and LF",
        ),
        (UPLOAD_PATH, _MP, _part(b'form-data; name="model"', b"\xff\xfe") + _FILE, "UTF-8"),
        (
            UPLOAD_PATH,
            _MP,
            _part(b'form-data; name="model"', b"whisper-1") * 2 + _FILE,
            "more than one",
        ),
        (
            UPLOAD_PATH,
            _MP,
            _part(b'form-data; name="x"; name="model"', b"whisper-1") + _FILE,
            "ambiguously",
        ),
    ],
)
def test_unreadable_models_get_a_400_that_says_what_to_send(
    strict: Relay,
    alice: User,
    mocks: MockProviders,
    path: str,
    content_type: str,
    body: bytes,
    phrase: str,
) -> None:
    mocks.openai.clear()
    r = HTTP.post(
        f"{strict.url}{path}", content=body, headers={**alice.headers, "content-type": content_type}
    )
    message = error_of(r, 400)
    assert phrase in message and "ALLOWED_MODELS" in message, message
    assert mocks.openai.requests == []


def test_a_query_of_too_many_parameters_is_400(relay: Relay, user: User) -> None:
    query = "&".join(f"p{i}=1" for i in range(1001))
    r = HTTP.get(f"{relay.url}/relay/openai/v1/models?{query}", headers=user.headers)
    assert "1000 parameters" in error_of(r, 400)


# --- paths: generated traversal spellings ---------------------------------------------

SEGMENTS = st.sampled_from(
    ["v1", "models", "chat", "completions", "admin", "gpt-4o", ".", "..", "%2e", "%2E%2e",
     "..;", ".;", "%2e%2e;x", "..;jsessionid=1", "a;b", "...", "%252e%252e"]
)  # fmt: skip
OPENAI = ProviderRegistry.load(None, {}).get("openai")


def _lenient_path(path: str) -> str:
    """How a permissive server reads a path: strip ';params', decode, remove dots."""
    out: list[str] = []
    for seg in path.split("/")[1:]:
        seg = unquote(seg.split(";", 1)[0])
        if seg == "..":
            if out:
                out.pop()
        elif seg != ".":
            out.append(seg)
    return "/" + "/".join(out)


@FUZZ
@given(segments=st.lists(SEGMENTS, min_size=1, max_size=6), method=st.sampled_from(["GET", "POST"]))
def test_generated_traversal_spellings_never_leave_the_allowlist(
    strict: Relay, alice: User, mocks: MockProviders, segments: list[str], method: str
) -> None:
    mocks.openai.clear()
    raw = "/relay/openai/" + "/".join(segments)
    body = b'{"model":"gpt-4o-mini","messages":[]}' if method == "POST" else b""
    conn = socket.create_connection(("127.0.0.1", strict.port), timeout=10)
    with conn:
        conn.sendall(
            f"{method} {raw} HTTP/1.1\r\nHost: x\r\nx-relay-token: {alice.token}\r\n"
            f"content-type: application/json\r\ncontent-length: {len(body)}\r\n"
            "connection: close\r\n\r\n".encode()
            + body
        )
        answer = b""
        while chunk := conn.recv(65536):
            answer += chunk
    sent = _forwarded(mocks)
    if sent is None:
        assert answer.split(b" ")[1] in (b"400", b"403", b"404"), answer[:200]
        return
    assert OPENAI is not None
    assert OPENAI.matcher.allows(method, _lenient_path(sent.path)), (raw, sent.path)


@pytest.mark.parametrize(
    "path",
    ["/v1/models/..;", "/v1/models/%2e%2e;x", "/v1/models/.;/gpt-4o", "/v1/..;/v1/models"],
)
def test_dot_segments_with_path_parameters_are_refused(
    strict: Relay, alice: User, mocks: MockProviders, path: str
) -> None:
    mocks.openai.clear()
    conn = socket.create_connection(("127.0.0.1", strict.port), timeout=10)
    with conn:
        conn.sendall(
            f"GET /relay/openai{path} HTTP/1.1\r\nHost: x\r\nx-relay-token: {alice.token}\r\n"
            "connection: close\r\n\r\n".encode()
        )
        answer = conn.recv(65536)
    assert answer.startswith(b"HTTP/1.1 403"), answer[:200]
    assert mocks.openai.requests == []


# ======================================================================================
# 4. A slow name server costs only its own request
# ======================================================================================


@pytest.fixture
def silent_dns() -> Iterator[int]:
    """A UDP 'name server' on loopback that never answers."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(0.2)
    stop = threading.Event()

    def swallow() -> None:
        while not stop.is_set():
            with contextlib.suppress(OSError):
                sock.recvfrom(4096)

    thread = threading.Thread(target=swallow, daemon=True)
    thread.start()
    try:
        yield sock.getsockname()[1]
    finally:
        stop.set()
        thread.join(2)
        sock.close()


def test_slow_dns_for_a_client_base_url_starves_nobody(
    start_relay: Any, register: Any, mocks: MockProviders, silent_dns: int
) -> None:
    relay = start_relay(DNS_SERVERS=f"127.0.0.1:{silent_dns}", DNS_TIMEOUT_S="2")
    user = register(relay)
    user.store_key("openai", FAKE_KEY)
    user.store_key("openai-compatible", FAKE_KEY)

    def hanging(i: int) -> tuple[int, float]:
        started = time.perf_counter()
        r = HTTP.post(
            f"{relay.url}/relay/openai-compatible/v1/chat/completions",
            json={"model": "m", "messages": []},
            headers={**user.headers, "x-relay-base-url": f"https://hang-{i}.example.test"},
            timeout=30,
        )
        return r.status_code, time.perf_counter() - started

    with ThreadPoolExecutor(16) as pool:
        slow = [pool.submit(hanging, i) for i in range(16)]
        time.sleep(0.3)  # every hanging lookup is in flight
        fast = []
        for _ in range(10):
            started = time.perf_counter()
            r = HTTP.post(
                f"{relay.url}{CHAT_PATH}",
                json={"model": "gpt-4o-mini", "messages": []},
                headers=user.headers,
            )
            assert r.status_code == 200, r.text
            fast.append(time.perf_counter() - started)
        results = [f.result() for f in slow]
    assert max(fast) < 1.0, fast
    for status, elapsed in results:
        assert status in (400, 502) and elapsed < 10, results


# ======================================================================================
# 5. Client-controlled fields that reach storage and logs are bounded
# ======================================================================================


def _db_bytes(relay: Relay) -> int:
    assert relay.db_path is not None
    return sum(
        p.stat().st_size for p in Path(relay.db_path).parent.glob(Path(relay.db_path).name + "*")
    )


def test_huge_model_names_are_refused_not_stored(relay: Relay, user: User) -> None:
    before_db, before_log = _db_bytes(relay), len(relay.log_text())
    for _ in range(3):
        r = HTTP.post(
            f"{relay.url}{CHAT_PATH}",
            json={"model": "x" * 2_000_000, "messages": []},
            headers=user.headers,
            timeout=30,
        )
        assert "256" in error_of(r, 400)
    time.sleep(1.5)  # one request-log flush
    assert _db_bytes(relay) - before_db < 100_000
    assert len(relay.log_text()) - before_log < 10_000
    ok = HTTP.post(
        f"{relay.url}{CHAT_PATH}", json={"model": "m" * 256, "messages": []}, headers=user.headers
    )
    assert ok.status_code == 200


# ======================================================================================
# 6. IPv6 clients are counted per /64
# ======================================================================================


@pytest.mark.parametrize(("prefix", "expected"), [(None, [200, 200, 429, 200]), ("128", [200] * 4)])
def test_ipv6_clients_are_counted_per_network(
    start_relay: Any, prefix: str | None, expected: list[int]
) -> None:
    relay = start_relay(
        TRUSTED_PROXIES="1", RATE_LIMIT_GLOBAL="2/minute", RATE_LIMIT_IPV6_PREFIX=prefix
    )
    statuses = []
    for address in (
        "2001:db8:1:1::1",
        "2001:db8:1:1::2",
        "2001:db8:1:1:ffff::3",
        "2001:db8:1:2::1",
    ):
        r = HTTP.get(f"{relay.url}/models", headers={"x-forwarded-for": address})
        statuses.append(r.status_code)
    assert statuses == expected


# ======================================================================================
# 7. Silent and slow clients are disconnected
# ======================================================================================


@pytest.fixture(scope="module")
def impatient(mocks: MockProviders, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Relay]:
    with relay_process(
        mocks,
        tmp_path_factory.mktemp("impatient"),
        CLIENT_HEADER_TIMEOUT_S="1",
        CLIENT_BODY_TIMEOUT_S="1",
        KEEPALIVE_TIMEOUT_S="1.5",
    ) as relay:
        yield relay


def _closed_within(sock: socket.socket, limit_s: float) -> tuple[float, bytes]:
    """Seconds until the server closes `sock`, and what it sent meanwhile."""
    sock.settimeout(limit_s)
    started = time.perf_counter()
    received = b""
    with contextlib.suppress(ConnectionResetError):
        while chunk := sock.recv(65536):
            received += chunk
    return time.perf_counter() - started, received


@pytest.mark.parametrize(
    "sent",
    [b"", b"GET /health HTTP/1.1\r\nHost: x\r\n", b"GET /hea"],
    ids=["nothing", "head", "line"],
)
def test_incomplete_request_heads_are_cut_off(impatient: Relay, sent: bytes) -> None:
    with socket.create_connection(("127.0.0.1", impatient.port)) as sock:
        sock.sendall(sent)
        elapsed, received = _closed_within(sock, 10)
    assert elapsed < 5 and received == b""


def test_a_stalled_body_gets_408_and_a_closed_connection(impatient: Relay, register: Any) -> None:
    user = register(impatient)
    with socket.create_connection(("127.0.0.1", impatient.port)) as sock:
        sock.sendall(
            b"POST /keys/openai HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\n"
            b"x-relay-token: " + user.token.encode() + b"\r\ncontent-length: 100\r\n\r\n{"
        )
        elapsed, received = _closed_within(sock, 10)
    assert elapsed < 5
    assert received.startswith(b"HTTP/1.1 408"), received[:200]
    head, _, body = received.partition(b"\r\n\r\n")
    assert b"application/json" in head.lower()
    assert "CLIENT_BODY_TIMEOUT_S" in json.loads(body)["error"]


def test_idle_keep_alive_connections_are_closed(impatient: Relay) -> None:
    with socket.create_connection(("127.0.0.1", impatient.port)) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        sock.settimeout(5)
        first = sock.recv(65536)
        assert first.startswith(b"HTTP/1.1 200")
        elapsed, rest = _closed_within(sock, 10)
    assert elapsed < 5 and rest == b""


def test_a_slow_but_steady_body_is_not_cut_off(impatient: Relay, register: Any) -> None:
    user = register(impatient)
    body = json.dumps({"key": "sk-test-STEADY-000000000"}).encode()
    with socket.create_connection(("127.0.0.1", impatient.port)) as sock:
        sock.sendall(
            b"POST /keys/openai HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\n"
            b"x-relay-token: " + user.token.encode() + b"\r\n"
            b"content-length: " + str(len(body)).encode() + b"\r\nconnection: close\r\n\r\n"
        )
        for i in range(0, len(body), 8):  # 2+ s in all, never 1 s without a byte
            sock.sendall(body[i : i + 8])
            time.sleep(0.6)
        _, received = _closed_within(sock, 10)
    assert received.startswith(b"HTTP/1.1 200"), received[:200]


# ======================================================================================
# 8. Debug logging never prints SQL and its parameters
# ======================================================================================


def test_debug_log_has_no_sql(start_relay: Any, register: Any) -> None:
    relay = start_relay(LOG_LEVEL="debug")
    user = register(relay)
    user.store_key("openai", FAKE_KEY)
    HTTP.post(f"{relay.url}{CHAT_PATH}", json={"model": "m", "messages": []}, headers=user.headers)
    time.sleep(1.5)
    log = relay.log_text()
    assert '"level":"debug"' in log or '"request"' in log  # the relay logged at all
    for needle in ("SELECT", "INSERT", "UPDATE api_keys", "executing", "token_hash"):
        assert needle not in log, needle


def test_named_loggers_can_be_raised(start_relay: Any, register: Any) -> None:
    relay = start_relay(LOG_LEVELS="aiosqlite=debug")
    register(relay)
    time.sleep(0.5)
    assert "aiosqlite" in relay.log_text() or "executing" in relay.log_text()


# ======================================================================================
# 9 and 10. Weak secrets, overrides that name no provider, doctor's checks
# ======================================================================================


def cli(cwd: Path, *args: str, **env: str | None) -> subprocess.CompletedProcess[str]:
    """`python -m byok_relay …` with a good configuration, changed by `env`."""
    base: dict[str, str | None] = {
        "ENCRYPTION_SECRET": fake_secret("cli"),
        "DATABASE_URL": f"sqlite:///{cwd / 'relay.db'}",
        "PORT": "1",  # never reached: every case fails its checks first
    }
    return run_cli(cwd, *args, timeout=60, **{**base, **env})


@pytest.mark.parametrize(
    "secret",
    [
        "changemechangemechangemechangeme",
        "0123456789abcdef0123456789abcdef",
        "passwordpasswordpasswordpassword1",
        "a" * 40,
        "test-only-encryption-secret-".ljust(64, "0"),
    ],
)
@pytest.mark.parametrize("variable", ["ENCRYPTION_SECRET", "TOKEN_HMAC_SECRET"])
def test_obviously_weak_secrets_stop_the_start(tmp_path: Path, secret: str, variable: str) -> None:
    serve = cli(tmp_path, "serve", **{variable: secret})
    assert serve.returncode == 2
    (line,) = serve.stderr.strip().splitlines()
    assert variable in line and "too easy to guess" in line and secret not in line
    doctor = cli(tmp_path, "doctor", **{variable: secret})
    assert doctor.returncode == 1
    assert "too easy to guess" in doctor.stdout and "secrets.token_hex" in doctor.stdout


@pytest.mark.parametrize(
    ("env", "needle"),
    [
        ({"PROVIDER_OPNEAI_BASE_URL": "http://127.0.0.1:9"}, "PROVIDER_OPNEAI_BASE_URL names no"),
        ({"provider_openai_base_url": "http://127.0.0.1:9"}, "case-sensitive"),
        ({"PROVIDER_OPENAI_BASE_URL": "https://gw.example/v1?x=1"}, "query string"),
        ({"PROVIDER_OPENAI_BASE_URL": "https://gw.example/#frag"}, "fragment"),
    ],
)
def test_provider_overrides_that_cannot_be_right_stop_the_start(
    tmp_path: Path, env: dict[str, str], needle: str
) -> None:
    serve = cli(tmp_path, "serve", **env)
    assert serve.returncode == 2, serve.stderr
    (line,) = serve.stderr.strip().splitlines()
    assert needle in line
    doctor = cli(tmp_path, "doctor", **env)
    assert doctor.returncode == 1 and needle in doctor.stdout


def test_doctor_warns_about_a_readable_env_file(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text(f"ENCRYPTION_SECRET={fake_secret('dotenv')}\n")
    env_file.chmod(0o644)
    doctor = cli(tmp_path, "doctor", ENCRYPTION_SECRET=None)
    assert "other users may read its secrets" in doctor.stdout
    env_file.chmod(0o600)
    assert "other users may read" not in cli(tmp_path, "doctor", ENCRYPTION_SECRET=None).stdout


def test_serve_logs_the_active_overrides(relay: Relay) -> None:
    log = relay.log_text()
    assert "provider upstream overridden" in log
    assert "PROVIDER_OPENAI_BASE_URL" in log


# ======================================================================================
# 11. Robustness: lying upstreams, damaged rows, invalid tokens, credential parameters
# ======================================================================================


def test_an_upstream_that_lies_about_its_length_is_502(
    relay: Relay, user: User, mocks: MockProviders
) -> None:
    r = HTTP.post(
        f"{relay.url}{CHAT_PATH}",
        json={"model": "mock-short-body", "messages": []},
        headers=user.headers,
    )
    assert "cut short" in error_of(r, 502)
    assert HTTP.get(f"{relay.url}/health").status_code == 200


@pytest.mark.parametrize(
    ("column", "value"),
    [("ciphertext", b"\x01\x02"), ("ciphertext", "not-a-blob"), ("key_version", 7)],
    ids=["truncated", "text", "version-int"],
)
def test_a_damaged_key_row_gives_that_keys_clear_error(
    start_relay: Any, register: Any, tmp_path: Path, column: str, value: Any
) -> None:
    relay = start_relay(data_dir=tmp_path, CACHE_TTL_S="0")
    user = register(relay)
    user.store_key("openai", FAKE_KEY)
    user.store_key("anthropic", FAKE_KEY)
    assert relay.db_path is not None
    with sqlite3.connect(relay.db_path, timeout=10) as conn:
        conn.execute(
            f"UPDATE api_keys SET {column} = ? WHERE provider = 'openai'",
            (value,),
        )
    r = HTTP.post(
        f"{relay.url}{CHAT_PATH}", json={"model": "m", "messages": []}, headers=user.headers
    )
    message = error_of(r, 500)
    assert "POST /keys/openai" in message
    other = HTTP.post(
        f"{relay.url}/relay/anthropic/v1/messages",
        json={"model": "claude-3-5-haiku-latest", "max_tokens": 5, "messages": []},
        headers=user.headers,
    )
    assert other.status_code == 200  # only that key is affected
    relay.stop()
    # reencrypt to a new secret skips the damaged row, reports it, and converts the rest.
    result = cli(
        tmp_path,
        "reencrypt",
        ENCRYPTION_SECRET=fake_secret("next"),
        ENCRYPTION_SECRET_PREVIOUS=relay.env["ENCRYPTION_SECRET"],
        DATABASE_URL=relay.env["DATABASE_URL"],
    )
    assert result.returncode == 1, result.stderr
    assert "re-encrypted 1 key(s)" in result.stdout and "1 unreadable" in result.stdout
    assert "Traceback" not in result.stderr


def test_an_invalid_token_never_waits_for_the_write_lock(start_relay: Any, tmp_path: Path) -> None:
    relay = start_relay(data_dir=tmp_path, ENCRYPTION_SECRET_PREVIOUS=fake_secret("old"))
    assert relay.db_path is not None
    holder = sqlite3.connect(relay.db_path, timeout=10, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # hold the database's write lock
    try:
        started = time.perf_counter()
        r = HTTP.get(f"{relay.url}/keys", headers={"x-relay-token": "byok_rt_" + "A" * 43})
        elapsed = time.perf_counter() - started
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    error_of(r, 401)
    assert elapsed < 5  # a write would wait for the lock (busy timeout: 10 s)


@pytest.mark.parametrize(
    "query",
    [
        "x-relay-token={t}",
        "X-Api-Key=secret123",
        "relay_token={t}",
        "x_goog_api_key=abc",
        "Authorization=Bearer%20{t}",
        "innocent={t}",
        "client_secret=s3cret",
    ],
)
def test_credential_query_parameters_are_not_forwarded(
    relay: Relay, user: User, mocks: MockProviders, query: str
) -> None:
    mocks.openai.clear()
    q = query.replace("{t}", user.token)
    r = HTTP.get(f"{relay.url}/relay/openai/v1/models?{q}&limit=5", headers=user.headers)
    assert r.status_code == 200
    (sent,) = mocks.openai.requests
    assert dict(sent.query) == {"limit": "5"}
    assert user.token not in sent.raw_query
