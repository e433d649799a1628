"""hidraw: output and feature reports to a device, and a raw reader of what its readers see.

- :class:`HidrawReportIO` is the blocking sink the daemon's per-device I/O worker calls
  (:mod:`hidbpfd.devices.sinks` runs each call off the loop with a timeout): ``write(2)`` for
  output reports, ``HIDIOCSFEATURE``/``HIDIOCGFEATURE`` for feature reports.
- :class:`HidrawSink` is the same for asyncio callers (tests, bench): each call runs on one
  worker thread of its own, in order, with a timeout.
- :class:`HidrawReader` reads a node non-blocking on the loop (``add_reader``) and yields
  ``(monotonic_ns, report)``: what any reader of the device sees.

Why not hidapi (``hidapi`` on PyPI; its ``hidraw`` module is the hidraw backend and opens by
path): measured in the VM, it works, but its ``write``/``send_feature_report`` return -1 and its
``get_feature_report`` raises ``IOError('read error')``, with the errno only as English text
from ``device.error()`` ("ioctl (SFEATURE): No such device"), and that error text is per-handle
state that two threads on one handle overwrite. We need the errno to tell a vanished device
from a refusing one, so the three calls are made directly: they are one syscall each.

Errors: ENODEV, EIO and EPIPE (and ENOENT on open) raise :class:`DeviceGone` — except that EIO
and EPIPE are also how a *live* device refuses a request (uhid turns an error reply into EIO, a
USB stall is EPIPE), so for those two the node's sysfs entry is checked (for up to 0.2 s, as
uhid fails the request just before it removes the device): still there means
:class:`ReportRefused`. Anything else is :class:`HidrawError`, and a request that outlives its
timeout :class:`HidrawTimeout`. All are OSError subclasses carrying ``errno`` and
``device_path``, so ``except OSError`` callers keep working.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import errno
import fcntl
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Final, TypeVar

_T = TypeVar("_T")

# include/uapi/asm-generic/ioctl.h
_IOC_NRSHIFT: Final = 0
_IOC_TYPESHIFT: Final = 8
_IOC_SIZESHIFT: Final = 16
_IOC_DIRSHIFT: Final = 30
_IOC_WRITE: Final = 1
_IOC_READ: Final = 2
_IOC_SIZEMASK: Final = (1 << 14) - 1


def _IOC(direction: int, kind: str, nr: int, size: int) -> int:
    if not 0 <= size <= _IOC_SIZEMASK:
        raise ValueError(f"ioctl size {size} does not fit in 14 bits")
    return (
        (direction << _IOC_DIRSHIFT)
        | (ord(kind) << _IOC_TYPESHIFT)
        | (nr << _IOC_NRSHIFT)
        | (size << _IOC_SIZESHIFT)
    )


# include/uapi/linux/hidraw.h
# struct hidraw_devinfo {
#     __u32 bustype;
#     __s16 vendor;
#     __s16 product;
# };
# #define HIDIOCGRAWINFO _IOR('H', 0x03, struct hidraw_devinfo)
HIDIOCGRAWINFO: Final = _IOC(_IOC_READ, "H", 0x03, 8)


# /* The first byte of SFEATURE and GFEATURE is the report number */
# #define HIDIOCSFEATURE(len)    _IOC(_IOC_WRITE|_IOC_READ, 'H', 0x06, len)
def HIDIOCSFEATURE(length: int) -> int:
    """Send a feature report: ``buf[0]`` is the report number (0 if the device has none)."""
    return _IOC(_IOC_WRITE | _IOC_READ, "H", 0x06, length)


# #define HIDIOCGFEATURE(len)    _IOC(_IOC_WRITE|_IOC_READ, 'H', 0x07, len)
def HIDIOCGFEATURE(length: int) -> int:
    """Get a feature report into ``buf``; ``buf[0]`` is the report number asked for."""
    return _IOC(_IOC_WRITE | _IOC_READ, "H", 0x07, length)


# include/linux/hid.h: #define HID_MAX_BUFFER_SIZE 16384 (the largest report hidraw hands out)
HID_MAX_BUFFER_SIZE: Final = 16384

GONE_ERRNOS: Final = frozenset({errno.ENODEV, errno.EIO, errno.EPIPE})
# How long an EIO/EPIPE waits for the node to leave sysfs before it counts as a refusal.
GONE_GRACE_S: Final = 0.2


class HidrawError(OSError):
    """An output or feature request on a hidraw node failed; ``errno`` says how."""

    def __init__(self, device_path: str, err: int, what: str, detail: str = "") -> None:
        name = errno.errorcode.get(err, str(err))
        message = f"{what} on {device_path} failed: {name} ({os.strerror(err)})"
        super().__init__(err, message + (f"; {detail}" if detail else ""), device_path)
        self.device_path = device_path

    def __str__(self) -> str:
        return str(self.strerror)


class DeviceGone(HidrawError):
    """The device vanished under us (ENODEV, EIO, EPIPE; ENOENT on open)."""


class ReportRefused(HidrawError):
    """EIO/EPIPE while the node stayed: the device answered the request with an error."""


class HidrawTimeout(HidrawError):
    """The device did not answer within the timeout (the worker thread may still be stuck)."""


def _node_present(device_path: str) -> bool:
    return os.path.exists(f"/sys/class/hidraw/{os.path.basename(device_path)}")


def _gone_within(device_path: str, grace_s: float) -> bool:
    """Whether the node leaves sysfs within ``grace_s``.

    uhid wakes a request waiting for its reply (with EIO) *before* the hid device is torn down,
    so right after the error the node may still be there for a moment.
    """
    deadline = time.monotonic() + grace_s
    while _node_present(device_path):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.005)
    return True


def _error(device_path: str, e: OSError, what: str, grace_s: float = GONE_GRACE_S) -> HidrawError:
    """The typed error for a failed syscall; may wait up to ``grace_s`` (EIO/EPIPE only)."""
    err = e.errno or errno.EIO
    if err == errno.ENODEV or (err == errno.ENOENT and what == "open"):
        return DeviceGone(device_path, err, what, "the device is gone")
    if err in GONE_ERRNOS:
        if _gone_within(device_path, grace_s):
            return DeviceGone(device_path, err, what, "the device is gone")
        return ReportRefused(
            device_path, err, what, "the device is still there: it refused the request"
        )
    return HidrawError(device_path, err, what)


class HidrawReportIO:
    """Blocking output/feature requests on one hidraw node (one fd, opened at construction).

    Created lazily by :func:`hidbpfd.devices.chooser.report_io_factory` in the device's I/O
    worker; every method blocks until the kernel (and, for features, the device) answers, so
    call them off the loop. The calls are safe from several threads: each is one syscall on
    the fd.
    """

    def __init__(self, device_path: str) -> None:
        self.device_path = device_path
        try:
            self.fd: int | None = os.open(device_path, os.O_RDWR | os.O_CLOEXEC)
        except OSError as e:
            raise _error(device_path, e, "open") from e

    def _fd(self) -> int:
        if self.fd is None:
            raise HidrawError(self.device_path, errno.EBADF, "use after close")
        return self.fd

    def output(self, data: bytes) -> None:
        """Write one output report: ``data[0]`` is the report ID (0 if the device has none)."""
        if not data:
            raise ValueError("empty output report")
        try:
            written = os.write(self._fd(), data)
        except OSError as e:
            raise _error(self.device_path, e, "output report") from e
        if written != len(data):
            raise HidrawError(self.device_path, errno.EIO, f"output report (wrote {written})")

    def set_feature(self, data: bytes) -> None:
        """HIDIOCSFEATURE: ``data[0]`` is the report ID (0 if the device has none)."""
        if not data:
            raise ValueError("empty feature report")
        buf = bytearray(data)
        try:
            fcntl.ioctl(self._fd(), HIDIOCSFEATURE(len(buf)), buf, True)
        except OSError as e:
            raise _error(self.device_path, e, "set feature report") from e

    def get_feature(self, report_id: int, length: int) -> bytes:
        """HIDIOCGFEATURE: up to ``length`` bytes, the report ID first (as hidapi returns it)."""
        if not 0 < length <= HID_MAX_BUFFER_SIZE:
            raise ValueError(f"feature length {length}; need 1..{HID_MAX_BUFFER_SIZE}")
        buf = bytearray(length)
        buf[0] = report_id
        try:
            n = fcntl.ioctl(self._fd(), HIDIOCGFEATURE(length), buf, True)
        except OSError as e:
            raise _error(self.device_path, e, f"get feature report {report_id:#x}") from e
        return bytes(buf[:n])

    def close(self) -> None:
        """Close the fd; safe to call twice."""
        fd, self.fd = self.fd, None
        if fd is not None:
            os.close(fd)


class HidrawSink:
    """Output/feature requests for asyncio callers, each off the loop with a timeout.

    The calls run in order on one worker thread owned by this sink, so a request never
    overtakes an earlier one; a timed-out request keeps the thread until the kernel gives up
    on it (uhid waits 5 s for a reply), and later requests wait behind it. Owners call
    :meth:`close` (or use ``async with``).
    """

    def __init__(
        self,
        device_path: str,
        *,
        timeout_s: float = 1.0,
        opener: Callable[[str], HidrawReportIO] = HidrawReportIO,
    ) -> None:
        self.device_path = device_path
        self.timeout_s = timeout_s
        self._opener = opener
        self._io: HidrawReportIO | None = None
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix=f"hidraw-{os.path.basename(device_path)}"
        )

    def _report_io(self) -> HidrawReportIO:
        if self._io is None:
            self._io = self._opener(self.device_path)
        return self._io

    async def _call(self, what: str, fn: Callable[[HidrawReportIO], _T]) -> _T:
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(self._executor, lambda: fn(self._report_io()))
        try:
            return await asyncio.wait_for(future, self.timeout_s)
        except TimeoutError:
            raise HidrawTimeout(
                self.device_path, errno.ETIMEDOUT, what, f"no answer within {self.timeout_s:g} s"
            ) from None

    async def output(self, data: bytes) -> None:
        """Write an output report (see :meth:`HidrawReportIO.output`)."""
        await self._call("output report", lambda io: io.output(data))

    async def set_feature(self, data: bytes) -> None:
        """Send a feature report (see :meth:`HidrawReportIO.set_feature`)."""
        await self._call("set feature report", lambda io: io.set_feature(data))

    async def get_feature(self, report_id: int, length: int) -> bytes:
        """Get a feature report (see :meth:`HidrawReportIO.get_feature`)."""
        return await self._call(
            f"get feature report {report_id:#x}", lambda io: io.get_feature(report_id, length)
        )

    def close(self) -> None:
        """Close the node and let the worker thread go (without waiting for a stuck call)."""
        self._executor.shutdown(wait=False, cancel_futures=True)
        if self._io is not None:
            self._io.close()
            self._io = None

    async def __aenter__(self) -> HidrawSink:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()


class HidrawReader:
    """Reads one hidraw node non-blocking on the loop: ``(monotonic_ns, report)`` per report.

    Opens the node (``O_RDONLY | O_NONBLOCK``) at construction and registers it with
    ``loop.add_reader``; each report is stamped with ``clock()`` right after its ``read``. Use
    ``async for stamp, report in reader`` (ends when the device goes away) or
    :meth:`read` (raises :class:`DeviceGone`). Tests and the benchmark use it to see what a
    device's readers see. Must be created on the loop's thread; :meth:`close` when done.
    """

    def __init__(
        self,
        device_path: str,
        *,
        loop: asyncio.AbstractEventLoop | None = None,
        clock: Callable[[], int] = time.monotonic_ns,
        queue_size: int = 4096,
    ) -> None:
        self.device_path = device_path
        self.clock = clock
        self._loop = loop or asyncio.get_running_loop()
        self._queue: asyncio.Queue[tuple[int, bytes] | HidrawError] = asyncio.Queue(queue_size)
        self.dropped = 0
        try:
            self.fd: int | None = os.open(device_path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as e:
            raise _error(device_path, e, "open") from e
        self._loop.add_reader(self.fd, self._on_readable)

    def _on_readable(self) -> None:
        while self.fd is not None:
            try:
                report = os.read(self.fd, HID_MAX_BUFFER_SIZE)
            except BlockingIOError:
                return
            except OSError as e:
                # hidraw answers EIO (and poll says POLLHUP) once the device is gone.
                self._loop.remove_reader(self.fd)
                self._put(_error(self.device_path, e, "read", grace_s=0.0))
                return
            self._put((self.clock(), report))

    def _put(self, item: tuple[int, bytes] | HidrawError) -> None:
        if self._queue.full():
            self._queue.get_nowait()
            self.dropped += 1
        self._queue.put_nowait(item)

    async def read(self, timeout_s: float | None = None) -> tuple[int, bytes]:
        """The next report and when it was read; raises TimeoutError, or the read's error."""
        async with asyncio.timeout(timeout_s):
            item = await self._queue.get()
        if isinstance(item, HidrawError):
            self._queue.put_nowait(item)  # stays the answer for later reads
            raise item
        return item

    def pending(self) -> int:
        """How many reports are queued, unread."""
        return self._queue.qsize()

    def __aiter__(self) -> HidrawReader:
        return self

    async def __anext__(self) -> tuple[int, bytes]:
        try:
            return await self.read()
        except DeviceGone:
            raise StopAsyncIteration from None

    def close(self) -> None:
        """Stop reading and close the fd; safe to call twice."""
        fd, self.fd = self.fd, None
        if fd is not None:
            self._loop.remove_reader(fd)
            os.close(fd)

    def __enter__(self) -> HidrawReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def hidraw_nodes(sysfs: Path = Path("/sys/class/hidraw")) -> list[str]:
    """The ``/dev/hidrawN`` paths the kernel has right now (sorted)."""
    try:
        return sorted(f"/dev/{e.name}" for e in os.scandir(sysfs))
    except FileNotFoundError:
        return []
