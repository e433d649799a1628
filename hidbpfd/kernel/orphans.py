"""What an earlier hidbpfd left attached in the kernel: found and removed at start.

Since issue 10 every HID-BPF struct_ops the daemon attaches (the filter's ``hidbpfd_ops``, one
per device, and the in-kernel engine's ``engine_ops``) is a map created with ``BPF_F_LINK``
and registered through a BPF link: the kernel unregisters it when the daemon's last fd on the
link closes, however the daemon dies. Nothing of those can be left behind.

Older versions registered the map itself (a map update, no link). Such a registration outlives
the process that made it: after a crash it keeps holding the device's reports with nobody to
re-inject them, and a restarted daemon's own filter runs after it. :func:`clean` (called once by
the daemon at start, before it attaches anything) finds them — BPF_MAP_GET_NEXT_ID over every
map, BPF_OBJ_GET_INFO_BY_FD for the type, name and flags — and unregisters each registered
struct_ops map named ``hidbpfd_ops`` or ``engine_ops`` that has no ``BPF_F_LINK`` and that no
living process holds an fd of (a running older daemon keeps its fds; its registrations are
left alone), by deleting the map's element. Each is logged.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from hidbpfd.kernel import libbpf as lb
from hidbpfd.kernel import probe

log = logging.getLogger("hidbpfd.kernel.orphans")

NAMES: Final = ("hidbpfd_ops", "engine_ops")
"""The struct_ops maps hidbpfd has ever attached (map names, as BPF_OBJ_NAME_LEN keeps them)."""

# enum bpf_struct_ops_state (kernel/bpf/bpf_struct_ops.c), the value's second __u32
STATE_INIT: Final = 0
STATE_INUSE: Final = 1
STATE_TOBEFREE: Final = 2
STATE_READY: Final = 3


@dataclass(frozen=True, slots=True)
class StructOpsMap:
    """One struct_ops map of the system, as :func:`find` saw it."""

    map_id: int
    name: str
    flags: int
    state: int | None
    """``bpf_struct_ops_state`` from a lookup (None if the kernel did not say)."""
    hid_id: int | None
    """The ``hid_id`` it was registered for (None if the value layout is unknown here)."""

    @property
    def linked(self) -> bool:
        """Registered only through a link (the kernel lets go of it with the link)."""
        return bool(self.flags & lb.BPF_F_LINK)

    def describe(self) -> str:
        """For logs: name, map id, hid_id and how it is registered."""
        hid = f"hid_id {self.hid_id}" if self.hid_id is not None else "hid_id ?"
        how = "link" if self.linked else "map registration"
        return f"struct_ops {self.name} (map id {self.map_id}, {hid}, {how})"


def find(names: tuple[str, ...] = NAMES) -> list[StructOpsMap]:
    """Every struct_ops map in the system named one of ``names`` (needs CAP_SYS_ADMIN)."""
    out = []
    for map_id in lb.map_ids():
        fd = lb.map_fd_by_id(map_id)
        if fd is None:
            continue  # freed meanwhile
        try:
            info = lb.map_info(fd)
            if info.type != lb.BPF_MAP_TYPE_STRUCT_OPS or info.name not in names:
                continue
            state: int | None = None
            hid_id: int | None = None
            with contextlib.suppress(lb.BpfError):
                value = lb.map_lookup(fd, bytes(4), info.value_size)
                if value is not None:
                    # struct bpf_struct_ops_common_value { refcount_t refcnt; enum state; }
                    state = struct.unpack_from("<I", value, 4)[0]
                    offset = probe.kernel_btf().ops_value_offset  # cached: read once
                    if offset is not None and offset + 4 <= len(value):
                        # struct hid_bpf_ops { int hid_id; ... }
                        hid_id = struct.unpack_from("<i", value, offset)[0]
            out.append(StructOpsMap(map_id, info.name, info.map_flags, state, hid_id))
        finally:
            os.close(fd)
    return out


def holders(map_id: int, *, proc: Path = Path("/proc")) -> list[int]:
    """Pids of other processes holding an fd of map ``map_id`` (``/proc/PID/fdinfo``)."""
    me = os.getpid()
    want = f"map_id:\t{map_id}\n"
    out = []
    for pid_dir in proc.iterdir():
        if not pid_dir.name.isdigit() or int(pid_dir.name) == me:
            continue
        try:
            fds = list((pid_dir / "fd").iterdir())
        except OSError:
            continue  # gone, or not ours to look at
        for fd in fds:
            try:
                if os.readlink(fd) != "anon_inode:bpf-map":
                    continue
                if want in (pid_dir / "fdinfo" / fd.name).read_text():
                    out.append(int(pid_dir.name))
                    break
            except OSError:
                continue
    return out


def clean(names: tuple[str, ...] = NAMES) -> list[StructOpsMap]:
    """Unregister what an earlier instance left registered (see the module's docstring);
    returns what was removed. Called once by the daemon at start. Never raises for a single
    map: a failure is logged and the daemon starts anyway."""
    removed = []
    try:
        found = find(names)
    except lb.BpfError as e:
        log.warning("cannot look for struct_ops left by an earlier hidbpfd: %s", e)
        return []
    for m in found:
        if m.linked or m.state not in (STATE_INUSE, None):
            continue  # a link's (its owner is alive), or not registered
        if pids := holders(m.map_id):
            log.warning(
                "%s is registered and held by pid %s: another hidbpfd? left alone",
                m.describe(),
                ", ".join(map(str, pids)),
            )
            continue
        fd = lb.map_fd_by_id(m.map_id)
        if fd is None:
            continue
        try:
            if not lb.map_delete(fd, bytes(4)):
                continue  # ENOENT: unregistered meanwhile
        except lb.BpfError as e:
            if e.errno != errno.EINVAL:  # EINVAL: not registered (any more)
                log.error("%s left by an earlier hidbpfd: cannot remove it: %s", m.describe(), e)
            continue
        finally:
            os.close(fd)
        log.warning(
            "removed %s that an earlier hidbpfd left registered (it held the device's reports)",
            m.describe(),
        )
        removed.append(m)
    return removed
