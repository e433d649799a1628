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

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from hidbpfd.config.read import ReadError, decode_utf8, read_regular
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


MAX_CAPTURE_BYTES: Final = 32 * 1024 * 1024
"""The biggest capture ``replay`` reads (hid-recorder writes ~40 bytes per event)."""
MAX_DEVICES: Final = 256
"""Device indexes ``D: 0`` .. ``D: 255`` (the kernel filter's rule map holds 256 devices)."""
MAX_EVENT_BYTES: Final = 16384
"""HID_MAX_BUFFER_SIZE: no report the kernel passes on is longer (the feeder takes 65535)."""
MAX_DESCRIPTOR_BYTES: Final = 4096
"""HID_MAX_DESCRIPTOR_SIZE."""
MAX_SECONDS: Final = 10**10

_DEC: Final = re.compile(r"[0-9]+")
_HEX: Final = re.compile(r"[0-9A-Fa-f]{1,8}")
_BYTE: Final = re.compile(r"[0-9A-Fa-f]{1,2}")
_TIME: Final = re.compile(r"([0-9]{1,12})(?:\.([0-9]{1,9}))?")
_TAG: Final = re.compile(r"[A-Za-z]{1,2}")
_E_HINT: Final = "hid-recorder writes 'E: 000000.000000 4 02 00 00 00' (sec.usec, length, bytes)"


def _fail(where: str, what: str, hint: str) -> RecordingError:
    return RecordingError(f"{where}: {what} — {hint}")


def _hexbytes(tokens: list[str], where: str) -> bytes:
    for t in tokens:
        if not _BYTE.fullmatch(t):
            raise _fail(where, f"bad hex byte {t[:20]!r}", "Write each byte as two hex digits")
    return bytes(int(t, 16) for t in tokens)


def _number(tok: str, where: str, what: str, hint: str, *, hexa: bool, top: int) -> int:
    if (_HEX if hexa else _DEC).fullmatch(tok):
        v = int(tok, 16 if hexa else 10)
        if v <= top:
            return v
        raise _fail(where, f"{what} {tok[:20]} is out of range (0..{top})", hint)
    raise _fail(where, f"bad {what} {tok[:20]!r}", hint)


def parse(text: str, path: str = "<recording>") -> Recording:
    """Parse a capture; raises :class:`RecordingError` naming the line of any problem
    (``FILE:LINE: what — hint``). Lines that are not ``TAG: ...`` are errors; tags of newer
    hid-recorder versions that replay does not use are skipped."""
    devices: dict[int, RecordedDevice] = {}
    cur: RecordedDevice | None = None

    def dev() -> RecordedDevice:
        nonlocal cur
        if cur is None:
            cur = devices.setdefault(0, RecordedDevice(0))
        return cur

    for n, raw in enumerate(text.split("\n"), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        where = f"{path}:{n}"
        tag, colon, rest = line.partition(":")
        rest = rest.strip()
        if not colon or not _TAG.fullmatch(tag):
            raise _fail(
                where,
                f"not a capture line: {line[:40]!r}",
                "hid-recorder lines start with a tag such as 'E:' or 'R:'; comments with '#'",
            )
        if "\0" in line:
            raise _fail(where, "a NUL byte", "Is this a text capture of hid-recorder?")
        if tag == "D":
            idx = _number(
                rest,
                where,
                "device index",
                f"Use 0..{MAX_DEVICES - 1}",
                hexa=False,
                top=MAX_DEVICES - 1,
            )
            cur = devices.setdefault(idx, RecordedDevice(idx))
        elif tag == "N":
            dev().name = rest
        elif tag == "P":
            dev().phys = rest
        elif tag == "U":
            dev().uniq = rest
        elif tag == "I":
            parts = rest.split()
            hint = "Write 'I: 3 28bd 0905' (bus vendor product, hex)"
            if len(parts) != 3:
                raise _fail(where, "'I:' needs bus vendor product in hex", hint)
            d = dev()
            d.bus = _number(parts[0], where, "bus", hint, hexa=True, top=0xFFFF)
            d.vendor = _number(parts[1], where, "vendor", hint, hexa=True, top=0xFFFF)
            d.product = _number(parts[2], where, "product", hint, hexa=True, top=0xFFFF)
        elif tag == "R":
            toks = rest.split()
            hint = "Write 'R: 3 05 01 09' (length, then the descriptor's bytes in hex)"
            if not toks:
                raise _fail(where, "empty report descriptor", hint)
            size = _number(
                toks[0], where, "descriptor length", hint, hexa=False, top=MAX_DESCRIPTOR_BYTES
            )
            d = dev()
            d.descriptor = _hexbytes(toks[1:], where)
            if size != len(d.descriptor):
                raise _fail(
                    where, f"descriptor says {size} bytes but has {len(d.descriptor)}", hint
                )
        elif tag == "E":
            toks = rest.split()
            if len(toks) < 3:
                raise _fail(where, "'E:' needs a time, a length and bytes", _E_HINT)
            m = _TIME.fullmatch(toks[0])
            if m is None or int(m.group(1)) >= MAX_SECONDS:
                raise _fail(where, f"bad time {toks[0][:20]!r}", _E_HINT)
            t_ns = int(m.group(1)) * 1_000_000_000 + int((m.group(2) or "").ljust(9, "0"))
            t_ns -= t_ns % 1000  # microseconds, like hid-recorder
            length = _number(
                toks[1],
                where,
                "event length",
                f"An event has 1..{MAX_EVENT_BYTES} bytes",
                hexa=False,
                top=MAX_EVENT_BYTES,
            )
            if length == 0:
                raise _fail(where, "an empty event", f"An event has 1..{MAX_EVENT_BYTES} bytes")
            if len(toks) - 2 != length:
                raise _fail(where, f"event says {length} bytes but has {len(toks) - 2}", _E_HINT)
            data = _hexbytes(toks[2:], where)
            dev().events.append((t_ns, data))
        # other tags of newer hid-recorder versions are ignored
    if not devices:
        raise RecordingError(
            f"{path}:1: no device in recording (no D:, I:, R: or E: line) — "
            "is it a hid-recorder capture?"
        )
    return Recording(path, [devices[k] for k in sorted(devices)])


def load(path: str | Path) -> Recording:
    """Read and parse a capture file: a regular file of at most :data:`MAX_CAPTURE_BYTES`,
    UTF-8 (an error names the line of a bad byte)."""
    p = str(path)
    try:
        text = decode_utf8(read_regular(p, MAX_CAPTURE_BYTES))
    except ReadError as e:
        where = f"{p}:{e.line}" if e.line else p
        raise RecordingError(f"{where}: {e.what} — {e.hint}") from None
    return parse(text, p)
