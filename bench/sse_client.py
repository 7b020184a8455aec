"""SSE load client on raw asyncio protocols (uvloop when installed).

``stream`` mode starts N streams at once and measures, per stream, the time to the first
response byte (TTFB) and to the first event, and per event its *lateness*: arrival time
minus the send time the mock intended (carried in the event, CLOCK_MONOTONIC). Every
``data_received`` call is one read; a read holding more than one event means events
were coalesced somewhere on the way (not delivered one by one). Prints one JSON line.

``idle`` mode opens N streams (the mock holds them open after one event), prints
``READY {json}`` once every stream has its first event, then holds them until a line
arrives on stdin (or stdin closes), closes them all and exits.

    python bench/sse_client.py stream --port 9101 --path '/v1/chat/completions?sse=1' -n 200
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import re
import resource
import sys
import time

EVENT_RE = re.compile(rb'"i":(\d+),"t":([0-9.]+)\}')
BODY = (
    b'{"model":"mock-sse","stream":true,"messages":[{"role":"user","content":"Say hi, slowly."}]}'
)


def build_request(host: str, port: int, path: str, token: str | None) -> bytes:
    lines = [
        f"POST {path} HTTP/1.1",
        f"Host: {host}:{port}",
        "Content-Type: application/json",
        "Accept: text/event-stream",
        "Origin: https://app.example",
        f"Content-Length: {len(BODY)}",
    ]
    if token:
        lines.append(f"x-relay-token: {token}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + BODY


class StreamProto(asyncio.Protocol):
    def __init__(self, request: bytes, started: float, done: asyncio.Future[None]) -> None:
        self.request = request
        self.started = started
        self.done = done
        self.transport: asyncio.Transport | None = None
        self.buf = b""
        self.head_seen = False
        self.status = 0
        self.ttfb: float | None = None
        self.first_event: float | None = None
        self.lateness: list[float] = []
        self.events = 0
        self.reads_with_events = 0
        self.multi_event_reads = 0
        self.finished = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.write(self.request)  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        now = time.monotonic()
        if self.ttfb is None:
            self.ttfb = now - self.started
        buf = self.buf + data
        if not self.head_seen:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                self.buf = buf
                return
            self.head_seen = True
            self.status = int(buf[9:12].decode())
            buf = buf[end + 4 :]
        n = 0
        last = 0
        for m in EVENT_RE.finditer(buf):
            n += 1
            self.lateness.append(now - float(m.group(2)))
            last = m.end()
        if n:
            self.events += n
            self.reads_with_events += 1
            if n > 1:
                self.multi_event_reads += 1
            if self.first_event is None:
                self.first_event = now - self.started
        if b"[DONE]" in buf or (self.status and self.status != 200 and b"0\r\n\r\n" in buf):
            self.finished = True
            assert self.transport is not None
            self.transport.close()
            return
        self.buf = buf[last:] if n else buf[-4096:]

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_result(None)


def pct(values: list[float], p: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    return values[min(len(values) - 1, round(p / 100.0 * (len(values) - 1)))]


async def run_streams(args: argparse.Namespace) -> dict[str, object]:
    loop = asyncio.get_running_loop()
    request = build_request(args.host, args.port, args.path, args.token)
    protos: list[StreamProto] = []
    errors = 0

    async def one() -> None:
        nonlocal errors
        done: asyncio.Future[None] = loop.create_future()
        proto = StreamProto(request, time.monotonic(), done)
        protos.append(proto)
        try:
            await loop.create_connection(lambda: proto, args.host, args.port)
            await done
        except OSError:
            errors += 1

    wall = time.monotonic()
    try:
        await asyncio.wait_for(
            asyncio.gather(*(one() for _ in range(args.n))), timeout=args.timeout
        )
    except TimeoutError:
        errors += sum(1 for p in protos if not p.finished)
        for p in protos:
            if p.transport is not None:
                p.transport.close()
    wall = time.monotonic() - wall
    lateness = [x for p in protos for x in p.lateness]
    ttfb = [p.ttfb for p in protos if p.ttfb is not None]
    first = [p.first_event for p in protos if p.first_event is not None]
    ms = 1000.0

    def summary(values: list[float]) -> dict[str, float | None]:
        return {
            "p50_ms": _r(pct(values, 50), ms),
            "p99_ms": _r(pct(values, 99), ms),
            "max_ms": _r(max(values) if values else None, ms),
        }

    return {
        "streams": args.n,
        "completed": sum(1 for p in protos if p.finished and p.status == 200),
        "non_200": sum(1 for p in protos if p.status and p.status != 200),
        "errors": errors,
        "events": sum(p.events for p in protos),
        "events_expected": args.n * args.events,
        "reads_with_events": sum(p.reads_with_events for p in protos),
        "multi_event_reads": sum(p.multi_event_reads for p in protos),
        "ttfb": summary(ttfb),
        "first_event": summary(first),
        "lateness": summary(lateness),
        "wall_s": round(wall, 3),
    }


def _r(v: float | None, scale: float) -> float | None:
    return None if v is None else round(v * scale, 3)


class IdleProto(asyncio.Protocol):
    def __init__(self, request: bytes, ready: asyncio.Future[bool]) -> None:
        self.request = request
        self.ready = ready
        self.transport: asyncio.Transport | None = None
        self.buf = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.write(self.request)  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        if self.ready.done():
            return
        self.buf += data
        if EVENT_RE.search(self.buf):
            self.ready.set_result(self.buf.startswith(b"HTTP/1.1 200"))
            self.buf = b""

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if not self.ready.done():
            self.ready.set_result(False)


async def run_idle(args: argparse.Namespace) -> None:
    loop = asyncio.get_running_loop()
    request = build_request(args.host, args.port, args.path, args.token)
    gate = asyncio.Semaphore(args.connect_concurrency)
    protos: list[IdleProto] = []

    async def one() -> bool:
        async with gate:
            ready: asyncio.Future[bool] = loop.create_future()
            proto = IdleProto(request, ready)
            try:
                await loop.create_connection(lambda: proto, args.host, args.port)
            except OSError:
                return False
            protos.append(proto)
            try:
                return await asyncio.wait_for(ready, timeout=args.timeout)
            except TimeoutError:
                return False

    started = time.monotonic()
    results = await asyncio.gather(*(one() for _ in range(args.n)))
    ok = sum(results)
    open_now = sum(1 for p in protos if p.transport is not None)
    print(
        "READY "
        + json.dumps(
            {
                "requested": args.n,
                "ok": ok,
                "open": open_now,
                "open_s": round(time.monotonic() - started, 3),
            }
        ),
        flush=True,
    )
    await loop.run_in_executor(None, sys.stdin.readline)
    still_open = sum(1 for p in protos if p.transport is not None)
    for p in protos:
        if p.transport is not None:
            p.transport.close()
    await asyncio.sleep(0.2)
    print("CLOSED " + json.dumps({"still_open_at_end": still_open}), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("mode", choices=["stream", "idle"])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--path", required=True)
    parser.add_argument("--token")
    parser.add_argument("-n", type=int, default=200)
    parser.add_argument("--events", type=int, default=30, help="events per stream expected")
    parser.add_argument("--timeout", type=float, default=150.0)
    parser.add_argument("--connect-concurrency", type=int, default=200)
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    with contextlib.suppress(ImportError):
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    if args.mode == "stream":
        print(json.dumps(asyncio.run(run_streams(args))), flush=True)
    else:
        asyncio.run(run_idle(args))


if __name__ == "__main__":
    main()
