"""A small, fast mock provider on raw asyncio (uvloop when installed).

It answers every request (any method, any path) from the query string:

* ``?sse=1&n=30&ms=20`` — an SSE stream of ``n`` OpenAI-style chunks, ``ms`` apart, then
  ``data: [DONE]``. Event ``i`` is *intended* to leave at ``t0 + i*ms`` where ``t0`` is
  when the request was parsed; each event carries ``"i"`` and that intended send time
  ``"t"`` (CLOCK_MONOTONIC seconds, system-wide on Linux), so a client on this machine
  can compute every event's lateness without any clock agreement.
* ``?idle=1`` — the headers and one event, then the stream is held open until the
  client goes away (for the idle-open-streams measurement).
* anything else — a static ``chat.completion`` JSON (the fallback when nginx is missing).

Responses use HTTP/1.1 chunked encoding and keep-alive, as a provider would.
No framework: the mock must cost as little CPU as possible so it is not what is measured.

    python bench/mock_sse.py --port 9101
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import re
import resource
import time
from urllib.parse import parse_qs

STATIC_JSON = (
    b'{"id":"chatcmpl-bench","object":"chat.completion","created":1700000000,'
    b'"model":"gpt-4o-mini","choices":[{"index":0,"message":{"role":"assistant",'
    b'"content":"Hello! How can I help you today?"},"finish_reason":"stop"}],'
    b'"usage":{"prompt_tokens":9,"completion_tokens":9,"total_tokens":18}}'
)
_CL = re.compile(rb"\r\ncontent-length:[ \t]*(\d+)", re.IGNORECASE)
_SSE_HEAD = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream; charset=utf-8\r\n"
    b"Cache-Control: no-cache\r\nx-request-id: req_bench_sse\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n"
)
_JSON_HEAD = (
    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nx-request-id: req_bench\r\n"
    b"Content-Length: " + str(len(STATIC_JSON)).encode() + b"\r\n\r\n"
)
_EVENT = (
    b'data: {"id":"chatcmpl-bench","object":"chat.completion.chunk","created":1700000000,'
    b'"model":"mock-sse","choices":[{"index":0,"delta":{"content":"tok "},'
    b'"finish_reason":null}],"i":%d,"t":%.6f}\n\n'
)
_DONE = b"data: [DONE]\n\n"


def _chunk(payload: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(payload), payload)


class MockProtocol(asyncio.Protocol):
    open_idle = 0

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buf = b""
        self.timer: asyncio.TimerHandle | None = None
        self.busy = False
        self.idle = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        if self.timer is not None:
            self.timer.cancel()
        if self.idle:
            MockProtocol.open_idle -= 1
        self.transport = None

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while not self.busy:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buf[:end]
            m = _CL.search(head)
            length = int(m.group(1)) if m else 0
            if len(self.buf) < end + 4 + length:
                return
            self.buf = self.buf[end + 4 + length :]
            target = head.split(b"\r\n", 1)[0].split(b" ")[1].decode()
            self.handle(target)

    def handle(self, target: str) -> None:
        _, _, query = target.partition("?")
        q = {k: v[0] for k, v in parse_qs(query).items()}
        assert self.transport is not None
        if "idle" in q:
            self.busy = self.idle = True
            MockProtocol.open_idle += 1
            self.transport.write(_SSE_HEAD + _chunk(_EVENT % (0, time.monotonic())))
            return
        if "sse" not in q:
            self.transport.write(_JSON_HEAD + STATIC_JSON)
            return
        self.busy = True
        n = int(q.get("n", "30"))
        interval = float(q.get("ms", "20")) / 1000.0
        loop = asyncio.get_running_loop()
        t0 = time.monotonic()
        self.transport.write(_SSE_HEAD)
        self._send(loop, loop.time(), t0, 0, n, interval)

    def _send(
        self, loop: asyncio.AbstractEventLoop, l0: float, t0: float, i: int, n: int, dt: float
    ) -> None:
        self.timer = None
        if self.transport is None:
            return
        if i < n:
            self.transport.write(_chunk(_EVENT % (i, t0 + i * dt)))
            self.timer = loop.call_at(l0 + (i + 1) * dt, self._send, loop, l0, t0, i + 1, n, dt)
            return
        self.transport.write(_chunk(_DONE) + b"0\r\n\r\n")
        self.busy = False
        if self.buf:
            self.data_received(b"")


async def serve(host: str, port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(MockProtocol, host, port, backlog=4096, reuse_address=True)
    print(f"mock_sse listening on {host}:{port}", flush=True)
    async with server:
        await server.serve_forever()


def raise_nofile() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    raise_nofile()
    with contextlib.suppress(ImportError):
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(args.host, args.port))


if __name__ == "__main__":
    main()
