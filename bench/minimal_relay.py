"""The floor: the least an aiohttp relay can do, measured on the same machine in the same run.

aiohttp web server (handler_cancellation=True, no access log) + one pooled aiohttp
ClientSession, uvloop; checks the x-relay-token header against one fixed value, injects
a fake key, forwards the body and sends the upstream answer back (an event stream
chunk by chunk, as it arrives: the SSE phase's floor). No database, no
limiter, no logging, no CORS. This is the issue's "aiohttp web server + aiohttp client"
row: whatever the real relay costs above this number is its own features' cost.

    python bench/minimal_relay.py --port 9200 --upstream http://127.0.0.1:9100 --token T
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib

import aiohttp
from aiohttp import web


def build(upstream: str, token: str) -> web.Application:
    session: dict[str, aiohttp.ClientSession] = {}

    async def relay(request: web.Request) -> web.StreamResponse:
        if request.headers.get("x-relay-token") != token:
            return web.json_response({"error": "bad token"}, status=401)
        body = await request.read()
        query = request.query_string
        async with session["s"].post(
            upstream + "/" + request.match_info["path"] + ("?" + query if query else ""),
            data=body,
            headers={"authorization": "Bearer sk-fake", "content-type": "application/json"},
        ) as up:
            if up.content_type == "text/event-stream":  # the SSE phase's floor
                stream = web.StreamResponse(
                    status=up.status, headers={"content-type": up.content_type}
                )
                await stream.prepare(request)
                async for chunk in up.content.iter_any():
                    await stream.write(chunk)
                await stream.write_eof()
                return stream
            data = await up.read()
            return web.Response(
                body=data, status=up.status, headers={"content-type": up.content_type}
            )

    async def lifecycle(app: web.Application):  # type: ignore[no-untyped-def]
        session["s"] = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0), auto_decompress=False
        )
        yield
        await session["s"].close()

    app = web.Application()
    app.cleanup_ctx.append(lifecycle)
    app.router.add_route("POST", "/relay/openai/{path:.*}", relay)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True)
    parser.add_argument("--token", required=True)
    args = parser.parse_args()
    with contextlib.suppress(ImportError):
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    web.run_app(
        build(args.upstream, args.token),
        host="127.0.0.1",
        port=args.port,
        access_log=None,
        handler_cancellation=True,
        print=None,
    )


if __name__ == "__main__":
    main()
