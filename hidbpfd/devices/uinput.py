"""The uinput injection sink: a HID report turned into evdev events on a sibling input device.

The last resort of :func:`hidbpfd.devices.chooser.injector_factory`, for a device whose kernel
has neither the in-kernel injector nor uhid. :class:`~hidbpfd.devices.evdev_map.EventMapper`
(:mod:`hidbpfd.devices.evdev_map`) does the HID drivers' job of turning a report into events;
:class:`UinputInjector` owns the ``/dev/uinput`` device (python-evdev's :class:`evdev.UInput`)
and writes each report's events with one non-blocking ``write``.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import struct
from collections.abc import Iterable
from pathlib import Path
from typing import Final

import evdev
from evdev import ecodes as e

from hidbpfd.devices.evdev_map import Event, EventMapper

log = logging.getLogger(__name__)

UINPUT_PATH: Final = "/dev/uinput"
# include/uapi/linux/uinput.h: #define UINPUT_MAX_NAME_SIZE 80
UINPUT_MAX_NAME_SIZE: Final = 80
NAME_SUFFIX: Final = " (hidbpfd)"
PHYS_SUFFIX: Final = "/hidbpfd"

# include/uapi/linux/input.h (64-bit, and 32-bit without 64-bit time_t):
# struct input_event { struct timeval time; __u16 type; __u16 code; __s32 value; };
# (uinput ignores the time: the kernel stamps the event)
_INPUT_EVENT: Final = struct.Struct("@llHHi")

# include/uapi/linux/uinput.h: #define UINPUT_IOCTL_BASE 'U'
# #define UI_GET_SYSNAME(len) _IOC(_IOC_READ, UINPUT_IOCTL_BASE, 44, len)
_SYSNAME_LEN: Final = 64


def _ui_get_sysname(length: int) -> int:
    ioc_read, nrbits, typebits, sizebits = 2, 8, 8, 14
    return (
        (ioc_read << (nrbits + typebits + sizebits))
        | (length << (nrbits + typebits))
        | (ord("U") << nrbits)
        | 44
    )


def pack_events(events: Iterable[Event]) -> bytes:
    """``struct input_event`` records for one ``write`` to uinput."""
    return b"".join(_INPUT_EVENT.pack(0, 0, t, c, v) for t, c, v in events)


class _UInput(evdev.UInput):
    """:class:`evdev.UInput` without its search for the new event node: that search opens the
    node (an fd we do not want: every event would queue up in it unread) and may sleep up to
    2 s waiting for udev. We find the node through ``UI_GET_SYSNAME`` when asked instead. An
    fd opened by a constructor that then failed is closed."""

    def __init__(self, **kwargs: object) -> None:
        try:
            super().__init__(**kwargs)  # type: ignore[arg-type]
        except BaseException:
            fd = getattr(self, "fd", -1)
            if isinstance(fd, int) and fd > -1:
                os.close(fd)
                self.fd = -1
            raise
        os.set_inheritable(self.fd, False)

    def _find_device(self, *args: object) -> None:  # type: ignore[override]
        return None


class UinputInjector:
    """Injects reports as evdev events on a uinput device of its own.

    Created by the injector factory at manage time (so readers see the device before the first
    injection); ``close`` (device removal, shutdown) destroys the input device. Raises
    ValueError from the constructor when nothing of the descriptor maps, OSError or
    ``evdev.UInputError`` when uinput refuses.
    """

    def __init__(
        self,
        mapper: EventMapper,
        *,
        name: str,
        bus: int,
        vendor: int,
        product: int,
        phys: str = "",
        devnode: str = UINPUT_PATH,
    ) -> None:
        if mapper.empty:
            raise ValueError("nothing in the report descriptor maps to an evdev event")
        self.mapper = mapper
        base = name[: UINPUT_MAX_NAME_SIZE - 1 - len(NAME_SUFFIX)]
        self._ui: _UInput | None = _UInput(
            events=mapper.capabilities() | ({e.EV_REP: []} if mapper.repeat else {}),
            name=base + NAME_SUFFIX,
            vendor=vendor,
            product=product,
            version=0,
            bustype=bus,
            devnode=devnode,
            phys=phys + PHYS_SUFFIX,
            input_props=sorted(mapper.props),
            max_effects=0,  # no EV_FF: nobody must wait on us for force-feedback uploads
        )
        self.sysname = self._sysname()
        self.name = f"uinput ({self.sysname})" if self.sysname else "uinput"

    def _sysname(self) -> str:
        assert self._ui is not None
        buf = bytearray(_SYSNAME_LEN)
        try:
            fcntl.ioctl(self._ui.fd, _ui_get_sysname(_SYSNAME_LEN), buf)
        except OSError:
            return ""
        return buf.split(b"\0", 1)[0].decode(errors="replace")

    def event_node(self, sys_root: Path = Path("/sys"), dev_root: Path = Path("/dev")) -> str:
        """``/dev/input/eventN`` of our input device ("" if it has none (yet))."""
        if not self.sysname:
            return ""
        base = sys_root / "devices/virtual/input" / self.sysname
        try:
            node = next(p.name for p in base.iterdir() if p.name.startswith("event"))
        except (OSError, StopIteration):
            return ""
        return str(dev_root / "input" / node)

    def inject(self, data: bytes) -> None:
        """Translate and write (one ``write``, never blocks); raises OSError."""
        if self._ui is None:
            raise OSError(errno.EBADF, "uinput sink is closed")
        events = self.mapper.translate(data)
        if events:
            os.write(self._ui.fd, pack_events(events))

    def close(self) -> None:
        """Destroy the input device (UI_DEV_DESTROY) and close the fd; safe twice."""
        ui, self._ui = self._ui, None
        if ui is not None:
            ui.close()
