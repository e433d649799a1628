"""The uhid mirror injection sink: a sibling HID device that speaks the same reports.

For a device whose kernel lacks the in-kernel injector (``hid_bpf_input_report``) but has
uhid, :func:`hidbpfd.devices.chooser.injector_factory` creates, at manage time, a uhid device
with the same report descriptor (read from sysfs) and identity — bus, vendor, product and
uniq; the name suffixed ``" (hidbpfd)"``, the phys suffixed ``"/hidbpfd"`` — and injects
reports into it as ``UHID_INPUT2``. The kernel's own HID drivers turn them into evdev events,
so readers (libinput) see the injected events come from the sibling device, with the same
quirks as far as they match on bus/vendor/product.

Life of a mirror, on the daemon's loop::

    __init__      UHID_CREATE2 (non-blocking write); a task owned by the mirror waits for it
    _come_up()    UHID_START, then the hidraw node (the driver's probe has connected hid-input
                  and hidraw), then ``SETTLE_S`` for the probe to return: until then the
                  kernel's ``driver_input_lock`` is held and uhid drops input silently
    inject()      before that: queued (up to ``QUEUE_MAX``); after: one UHID_INPUT2 write
    close()       cancels the task, UHID_DESTROY, closes the fd (device removal, shutdown)

The mirror answers the kernel's GET/SET_REPORT on the sibling itself (UhidDevice's echo of the
last SET_REPORT, else EIO) rather than forwarding them to the real device.
"""

from __future__ import annotations

import asyncio
import errno
import logging
from collections import deque
from pathlib import Path
from typing import Final

from hidbpfd.devices.udev import HidDevice
from hidbpfd.devices.uhid import SYSFS_UHID, UHID_PATH, UhidDevice
from hidbpfd.model import DeviceId

log = logging.getLogger(__name__)

NAME_SUFFIX: Final = " (hidbpfd)"
PHYS_SUFFIX: Final = "/hidbpfd"
QUEUE_MAX: Final = 64
"""Reports kept while the mirror comes up (a macro of 64 reports fits)."""
READY_TIMEOUT_S: Final = 5.0
SETTLE_S: Final = 0.05
# include/uapi/linux/uhid.h, struct uhid_create2_req: __u8 name[128]; phys[64]; uniq[64]
_NAME_MAX: Final = 127
_PHYS_MAX: Final = 63


def is_mirror(dev: DeviceId) -> bool:
    """True for a device that is one of our mirrors (its name and phys carry our suffixes).

    The daemon must not manage a mirror like the device it mirrors (a policy matching the
    device's vendor/product or name glob also matches the mirror); the injector factory gives
    one no sink of its own.
    """
    return dev.phys.endswith(PHYS_SUFFIX) and dev.name.endswith(NAME_SUFFIX)


def read_descriptor(hd: HidDevice, sys_root: Path = Path("/sys")) -> bytes:
    """The device's report descriptor from sysfs (as the kernel uses it, after any fixup).

    Tries ``/sys/bus/hid/devices/<hid_id>/report_descriptor`` then
    ``<hidraw sys path>/device/report_descriptor``. Raises OSError naming what was tried.
    """
    tried: list[str] = []
    paths = []
    if hd.id.hid_id:
        paths.append(sys_root / "bus/hid/devices" / hd.id.hid_id / "report_descriptor")
    if hd.sys_path:
        paths.append(Path(hd.sys_path) / "device/report_descriptor")
    for path in paths:
        try:
            data = path.read_bytes()
        except OSError as e:
            tried.append(f"{path}: {e.strerror or e}")
            continue
        if data:
            return data
        tried.append(f"{path}: empty")
    raise OSError(errno.ENOENT, "no report descriptor: " + ("; ".join(tried) or "no sysfs path"))


