"""Abusing the control socket of a real ``hidbpfd run`` (issue 11 §3): every bad request gets
``{"error": ...}`` and a closed connection, the daemon logs one line per cause and never a
traceback, keeps answering ``status``, and its memory stays bounded.

The daemon runs as a subprocess on this host (real BPF, real udev monitor, no devices); its
stderr is checked for tracebacks at the end of the module. Table-driven: request bytes ->
fragment of the error answered.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from hidbpfd.service.control import (
    MAX_CLIENTS,
    MAX_LINE,
    MAX_MONITORS,
    ControlServer,
    check_socket_path,
    request,
)

ROOT = Path(__file__).resolve().parents[2]
ANSWER_TIMEOUT_S = 30  # generous: a loaded, emulated machine


BAD_FILES = {  # in the daemon's config dir from the start (issue 11 §1)
    "60-1234__0001-nan.toml": (
        "[device]\nvendor = 0x1234\n[[policy]]\ntype = 'defer'\nmatch = '02'\ndelay_ms = nan\n"
    ),
    "61-1234__0002-deep.toml": "x = " + "[" * 5000 + "]" * 5000 + "\n",
    "62-1234__0003-dots.toml": "[" + ".".join(["a"] * 100_000) + "]\n",
}
GOOD_FILES = len(
    list((Path(__file__).resolve().parents[2] / "config").glob("*.toml"))
)  # the shipped examples


class Daemon:
    """A ``hidbpfd run`` subprocess with its socket and stderr."""

    def __init__(self, tmp: Path) -> None:
        self.sock = str(tmp / "control.sock")
        self.cfg = tmp / "devices.d"
        shutil.copytree(ROOT / "config", self.cfg)
        for name, text in BAD_FILES.items():
            (self.cfg / name).write_text(text)
        os.mkfifo(self.cfg / "70-1234__0004-fifo.toml")
        (self.cfg / "71-1234__0005-zero.toml").symlink_to("/dev/zero")
        self.err_path = tmp / "stderr.log"
        self.err = self.err_path.open("wb")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "hidbpfd",
                "--log-level",
                "info",
                "run",
                "--config",
                str(self.cfg),
                "--socket",
                self.sock,
            ],
            stdout=subprocess.DEVNULL,
            stderr=self.err,
        )
        deadline = time.monotonic() + 120  # BPF load + start-up on a loaded, emulated machine
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.skip(f"hidbpfd run could not start here: {self.stderr()[-400:]}")
            with contextlib.suppress(OSError, ValueError):
                if "pid" in request(self.sock, "status", timeout=5):
                    return
            time.sleep(0.2)
        self.stop()
        raise AssertionError(f"hidbpfd run not answering after 120 s: {self.stderr()}")

    def stderr(self) -> str:
        if not self.err.closed:
            self.err.flush()
        return self.err_path.read_text(errors="replace")

    def rss_kib(self) -> int:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise AssertionError("no VmRSS")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.err.close()


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    from hidbpfd.kernel.probe import probe

    if not probe()["feeder"]["ok"]:
        pytest.skip(f"BPF unavailable: {probe()['feeder']['reason']}")
    d = Daemon(tmp_path_factory.mktemp("abuse"))
    try:
        yield d
    finally:
        d.stop()
    err = d.stderr()
    assert "Traceback" not in err, err[-3000:]
    assert "Unhandled exception" not in err, err[-3000:]
    assert d.proc.returncode == 0, err[-2000:]


def exchange(path: str, data: bytes, *, shut: bool = False) -> bytes:
    """Send ``data`` (from a thread, so a huge send cannot block us), read until closed."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(ANSWER_TIMEOUT_S)
        s.connect(path)

        def send() -> None:
            with contextlib.suppress(OSError):
                s.sendall(data)
                if shut:
                    s.shutdown(socket.SHUT_WR)

        t = threading.Thread(target=send, daemon=True)
        t.start()
        out = b""
        with contextlib.suppress(ConnectionResetError):
            while chunk := s.recv(65536):
                out += chunk
        t.join(ANSWER_TIMEOUT_S)
        return out


