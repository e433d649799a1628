"""Give the service's group what it needs of the pins another loader made for one device.

    PYTHON -m hidbpfd.service.pin_access SYSNAME [--root ROOT] [--group GROUP]
    PYTHON -m hidbpfd.service.pin_access --revoke [--root ROOT] [--group GROUP]

Run by ``units/82-hidbpfd-pins.rules`` (installed by ``hidbpfd install-service``) for each HID
device's ``add``, ``bind`` and ``change``, after udev-hid-bpf's ``81-hid-bpf.rules`` (udev runs
``RUN`` programs in rule order, and only then tells listeners such as the daemon about the
event). A loader running as root pins maps ``0600`` and systemd mounts ``/sys/fs/bpf`` ``0700``,
so the daemon's user could open none of them (docs/programs.md, "Permissions the pins need").

What the daemon needs, and all this grants to its group (``hidbpfd``), nothing to others:

- search (``x``) on every directory of the bpffs from its mount point down to ROOT
  (``/sys/fs/bpf``, ``/sys/fs/bpf/hid``);
- read and search on the device's directory ``ROOT/<device>`` (the daemon lists it);
- search on each object directory there that holds ``hidbpfd_requests`` (objects built with
  ``<hidbpfd/api.h>``; others are left alone);
- read and write on that object's four API map pins (the ring, ``hidbpfd_state``,
  ``hidbpfd_keys``, ``hidbpfd_passing``): the other maps and the link pin stay as they are.

A path the group can already use is not touched. Otherwise its group becomes GROUP and the
group bits needed are added — but only if the group it had got no rights on it (mode
``?0?``): a path whose other group has rights is left alone and named on stderr (exit 1), as
is a missing GROUP. Bits are only ever added, never removed.

``--revoke`` (run by ``hidbpfd uninstall-service``) takes it back: every path of the bpffs down
through ROOT whose group is GROUP gets group root and no group rights.
"""

from __future__ import annotations

import argparse
import grp
import os
import stat
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

DEFAULT_ROOT: Final = "/sys/fs/bpf/hid"
GROUP: Final = "hidbpfd"
API_MAPS: Final = ("hidbpfd_requests", "hidbpfd_state", "hidbpfd_keys", "hidbpfd_passing")
"""The pins the daemon opens read-write (hidbpfd.kernel.pins.MAPS)."""
R, W, X = 4, 2, 1


def pin_name(sysname: str) -> str:
    """As :func:`hidbpfd.kernel.pins.pin_name` (kept here: udev runs this module, and it
    imports nothing of the daemon's)."""
    return sysname.replace(":", "_").replace(".", "_")


@dataclass(frozen=True, slots=True)
class Change:
    """What :func:`plan` decided for one path."""

    path: str
    need: int
    """The group bits the daemon needs (``R|X`` ...)."""
    chgrp: bool
    mode: int
    """The new permission bits (the old ones plus ``need`` for the group)."""
    problem: str = ""
    """Why it is left alone although the daemon cannot use it."""


def _usable(st: os.stat_result, gid: int, need: int) -> bool:
    mode = stat.S_IMODE(st.st_mode)
    return (mode & need) == need or (st.st_gid == gid and ((mode >> 3) & need) == need)


def decide(path: str, st: os.stat_result, gid: int, need: int) -> Change | None:
    """None if the group ``gid`` can already use ``path`` for ``need``; else the change."""
    if _usable(st, gid, need):
        return None
    mode = stat.S_IMODE(st.st_mode)
    if st.st_gid != gid and mode & 0o070:
        return Change(
            path,
            need,
            False,
            mode,
            f"its group (gid {st.st_gid}) has rights on it (mode {mode:04o}): not changed",
        )
    return Change(path, need, st.st_gid != gid, mode | (need << 3))


