"""Reading a request body within REQUEST_BODY_LIMIT_BYTES, for every route."""

from __future__ import annotations

import asyncio

from aiohttp import web

from byok_relay.errors import ApiError

# The server drops a connection whose body was not read to the end: say so, so that
# keep-alive clients do not reuse it.
_CLOSE = {"Connection": "close"}


async def read_body(request: web.Request, limit: int, stall_s: float | None = None) -> bytes:
    """The whole body; 413 (from Content-Length alone when it is given, so the body is
    never read) beyond `limit`, 400 when it cannot be decoded, 408 when no byte of it
    arrives for `stall_s` seconds (CLIENT_BODY_TIMEOUT_S)."""
    if not request.body_exists:
        return b""
    too_large = f"Request body is larger than the limit of {limit} bytes."
    if request.content_length is not None and request.content_length > limit:
        raise ApiError(413, too_large, headers=_CLOSE)
    content = request.content
    chunks: list[bytes] = []
    size = 0
    try:
        while True:
            chunk = content.read_nowait()  # what has arrived already: no timer needed
            if not chunk:
                if content.is_eof():
                    break
                async with asyncio.timeout(stall_s):
                    chunk = await content.readany()
                if not chunk:
                    break
            size += len(chunk)
            if size > limit:
                raise ApiError(413, too_large, headers=_CLOSE)
            chunks.append(chunk)
    except TimeoutError:
        raise ApiError(
            408,
            f"The request body stalled: no data for {stall_s:g} s (CLIENT_BODY_TIMEOUT_S).",
            headers=_CLOSE,
            hang_up=True,
        ) from None
    except web.RequestPayloadError:
        # e.g. a Content-Encoding the body does not match (corrupt gzip): the client's fault.
        raise ApiError(
            400, "Request body could not be read (bad Content-Encoding?).", headers=_CLOSE
        ) from None
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)
