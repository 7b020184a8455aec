"""The relay's own refusals: always JSON {"error": "..."} with the right status."""

from __future__ import annotations

from collections.abc import Mapping

import orjson
from aiohttp import web


class ApiError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        *,
        headers: Mapping[str, str] | None = None,
        extra: Mapping[str, object] | None = None,
        hang_up: bool = False,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = dict(headers or {})
        self.extra = dict(extra or {})
        #: Close the connection right after this answer: the client is not sending
        #: (a stalled body), so waiting to drain its request would hold the socket.
        self.hang_up = hang_up

    def response(self) -> web.Response:
        return json_response({"error": self.message, **self.extra}, self.status, self.headers)


def json_response(
    data: object, status: int = 200, headers: Mapping[str, str] | None = None
) -> web.Response:
    return web.Response(
        body=orjson.dumps(data),
        status=status,
        content_type="application/json",
        headers=headers,
    )
