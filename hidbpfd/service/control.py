"""The control socket: ``status``, ``monitor`` and ``reload`` for the command line.

A unix stream socket under the runtime directory, created with owner-only permissions; every
connection's peer credentials (SO_PEERCRED) are checked and other users are refused. The
protocol is JSON lines: the client sends ``{"cmd": "status" | "monitor" | "reload"}``; the
daemon answers with one JSON object (status, reload) or a stream of them (monitor), one per
line. A monitor client that cannot keep up loses lines (counted in a ``{"dropped": N}`` line),
never slows the daemon.

Bad input never costs more than one answer and one log line (issue 11): a request that is not
one line of at most :data:`MAX_LINE` bytes of UTF-8 JSON (or nests too deep) is answered with
``{"error": ...}`` and the connection closed; log lines are rate-limited per cause; a monitor
client that sends anything after its command is told so and closed (nothing it sends is
buffered). At most :data:`MAX_CLIENTS` connections are served at once
(:data:`MAX_MONITORS` of them monitors, so ``status`` always has room), and accepting stops
for a while (no traceback) when the process runs out of file descriptors or is within
:data:`FD_RESERVE` of its limit: devices need them more. Monitor lines are encoded once per
event and written in one batch per client per loop turn, so a ``status`` answer never waits
behind monitor traffic.

Start-up refuses (:class:`ControlSocketError`) a path where another daemon answers, a path that
is not a socket (a regular file or a directory is never deleted) and a path too long for
AF_UNIX; only a stale socket (nobody listening) is replaced. On shutdown the socket file is
removed only if it is still the one this daemon bound.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import errno
import json
import logging
import os
import resource
import socket
import stat
import struct
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

log = logging.getLogger(__name__)

MAX_LINE: Final = 4096
"""The longest request line."""
MAX_JSON_DEPTH: Final = 32
READ_TIMEOUT_S: Final = 5.0
"""A client must send its request line within this."""
MAX_CLIENTS: Final = 128
MAX_MONITORS: Final = 64
FD_RESERVE: Final = 64
"""File descriptors kept free for devices: no new client when fewer remain."""
BACKLOG: Final = 4096
"""listen() backlog (the kernel caps it at net.core.somaxconn)."""
MONITOR_BUFFER: Final = 256 * 1024
"""Bytes of monitor lines waiting for one slow client before lines are dropped."""
ACCEPT_PAUSE_S: Final = (0.05, 2.0)
"""First and longest pause of accepting after EMFILE/ENFILE/ENOBUFS/ENOMEM (doubling)."""
LOG_EVERY_S: Final = 60.0
"""One log line per cause of trouble at most this often (with a count of the others)."""
SUN_PATH_MAX: Final = 107  # sizeof(sockaddr_un.sun_path) - 1
SO_PEERCRED_FMT: Final = "3i"  # struct ucred { pid_t pid; uid_t uid; gid_t gid; };


class ControlSocketError(RuntimeError):
    """The control socket cannot be set up at that path; the message says why and what to do."""


def default_socket_path() -> str:
    """``$RUNTIME_DIRECTORY/control.sock`` under systemd, else ``/run/hidbpfd/control.sock``."""
    rt = os.environ.get("RUNTIME_DIRECTORY", "").split(":")[0]
    return str(Path(rt or "/run/hidbpfd") / "control.sock")


def peer_uid(sock: socket.socket) -> int:
    """The uid of the process at the other end."""
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize(SO_PEERCRED_FMT))
    return int(struct.unpack(SO_PEERCRED_FMT, raw)[1])


def check_socket_path(path: str) -> bool:
    """Whether ``path`` can be ours: True if a stale socket is there (to be replaced), False
    if nothing is; :class:`ControlSocketError` otherwise. Called by ``run`` before anything
    is loaded, and again by :meth:`ControlServer.start`."""
    size = len(os.fsencode(path))
    if size > SUN_PATH_MAX:
        raise ControlSocketError(
            f"socket path too long: {size} bytes, AF_UNIX takes {SUN_PATH_MAX}. "
            "Use a shorter --socket path"
        )
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return False
    except OSError as e:
        raise ControlSocketError(f"cannot use {path}: {e.strerror}") from None
    if stat.S_ISDIR(st.st_mode):
        raise ControlSocketError(
            f"{path} is a directory. Name the socket file itself, e.g. {path}/control.sock"
        )
    if not stat.S_ISSOCK(st.st_mode):
        raise ControlSocketError(
            f"{path} exists and is not a socket; refusing to replace it. "
            "Remove it yourself or use another --socket"
        )
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(2.0)
        try:
            s.connect(path)
        except ConnectionRefusedError:
            return True  # stale: nobody listens
        except FileNotFoundError:
            return False
        except (BlockingIOError, TimeoutError):
            pass  # a full backlog: someone listens
        except OSError as e:
            raise ControlSocketError(f"cannot probe {path}: {e.strerror}") from None
    raise ControlSocketError(
        f"another hidbpfd answers on {path}. Stop it first (hidbpfd status --socket {path} "
        "shows it), or give this one another --socket"
    )


class _RateLimitedLog:
    """One warning per cause, then at most one per :data:`LOG_EVERY_S` with a count."""

    def __init__(self) -> None:
        self._last: dict[str, float] = {}
        self._quiet: dict[str, int] = {}

    def __call__(self, cause: str, msg: str, *args: object) -> None:
        now = time.monotonic()
        last = self._last.get(cause)
        if last is not None and now - last < LOG_EVERY_S:
            self._quiet[cause] = self._quiet.get(cause, 0) + 1
            return
        self._last[cause] = now
        n = self._quiet.pop(cause, 0)
        tail = f" ({n} more like it in the last {LOG_EVERY_S:.0f} s)" if n else ""
        log.warning("control socket: " + msg + tail, *args)


class _Monitor:
    """One monitor client's waiting lines: chunks shared by every client (each chunk is the
    lines of one turn of the loop, encoded and joined once), at most :data:`MONITOR_BUFFER`
    bytes; a client that cannot keep up loses whole chunks, counted and told."""

    __slots__ = ("dropped", "lines", "ready", "size")

    def __init__(self) -> None:
        self.lines: collections.deque[bytes] = collections.deque()
        self.size = 0
        self.dropped = 0
        self.ready = asyncio.Event()

    def push(self, chunk: bytes, count: int = 1) -> None:
        """Queue ``chunk`` (``count`` lines), or count them as dropped."""
        if self.size + len(chunk) > MONITOR_BUFFER:
            self.dropped += count
        else:
            self.lines.append(chunk)
            self.size += len(chunk)
        self.ready.set()

    def take(self) -> bytes:
        out = b"".join(self.lines)
        self.lines.clear()
        self.size = 0
        if self.dropped:
            out = _encode({"dropped": self.dropped}) + out
            self.dropped = 0
        return out


def parse_request(line: bytes) -> tuple[str, str]:
    """``(cmd, "")`` or ``("", why)`` for one request line (newline included or not)."""
    try:
        text = line.decode("utf-8").strip()
    except UnicodeDecodeError:
        return "", "request is not UTF-8"
    if not text:
        return "", "empty request"
    depth = 0
    for ch in text:  # json recurses per level: refuse deep nesting before it does
        if ch in "[{":
            depth += 1
            if depth > MAX_JSON_DEPTH:
                return "", f"request nested over {MAX_JSON_DEPTH} deep"
        elif ch in "]}":
            depth -= 1
    try:
        req = json.loads(text)
    except (ValueError, RecursionError):
        return "", "request is not JSON"
    cmd = req.get("cmd") if isinstance(req, dict) else None
    if not isinstance(cmd, str):
        return "", 'request has no "cmd"'
    return cmd, ""


def _encode(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj).encode() + b"\n"


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
        self._sock: socket.socket | None = None
        self._ino: tuple[int, int] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._clients: set[asyncio.Task[None]] = set()
        self._monitors: set[_Monitor] = set()
        self._batch: list[bytes] = []
        """Monitor lines of this turn of the loop, encoded, not yet handed to the clients."""
        self._batch_handle: asyncio.Handle | None = None
        self._idle: dict[asyncio.Task[None], None] = {}
        """Clients still waiting for their request line, oldest first."""
        self._evicted: set[asyncio.Task[None]] = set()
        """Idle clients cancelled to make room, until their task ends."""
        self._unsubscribe: Callable[[], None] | None = None
        self._pause = 0.0
        self._resume: asyncio.TimerHandle | None = None
        self._fd_limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        self._warn = _RateLimitedLog()
        self.refused = 0
        """Connections from other users, refused."""
        self.turned_away = 0
        """Connections not served: too many clients, or file descriptors running out."""
        self.bad_requests = 0

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Bind (owner-only: umask 177 around the bind, then chmod 600) and listen; raises
        :class:`ControlSocketError` (see the module docstring)."""
        Path(self.path).parent.mkdir(parents=True, exist_ok=True, mode=0o755)
        if check_socket_path(self.path):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)  # a stale socket, checked just now
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        old = os.umask(0o177)
        try:
            sock.bind(self.path)
        except OSError as e:
            sock.close()
            raise ControlSocketError(f"cannot bind {self.path}: {e.strerror}") from None
        finally:
            os.umask(old)
        os.chmod(self.path, 0o600)
        st = os.stat(self.path)
        self._ino = (st.st_dev, st.st_ino)
        sock.listen(BACKLOG)
        sock.setblocking(False)
        self._sock = sock
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(sock.fileno(), self._accept)

    async def close(self) -> None:
        """Stop listening, end client streams, remove the socket file if it is still ours."""
        if self._resume is not None:
            self._resume.cancel()
            self._resume = None
        if self._batch_handle is not None:
            self._batch_handle.cancel()
            self._batch_handle = None
        if self._sock is not None:
            assert self._loop is not None
            self._loop.remove_reader(self._sock.fileno())
            self._sock.close()
            self._sock = None
        for t in list(self._clients):
            t.cancel()
        if self._clients:
            await asyncio.gather(*self._clients, return_exceptions=True)
        if self._ino is not None:
            with contextlib.suppress(OSError):
                st = os.lstat(self.path)
                if (st.st_dev, st.st_ino) == self._ino:
                    os.unlink(self.path)
            self._ino = None

    # ------------------------------------------------------------------ accepting

    def _accept(self) -> None:
        sock = self._sock
        loop = self._loop
        if sock is None or loop is None:
            return
        for _ in range(64):  # a burst per loop turn, then let the rest of the daemon run
            try:
                conn, _ = sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                if e.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    self._pause_accepting(e.strerror or str(e))
                else:
                    self._warn("accept", "accept failed: %s", e.strerror or e)
                return
            self._pause = 0.0
            conn.setblocking(False)
            why = self._busy(conn)
            if why:
                self.turned_away += 1
                self._warn("busy", "turned a client away: %s", why)
                with contextlib.suppress(OSError):
                    conn.send(_encode({"error": f"busy: {why}; try again"}))
                conn.close()
                continue
            task = loop.create_task(self._serve(conn))
            self._clients.add(task)
            self._idle[task] = None  # until its request line is in
            task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._clients.discard(task)
        self._evicted.discard(task)
        self._idle.pop(task, None)

    def _busy(self, conn: socket.socket) -> str:
        # fds are handed out lowest first: this one's number is how many are in use
        if conn.fileno() >= self._fd_limit - min(FD_RESERVE, self._fd_limit // 4):
            return "the daemon is short of file descriptors"
        if len(self._clients) - len(self._evicted) < MAX_CLIENTS:
            return ""
        if self._idle:  # make room: the oldest client that has not said anything yet goes
            oldest = next(iter(self._idle))
            del self._idle[oldest]
            oldest.cancel()
            self._evicted.add(oldest)
            self._warn("evict", "closed a client idle since it connected, to make room")
            return ""
        return f"{MAX_CLIENTS} clients already"

    def _pause_accepting(self, why: str) -> None:
        assert self._sock is not None and self._loop is not None
        first, longest = ACCEPT_PAUSE_S
        self._pause = min(max(self._pause * 2, first), longest)
        self._warn("accept-pause", "cannot accept (%s): pausing %.2f s", why, self._pause)
        self._loop.remove_reader(self._sock.fileno())
        self._resume = self._loop.call_later(self._pause, self._resume_accepting)

    def _resume_accepting(self) -> None:
        self._resume = None
        if self._sock is not None and self._loop is not None:
            self._loop.add_reader(self._sock.fileno(), self._accept)

    # ------------------------------------------------------------------ one client

    async def _serve(self, conn: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        writer: asyncio.StreamWriter | None = None
        try:
            uid = peer_uid(conn)
            reader = asyncio.StreamReader(limit=MAX_LINE, loop=loop)
            protocol = asyncio.StreamReaderProtocol(reader, loop=loop)
            transport, _ = await loop.connect_accepted_socket(lambda: protocol, conn)
            writer = asyncio.StreamWriter(transport, protocol, reader, loop)
            try:
                line = await self._read_line(reader, writer)
            finally:
                self._idle.pop(asyncio.current_task(), None)  # type: ignore[arg-type]
            if line is None:
                return
            if uid not in self.allowed:
                self.refused += 1
                self._warn("uid", "refused a connection from uid %d", uid)
                await _send(writer, {"error": "permission denied"})
                return
            cmd, why = parse_request(line)
            if why:
                await self._bad(writer, why, why)
            elif cmd == "status":
                await _send(writer, self._status())
            elif cmd == "reload":
                await _send(writer, self._reload())
            elif cmd == "monitor":
                await self._monitor(reader, writer)
            else:
                await self._bad(
                    writer,
                    "unknown command",
                    f"unknown command {cmd[:40]!r}; use status, monitor or reload",
                )
        except (ConnectionError, TimeoutError, asyncio.IncompleteReadError):
            pass
        except OSError as e:
            self._warn("oserror", "client connection failed: %s", e.strerror or e)
        except asyncio.CancelledError:
            raise
        except Exception as e:  # one client's trouble is a log line, never the daemon's
            self._warn(f"internal {type(e).__name__}", "error serving a client: %r", e)
            log.debug("control socket: error serving a client", exc_info=True)
            if writer is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(_send(writer, {"error": "internal error"}), 1.0)
        finally:
            if writer is not None:
                writer.close()
                with contextlib.suppress(Exception):
                    await writer.wait_closed()
            else:
                conn.close()

    async def _read_line(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bytes | None:
        """The request line, or None when the client is gone or was answered an error."""
        try:
            async with asyncio.timeout(READ_TIMEOUT_S):
                return await reader.readuntil(b"\n")
        except asyncio.IncompleteReadError as e:
            return e.partial or None  # a last line without "\n" counts; nothing: a probe
        except asyncio.LimitOverrunError:
            await self._bad(writer, "long line", f"request line over {MAX_LINE} bytes")
        except TimeoutError:
            await self._bad(writer, "timeout", f"no request line within {READ_TIMEOUT_S:.0f} s")
        return None

    async def _bad(self, writer: asyncio.StreamWriter, cause: str, why: str) -> None:
        self.bad_requests += 1
        self._warn(cause, "bad request: %s", why)
        await _send(writer, {"error": why})

    async def _monitor(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if len(self._monitors) >= MAX_MONITORS:
            self.turned_away += 1
            self._warn("monitors", "turned a monitor away: %d already", MAX_MONITORS)
            await _send(writer, {"error": f"busy: {MAX_MONITORS} monitors already; try again"})
            return
        m = _Monitor()
        self._monitors.add(m)
        if self._unsubscribe is None:
            self._unsubscribe = self._subscribe(self._fan_out)
        more = asyncio.ensure_future(reader.read(1))
        try:
            while True:
                ready = asyncio.ensure_future(m.ready.wait())
                await asyncio.wait({ready, more}, return_when=asyncio.FIRST_COMPLETED)
                if more.done():
                    ready.cancel()
                    if more.result():  # input after the command: not part of the protocol
                        await self._bad(
                            writer, "monitor input", "monitor takes no input after its command"
                        )
                    return
                m.ready.clear()
                writer.write(m.take())
                await writer.drain()
        finally:
            more.cancel()
            self._monitors.discard(m)
            if not self._monitors and self._unsubscribe is not None:
                self._unsubscribe()
                self._unsubscribe = None

    def _fan_out(self, item: dict[str, Any]) -> None:
        """The daemon's one subscriber while monitors listen: encode once, and hand the turn's
        lines to every client once (one chunk per client per turn, not one per line)."""
        self._batch.append(_encode(item))
        if self._batch_handle is None and self._loop is not None:
            self._batch_handle = self._loop.call_soon(self._hand_out)

    def _hand_out(self) -> None:
        self._batch_handle = None
        lines = self._batch
        if not lines:
            return
        self._batch = []
        chunk = b"".join(lines)
        for m in self._monitors:
            m.push(chunk, len(lines))


async def _send(writer: asyncio.StreamWriter, obj: dict[str, Any]) -> None:
    writer.write(_encode(obj))
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
