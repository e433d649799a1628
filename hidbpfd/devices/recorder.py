"""``hidbpfd record``: a hid-recorder capture read from hidraw, for ``hidbpfd replay``.

Which devices (:func:`select`): each DEVICE names one or more of those present,

- by hidraw node: ``/dev/hidraw3`` (or ``hidraw3``);
- by hid id: ``0003:28BD:0905.0001`` (the name under ``/sys/bus/hid/devices``);
- by a ``[device]``-style match: comma-separated ``key=value`` pairs with the keys and
  meanings of a policy file's ``[device]`` table — ``vendor=0x28bd,product=0x0905``,
  ``name=XP-Pen*``, ``bus=bluetooth,usage_page=0x0c``; every device that matches.

No DEVICE records every HID device that has a hidraw node.

The capture (:func:`header`, :class:`Recorder`): per device a ``D:`` line and its ``R:``
(report descriptor from sysfs), ``N:``, ``P:``, ``U:`` (if any) and ``I:`` lines; then one
``D:`` + ``E:`` pair per report, in the order they were read, stamped with the time since the
recording started. Every line is flushed when written, so whatever ends the recording (its
duration, SIGINT, SIGTERM, the devices going away) leaves a complete file.
"""

from __future__ import annotations

import asyncio
import errno
import os
import re
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final, TextIO

from hidbpfd import __version__
from hidbpfd.config.match import KEYS, DeviceMatch
from hidbpfd.devices.facts import descriptor_facts, read_uevent, usb_interface
from hidbpfd.devices.hidraw import HID_MAX_BUFFER_SIZE
from hidbpfd.devices.udev import device_id_from
from hidbpfd.model import BUS_NAMES, DeviceId

HID_DEVICES: Final = Path("/sys/bus/hid/devices")
_HID_ID: Final = re.compile(r"^[0-9A-Fa-f]{4}:[0-9A-Fa-f]{4}:[0-9A-Fa-f]{4}\.[0-9A-Fa-f]{4,}$")
_HIDRAW: Final = re.compile(r"^(/dev/)?(hidraw\d+)$")
_NUMBERS: Final = ("vendor", "product", "usage_page", "usage", "report_id", "interface")


class SelectError(ValueError):
    """A DEVICE argument is malformed or names no device present; the message says which."""


@dataclass(frozen=True, slots=True)
class Target:
    """One device to record: its identity, hidraw node and report descriptor."""

    id: DeviceId
    hidraw: str
    descriptor: bytes


def parse_match(spec: str) -> DeviceMatch:
    """``vendor=0x28bd,product=0x0905`` → a :class:`DeviceMatch` (numbers in any base
    Python reads, ``bus`` by name or number, the rest as globs). Raises SelectError."""
    vals: dict[str, object] = {}
    for part in spec.split(","):
        key, eq, value = part.partition("=")
        key, value = key.strip(), value.strip()
        if not eq or key not in KEYS:
            raise SelectError(
                f"{spec!r}: {part!r} is not key=value with a [device] key ({', '.join(KEYS)})"
            )
        if key == "bus" and value.lower() in BUS_NAMES:
            vals[key] = BUS_NAMES[value.lower()]
            continue
        if key in _NUMBERS or key == "bus":
            try:
                vals[key] = int(value, 0)
            except ValueError:
                raise SelectError(f"{spec!r}: {key} {value!r} is not a number") from None
        else:
            vals[key] = value
    if "usage" in vals and "usage_page" not in vals:
        raise SelectError(f"{spec!r}: usage needs usage_page")
    return DeviceMatch(**vals)  # type: ignore[arg-type]


def present(hid_devices: Path | None = None) -> list[Target]:
    """Every HID device with a hidraw node, by hid id."""
    out = []
    try:
        dirs = sorted((hid_devices or HID_DEVICES).iterdir())
    except OSError:
        return []
    for d in dirs:
        try:
            nodes = sorted(os.listdir(d / "hidraw"))
            descriptor = (d / "report_descriptor").read_bytes()
            props = read_uevent(d / "uevent")
        except OSError:
            continue
        if not nodes:
            continue
        out.append(Target(device_id_from(d.name, props), f"/dev/{nodes[0]}", descriptor))
    return out


def select(
    specs: Sequence[str], hid_devices: Path | None = None, sys_root: Path = Path("/sys")
) -> list[Target]:
    """The devices the DEVICE arguments name, each once, in argument order (all with a
    hidraw node if none are given). Raises SelectError for one that names nothing."""
    devices = present(hid_devices)
    if not specs:
        return devices
    chosen: list[Target] = []
    for spec in specs:
        if m := _HIDRAW.match(spec):
            found = [t for t in devices if t.hidraw == f"/dev/{m.group(2)}"]
        elif _HID_ID.match(spec):
            found = [t for t in devices if t.id.hid_id.upper() == spec.upper()]
        else:
            match = parse_match(spec)
            found = []
            for t in devices:
                facts = descriptor_facts(
                    t.descriptor,
                    usb_interface((hid_devices or HID_DEVICES) / t.id.hid_id, sys_root),
                )
                if match.matches(t.id, facts):
                    found.append(t)
        if not found:
            raise SelectError(f"no HID device with a hidraw node matches {spec!r}")
        chosen += [t for t in found if t not in chosen]
    return chosen


