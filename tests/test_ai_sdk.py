"""The Vercel AI SDK as a relay client, by base URL and relay token only (SPEC §12).

``tests/node/ai-sdk.mjs`` runs ``generateText`` and ``streamText`` through
``@ai-sdk/openai`` (its default ``openai(model)``, which speaks the Responses API
``/v1/responses``, and ``openai.chat(model)`` for Chat Completions), ``@ai-sdk/anthropic``
and ``@ai-sdk/google`` against a real relay in front of the mock providers. Checked: the
text comes back (streams in several pieces), each mock saw the user's stored key and never
the relay token, a wrong relay token surfaces as the SDK's own error with the relay's
message, and the relay metered the same token counts the SDK reported.

The SDK comes from ``tests/node/package-lock.json`` (``npm ci`` in ``tests/node``, as
``.ci/run`` does). Without ``node`` or those node_modules the tests skip, or fail under
``CI=true`` / ``REQUIRE_SERVICES=1`` (tests/backends.py).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from backends import service_missing
from providers.mock import REPLY_TEXT, REPLY_TOKENS, MockProviders, RecordedRequest
from providers.relay import Relay, User, register_user

NODE_DIR = Path(__file__).resolve().parent / "node"
SCRIPT = NODE_DIR / "ai-sdk.mjs"
PACKAGES = ("ai", "@ai-sdk/openai", "@ai-sdk/anthropic", "@ai-sdk/google")

OPENAI_KEY = "sk-test-aisdk-openai-STORED-0101"
ANTHROPIC_KEY = "sk-ant-test-aisdk-STORED-0102"
GOOGLE_KEY = "AIza-test-aisdk-STORED-0103"

#: case -> (mock flavor, upstream path, model the relay meters it under)
CASES: dict[str, tuple[str, str, str]] = {
    "openai-responses/generateText": ("openai", "/v1/responses", "gpt-4o-mini"),
    "openai-responses/streamText": ("openai", "/v1/responses", "gpt-4o-mini"),
    "openai-chat/generateText": ("openai", "/v1/chat/completions", "gpt-4o-mini"),
    "openai-chat/streamText": ("openai", "/v1/chat/completions", "gpt-4o-mini"),
    "anthropic/generateText": ("anthropic", "/v1/messages", "claude-3-5-haiku-20241022"),
    "anthropic/streamText": ("anthropic", "/v1/messages", "claude-3-5-haiku-20241022"),
    "google/generateText": (
        "gemini",
        "/v1beta/models/gemini-2.0-flash:generateContent",
        "gemini-2.0-flash",
    ),
    "google/streamText": (
        "gemini",
        "/v1beta/models/gemini-2.0-flash:streamGenerateContent",
        "gemini-2.0-flash",
    ),
}
KEY_HEADER = {
    "openai": ("authorization", f"Bearer {OPENAI_KEY}"),
    "anthropic": ("x-api-key", ANTHROPIC_KEY),
    "gemini": ("x-goog-api-key", GOOGLE_KEY),
}


@dataclass
class Run:
    user: User
    results: dict[str, dict[str, Any]]
    requests: dict[str, list[RecordedRequest]]  # by mock flavor, as the script left them
    stdout: str
    stderr: str
    returncode: int


def _node() -> str:
    node = shutil.which("node")
    if node is None:
        service_missing("node is not installed (Node.js 18+)")
    assert node is not None
    missing = [p for p in PACKAGES if not (NODE_DIR / "node_modules" / p / "package.json").exists()]
    if missing:
        service_missing(f"tests/node/node_modules lacks {missing}: run `npm ci` in tests/node")
    return node


@pytest.fixture(scope="module")
def run(relay: Relay, mocks: MockProviders) -> Run:
    """One run of the script (every case) for the module's tests."""
    node = _node()
    user = register_user(relay, app_id="ai-sdk-test")
    user.store_key("openai", OPENAI_KEY)
    user.store_key("anthropic", ANTHROPIC_KEY)
    user.store_key("google", GOOGLE_KEY)
    mocks.clear()
    env = {**os.environ, "RELAY_URL": relay.url, "RELAY_TOKEN": user.token, "NO_COLOR": "1"}
    proc = subprocess.run(
        [node, str(SCRIPT)],
        cwd=NODE_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    results: dict[str, dict[str, Any]] = {}
    for line in proc.stdout.splitlines():
        if line.startswith("{"):
            item = json.loads(line)
            results[item["case"]] = item
    requests = {m.flavor: m.requests for m in mocks.all()}
    return Run(user, results, requests, proc.stdout, proc.stderr, proc.returncode)


def _result(run: Run, case: str) -> dict[str, Any]:
    assert case in run.results, f"{case} did not run:\n{run.stdout}\n{run.stderr[-3000:]}"
    result = run.results[case]
    assert result["ok"], f"{case} failed: {result.get('error')}"
    return result


def test_script_ran_every_case(run: Run) -> None:
    assert set(run.results) == {*CASES, "bad-token"}, run.stdout + run.stderr[-3000:]
    assert run.returncode == 0, run.stdout + run.stderr[-3000:]


@pytest.mark.parametrize("case", list(CASES))
def test_text_comes_back_through_the_relay(run: Run, case: str) -> None:
    result = _result(run, case)
    assert result["text"] == REPLY_TEXT
    assert result["finishReason"] == "stop"
    assert result["usage"]["outputTokens"] == len(REPLY_TOKENS)
    assert result["usage"]["inputTokens"] > 0
    if case.endswith("/streamText"):
        assert result["chunks"] == list(REPLY_TOKENS), "the stream did not arrive piece by piece"


@pytest.mark.parametrize("case", list(CASES))
def test_the_provider_saw_the_users_key_and_never_the_relay_token(run: Run, case: str) -> None:
    _result(run, case)
    flavor, path, _model = CASES[case]
    streaming = case.endswith("/streamText")
    matching = [
        r
        for r in run.requests[flavor]
        if r.path == path and r.method == "POST" and _is_stream(r) == streaming
    ]
    assert len(matching) == 1, [(r.path, r.raw_query) for r in run.requests[flavor]]
    (request,) = matching
    header, value = KEY_HEADER[flavor]
    assert request.headers.get(header) == value
    token = run.user.token
    assert token not in request.raw_query
    for name, sent in request.headers.items():
        assert token not in sent, f"relay token forwarded in {name}"
    if flavor == "gemini" and streaming:
        assert request.query.get("alt") == "sse"


def _is_stream(request: RecordedRequest) -> bool:
    if request.path.endswith(":streamGenerateContent"):
        return True
    if request.path.endswith(":generateContent"):
        return False
    return bool(request.json().get("stream"))


def test_a_wrong_relay_token_is_the_sdks_error_with_the_relays_message(run: Run) -> None:
    error = _result(run, "bad-token")["error"]
    assert error["name"] == "AI_APICallError"
    assert error["statusCode"] == 401
    assert "relay token" in json.loads(error["responseBody"])["error"].lower()


def test_the_relay_metered_what_the_sdk_reported(run: Run) -> None:
    """Responses API included: the relay's /stats count the tokens each answer reported."""
    for case in CASES:
        _result(run, case)
    want: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])
    for case, (_flavor, _path, model) in CASES.items():
        usage = run.results[case]["usage"]
        want[model][0] += 1
        want[model][1] += usage["inputTokens"]
        want[model][2] += usage["outputTokens"]
    stats = run.user.client().get("/stats").json()
    got = {
        m["model"]: [m["total"], m["input_tokens"], m["output_tokens"]] for m in stats["top_models"]
    }
    assert got == dict(want)
