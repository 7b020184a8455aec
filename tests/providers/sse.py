"""Server-Sent Events parsing helpers for tests.

``parse_sse`` turns a complete SSE body into ``(event, data)`` pairs; ``SSEParser`` does the
same incrementally, for tests that look at *when* each event arrives.  Both follow the
WHATWG parsing rules that matter here: ``\\n``, ``\\r\\n`` and ``\\r`` line endings, several
``data:`` lines joined with ``\\n``, comment lines (``:``) ignored, one optional space after
the colon removed.  ``event`` is ``None`` when the event has no ``event:`` field.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

_LINE_END = re.compile(r"\r\n|\r|\n")


@dataclass(frozen=True)
class SSEEvent:
    event: str | None
    data: str
    id: str | None = None

    def json(self) -> Any:
        return json.loads(self.data)

    def as_tuple(self) -> tuple[str | None, str]:
        return (self.event, self.data)


class SSEParser:
    """Incremental SSE parser: ``feed()`` text or bytes, get the events completed so far."""

    def __init__(self) -> None:
        self._buffer = ""
        self._bytes = b""
        self._event: str | None = None
        self._data: list[str] = []
        self._id: str | None = None

    def feed(self, chunk: str | bytes) -> list[SSEEvent]:
        if isinstance(chunk, bytes):
            # keep an incomplete UTF-8 sequence for the next chunk
            self._bytes += chunk
            try:
                text = self._bytes.decode("utf-8")
                self._bytes = b""
            except UnicodeDecodeError as exc:
                text = self._bytes[: exc.start].decode("utf-8")
                self._bytes = self._bytes[exc.start :]
        else:
            text = chunk
        self._buffer += text
        events: list[SSEEvent] = []
        while True:
            match = _LINE_END.search(self._buffer)
            if match is None:
                break
            # a lone "\r" at the very end may be the first half of "\r\n": wait for more
            if match.group() == "\r" and match.end() == len(self._buffer):
                break
            line = self._buffer[: match.start()]
            self._buffer = self._buffer[match.end() :]
            event = self._line(line)
            if event is not None:
                events.append(event)
        return events

    def close(self) -> list[SSEEvent]:
        """Flush a final event that was not followed by a blank line."""
        events: list[SSEEvent] = []
        if self._buffer:
            last = self._line(self._buffer)
            self._buffer = ""
            if last is not None:
                events.append(last)
        final = self._line("")
        if final is not None:
            events.append(final)
        return events

    def _line(self, line: str) -> SSEEvent | None:
        if line == "":
            if not self._data and self._event is None:
                return None
            event = SSEEvent(self._event, "\n".join(self._data), self._id)
            self._event, self._data = None, []
            return event
        if line.startswith(":"):
            return None
        name, sep, value = line.partition(":")
        if sep and value.startswith(" "):
            value = value[1:]
        if name == "event":
            self._event = value
        elif name == "data":
            self._data.append(value)
        elif name == "id":
            self._id = value
        return None


def parse_sse_events(text: str | bytes) -> list[SSEEvent]:
    parser = SSEParser()
    events = parser.feed(text)
    events.extend(parser.close())
    return events


def parse_sse(text: str | bytes) -> list[tuple[str | None, str]]:
    """Parse a whole SSE body into ``[(event, data), ...]``."""
    return [event.as_tuple() for event in parse_sse_events(text)]


def sse_json(text: str | bytes) -> list[tuple[str | None, Any]]:
    """Like ``parse_sse`` but with ``data`` JSON-decoded (``[DONE]`` and non-JSON stay str)."""
    out: list[tuple[str | None, Any]] = []
    for event, data in parse_sse(text):
        try:
            out.append((event, json.loads(data)))
        except ValueError:
            out.append((event, data))
    return out
