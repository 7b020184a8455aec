"""Reading a request body within REQUEST_BODY_LIMIT_BYTES, for every route."""

from __future__ import annotations

from aiohttp import web

from byok_relay.errors import ApiError

# The server drops a connection whose body was not read to the end: say so, so that
# keep-alive clients do not reuse it.
_CLOSE = {"Connection": "close"}


async def read_body(request: web.Request, limit: int) -> bytes:
    """The whole body; 413 (from Content-Length alone when it is given, so the body is
    never read) beyond `limit`, 400 when it cannot be decoded."""
    if not request.body_exists:
        return b""
    too_large = f"Request body is larger than the limit of {limit} bytes."
    if request.content_length is not None and request.content_length > limit:
        raise ApiError(413, too_large, headers=_CLOSE)
    try:
        return await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise ApiError(413, too_large, headers=_CLOSE) from None
    except web.RequestPayloadError:
        # e.g. a Content-Encoding the body does not match (corrupt gzip): the client's fault.
        raise ApiError(
            400, "Request body could not be read (bad Content-Encoding?).", headers=_CLOSE
        ) from None
