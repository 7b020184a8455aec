"""Token counts read from provider answers, for GET /stats — cheaply and best-effort.

Only bodies that mention usage are parsed: a substring test on each chunk first, then
the SSE data lines of that chunk. Shapes understood: OpenAI (prompt_tokens /
completion_tokens, Responses API input_tokens / output_tokens), Anthropic (input_tokens
in message_start, output_tokens in message_delta), Gemini (usageMetadata
promptTokenCount / candidatesTokenCount), Cohere (billed_units). Compressed bodies are
not inspected (the relay never decompresses).
"""

from __future__ import annotations

from typing import Any

import orjson

_MARKERS = (b"usage", b"Usage", b"billed_units")


def _ints(d: Any, *names: str) -> int | None:
    if not isinstance(d, dict):
        return None
    for name in names:
        v = d.get(name)
        if isinstance(v, int):
            return v
    return None


class Meter:
    __slots__ = ("input_tokens", "output_tokens")

    def __init__(self) -> None:
        self.input_tokens: int | None = None
        self.output_tokens: int | None = None

    def _take(self, obj: Any) -> None:
        if not isinstance(obj, dict):
            return
        for holder in (obj, obj.get("message"), obj.get("response")):
            if not isinstance(holder, dict):
                continue
            usage = holder.get("usage") or holder.get("usageMetadata")
            if isinstance(usage, dict):
                billed = usage.get("billed_units")
                src = billed if isinstance(billed, dict) else usage
                i = _ints(src, "input_tokens", "prompt_tokens", "promptTokenCount")
                o = _ints(src, "output_tokens", "completion_tokens", "candidatesTokenCount")
                # Later events carry cumulative or final counts: the last seen wins, but
                # a zero placeholder never hides a real count seen earlier.
                if i is not None and (i or self.input_tokens is None):
                    self.input_tokens = i
                if o is not None and (o or self.output_tokens is None):
                    self.output_tokens = o

    def feed_json(self, body: bytes) -> None:
        if not any(m in body for m in _MARKERS):
            return
        try:
            self._take(orjson.loads(body))
        except orjson.JSONDecodeError:
            pass

    def feed_sse(self, chunk: bytes) -> None:
        if not any(m in chunk for m in _MARKERS):
            return
        for line in chunk.split(b"\n"):
            if line.startswith(b"data:") and any(m in line for m in _MARKERS):
                try:
                    self._take(orjson.loads(line[5:].strip()))
                except orjson.JSONDecodeError:
                    continue  # an event split across chunks: skip it, best-effort