def _fit(base: str, suffix: str, limit: int) -> str:
    """``base + suffix`` within ``limit`` UTF-8 bytes, cutting ``base`` (never the suffix)."""
    room = limit - len(suffix.encode())
    raw = base.encode()[:room]
    return raw.decode(errors="ignore") + suffix


class UhidMirror:
    """A uhid sibling of one device; reports injected into it reach readers as its own input.

    Created by the injector factory on the loop's thread (raises OSError if uhid refuses,
    ValueError for a descriptor uhid cannot take); used and closed there.
    """

    def __init__(
        self,
        dev: DeviceId,
        descriptor: bytes,
        *,
        uhid_path: str = UHID_PATH,
        sysfs_root: Path = SYSFS_UHID,
        ready_timeout_s: float = READY_TIMEOUT_S,
        settle_s: float = SETTLE_S,
        queue_max: int = QUEUE_MAX,
    ) -> None:
        self.dev = dev
        self.name = "uhid mirror"
        self.ready_timeout_s = ready_timeout_s
        self.settle_s = settle_s
        self.queue_max = queue_max
        self.pending: deque[bytes] = deque()
        self.ready = False
        self.failed = ""
        self.closed = False
        self.hidraw = ""
        self.uhid = UhidDevice(path=uhid_path, sysfs_root=sysfs_root, queue_size=16)
        self.uhid.create(
            _fit(dev.name or f"{dev.vendor:04x}:{dev.product:04x}", NAME_SUFFIX, _NAME_MAX),
            descriptor,
            dev.bus,
            dev.vendor,
            dev.product,
            phys=_fit(dev.phys, PHYS_SUFFIX, _PHYS_MAX),
            uniq=_fit(dev.uniq, "", _PHYS_MAX),
        )
        self._task: asyncio.Task[None] | None = asyncio.get_running_loop().create_task(
            self._come_up(), name=f"hidbpfd-uhid-mirror-{dev.key}"
        )

    async def _come_up(self) -> None:
        try:
            await self.uhid.wait_started(self.ready_timeout_s)
            self.hidraw = await self.uhid.wait_hidraw(self.ready_timeout_s, udev=False)
            await asyncio.sleep(self.settle_s)
        except (TimeoutError, RuntimeError) as e:
            self.failed = str(e)
            log.warning(
                "%s: uhid mirror did not come up (%s); %d queued report(s) dropped",
                self.dev.describe(),
                e,
                len(self.pending),
            )
            self.pending.clear()
            return
        finally:
            self._task = None
        self.ready = True
        self.name = f"uhid mirror ({self.uhid.hid_name() or '?'})"
        sent = 0
        while self.pending:
            try:
                self.uhid.input(self.pending.popleft())
                sent += 1
            except (OSError, ValueError) as e:
                log.warning("%s: uhid mirror: queued report not sent: %s", self.dev.describe(), e)
        log.info(
            "%s: %s is up (%s)%s",
            self.dev.describe(),
            self.name,
            self.hidraw,
            f"; {sent} queued report(s) sent" if sent else "",
        )

    def inject(self, data: bytes) -> None:
        """One UHID_INPUT2 (never blocks); queued while the mirror comes up. Raises OSError."""
        if self.closed:
            raise OSError(errno.EBADF, "uhid mirror is closed")
        if self.failed:
            raise OSError(errno.ENODEV, f"uhid mirror did not come up: {self.failed}")
        if not self.ready:
            if len(self.pending) >= self.queue_max:
                raise OSError(
                    errno.ENOBUFS,
                    f"uhid mirror not up yet and {self.queue_max} reports already waiting",
                )
            self.pending.append(data)
            return
        try:
            self.uhid.input(data)
        except ValueError as e:
            raise OSError(errno.EINVAL, str(e)) from e

    def close(self) -> None:
        """Stop waiting, destroy the uhid device, close its fd; safe twice."""
        self.closed = True
        self.pending.clear()
        if self._task is not None:
            self._task.cancel()
            self._task = None
        self.uhid.destroy()
