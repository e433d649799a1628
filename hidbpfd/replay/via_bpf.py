"""``replay --via-bpf``: every report of a capture goes through the real kernel filter.

The feeder program (``SEC("syscall")``, run with BPF_PROG_RUN) applies ``hidbpfd_filter()`` to a
report passed in its context, exactly as the HID-BPF program does for a real device; whatever
the filter sends through the ring buffer is what the daemon hears. The dispatch, policies and
virtual clock are the same as the pure replay's, so both print the same trace when the C
filter and :mod:`hidbpfd.engine.filter` agree.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from hidbpfd.engine.filter import Verdict
from hidbpfd.kernel.filter_codec import Record
from hidbpfd.kernel.libbpf import BpfError
from hidbpfd.kernel.source import BpfEventSource, BpfUnavailable
from hidbpfd.model import DeviceId, DeviceRule

__all__ = ["BpfFilterBackend", "BpfUnavailable"]

EPOCH_NS: Final = 1 << 62
"""Added to the replay's clock before it goes to the kernel: the feeder reads 0 as "now"."""


class BpfFilterBackend:
    """A :class:`hidbpfd.replay.virtual.FilterBackend` over the kernel filter; owned by replay."""

    def __init__(self, source: BpfEventSource, records: list[Record]) -> None:
        self.source = source
        self._records = records

    @classmethod
    def open(cls, *, ring_bytes: int = 1 << 16) -> BpfFilterBackend:
        """Load the BPF objects; raises :class:`BpfUnavailable` with the reason when it can't."""
        records: list[Record] = []
        src = BpfEventSource(records.append, ring_bytes=ring_bytes)
        try:
            src.open()
        except BpfError as e:
            raise BpfUnavailable(f"cannot load the BPF filter: {e}. Try: hidbpfd probe") from e
        except OSError as e:
            raise BpfUnavailable(f"cannot load the BPF filter: {e}") from e
        return cls(src, records)

    def set_rules(self, device: DeviceId, rules: Sequence[DeviceRule]) -> None:
        """Install the device's table in the kernel's rule map (armed mask cleared); a map
        the kernel refuses to fill is :class:`BpfUnavailable` (``replay`` says why, exit 1)."""
        try:
            # A replay starts clean: what an earlier replay left armed on the same kernel id
            # does not carry over (set_rules itself keeps the armed state, for reloads).
            self.source.clear_rules(self._kid(device))
            self.source.set_rules(self._kid(device), rules)
        except BpfError as e:
            raise BpfUnavailable(f"{device.describe()}: cannot install its rules: {e}") from e

    def run(self, device: DeviceId, report: bytes, t_ns: int) -> Verdict | None:
        """Feed one report to the kernel filter at the replay's time ``t_ns`` (arm deadlines
        are in that clock) and collect what it put in the ring."""
        self._records.clear()
        try:
            self.source.feed(self._kid(device), report, now_ns=EPOCH_NS + t_ns)
        except (BpfError, ValueError) as e:  # a report the feeder cannot take
            raise BpfUnavailable(f"{device.describe()}: the feeder refused a report: {e}") from e
        self.source.consume()
        if not self._records:
            return None
        if len(self._records) != 1:
            raise RuntimeError(f"the filter produced {len(self._records)} records for one report")
        rec = self._records[0]
        return Verdict(rec.matched, rec.held, rec.truncated)

    def close(self) -> None:
        """Unload everything."""
        self.source.close()

    @staticmethod
    def _kid(device: DeviceId) -> int:
        kid = device.kernel_id
        if not 0 < kid <= 0xFFFFFFFF:
            raise BpfUnavailable(f"{device.describe()} has no kernel hid id")
        return kid
