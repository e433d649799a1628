"""uhid: HID devices implemented in userspace through ``/dev/uhid``, on the asyncio loop.

Used by the device tests and the benchmark (a device whose reports we control and whose
output/feature traffic we observe), and as the uhid injection sink. One :class:`UhidDevice`
owns one ``/dev/uhid`` fd: non-blocking, read through ``loop.add_reader``, no threads.

The kernel side is ``drivers/hid/uhid.c``; the events it exchanges (``struct uhid_event``, its
constants, packing and parsing) are in :mod:`hidbpfd.devices.uhid_protocol`.

Event flow, as the kernel drives it::

    create() ──UHID_CREATE2──► kernel adds the hid device (in a worker), hid-generic binds
             ◄──UHID_START (dev_flags)     the device is up; hidraw/input nodes appear
             ◄──UHID_OPEN / UHID_CLOSE     first reader opened / last reader closed a node
             ◄──UHID_OUTPUT                someone wrote an output report (hidraw write)
             ◄──UHID_GET_REPORT  ──UHID_GET_REPORT_REPLY──►   HIDIOCGFEATURE & co; the caller
             ◄──UHID_SET_REPORT  ──UHID_SET_REPORT_REPLY──►   blocks until we reply (<= 5 s)
    input()  ──UHID_INPUT2──►   an input report, as if the device had sent it
    destroy()──UHID_DESTROY──►  the hid device goes away (closing the fd does the same)
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Final

from hidbpfd.devices.facts import read_uevent
from hidbpfd.devices.uhid_protocol import (
    UHID_CLOSE,
    UHID_EVENT_SIZE,
    UHID_GET_REPORT,
    UHID_OPEN,
    UHID_SET_REPORT,
    UHID_START,
    UHID_STOP,
    UhidEvent,
    pack_create2,
    pack_destroy,
    pack_get_report_reply,
    pack_input2,
    pack_set_report_reply,
    parse_event,
)

log = logging.getLogger(__name__)

UHID_PATH: Final = "/dev/uhid"
SYSFS_UHID: Final = Path("/sys/devices/virtual/misc/uhid")


GetReportHandler = Callable[[UhidEvent], "bytes | int | None"]
"""Answers a GET_REPORT: the report bytes, an errno to refuse, or None to answer later
through :meth:`UhidDevice.reply_get_report`."""

SetReportHandler = Callable[[UhidEvent], "int | None"]
"""Answers a SET_REPORT: 0 to acknowledge, an errno to refuse, or None to answer later
through :meth:`UhidDevice.reply_set_report`."""


class UhidDevice:
    """One uhid device: create it, feed it input reports, see what the kernel asks of it.

    Every event the kernel sends lands in :attr:`events` (and goes to ``on_event`` if given),
    in order, stamped with ``clock()`` when read. GET_REPORT and SET_REPORT are answered at
    once from the reader callback: SET_REPORT is stored and acknowledged, GET_REPORT is answered
    with the last SET_REPORT of that report type and number (else EIO), unless handlers are
    passed in. Must be created and used on the loop's thread.
    """

    def __init__(
        self,
        *,
        loop: asyncio.AbstractEventLoop | None = None,
        path: str = UHID_PATH,
        clock: Callable[[], int] = time.monotonic_ns,
        on_event: Callable[[UhidEvent], None] | None = None,
        get_report: GetReportHandler | None = None,
        set_report: SetReportHandler | None = None,
        queue_size: int = 4096,
        sysfs_root: Path = SYSFS_UHID,
    ) -> None:
        self._loop = loop
        self.path = path
        self.clock = clock
        self.on_event = on_event
        self.get_report_handler = get_report
        self.set_report_handler = set_report
        self.sysfs_root = sysfs_root
        self.events: asyncio.Queue[UhidEvent] = asyncio.Queue(queue_size)
        self.dropped = 0
        self.fd: int | None = None
        self.started = False
        self.dev_flags = 0
        self.open_count = 0
        self.reports: dict[tuple[int, int], bytes] = {}
        self._started: asyncio.Event | None = None
        self._identity: tuple[str, str, str, str] | None = None
        self._before: frozenset[str] = frozenset()
        self._hid_name: str | None = None

    # --- lifecycle ----------------------------------------------------------------------------

    def create(
        self,
        name: str,
        descriptor: bytes,
        bus: int,
        vendor: int,
        product: int,
        version: int = 0,
        country: int = 0,
        phys: str = "",
        uniq: str = "",
    ) -> None:
        """Open ``/dev/uhid`` and create the device; events then flow to :attr:`events`.

        Called once, on the loop's thread, by whoever owns the device. The kernel adds the hid
        device asynchronously: wait with :meth:`wait_started` (or :meth:`wait_hidraw`) before
        sending input. Raises ValueError for bad arguments, OSError if uhid refuses.
        """
        if self.fd is not None:
            raise RuntimeError("uhid device already created")
        event = pack_create2(name, descriptor, bus, vendor, product, version, country, phys, uniq)
        loop = self._loop or asyncio.get_running_loop()
        self._loop = loop
        self._identity = (f"{bus:04X}:{vendor:04X}:{product:04X}.", name, phys, uniq)
        self._before = frozenset(self._candidates())
        self._started = asyncio.Event()
        fd = os.open(self.path, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            os.write(fd, event)
        except OSError as e:
            os.close(fd)
            raise OSError(e.errno, f"uhid refused to create {name!r}: {e.strerror}") from e
        self.fd = fd
        loop.add_reader(fd, self._on_readable)

    def destroy(self) -> None:
        """Destroy the device and close the fd; safe to call twice.

        Called by the owner when done (tests: on teardown). A reader blocked in a GET/SET
        feature on this device gets an error back (EIO/ENODEV).
        """
        fd, self.fd = self.fd, None
        if fd is None:
            return
        if self._loop is not None:
            self._loop.remove_reader(fd)
        try:
            os.write(fd, pack_destroy())
        except OSError as e:
            log.debug("uhid destroy: %s", e)
        finally:
            os.close(fd)
        self.started = False

    close = destroy

    def __enter__(self) -> UhidDevice:
        return self

    def __exit__(self, *exc: object) -> None:
        self.destroy()

    # --- talking to the kernel ----------------------------------------------------------------

    def input(self, report: bytes) -> None:
        """Send one input report (UHID_INPUT2), as if the device had produced it.

        Never blocks. Raises OSError (EINVAL before the device is up, ENODEV-like errors after
        destroy) and ValueError for an empty or oversized report.
        """
        os.write(self._fd(), pack_input2(report))

    def reply_get_report(self, request_id: int, data: bytes = b"", err: int = 0) -> None:
        """Answer a GET_REPORT that the handler deferred (returned None)."""
        os.write(self._fd(), pack_get_report_reply(request_id, err, b"" if err else data))

    def reply_set_report(self, request_id: int, err: int = 0) -> None:
        """Answer a SET_REPORT that the handler deferred (returned None)."""
        os.write(self._fd(), pack_set_report_reply(request_id, err))

    def _fd(self) -> int:
        if self.fd is None:
            raise OSError(errno.EBADF, "uhid device is not created (or destroyed)")
        return self.fd

    # --- events -------------------------------------------------------------------------------

    def _on_readable(self) -> None:
        """The loop's reader callback: drain every pending event."""
        while self.fd is not None:
            try:
                buf = os.read(self.fd, UHID_EVENT_SIZE)
            except BlockingIOError:
                return
            except OSError as e:
                log.warning("uhid read failed, no more events from this device: %s", e)
                if self._loop is not None:
                    self._loop.remove_reader(self.fd)
                return
            if not buf:
                return
            self._handle(parse_event(buf, self.clock()))

    def _handle(self, ev: UhidEvent) -> None:
        if ev.type == UHID_START:
            self.started, self.dev_flags = True, ev.dev_flags
            if self._started is not None:
                self._started.set()
        elif ev.type == UHID_STOP:
            self.started = False
        elif ev.type == UHID_OPEN:
            self.open_count += 1
        elif ev.type == UHID_CLOSE:
            self.open_count = max(0, self.open_count - 1)
        elif ev.type == UHID_SET_REPORT:
            self.reports[(ev.report_type, ev.report_number)] = ev.data
            err = self.set_report_handler(ev) if self.set_report_handler else 0
            if err is not None:
                self.reply_set_report(ev.request_id, err)
        elif ev.type == UHID_GET_REPORT:
            answer = (self.get_report_handler or self._last_set_report)(ev)
            if isinstance(answer, bytes):
                self.reply_get_report(ev.request_id, answer)
            elif answer is not None:
                self.reply_get_report(ev.request_id, err=answer or errno.EIO)
        self._deliver(ev)

    def _last_set_report(self, ev: UhidEvent) -> bytes | int:
        return self.reports.get((ev.report_type, ev.report_number), errno.EIO)

    def _deliver(self, ev: UhidEvent) -> None:
        if self.events.full():
            self.events.get_nowait()
            self.dropped += 1
        self.events.put_nowait(ev)
        if self.on_event is not None:
            self.on_event(ev)

    async def next_event(self, *types: int, timeout_s: float = 5.0) -> UhidEvent:
        """The next queued event of one of ``types`` (any type if none given).

        Events of other types that come first are taken off the queue and dropped. Raises
        TimeoutError when none arrives within ``timeout_s``.
        """
        async with asyncio.timeout(timeout_s):
            while True:
                ev = await self.events.get()
                if not types or ev.type in types:
                    return ev

    async def wait_started(self, timeout_s: float = 5.0) -> None:
        """Wait for UHID_START: the kernel added the device and a driver bound to it."""
        if self._started is None:
            raise RuntimeError("uhid device not created")
        try:
            await asyncio.wait_for(self._started.wait(), timeout_s)
        except TimeoutError:
            raise TimeoutError(f"uhid device not started within {timeout_s:g} s") from None

    # --- where the device shows up ------------------------------------------------------------

    def _candidates(self) -> list[str]:
        if self._identity is None:
            return []
        prefix = self._identity[0]
        try:
            return [e.name for e in os.scandir(self.sysfs_root) if e.name.startswith(prefix)]
        except FileNotFoundError:
            return []

    def _matches(self, hid_name: str) -> bool:
        assert self._identity is not None
        _, name, phys, uniq = self._identity
        try:
            fields = read_uevent(self.sysfs_root / hid_name / "uevent")
        except OSError:
            return False
        return (
            fields.get("HID_NAME", "") == name
            and fields.get("HID_PHYS", "") == phys
            and fields.get("HID_UNIQ", "") == uniq
        )

    def hid_name(self) -> str | None:
        """The hid device's sysfs name (``0006:1234:5678.0003``), once the kernel added it.

        Found among ``/sys/devices/virtual/misc/uhid/`` children with our bus/vendor/product,
        name, phys and uniq that were not there before :meth:`create`. Raises RuntimeError if
        two such devices appeared at once (give them distinct ``phys`` or ``uniq``).
        """
        if self._hid_name is None and self.fd is not None:
            new = [c for c in self._candidates() if c not in self._before and self._matches(c)]
            if len(new) > 1:
                raise RuntimeError(
                    f"several new uhid devices look like ours ({', '.join(sorted(new))}); "
                    "create them with distinct phys or uniq"
                )
            self._hid_name = new[0] if new else None
        return self._hid_name

    def kernel_id(self) -> int | None:
        """``struct hid_device.id`` of our hid device, once the kernel added it; else None.

        The hex after the dot of :meth:`hid_name` (``3`` for ``0006:1234:5678.0003``): how
        HID-BPF names the device (``hid_bpf_ops.hid_id``, ``hid_bpf_allocate_context``). Called
        by tests that attach BPF programs to a device they created.
        """
        hid = self.hid_name()
        return None if hid is None else int(hid.rsplit(".", 1)[1], 16)

    def hidraw_name(self) -> str | None:
        """``hidrawN`` under our hid device in sysfs, once hidraw has bound; else None."""
        hid = self.hid_name()
        if hid is None:
            return None
        try:
            return next(e.name for e in os.scandir(self.sysfs_root / hid / "hidraw"))
        except (FileNotFoundError, StopIteration):
            return None

    async def wait_hidraw(
        self,
        timeout_s: float = 5.0,
        *,
        udev: bool = True,
        dev_root: Path = Path("/dev"),
        poll_s: float = 0.002,
    ) -> str:
        """The device's ``/dev/hidrawN``, once it exists and udev (if running) has handled it.

        Polls sysfs every ``poll_s``. With ``udev`` and udev running (``/run/udev/control``
        exists), also waits for udev's database entry ``/run/udev/data/c<major>:<minor>`` (so
        its rules and permissions are applied; ~0.5 s under emulation); without, the devtmpfs
        node is enough. Raises TimeoutError with what was missing.
        """
        deadline = time.monotonic() + timeout_s
        missing = "the hid device in sysfs"
        while time.monotonic() < deadline:
            node = self.hidraw_name()
            if node is not None:
                missing = f"{dev_root / node}"
                path = dev_root / node
                if path.exists():
                    if not udev or not _udev_running():
                        return str(path)
                    missing = f"udev's database entry for {path}"
                    if _udev_done(self.sysfs_root / self._hid_name_checked() / "hidraw" / node):
                        return str(path)
            elif self.hid_name() is not None:
                missing = "the hidraw node in sysfs"
            await asyncio.sleep(poll_s)
        raise TimeoutError(f"uhid device: no {missing} within {timeout_s:g} s")

    def _hid_name_checked(self) -> str:
        hid = self.hid_name()
        assert hid is not None
        return hid


def _udev_running() -> bool:
    return os.path.exists("/run/udev/control")


def _udev_done(sysfs_node: Path) -> bool:
    try:
        dev = (sysfs_node / "dev").read_text().strip()
    except OSError:
        return False
    return os.path.exists(f"/run/udev/data/c{dev}")