def header(index: int, t: Target) -> str:
    """The ``D:``/``R:``/``N:``/``P:``/``U:``/``I:`` block of one device."""
    d = t.id
    lines = [
        f"# {d.describe()} on {t.hidraw}",
        f"D: {index}",
        f"R: {len(t.descriptor)} {t.descriptor.hex(' ')}",
        f"N: {d.name}",
        f"P: {d.phys}",
    ]
    if d.uniq:
        lines.append(f"U: {d.uniq}")
    lines.append(f"I: {d.bus:x} {d.vendor:04x} {d.product:04x}")
    return "\n".join(lines) + "\n"


def event_line(t_ns: int, data: bytes) -> str:
    """``E: 000001.250000 8 02 20 ...`` (seconds.microseconds since the start)."""
    us = max(t_ns, 0) // 1000
    return f"E: {us // 1_000_000:06d}.{us % 1_000_000:06d} {len(data)} {data.hex(' ')}\n"


class Recorder:
    """Reads the targets' hidraw nodes on the loop and writes the capture to ``out``.

    Created by :func:`record`; :meth:`start` opens every node (non-blocking, ``add_reader``)
    and writes the headers, :meth:`stop` closes them. ``done`` is set when every device has
    gone away.
    """

    def __init__(
        self,
        targets: Sequence[Target],
        out: TextIO,
        loop: asyncio.AbstractEventLoop,
        clock: Callable[[], int] = time.monotonic_ns,
    ) -> None:
        self.targets = list(targets)
        self.out = out
        self.loop = loop
        self.clock = clock
        self.fds: dict[int, int] = {}  # fd -> target index
        self.t0 = 0
        self.count = 0
        self.done = asyncio.Event()

    def start(self) -> None:
        """Open every node (raises OSError naming the node), write the headers."""
        try:
            for i, t in enumerate(self.targets):
                try:
                    fd = os.open(t.hidraw, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
                except OSError as e:
                    raise OSError(e.errno, f"cannot open {t.hidraw}: {e.strerror}") from e
                self.fds[fd] = i
        except OSError:
            self.stop()
            raise
        self.out.write(f"# recorded by hidbpfd {__version__} record\n")
        for i, t in enumerate(self.targets):
            self.out.write(header(i, t))
        self.out.flush()
        self.t0 = self.clock()
        for fd in self.fds:
            self.loop.add_reader(fd, self._readable, fd)

    def _readable(self, fd: int) -> None:
        index = self.fds.get(fd)
        if index is None:
            return
        while True:
            try:
                data = os.read(fd, HID_MAX_BUFFER_SIZE)
            except BlockingIOError:
                return
            except OSError as e:
                self._gone(fd, index, e.errno or errno.EIO)
                return
            if not data:
                self._gone(fd, index, errno.ENODEV)
                return
            self.out.write(f"D: {index}\n{event_line(self.clock() - self.t0, data)}")
            self.out.flush()
            self.count += 1

    def _gone(self, fd: int, index: int, err: int) -> None:
        self.loop.remove_reader(fd)
        os.close(fd)
        del self.fds[fd]
        self.out.write(f"# device {index} went away ({errno.errorcode.get(err, err)})\n")
        self.out.flush()
        if not self.fds:
            self.done.set()

    def drain(self) -> None:
        """Write what the nodes still have queued (called once before :meth:`stop`)."""
        for fd in list(self.fds):
            self._readable(fd)

    def stop(self) -> None:
        """Stop reading and close every node; safe to call twice."""
        for fd in list(self.fds):
            if self.t0:
                self.loop.remove_reader(fd)
            os.close(fd)
        self.fds.clear()


async def record(targets: Sequence[Target], out: TextIO, duration_s: float | None) -> int:
    """Record until ``duration_s`` passes, SIGINT or SIGTERM arrives, or every device goes
    away; returns how many reports were written."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    rec = Recorder(targets, out, loop)
    try:
        rec.start()
        waiters = [loop.create_task(stop.wait()), loop.create_task(rec.done.wait())]
        try:
            await asyncio.wait(waiters, timeout=duration_s, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waiters:
                w.cancel()
            await asyncio.gather(*waiters, return_exceptions=True)
        rec.drain()
    finally:
        rec.stop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        out.flush()
    return rec.count


def main(specs: Sequence[str], output: str | None, duration_s: float | None) -> int:
    """``hidbpfd record``: 0 when the capture is complete, 1 if no device could be recorded."""
    import sys

    try:
        targets = select(specs)
    except SelectError as e:
        print(f"hidbpfd record: {e}. Try: hidbpfd devices", file=sys.stderr)
        return 1
    if not targets:
        print("hidbpfd record: no HID device with a hidraw node is present", file=sys.stderr)
        return 1
    names = ", ".join(f"{t.id.describe()} ({t.hidraw})" for t in targets)
    until = f"for {duration_s:g} s" if duration_s is not None else "until Ctrl-C"
    print(f"hidbpfd record: recording {names} {until}", file=sys.stderr, flush=True)
    try:
        if output is None:
            count = asyncio.run(record(targets, sys.stdout, duration_s))
        else:
            with open(output, "w", encoding="utf-8") as out:
                count = asyncio.run(record(targets, out, duration_s))
                os.fsync(out.fileno())
    except OSError as e:
        print(f"hidbpfd record: {e}", file=sys.stderr)
        return 1
    print(f"hidbpfd record: {count} report(s) written", file=sys.stderr)
    return 0