BAD: dict[str, tuple[bytes, str]] = {
    "garbage bytes": (bytes(range(128, 256)) * 4 + b"\n", "not UTF-8"),
    "NUL bytes": (b"\0" * 100 + b"\n", "not JSON"),
    "10 MB line": (b"x" * 10_000_000 + b"\n", f"over {MAX_LINE} bytes"),
    "line just over the limit": (b" " * (MAX_LINE + 10) + b"\n", f"over {MAX_LINE} bytes"),
    "deep JSON": (b"[" * 3000 + b"\n", "nested over"),
    "deep JSON object": (b'{"a":' * 500 + b"1" + b"}" * 500 + b"\n", "nested over"),
    "not JSON": (b"status\n", "not JSON"),
    "JSON list": (b"[]\n", 'no "cmd"'),
    "cmd not a string": (b'{"cmd": 5}\n', 'no "cmd"'),
    "cmd null": (b'{"cmd": null}\n', 'no "cmd"'),
    "unknown command": (b'{"cmd": "shutdown"}\n', "unknown command 'shutdown'"),
    "empty line": (b"\n", "empty request"),
    "no newline then EOF": (b'{"cmd": "nope"}', "unknown command 'nope'"),
    "lone surrogate escape": (b'{"cmd": "\\ud800"}\n', "unknown command"),
    "huge number": (b'{"cmd": 1' + b"0" * 4000 + b"}\n", 'no "cmd"'),
}


@pytest.mark.parametrize("name", list(BAD))
def test_bad_request_is_answered_and_closed(daemon: Daemon, name: str) -> None:
    data, frag = BAD[name]
    out = exchange(daemon.sock, data, shut=name == "no newline then EOF")
    (line,) = out.splitlines()
    answer = json.loads(line)
    assert frag in answer["error"], answer
    assert "pid" in request(daemon.sock, "status", timeout=ANSWER_TIMEOUT_S)


