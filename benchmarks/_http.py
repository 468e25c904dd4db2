"""The HTTP client side shared by the API benchmarks: httpx over keep-alive connections."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any

import httpx
import orjson

from _data import device_bodies

JSON_HEADERS = {"content-type": "application/json"}
REQUEST_TIMEOUT_S = 120.0


def client(concurrency: int) -> httpx.AsyncClient:
    """An async client keeping up to ``concurrency`` connections alive."""
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    return httpx.AsyncClient(limits=limits, timeout=REQUEST_TIMEOUT_S, headers=JSON_HEADERS)


async def register_devices(base_url: str, devices: int) -> None:
    """Register the fleet through ``POST /api/v1/devices`` (409, already there, is fine)."""
    bodies = [orjson.dumps(body) for body in device_bodies(devices)]
    async with client(8) as http:
        await post_all(http, base_url + "/api/v1/devices", bodies, 8, accept=(201, 409))


async def post_all(
    http: httpx.AsyncClient,
    url: str,
    bodies: Sequence[bytes],
    concurrency: int,
    *,
    accept: tuple[int, ...] = (202,),
) -> float:
    """POST every body with ``concurrency`` tasks sharing the client; returns elapsed seconds."""
    position = 0

    async def worker() -> None:
        nonlocal position
        while position < len(bodies):
            body = bodies[position]
            position += 1
            response = await http.post(url, content=body)
            if response.status_code not in accept:
                raise RuntimeError(f"POST {url}: {response.status_code} {response.text[:300]}")

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return time.perf_counter() - started


async def warm_up(http: httpx.AsyncClient, base_url: str, concurrency: int) -> None:
    """Open every keep-alive connection before timing starts."""
    await asyncio.gather(*(http.get(base_url + "/health") for _ in range(concurrency)))


def serialise(readings: Sequence[dict[str, Any]], per_body: int) -> list[bytes]:
    """Pre-serialised JSON array bodies of ``per_body`` readings each."""
    return [
        orjson.dumps(list(readings[i : i + per_body])) for i in range(0, len(readings), per_body)
    ]


class LiteConnection:
    """A minimal HTTP/1.1 keep-alive client connection (POST only, Content-Length bodies).

    Used beside httpx because httpx costs ~0.6-1 ms of client CPU per request on this machine,
    which caps one-record-per-request runs at the client, not at the server under test.
    """

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, port: int) -> LiteConnection:
        """Connect to 127.0.0.1:``port``."""
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        return cls(reader, writer)

    async def post(self, path: str, body: bytes) -> int:
        """Send one POST and read its whole response; returns the status code."""
        head = (
            f"POST {path} HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\n\r\n"
        ).encode()
        self.writer.write(head + body)
        raw = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), REQUEST_TIMEOUT_S)
        status_line, *lines = raw.decode("latin-1").split("\r\n")
        length = 0
        for line in lines:
            name, _, value = line.partition(":")
            if name.lower() == "content-length":
                length = int(value)
            elif name.lower() == "transfer-encoding":
                raise RuntimeError("chunked responses are not supported by the lite client")
        await self.reader.readexactly(length)
        return int(status_line.split()[1])

    async def close(self) -> None:
        """Close the connection."""
        self.writer.close()
        await self.writer.wait_closed()


async def lite_post_all(port: int, path: str, bodies: Sequence[bytes], concurrency: int) -> float:
    """Like :func:`post_all` with the lite client: one connection per task, opened before timing."""
    connections = [await LiteConnection.open(port) for _ in range(concurrency)]
    position = 0

    async def worker(connection: LiteConnection) -> None:
        nonlocal position
        while position < len(bodies):
            body = bodies[position]
            position += 1
            status = await connection.post(path, body)
            if status != 202:
                raise RuntimeError(f"POST {path}: status {status}")

    try:
        started = time.perf_counter()
        await asyncio.gather(*(worker(c) for c in connections))
        return time.perf_counter() - started
    finally:
        for connection in connections:
            await connection.close()
