"""The raw HTTP baseline: a minimal ASGI app under uvicorn that reads each body and answers 202.

Run as its own process (``python benchmarks/raw_asgi_app.py --port N``); it binds 127.0.0.1 only.
Same server stack as ``derim serve`` (uvicorn with its default loop and HTTP parser, no access log),
without routing, validation or storage: the floor any HTTP ingest on this machine stands on.
"""

from __future__ import annotations

import argparse
from typing import Any

import uvicorn

ACCEPTED = b'{"accepted":0}'
HEADERS = [(b"content-type", b"application/json"), (b"content-length", b"14")]


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Answer 202 to any request with a body, 200 to ``GET /health``."""
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] != "http":
        return
    size = 0
    more = True
    while more:
        message = await receive()
        size += len(message.get("body", b""))
        more = message.get("more_body", False)
    status = 200 if scope["method"] == "GET" else 202
    await send({"type": "http.response.start", "status": status, "headers": HEADERS})
    await send({"type": "http.response.body", "body": ACCEPTED})


def main() -> None:
    """Serve the app on 127.0.0.1 until SIGTERM."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