def test_one_log_line_per_cause(daemon: Daemon) -> None:
    before = daemon.stderr().count("bad request: request is not UTF-8")
    t0 = time.monotonic()
    for _ in range(50):
        exchange(daemon.sock, b"\xff\xfe\n")
    logged = daemon.stderr().count("bad request: request is not UTF-8") - before
    # at most one a minute per cause (the window may have opened before this test)
    assert logged <= 1 + int((time.monotonic() - t0) // 60), daemon.stderr()[-2000:]
    assert before + logged >= 1, "the cause was never logged"


def test_silent_probe_is_not_an_error(daemon: Daemon) -> None:
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(daemon.sock)
    assert "pid" in request(daemon.sock, "status", timeout=ANSWER_TIMEOUT_S)


def test_monitor_that_keeps_sending_is_closed_and_memory_stays_bounded(daemon: Daemon) -> None:
    before = daemon.rss_kib()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(ANSWER_TIMEOUT_S)
        s.connect(daemon.sock)
        s.sendall(b'{"cmd": "monitor"}\n')
        sent = 0
        chunk = b"x" * 65536
        with contextlib.suppress(OSError):
            while sent < 200 * 1024 * 1024:
                sent += s.send(chunk)
        got = b""
        with contextlib.suppress(OSError):
            while c := s.recv(65536):
                got += c
    assert sent < 200 * 1024 * 1024, "the daemon kept reading what a monitor sent"
    assert b"monitor takes no input" in got
    assert daemon.rss_kib() - before < 20 * 1024, (before, daemon.rss_kib())


@contextlib.contextmanager
def many_fds(n: int) -> Iterator[None]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < n:
        pytest.skip(f"RLIMIT_NOFILE hard limit {hard} < {n}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, n), hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_1100_idle_connections_do_not_stop_status(daemon: Daemon) -> None:
    held: list[socket.socket] = []
    with many_fds(4096):
        try:
            for _ in range(1100):
                s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                s.setblocking(False)
                held.append(s)
                with contextlib.suppress(BlockingIOError):
                    s.connect(daemon.sock)
            st = request(daemon.sock, "status", timeout=ANSWER_TIMEOUT_S)
            assert "pid" in st, st
        finally:
            for s in held:
                s.close()
    assert "pid" in request(daemon.sock, "status", timeout=ANSWER_TIMEOUT_S)


def test_a_burst_of_1000_connects_fits_the_backlog(daemon: Daemon) -> None:
    somaxconn = int(Path("/proc/sys/net/core/somaxconn").read_text())
    if somaxconn < 1024:
        pytest.skip(f"net.core.somaxconn is {somaxconn}")
    held: list[socket.socket] = []
    refused = 0
    with many_fds(4096):
        try:
            for _ in range(1000):
                s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                s.setblocking(False)
                held.append(s)
                try:
                    s.connect(daemon.sock)
                except BlockingIOError:
                    refused += 1
        finally:
            for s in held:
                s.close()
    assert refused == 0


def test_monitors_are_capped_and_status_still_answers(daemon: Daemon) -> None:
    held: list[socket.socket] = []
    try:
        for _ in range(MAX_MONITORS):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.connect(daemon.sock)
            s.sendall(b'{"cmd": "monitor"}\n')
            held.append(s)
        deadline = time.monotonic() + ANSWER_TIMEOUT_S
        answer: dict[str, object] = {}
        while time.monotonic() < deadline:  # the monitors above register asynchronously
            out = exchange(daemon.sock, b'{"cmd": "monitor"}\n', shut=False)
            answer = json.loads(out.splitlines()[0]) if out else {}
            if "busy" in str(answer.get("error", "")):
                break
            time.sleep(0.1)
        assert "monitors already" in str(answer.get("error")), answer
        assert "pid" in request(daemon.sock, "status", timeout=ANSWER_TIMEOUT_S)
    finally:
        for s in held:
            s.close()


# ------------------------------------------------------------------ the socket path


def _run(args: list[str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "hidbpfd", "run", "--config", str(ROOT / "config"), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def test_second_daemon_on_the_same_socket_refuses_and_deletes_nothing(daemon: Daemon) -> None:
    ino = os.stat(daemon.sock).st_ino
    out = _run(["--socket", daemon.sock])
    assert out.returncode == 1 and "another hidbpfd answers on" in out.stderr, out.stderr
    assert "Traceback" not in out.stderr
    assert os.stat(daemon.sock).st_ino == ino
    assert "pid" in request(daemon.sock, "status", timeout=ANSWER_TIMEOUT_S)


@pytest.mark.parametrize("kind", ["regular file", "directory", "too long", "symlink to a file"])
def test_socket_path_that_is_not_ours(tmp_path: Path, kind: str) -> None:
    p = tmp_path / "control.sock"
    if kind == "regular file":
        p.write_text("precious")
        frag = "is not a socket"
    elif kind == "directory":
        p.mkdir()
        frag = "is a directory"
    elif kind == "symlink to a file":
        (tmp_path / "precious").write_text("precious")
        p.symlink_to(tmp_path / "precious")
        frag = "is not a socket"
    else:
        p = tmp_path / ("x" * 120)
        frag = "too long"
    out = _run(["--socket", str(p)])
    assert out.returncode == 1 and frag in out.stderr, out.stderr
    assert "Traceback" not in out.stderr
    if kind == "regular file":
        assert p.read_text() == "precious"
    elif kind == "directory":
        assert p.is_dir()
    elif kind == "symlink to a file":
        assert p.is_symlink() and (tmp_path / "precious").read_text() == "precious"


def test_stale_socket_is_replaced(tmp_path: Path) -> None:
    p = tmp_path / "control.sock"
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(p))
    s.close()  # bound, never listened: nobody answers
    assert check_socket_path(str(p)) is True


def test_accept_backs_off_on_emfile(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    import asyncio
    import errno

    class Exhausted:
        """A listening socket whose accept() always fails with EMFILE."""

        def __init__(self, real: socket.socket) -> None:
            self.real = real
            self.calls = 0

        def fileno(self) -> int:
            return self.real.fileno()

        def accept(self) -> tuple[socket.socket, object]:
            self.calls += 1
            raise OSError(errno.EMFILE, "Too many open files")

        def close(self) -> None:
            self.real.close()

    async def body() -> int:
        srv = ControlServer(str(tmp_path / "c.sock"), dict, dict, lambda fn: lambda: None)
        await srv.start()
        assert srv._sock is not None
        loop = asyncio.get_running_loop()
        loop.remove_reader(srv._sock.fileno())
        fake = Exhausted(srv._sock)
        srv._sock = fake  # type: ignore[assignment]
        loop.add_reader(fake.fileno(), srv._accept)
        clients = []
        for _ in range(5):  # pending connections keep the socket readable
            c = socket.socket(socket.AF_UNIX)
            c.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                c.connect(str(tmp_path / "c.sock"))
            clients.append(c)
        await asyncio.sleep(1.0)
        for c in clients:
            c.close()
        await srv.close()
        return fake.calls

    with caplog.at_level("WARNING"):
        calls = asyncio.run(body())
    # paused 0.05, 0.1, 0.2, 0.4 s...: a handful of tries in a second, not a busy loop
    assert 1 <= calls <= 10, calls
    lines = [r for r in caplog.records if "cannot accept" in r.getMessage()]
    assert len(lines) == 1 and lines[0].exc_info is None


def test_max_clients_is_sane() -> None:
    assert MAX_MONITORS < MAX_CLIENTS


def test_status_answers_with_50_monitors_under_a_report_flood(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Monitor lines are encoded once and written in one batch per client per loop turn, so
    ``status`` is answered while 50 monitors stream a flood. Its latency is printed, never
    asserted (measured on the development machine: median 25-150 ms, the same as with no
    monitor at all; the issue saw 1.0-2.3 s)."""
    import asyncio
    import statistics

    from tests.daemon.harness import KBD, running, until

    sock = str(tmp_path / "c.sock")
    f13, release = bytes.fromhex("01006800"), bytes.fromhex("01000000")
    stop = threading.Event()
    got = [0] * 50

    def monitor(i: int) -> None:
        with socket.socket(socket.AF_UNIX) as s:
            s.connect(sock)
            s.sendall(b'{"cmd": "monitor"}\n')
            s.settimeout(0.5)
            while not stop.is_set():
                with contextlib.suppress(TimeoutError):
                    chunk = s.recv(65536)
                    if not chunk:
                        return
                    got[i] += chunk.count(b"\n")

    async def body() -> list[float]:
        async with running(tmp_path, socket_path=sock) as r:
            threads = [threading.Thread(target=monitor, args=(i,), daemon=True) for i in range(50)]
            for t in threads:
                t.start()
            assert r.d.control is not None
            await until(lambda: len(r.d.control._monitors) == 50, "50 monitors", 60)
            flooding = True

            async def flood() -> None:
                while flooding:
                    for _ in range(50):
                        r.feed(KBD, f13)
                        r.feed(KBD, release)
                    await asyncio.sleep(0)

            task = asyncio.get_running_loop().create_task(flood())
            lat = []
            for _ in range(5):
                t0 = time.monotonic()
                st = await asyncio.to_thread(request, sock, "status", timeout=120)
                lat.append(time.monotonic() - t0)
                assert "pid" in st
            flooding = False
            await task
            await until(lambda: min(got) > 0, "every monitor got lines", 60)
            stop.set()
            for t in threads:
                await asyncio.to_thread(t.join, 10)
            return lat

    with caplog.at_level("WARNING"):
        lat = asyncio.run(body())
    print(f"status with 50 monitors under a flood: median {statistics.median(lat) * 1000:.0f} ms")
    assert not [r for r in caplog.records if r.exc_info], "a traceback was logged"


def test_bad_files_at_start_do_not_stop_the_daemon(daemon: Daemon) -> None:
    st = request(daemon.sock, "status", timeout=ANSWER_TIMEOUT_S)
    errors = "\n".join(st["config_errors"])
    for frag in ("nan is not a number", "nested 5000 deep", "100000 parts", "FIFO", "character"):
        assert frag in errors, errors
    assert "5 rejected" in daemon.stderr() and f"{GOOD_FILES} policy file(s) loaded" in (
        daemon.stderr()
    )


def test_reload_and_sighup_with_bad_files_answer_without_a_traceback(daemon: Daemon) -> None:
    res = request(daemon.sock, "reload", timeout=ANSWER_TIMEOUT_S)
    assert res["ok"] is False and len(res["errors"]) == 5, res
    assert any("nan is not a number" in e for e in res["errors"])
    daemon.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + ANSWER_TIMEOUT_S
    while time.monotonic() < deadline and daemon.stderr().count("reload:") < 1:
        time.sleep(0.1)
    assert "reload: " in daemon.stderr()
    assert request(daemon.sock, "status", timeout=ANSWER_TIMEOUT_S)["reloads"] >= 2


def test_a_failing_status_hook_is_an_error_answer_not_a_traceback(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import asyncio

    def broken() -> dict[str, object]:
        raise RuntimeError("boom")

    async def body() -> bytes:
        srv = ControlServer(str(tmp_path / "c.sock"), broken, dict, lambda fn: lambda: None)
        await srv.start()
        try:
            return await asyncio.to_thread(exchange, srv.path, b'{"cmd": "status"}\n')
        finally:
            await srv.close()

    with caplog.at_level("DEBUG"):
        out = asyncio.run(body())
    assert json.loads(out) == {"error": "internal error"}
    warnings = [r for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "boom" in warnings[0].getMessage()
    assert warnings[0].exc_info is None
    assert not (tmp_path / "c.sock").exists()
