"""Programs loaded by another loader (udev-hid-bpf and the like): their maps pinned in a bpffs
as ``ROOT/<device>/<object>/<map>``. A bpffs refuses names with a dot (EPERM), so ``<device>``
is the device's sysname with ``:`` and ``.`` made ``_``, as udev-hid-bpf names it
(``0003:28BD:0905.0001`` -> ``/sys/fs/bpf/hid/0003_28BD_0905_0001/pen/hidbpfd_requests``); the
sysname itself is looked for too (a root on another file system).

:func:`scan` finds, for one device, every object directory holding the request ring of
``<hidbpfd/api.h>`` (``hidbpfd_requests``); :class:`PinnedInstance` opens those maps with
``bpf_obj_get`` and serves them like a :class:`hidbpfd.kernel.programs.ProgramInstance`,
except that it loads and attaches nothing: the other loader owns the program and its link.

Callbacks (``hidbpfd_call``): a pinned object's ``SEC("syscall")`` programs are not reachable
through its map pins, and finding them among all loaded programs needs CAP_SYS_ADMIN
(``BPF_PROG_GET_NEXT_ID``), which the daemon does not have; so a pinned object has no
callbacks, and its calls are refused and counted (``refused.callback`` in ``status``).
"""

from __future__ import annotations

import errno
import logging
import os
import re
import stat
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from hidbpfd.kernel import libbpf as lb
from hidbpfd.kernel import requests as rq

log = logging.getLogger("hidbpfd.kernel.pins")

DEFAULT_ROOT: Final = "/sys/fs/bpf/hid"
SYSNAME: Final = re.compile(r"^[0-9A-F]{4}:[0-9A-F]{4}:[0-9A-F]{4}\.([0-9A-F]{4,})$")
"""A HID device's sysname, ``BUS:VENDOR:PRODUCT.ID`` (hex); the last part is its hid_id."""
PIN_NAME: Final = re.compile(r"^[0-9A-F]{4}_[0-9A-F]{4}_[0-9A-F]{4}_([0-9A-F]{4,})$")
"""The same as a bpffs directory name: ``BUS_VENDOR_PRODUCT_ID``."""
MAPS: Final = (rq.REQUESTS_MAP, rq.STATE_MAP, rq.KEYS_MAP, rq.PASSING_MAP)
"""What an object must have pinned to be served (all declared by <hidbpfd/api.h>)."""
NOT_SERVED: Final = "pinned without the maps of this hidbpfd's <hidbpfd/api.h>"
NO_CALLBACKS: Final = (
    'pinned by another loader: its SEC("syscall") callbacks are not reachable through map pins'
)


GRANT_HINT: Final = (
    "hidbpfd install-service's udev rule 82-hidbpfd-pins.rules grants the hidbpfd group this "
    "after the loader ran; by hand: python3 -m hidbpfd.service.pin_access SYSNAME (as root), "
    "see docs/programs.md"
)


def _who(path: str) -> str:
    try:
        st = os.stat(path)
    except OSError as e:
        return e.strerror or "?"
    return f"uid {st.st_uid} gid {st.st_gid} mode {stat.S_IMODE(st.st_mode) & 0o777:04o}"


def denied(path: str, need: int = os.R_OK | os.W_OK) -> str:
    """Why this process cannot use ``path`` (a pin: ``need`` read-write; a directory to list:
    read), naming the first directory on the way it may not search, or the path itself and its
    owner and mode; ``""`` if it can. (``os.access``: the real ids, which are the daemon's.)"""
    parts = os.path.abspath(path).split(os.sep)[1:]
    for i in range(1, len(parts)):
        d = os.sep + os.path.join(*parts[:i])
        if not os.access(d, os.X_OK):
            return f"no search (x) permission on {d} ({_who(d)}) for uid {os.getuid()}"
    if os.access(path, need):
        return ""
    what = {os.R_OK | os.W_OK: "read-write", os.R_OK: "read"}.get(need, "access")
    return f"no {what} permission on {path} ({_who(path)}) for uid {os.getuid()} gid {os.getgid()}"


def hid_id_of(sysname: str) -> int | None:
    """The kernel's hid_id of a device sysname or its pin directory name
    (``0003:28BD:0905.000A`` or ``0003_28BD_0905_000A`` -> 10), or None if it is neither."""
    m = SYSNAME.match(sysname) or PIN_NAME.match(sysname)
    return int(m.group(1), 16) if m else None


def pin_name(sysname: str) -> str:
    """The directory a loader pins a device's objects in: ``0003:28BD:0905.0001`` ->
    ``0003_28BD_0905_0001`` (udev-hid-bpf's name; a bpffs takes no dots)."""
    return sysname.replace(":", "_").replace(".", "_")


@dataclass(frozen=True, slots=True)
class PinnedObject:
    """One object directory found under a pin root for a device."""

    root: str
    sysname: str
    name: str
    """The object's directory name (udev-hid-bpf: the object file's name without .bpf.o)."""
    path: str
    missing: tuple[str, ...] = ()
    """API maps the directory lacks (it has the ring but cannot be served: said in status)."""

    @property
    def label(self) -> str:
        """For logs, status and traces: ``pinned:<path>``."""
        return f"pinned:{self.path}"


