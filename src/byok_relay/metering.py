"""Token counts read from provider answers, for GET /stats, /budget and /tokens (SPEC §9).

Only bodies that mention usage are parsed: a substring test on each chunk first, then
the SSE data lines of that chunk. Shapes understood: OpenAI (prompt_tokens /
completion_tokens, Responses API input_tokens / output_tokens), Anthropic (input_tokens
in message_start, output_tokens in message_delta), Gemini (usageMetadata
promptTokenCount / candidatesTokenCount), Cohere (billed_units). Compressed bodies are
not inspected (the relay never decompresses).

A stream that ends early (the client left, the provider dropped it) counts what arrived:
the counts seen so far, and at least one output token per data event that arrived
(providers send about one token per event; the final usage report never came).
"""

from __future__ import annotations

from typing import Any

import orjson


def _mentions_usage(data: bytes) -> bool:
    # "usage"/"usageMetadata", "Usage" and Cohere's "billed_units" as plain substring
    # tests (no generator): this runs on every answer and every streamed chunk.
    return b"usage" in data or b"Usage" in data or b"billed_units" in data


def _ints(d: Any, *names: str) -> int | None:
    if not isinstance(d, dict):
        return None
    for name in names:
        v = d.get(name)
        if isinstance(v, int):
            return v
    return None


class Meter:
    __slots__ = ("complete", "events", "input_tokens", "output_tokens")

    def __init__(self) -> None:
        self.input_tokens: int | None = None
        self.output_tokens: int | None = None
        self.events = 0  # SSE data events seen
        self.complete = False  # the whole answer went to the client

    def counts(self) -> tuple[int | None, int | None]:
        """(input, output) as recorded: exact, or for a cut stream what arrived."""
        if self.complete or not self.events:
            return self.input_tokens, self.output_tokens
        return self.input_tokens, max(self.output_tokens or 0, self.events)

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
        if not _mentions_usage(body):
            return
        try:
            self._take(orjson.loads(body))
        except orjson.JSONDecodeError:
            pass

    def feed_sse(self, chunk: bytes) -> None:
        self.events += chunk.count(b"data:")
        if not _mentions_usage(chunk):
            return
        for line in chunk.split(b"\n"):
            if line.startswith(b"data:") and _mentions_usage(line):
                try:
                    self._take(orjson.loads(line[5:].strip()))
                except orjson.JSONDecodeError:
                    continue  # an event split across chunks: skip it, best-effort


# The `usage: null` every chunk carries once include_usage is on, as OpenAI-style servers
# write it (a literal outside any JSON string: quotes inside strings are escaped).
_NULL_USAGE = (b',"usage":null', b', "usage": null')


class UsageChunkFilter:
    """For a stream whose usage the relay asked for (stream_options.include_usage added):
    meters the usage-only chunk and removes it, and removes the `"usage":null` the other
    chunks gained, so the client receives the stream it asked for. Events are passed on
    as soon as they are complete; only a partial event waits for its next bytes."""

    __slots__ = ("_meter", "_pending")

    def __init__(self, meter: Meter) -> None:
        self._meter = meter
        self._pending = b""

    def feed(self, chunk: bytes) -> bytes:
        data = self._pending + chunk
        cut = max(data.rfind(b"\n\n"), data.rfind(b"\r\n\r\n"))
        if cut < 0:
            self._pending = data
            return b""
        end = cut + (4 if data.startswith(b"\r\n\r\n", cut) else 2)
        complete, self._pending = data[:end], data[end:]
        return self._filter(complete)

    def finish(self) -> bytes:
        rest, self._pending = self._pending, b""
        return self._filter(rest) if rest else b""

    def _filter(self, events: bytes) -> bytes:
        meter = self._meter
        if b'"usage":{' in events or b'"usage": {' in events:
            kept = []
            for event in _split_events(events):
                if b'"choices":[]' in event.replace(b" ", b"") and b'"usage"' in event:
                    seen = meter.events
                    meter.feed_sse(event)
                    meter.events = seen  # a usage report, not content
                    continue
                kept.append(event)
            events = b"".join(kept)
        meter.events += events.count(b"data:")
        for null in _NULL_USAGE:
            if null in events:
                events = events.replace(null, b"")
        return events


def _split_events(data: bytes) -> list[bytes]:
    """SSE events with their terminating blank line kept (so joining restores them)."""
    out = []
    start = 0
    while start < len(data):
        lf, crlf = data.find(b"\n\n", start), data.find(b"\r\n\r\n", start)
        if lf < 0 and crlf < 0:
            out.append(data[start:])
            break
        if crlf >= 0 and (lf < 0 or crlf <= lf):
            end = crlf + 4
        else:
            end = lf + 2
        out.append(data[start:end])
        start = end
    return out
