"""A lean HTTP/1.1 keep-alive client on asyncio streams, for the load generator: a
general client (httpx) spends more CPU per request than a small server needs to answer
it, and a load test must not measure its own client."""
from __future__ import annotations

import asyncio
import json
import time
from typing import Any


class ClosedBeforeResponse(Exception):
    """The connection closed or was reset before any byte of the answer: on a reused
    keep-alive connection the server closed it idle, without taking the request (safe
    to retry once). Whether a server took such a request only the server can say: `react
    serve` prints how many it took and answered when it drains."""


class RawClient:
    def __init__(self, host: str, port: int, size: int, timeout_s: float = 30.0):
        self.host, self.port, self.timeout_s = host, port, timeout_s
        self._idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        self._slots = asyncio.Semaphore(size)

    async def post_json(self, path: str, body: Any, headers: dict[str, str] | None = None,
                        sent_at: list[float] | None = None
                        ) -> tuple[int, dict[str, str], bytes]:
        """(status, headers, body). `sent_at` gets the perf_counter time the request was
        written (after waiting for a free connection)."""
        payload = json.dumps(body).encode()
        extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
        head = (f"POST {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n"
                f"{extra}\r\n").encode()
        async with self._slots:
            for attempt in (0, 1):
                reused = bool(self._idle) and attempt == 0  # a retry opens a new connection
                conn = self._idle.pop() if reused else await asyncio.open_connection(
                    self.host, self.port)
                if sent_at is not None:
                    sent_at.append(time.perf_counter())
                try:
                    status, hdrs, data = await asyncio.wait_for(
                        self._exchange(conn, head + payload), self.timeout_s)
                except ClosedBeforeResponse:
                    conn[1].close()
                    if reused and attempt == 0:
                        continue
                    raise
                except BaseException:
                    conn[1].close()
                    raise
                if hdrs.get("connection", "").lower() == "close":
                    conn[1].close()
                else:
                    self._idle.append(conn)
                return status, hdrs, data
        raise AssertionError("unreachable")

    @staticmethod
    async def _exchange(conn: tuple[asyncio.StreamReader, asyncio.StreamWriter], request: bytes
                        ) -> tuple[int, dict[str, str], bytes]:
        reader, writer = conn
        try:
            writer.write(request)
            await writer.drain()
            status_line = await reader.readline()
        except (ConnectionResetError, BrokenPipeError):
            status_line = b""  # reset before any byte of an answer: same as closed
        if not status_line:
            raise ClosedBeforeResponse()
        status = int(status_line.split()[1])
        headers: dict[str, str] = {}
        while (line := await reader.readline()) not in (b"\r\n", b""):
            k, _, v = line.decode("latin-1").partition(":")
            headers[k.strip().lower()] = v.strip()
        if "content-length" in headers:
            return status, headers, await reader.readexactly(int(headers["content-length"]))
        chunks = []
        if headers.get("transfer-encoding", "").lower() == "chunked":
            while (size := int((await reader.readline()).strip() or b"0", 16)) > 0:
                chunks.append(await reader.readexactly(size))
                await reader.readline()
            await reader.readline()
        return status, headers, b"".join(chunks)

    async def close(self) -> None:
        for _, w in self._idle:
            w.close()
        self._idle.clear()
