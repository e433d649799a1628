"""How big the filter's ring buffer (``hidbpfd_ring``) is: from the devices and their rules.

A record the ring has no room for is a report that passes at once (a held-class report then
leaks to the readers: by design, counted in ``ring_drops``), so the ring must absorb the most
records a burst can write while the daemon is not draining (a busy or stalled loop, a slow
machine): every matching device at the fastest HID report rate for :data:`WINDOW_S`::

    bytes = (devices + SPARE_DEVICES) x REPORTS_PER_S x WINDOW_S x RECORD_ALLOC

rounded up to a power of two, at least :data:`FLOOR_BYTES` and at most :data:`CAP_BYTES`.
``devices`` are those present at start that a policy file gives rules to (the ring cannot grow
later: :data:`SPARE_DEVICES` leave room for devices plugged in afterwards). ``ring_kib`` in the
settings (or ``run --ring-kib``) overrides it. Called by :mod:`hidbpfd.runtime` before the
source is opened; the result is logged and shown by ``status`` (``ring``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from hidbpfd.kernel.filter_codec import RECORD_SIZE

RECORD_ALLOC: Final = (RECORD_SIZE + 8 + 7) & ~7
"""Bytes one record takes in a BPF ring buffer: the sample and its 8-byte header, 8-aligned
(160)."""
REPORTS_PER_S: Final = 8000
"""The fastest a HID device reports: one report per 125 µs (a high-speed USB interval)."""
WINDOW_S: Final = 0.25
"""How long the ring must absorb every device at full rate with nobody draining it."""
SPARE_DEVICES: Final = 4
"""Devices counted on top of those present at start (hot-plugged later)."""
FLOOR_BYTES: Final = 1 << 20
CAP_BYTES: Final = 64 << 20


@dataclass(frozen=True, slots=True)
class RingSize:
    """A ring size and where it comes from (for the log and ``status``)."""

    bytes: int
    why: str

    @property
    def records(self) -> int:
        """Full records the ring holds at once."""
        return self.bytes // RECORD_ALLOC

    def describe(self) -> str:
        return f"{self.bytes // 1024} KiB ({self.records} records): {self.why}"


def _pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def ring_size(devices: int, *, ring_kib: int = 0) -> RingSize:
    """The ring for ``devices`` devices with rules (present at start), or ``ring_kib`` KiB
    when the settings give one (a power of two, at least 4: the settings checked it)."""
    if ring_kib:
        return RingSize(ring_kib * 1024, "ring_kib in the settings")
    if devices < 0:
        raise ValueError(f"devices must be >= 0, not {devices}")
    records = (devices + SPARE_DEVICES) * int(REPORTS_PER_S * WINDOW_S)
    want = records * RECORD_ALLOC
    size = min(max(_pow2(want), FLOOR_BYTES), CAP_BYTES)
    why = (
        f"{devices} device(s) with rules + {SPARE_DEVICES} spare, "
        f"{REPORTS_PER_S}/s each for {WINDOW_S:g} s = {records} records"
    )
    if size == CAP_BYTES and want > CAP_BYTES:
        why += f" (capped at {CAP_BYTES >> 20} MiB)"
    elif size == FLOOR_BYTES and want < FLOOR_BYTES:
        why += f" (floor {FLOOR_BYTES >> 20} MiB)"
    return RingSize(size, why)
