"""Logs: one line per event, never a key, a token or a body.

JSON for services (LOG_FORMAT=json), or short text lines for a person at a terminal
(LOG_FORMAT=text, the default when the log goes to one): the same events and fields."""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from typing import Any

import orjson

logger = logging.getLogger("byok_relay")
access_logger = logging.getLogger("byok_relay.access")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return orjson.dumps(self.entry(record)).decode()

    def entry(self, record: logging.LogRecord) -> dict[str, Any]:
        entry: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "msg": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if fields:
            entry.update(fields)
        if record.exc_info and record.exc_info[0] is not None:
            # The exception type and where it happened; messages of library errors may
            # echo request data, so they stay out of the log.
            exc_type, _, tb = record.exc_info
            entry["error_type"] = exc_type.__name__
            while tb is not None and tb.tb_next is not None:
                tb = tb.tb_next
            if tb is not None:
                entry["error_at"] = f"{tb.tb_frame.f_code.co_filename}:{tb.tb_lineno}"
        return entry


class TextFormatter(JsonFormatter):
    """`01:02:03 warning  message  key=value …`: the JSON entry, laid out for reading."""

    def format(self, record: logging.LogRecord) -> str:
        return text_line(self.entry(record))


def text_line(entry: dict[str, Any]) -> str:
    stamp = str(entry.pop("ts", ""))[11:19]
    level = entry.pop("level", "info")
    msg = entry.pop("msg", "")
    if msg == "request":  # the access line: what a developer scans for
        msg = f"{entry.pop('method', '')} {entry.pop('route', '')} {entry.pop('status', '')}"
        latency = entry.pop("latency_ms", None)
        if latency is not None:
            msg += f" {latency} ms"
    extra = " ".join(f"{k}={v}" for k, v in entry.items() if v is not None)
    head = f"{stamp} {level:<7} {msg}"
    return f"{head}  {extra}" if extra else head


def configure_logging(
    level: str = "info", loggers: dict[str, str] | None = None, text: bool = False
) -> None:
    """LOG_LEVEL sets the relay's own loggers. Every other library logs warnings only,
    unless LOG_LEVELS names it: at debug, database drivers log each statement with its
    parameters (ciphertexts, token hashes), which must never appear by accident."""
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(TextFormatter() if text else JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    logger.setLevel(level.upper())
    for name, named_level in (loggers or {}).items():
        logging.getLogger(name).setLevel(named_level.upper())
    # aiohttp's own access log would duplicate ours (and print query strings).
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


def log_event(msg: str, level: int = logging.INFO, **fields: Any) -> None:
    logger.log(level, msg, extra={"fields": fields})


class AccessLog:
    """One JSON line per request, off the logging machinery: serialised with orjson and
    written once per event-loop tick (a burst of requests costs one write syscall)."""

    def __init__(self, enabled: bool = True, text: bool = False) -> None:
        self.enabled = enabled
        self.text = text
        self._lines: list[bytes] = []
        self._scheduled = False
        self._second = -1
        self._stamp = ""

    def _timestamp(self) -> str:
        now = time.time()
        second = int(now)
        if second != self._second:  # strftime once a second, not once a request
            self._second = second
            self._stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        return f"{self._stamp}.{int((now - second) * 1000):03d}Z"

    def write(self, fields: dict[str, Any]) -> None:
        if not self.enabled:
            return
        entry = {"ts": self._timestamp(), "level": "info", "msg": "request", **fields}
        if self.text:
            self._lines.append(text_line(entry).encode() + b"\n")
        else:
            self._lines.append(orjson.dumps(entry) + b"\n")
        if not self._scheduled:
            self._scheduled = True
            try:
                asyncio.get_running_loop().call_soon(self.flush)
            except RuntimeError:  # no loop (shutdown): write now
                self.flush()

    def flush(self) -> None:
        self._scheduled = False
        if not self._lines:
            return
        data = b"".join(self._lines)
        self._lines.clear()
        sys.stdout.flush()  # keep order with lines written through `logging`
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
