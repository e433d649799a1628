"""hid-recorder captures (the text format of hid-tools and libinput), parsed into values.

::

    # comments
    D: 0                      (device index, for recordings of several devices)
    R: 52 05 01 09 02 ...     (report descriptor: length, bytes)
    N: XP-Pen Deco            (name)
    P: usb-0000:00:14.0-2/input0   (phys)
    I: 3 28bd 0905            (bus vendor product, hex)
    E: 000000.000000 4 02 00 00 00   (event: sec.usec, length, bytes)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from hidbpfd.model import DeviceId


class RecordingError(ValueError):
    """A line of a capture could not be read; the message names file and line."""


@dataclass(slots=True)
class RecordedDevice:
    """One device of a capture: identity, descriptor, and its events (ns, bytes)."""

    index: int
    name: str = ""
    phys: str = ""
    uniq: str = ""
    bus: int = 0
    vendor: int = 0
    product: int = 0
    descriptor: bytes = b""
    events: list[tuple[int, bytes]] = field(default_factory=list)

    def device_id(self) -> DeviceId:
        """The identity a kernel would give it (hid id numbered from 1 by capture index)."""
        return DeviceId(
            self.bus,
            self.vendor,
            self.product,
            self.name,
            self.uniq,
            self.phys,
            DeviceId.sysfs_name(self.bus, self.vendor, self.product, self.index + 1),
        )


@dataclass(slots=True)
class Recording:
    """A parsed capture."""

    path: str
    devices: list[RecordedDevice]

    def events(self) -> list[tuple[int, RecordedDevice, bytes]]:
        """Every event of every device, in time order (stable for equal times)."""
        evs = [
            (t, d.index, i, d, data) for d in self.devices for i, (t, data) in enumerate(d.events)
        ]
        evs.sort(key=lambda e: (e[0], e[1], e[2]))
        return [(t, d, data) for t, _, _, d, data in evs]


def _hexbytes(tokens: list[str], where: str) -> bytes:
    try:
        return bytes(int(t, 16) for t in tokens)
    except ValueError as e:
        raise RecordingError(f"{where}: bad hex byte ({e})") from e


def parse(text: str, path: str = "<recording>") -> Recording:
    """Parse a capture; raises :class:`RecordingError` naming the line of any problem."""
    devices: dict[int, RecordedDevice] = {}
    cur: RecordedDevice | None = None

    def dev() -> RecordedDevice:
        nonlocal cur
        if cur is None:
            cur = devices.setdefault(0, RecordedDevice(0))
        return cur

    for n, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        where = f"{path}:{n}"
        tag, _, rest = line.partition(":")
        rest = rest.strip()
        if tag == "D":
            try:
                idx = int(rest)
            except ValueError as e:
                raise RecordingError(f"{where}: bad device index {rest!r}") from e
            cur = devices.setdefault(idx, RecordedDevice(idx))
        elif tag == "N":
            dev().name = rest
        elif tag == "P":
            dev().phys = rest
        elif tag == "U":
            dev().uniq = rest
        elif tag == "I":
            parts = rest.split()
            if len(parts) != 3:
                raise RecordingError(f"{where}: 'I:' needs bus vendor product in hex")
            d = dev()
            d.bus, d.vendor, d.product = (int(p, 16) for p in parts)
        elif tag == "R":
            toks = rest.split()
            if not toks:
                raise RecordingError(f"{where}: empty report descriptor")
            d = dev()
            d.descriptor = _hexbytes(toks[1:], where)
            if int(toks[0]) != len(d.descriptor):
                raise RecordingError(
                    f"{where}: descriptor says {toks[0]} bytes but has {len(d.descriptor)}"
                )
        elif tag == "E":
            toks = rest.split()
            if len(toks) < 2:
                raise RecordingError(f"{where}: 'E:' needs a time, a length and bytes")
            sec, _, usec = toks[0].partition(".")
            try:
                t_ns = int(sec) * 1_000_000_000 + int(usec.ljust(6, "0")[:6]) * 1000
                length = int(toks[1])
            except ValueError as e:
                raise RecordingError(f"{where}: bad time or length") from e
            data = _hexbytes(toks[2:], where)
            if length != len(data):
                raise RecordingError(f"{where}: event says {length} bytes but has {len(data)}")
            dev().events.append((t_ns, data))
        # other tags of newer hid-recorder versions are ignored
    if not devices:
        raise RecordingError(f"{path}: no device in recording")
    return Recording(path, [devices[k] for k in sorted(devices)])


def load(path: str | Path) -> Recording:
    """Read and parse a capture file."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise RecordingError(f"{p}: cannot read: {e}") from e
    return parse(text, str(p))
