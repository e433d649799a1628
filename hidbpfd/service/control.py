"""The control socket: ``status``, ``monitor`` and ``reload`` for the command line.

A unix stream socket under the runtime directory, created with owner-only permissions; every
connection's peer credentials (SO_PEERCRED) are checked and other users are refused. The
protocol is JSON lines: the client sends ``{"cmd": "status" | "monitor" | "reload"}``; the
daemon answers with one JSON object (status, reload) or a stream of them (monitor), one per
line. A monitor client that cannot keep up loses lines (counted in a ``{"dropped": N}`` line),
never slows the daemon.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

log = logging.getLogger(__name__)

MONITOR_QUEUE: Final = 4096
SO_PEERCRED_FMT: Final = "3i"  # struct ucred { pid_t pid; uid_t uid; gid_t gid; };


def default_socket_path() -> str:
    """``$RUNTIME_DIRECTORY/control.sock`` under systemd, else ``/run/hidbpfd/control.sock``."""
    rt = os.environ.get("RUNTIME_DIRECTORY", "").split(":")[0]
    return str(Path(rt or "/run/hidbpfd") / "control.sock")


def peer_uid(sock: socket.socket) -> int:
    """The uid of the process at the other end."""
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize(SO_PEERCRED_FMT))
    return int(struct.unpack(SO_PEERCRED_FMT, raw)[1])


class ControlServer:
    """Serves the control socket for the daemon (which passes its status, reload and monitor
    hooks in). Started after READY, closed on shutdown."""

    def __init__(
        self,
        path: str,
        status: Callable[[], dict[str, Any]],
        reload: Callable[[], dict[str, Any]],
        subscribe: Callable[[Callable[[dict[str, Any]], None]], Callable[[], None]],
        *,
        allowed_uids: frozenset[int] | None = None,
    ) -> None:
        self.path = path
        self._status = status
        self._reload = reload
        self._subscribe = subscribe
        self.allowed = allowed_uids if allowed_uids is not None else frozenset({os.getuid(), 0})
        self._server: asyncio.AbstractServer | None = None
        self._clients: set[asyncio.Task[None]] = set()
        self.refused = 0

    async def start(self) -> None:
        """Bind (owner-only: umask 177 around the bind, then chmod 600) and listen."""
        _prepare(self.path)
        old = os.umask(0o177)
        try:
            self._server = await asyncio.start_unix_server(self._client, path=self.path)
        finally:
            os.umask(old)
        os.chmod(self.path, 0o600)

    async def close(self) -> None:
        """Stop listening, end client streams, remove the socket file."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for t in list(self._clients):
            t.cancel()
        if self._clients:
            await asyncio.gather(*self._clients, return_exceptions=True)
        _remove(self.path)

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._clients.add(task)
        try:
            sock = writer.get_extra_info("socket")
            uid = peer_uid(sock)
            line = await asyncio.wait_for(reader.readline(), 5)
            if uid not in self.allowed:
                self.refused += 1
                log.warning("control socket: refused a connection from uid %d", uid)
                await _send(writer, {"error": "permission denied"})
                return
            try:
                req = json.loads(line or b"{}")
                cmd = req.get("cmd") if isinstance(req, dict) else None
            except json.JSONDecodeError:
                cmd = None
            if cmd == "status":
                await _send(writer, self._status())
            elif cmd == "reload":
                await _send(writer, self._reload())
            elif cmd == "monitor":
                await self._monitor(reader, writer)
            else:
                await _send(
                    writer, {"error": f"unknown command {cmd!r}; use status, monitor or reload"}
                )
        except (ConnectionError, TimeoutError, asyncio.IncompleteReadError):
            pass
        finally:
            self._clients.discard(task)
            writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await writer.wait_closed()

    async def _monitor(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        q: asyncio.Queue[dict[str, Any]] = asyncio.Queue(MONITOR_QUEUE)
        dropped = 0

        def push(item: dict[str, Any]) -> None:
            nonlocal dropped
            try:
                q.put_nowait(item)
            except asyncio.QueueFull:
                dropped += 1

        unsubscribe = self._subscribe(push)
        eof = asyncio.ensure_future(reader.read())
        try:
            while not eof.done():
                get = asyncio.ensure_future(q.get())
                await asyncio.wait({get, eof}, return_when=asyncio.FIRST_COMPLETED)
                if not get.done():
                    get.cancel()
                    break
                if dropped:
                    await _send(writer, {"dropped": dropped})
                    dropped = 0
                await _send(writer, get.result())
        finally:
            unsubscribe()
            eof.cancel()


def _prepare(path: str) -> None:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
    _remove(path)


def _remove(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


async def _send(writer: asyncio.StreamWriter, obj: dict[str, Any]) -> None:
    writer.write(json.dumps(obj).encode() + b"\n")
    await writer.drain()


def request(path: str, cmd: str, *, timeout: float = 10.0) -> dict[str, Any]:
    """Client side: one request, one answer (``status``, ``reload``). Raises OSError."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(path)
        s.sendall(json.dumps({"cmd": cmd}).encode() + b"\n")
        buf = b""
        while not buf.endswith(b"\n"):
            chunk = s.recv(65536)
            if not chunk:
                break
            buf += chunk
    answer: dict[str, Any] = json.loads(buf or b"{}")
    return answer


def stream(path: str, cmd: str = "monitor") -> Any:
    """Client side: yield JSON objects until the daemon closes the stream."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.connect(path)
        s.sendall(json.dumps({"cmd": cmd}).encode() + b"\n")
        f = s.makefile("rb")
        for line in f:
            yield json.loads(line)