def targets(root: str, sysname: str) -> list[tuple[str, int]]:
    """The paths to grant and what each needs, in order from the top: the bpffs directories
    down to ``root``, the device's directory (both spellings), its API objects and their
    map pins. Only existing paths on the same file system as ``root``; nothing at all if no
    object of the device has the API's ring (a device with other programs, or none)."""
    top = Path(root)
    try:
        dev = top.stat().st_dev
    except OSError:
        return []
    found: list[tuple[str, int]] = []
    for name in dict.fromkeys((pin_name(sysname), sysname)):
        d = top / name
        try:  # a bpffs answers EPERM for a name with a dot (the sysname)
            if not d.is_dir():
                continue
            objs = [o for o in sorted(d.iterdir()) if o.is_dir() and (o / API_MAPS[0]).exists()]
        except OSError:
            continue
        if not objs:  # nothing of the API pinned for the device: grant nothing
            continue
        found.append((str(d), R | X))
        for obj in objs:
            found.append((str(obj), X))
            found += [(str(obj / m), R | W) for m in API_MAPS if (obj / m).exists()]
    if not found:
        return []
    ups = [p for p in [top, *top.parents] if p != Path("/") and _same_fs(p, dev)]
    out = [(str(p), X) for p in reversed(ups)] + found
    return out


def _same_fs(p: Path, dev: int) -> bool:
    try:
        return p.stat().st_dev == dev
    except OSError:
        return False


def plan(root: str, sysname: str, gid: int) -> list[Change]:
    """Every change :func:`grant` would make (and every path it must leave alone)."""
    out = []
    for path, need in targets(root, sysname):
        change = decide(path, os.stat(path), gid, need)
        if change is not None:
            out.append(change)
    return out


def grant(root: str, sysname: str, group: str = GROUP) -> list[str]:
    """Make the changes; returns the problems (paths left alone, a missing group)."""
    try:
        gid = grp.getgrnam(group).gr_gid
    except KeyError:
        return [f"group {group!r} does not exist (hidbpfd install-service makes it)"]
    problems = []
    for c in plan(root, sysname, gid):
        if c.problem:
            problems.append(f"{c.path}: {c.problem}")
            continue
        try:
            if c.chgrp:
                os.chown(c.path, -1, gid)
            os.chmod(c.path, c.mode)
        except OSError as e:
            problems.append(f"{c.path}: {e.strerror}")
    return problems


def revoke(root: str, group: str = GROUP) -> list[str]:
    """Take back what :func:`grant` gave (``uninstall-service``): every path of the bpffs from
    its mount point down through ``root`` whose group is ``group`` gets group root (gid 0) and
    no group rights. Returns the paths changed."""
    try:
        gid = grp.getgrnam(group).gr_gid
    except KeyError:
        return []
    top = Path(root)
    try:
        dev = top.stat().st_dev
    except OSError:
        return []
    paths = [p for p in [*top.parents] if p != Path("/") and _same_fs(p, dev)]
    for d, dirs, files in os.walk(top):
        paths += [Path(d), *(Path(d) / n for n in [*dirs, *files])]
    changed = []
    for p in paths:
        try:
            st = os.lstat(p)
            if st.st_gid != gid:
                continue
            os.chown(p, -1, 0, follow_symlinks=False)
            os.chmod(p, stat.S_IMODE(st.st_mode) & ~0o070)
        except OSError:
            continue
        changed.append(str(p))
    return changed


def main(argv: Sequence[str] | None = None) -> int:
    """The udev rule's entry point; exit 1 if a path could not be granted (said on stderr,
    which udev logs)."""
    ap = argparse.ArgumentParser(prog="python -m hidbpfd.service.pin_access")
    ap.add_argument("sysname", nargs="?", help="the HID device, e.g. 0003:28BD:0905.0001")
    ap.add_argument("--root", default=DEFAULT_ROOT, help=f"the pin root (default {DEFAULT_ROOT})")
    ap.add_argument("--group", default=GROUP, help=f"the daemon's group (default {GROUP})")
    ap.add_argument("--revoke", action="store_true", help="take back every grant (uninstall)")
    args = ap.parse_args(argv)
    if args.revoke:
        for p in revoke(args.root, args.group):
            print(f"revoked {args.group}'s access to {p}")
        return 0
    if not args.sysname:
        ap.error("give the device's sysname, or --revoke")
    problems = grant(args.root, args.sysname, args.group)
    for p in problems:
        print(f"hidbpfd pin access for {args.sysname}: {p}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
