"""``monitor`` clients attached to the daemon for the ``throughput_monitors`` scenario (issue 10,
item 6: 50 clients flooded the ring): half read everything, half never read a byte."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from typing import Final

MONITORS: Final = 50


@contextlib.asynccontextmanager
async def monitors(path: str, n: int = MONITORS) -> AsyncIterator[list[int]]:
    """``n`` monitor clients on the control socket at ``path`` while inside; yields a one-item
    list: the lines the reading half received so far."""
    loop = asyncio.get_running_loop()
    lines = [0]
    socks: list[socket.socket] = []
    tasks: list[asyncio.Task[None]] = []

    async def read(s: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while chunk := await loop.sock_recv(s, 1 << 16):
                lines[0] += chunk.count(b"\n")

    try:
        for i in range(n):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.setblocking(False)
            socks.append(s)
            await loop.sock_connect(s, path)
            await loop.sock_sendall(s, b'{"cmd": "monitor"}\n')
            if i % 2 == 0:
                tasks.append(loop.create_task(read(s)))
        await asyncio.sleep(0.5)  # subscribed
        yield lines
    finally:
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        for s in socks:
            s.close()