def scan(roots: list[str] | tuple[str, ...], sysname: str) -> list[PinnedObject]:
    """Every object pinned for device ``sysname`` under ``roots`` that has the API's request
    ring, in root order then by name. Directories without the ring (programs that do not use
    ``<hidbpfd/api.h>``) are not listed; unreadable roots are skipped (logged at debug)."""
    out: list[PinnedObject] = []
    if SYSNAME.match(sysname) is None:
        return out
    for root, dirname in [(r, n) for r in roots for n in (pin_name(sysname), sysname)]:
        dev = Path(root) / dirname
        try:
            names = sorted(os.listdir(dev))
        except OSError as e:
            if e.errno == errno.EACCES:  # say exactly what is missing
                # the root unreachable: maybe nothing is pinned (info); else pins are there
                level = logging.WARNING if os.access(root, os.X_OK) else logging.INFO
                why = denied(str(dev), os.R_OK)
                log.log(level, "%s: cannot list: %s. %s", dev, why, GRANT_HINT)
            else:  # ENOENT; EPERM for a name with a dot on a bpffs
                log.debug("%s: %s", dev, e.strerror)
            continue
        for name in names:
            d = dev / name
            try:
                if not d.is_dir() or not (d / rq.REQUESTS_MAP).exists():
                    continue
                missing = tuple(m for m in MAPS if not (d / m).exists())
            except OSError:
                continue
            out.append(PinnedObject(root, sysname, name, str(d), missing))
    return out


class PinnedInstance:
    """A :class:`hidbpfd.daemon.ProgramHandle` for a :class:`PinnedObject`: its maps opened by
    ``bpf_obj_get``; ``on_record(raw)`` is called from :meth:`consume` per request record."""

    def __init__(self, pinned: PinnedObject, hid_id: int, on_record: Callable[[bytes], None]):
        self.pinned = pinned
        self.hid_id = hid_id
        self._on_record = on_record
        self._fds: dict[str, int] = {}
        self._ring: lb.RingBuffer | None = None

    engine: Final = "userspace"
    callbacks: Final = frozenset[str]()

    def load(self) -> None:
        """Open the pinned maps and watch the ring (BpfError naming the pin on failure: a
        missing map, EACCES for the pins' mode). Writes nothing: the budget stays the other
        loader's."""
        if self.pinned.missing:
            raise lb.BpfError(
                f"{self.pinned.path}",
                2,
                f"not pinned: {', '.join(self.pinned.missing)} (not built with this "
                "hidbpfd's <hidbpfd/api.h>?)",
            )
        try:
            for m in MAPS:
                pin = os.path.join(self.pinned.path, m)
                try:
                    self._fds[m] = lb.obj_get(pin)
                except lb.BpfError as e:
                    if e.errno != errno.EACCES:
                        raise
                    why = denied(pin) or "EACCES from BPF_OBJ_GET"
                    msg = f"{why}. {GRANT_HINT}"
                    raise lb.BpfError(f"bpf_obj_get({pin})", e.errno, msg) from None
            self._ring = lb.RingBuffer(self._fds[rq.REQUESTS_MAP], self._on_record)
        except BaseException:
            self.close()
            raise
        log.info("%s: serving hid_id %d (pinned by another loader)", self.pinned.path, self.hid_id)

    @property
    def epoll_fd(self) -> int:
        """Readable when requests wait."""
        return self._ring.epoll_fd if self._ring else -1

    def consume(self) -> int:
        """Handle every waiting request now; returns how many."""
        return self._ring.consume() if self._ring else 0

    def run_callback(self, name: str, key: int, arg: int) -> int:
        """Never reached (no callbacks: the server refuses calls first)."""
        raise lb.BpfError(f"callback {name}", 95, NO_CALLBACKS)

    def state(self) -> rq.State | None:
        """The pinned state map (counters, budget)."""
        fd = self._fds.get(rq.STATE_MAP, -1)
        if fd < 0:
            return None
        raw = lb.map_lookup(fd, struct.pack("<I", 0), rq.STATE_SIZE)
        return rq.decode_state(raw) if raw else None

    def set_passing(self, size: int) -> None:
        """As :meth:`hidbpfd.kernel.programs.ProgramInstance.set_passing`."""
        fd = self._fds.get(rq.PASSING_MAP, -1)
        if fd >= 0:
            lb.map_update(fd, struct.pack("<I", 0), struct.pack("<I", size))

    def key_done(self, key: int, ts_ns: int) -> None:
        """As :meth:`hidbpfd.kernel.programs.ProgramInstance.key_done`."""
        fd = self._fds.get(rq.KEYS_MAP, -1)
        if fd < 0:
            return
        k = struct.pack("<I", key)
        v = lb.map_lookup(fd, k, 8)
        if v is not None and struct.unpack("<Q", v)[0] == ts_ns:
            lb.map_delete(fd, k)

    def close(self) -> None:
        """Stop serving: free the ring consumer, close our map fds (the other loader's
        program, link and pins stay). Idempotent."""
        if self._ring:
            self._ring.free()
            self._ring = None
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()
