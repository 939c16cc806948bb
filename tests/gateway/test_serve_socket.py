"""The socket `stepline serve` listens on: its connections reply without Nagle's delay."""

from __future__ import annotations

import asyncio
import socket

from stepline._server.serve import bind_socket


async def test_connections_on_the_served_socket_have_tcp_nodelay() -> None:
    # without TCP_NODELAY each small reply waits for the client's delayed ACK (~40 ms)
    sock = bind_socket("127.0.0.1", 0)
    accepted: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    async def on_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.set_result(
            writer.get_extra_info("socket").getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        )
        writer.close()

    server = await asyncio.start_server(on_connection, sock=sock)
    async with server:
        _, writer = await asyncio.open_connection("127.0.0.1", sock.getsockname()[1])
        try:
            nodelay = await asyncio.wait_for(accepted, 5)
        finally:
            writer.close()
            await writer.wait_closed()
        assert nodelay != 0
