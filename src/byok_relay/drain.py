"""Graceful shutdown: stop accepting, let requests in flight (streams) finish, then go.

aiohttp's own `shutdown_timeout` waits that long for handlers, then cancels them and may
wait that long *again*, so a stream longer than the grace period would hold the exit for
twice SHUTDOWN_GRACE_S (and an orchestrator's kill timer may fire first). `InFlight`
counts requests (in the app's one middleware, app.py), so `serve` can close the listener,
wait at most SHUTDOWN_GRACE_S for the count to reach zero, then let aiohttp cancel
whatever is left almost at once.
"""

from __future__ import annotations

import asyncio
import contextlib

from aiohttp import web

#: What aiohttp is given after our own wait: just enough to write final responses.
CLOSE_TIMEOUT_S = 0.1


class InFlight:
    def __init__(self) -> None:
        self.count = 0
        self._idle = asyncio.Event()
        self._idle.set()

    def enter(self) -> None:
        self.count += 1
        if self.count == 1:
            self._idle.clear()

    def leave(self) -> None:
        self.count -= 1
        if self.count == 0:
            self._idle.set()

    async def wait_idle(self, grace_s: float) -> bool:
        """True when every request finished within `grace_s` seconds."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), grace_s)
        return self.count == 0


#: The app's request counter (created by build_app, read by `serve`).
IN_FLIGHT = web.AppKey("in_flight", InFlight)
