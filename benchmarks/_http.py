"""A minimal HTTP/1.1 client on asyncio streams, for the load generator.

The load generator must cost far less than what it measures, so it skips
everything a general client does: one keep-alive connection per worker, a
request written in one call, and a body handed to the caller chunk by chunk
(``Content-Length`` or chunked transfer encoding) without copying it into
objects. Only loopback servers that answer well-formed HTTP/1.1 are expected.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

__all__ = ["Connection", "HttpError"]

_LIMIT = 1 << 20


class HttpError(Exception):
    """A status outside 2xx, or a connection that broke mid-response."""


class Connection:
    """One keep-alive connection to ``host:port``; reopened when the server closed it."""

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def _open(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self._reader is None or self._writer is None or self._reader.at_eof():
            await self.close()
            self._reader, self._writer = await asyncio.open_connection(
                self.host, self.port, limit=_LIMIT
            )
        return self._reader, self._writer

    async def close(self) -> None:
        writer, self._reader, self._writer = self._writer, None, None
        if writer is not None:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    async def request(
        self,
        method: str,
        path: str,
        body: bytes = b"",
        *,
        on_data: Callable[[bytes], None] | None = None,
    ) -> tuple[int, bytes]:
        """Send one request; return (status, body). With ``on_data`` the body is
        handed over chunk by chunk as it arrives and the returned body is empty."""
        reader, writer = await self._open()
        head = (
            f"{method} {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        )
        writer.write(head.encode() + body)
        try:
            return await self._response(reader, on_data)
        except (asyncio.IncompleteReadError, ConnectionError) as exc:
            await self.close()
            raise HttpError(f"{method} {path}: connection broke ({exc!r})") from None
        except BaseException:
            await self.close()  # a cancelled read leaves the connection mid-response
            raise

    async def _response(
        self, reader: asyncio.StreamReader, on_data: Callable[[bytes], None] | None
    ) -> tuple[int, bytes]:
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        status = int(lines[0].split(b" ", 2)[1])
        length: int | None = None
        chunked = False
        keep_alive = True
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            value = value.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"transfer-encoding":
                chunked = b"chunked" in value
            elif name == b"connection":
                keep_alive = value != b"close"
        parts: list[bytes] = []
        sink = on_data if on_data is not None and 200 <= status < 300 else parts.append
        if chunked:
            while True:
                size = int((await reader.readline()).split(b";", 1)[0], 16)
                if size == 0:
                    while (await reader.readline()) not in (b"\r\n", b""):
                        pass
                    break
                sink((await reader.readexactly(size + 2))[:-2])
        elif length is not None:
            if length:
                sink(await reader.readexactly(length))
        else:
            sink(await reader.read())
            keep_alive = False
        if not keep_alive:
            await self.close()
        data = b"".join(parts)
        if not 200 <= status < 300:
            raise HttpError(f"HTTP {status}: {data[:300]!r}")
        return status, data
