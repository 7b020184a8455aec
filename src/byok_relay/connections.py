"""Deadlines for client connections: a silent or slow client holds a socket for a
bounded time, as behind nginx (whose defaults these are; README, "Configuration").

- CLIENT_HEADER_TIMEOUT_S (60 s): a new connection must send a complete request head in
  that time. `HeadDeadline` enforces it by sweeping the server's connections once a second.
- KEEPALIVE_TIMEOUT_S (75 s): after a response, aiohttp closes a connection that stays idle
  or sends only part of its next request head for that long.
- CLIENT_BODY_TIMEOUT_S (75 s): a request body that stalls that long is refused with 408
  and its connection closed (`bodies.read_body`).
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from byok_relay.periodic import Periodic

_SWEEP_EVERY_S = 1.0
_STARTED = -1.0  # the connection has sent a complete request head


class HeadDeadline:
    def __init__(self, server: web.Server, timeout_s: float) -> None:
        self._server = server
        self._timeout = timeout_s
        self._seen: dict[RequestHandler, float] = {}
        self._sweeper = Periodic(_SWEEP_EVERY_S, self._sweep_now)
        make_request = server.request_factory

        # aiohttp builds the request as soon as its head is parsed: mark the connection.
        def request_factory(message: Any, payload: Any, protocol: Any, *args: Any) -> Any:
            self._seen[protocol] = _STARTED
            return make_request(message, payload, protocol, *args)

        server.request_factory = request_factory

    def start(self) -> None:
        self._sweeper.start()

    async def stop(self) -> None:
        await self._sweeper.stop()

    async def _sweep_now(self) -> None:
        self.sweep(asyncio.get_running_loop().time())

    def sweep(self, now: float) -> None:
        seen = self._seen
        kept: dict[RequestHandler, float] = {}
        for handler in self._server.connections:
            since = seen.get(handler)
            if since is None:
                kept[handler] = now  # first seen: its deadline starts now
            elif since != _STARTED and now - since >= self._timeout:
                handler.force_close()
            else:
                kept[handler] = since
        self._seen = kept
