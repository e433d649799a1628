"""The ``[device]`` table: which devices a policy file applies to.

Identity keys (``bus``, ``vendor``, ``product``, ``name``, ``uniq``, ``phys``) come from the
device's :class:`~hidbpfd.model.DeviceId`. The interface keys pick one HID interface of a
physical device that has several (a tablet's pen, pad and vendor interfaces; a receiver's
keyboard and mouse): ``usage_page`` / ``usage`` of a top-level application collection and
``report_id`` (a report the descriptor declares) from its report descriptor, ``interface``
(the USB ``bInterfaceNumber``) from sysfs — all through :class:`~hidbpfd.model.DeviceFacts`.
"""

from __future__ import annotations

from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Final

from hidbpfd.model import DeviceFacts, DeviceId, bus_name

KEYS: Final = (
    "bus",
    "vendor",
    "product",
    "name",
    "uniq",
    "phys",
    "usage_page",
    "usage",
    "report_id",
    "interface",
)
"""Every ``[device]`` key, in the order they are checked and printed."""

_UNKNOWN: Final = DeviceFacts()


@dataclass(frozen=True, slots=True)
class DeviceMatch:
    """Every key given must match; ``name``/``uniq``/``phys`` are case-sensitive globs.

    ``usage_page`` (with ``usage``, if given) must be a top-level application collection of
    the descriptor; ``report_id`` must be declared by it; ``interface`` must be the USB
    interface number (a device off USB has none, so it never matches ``interface``).
    """

    bus: int | None = None
    vendor: int | None = None
    product: int | None = None
    name: str | None = None
    uniq: str | None = None
    phys: str | None = None
    usage_page: int | None = None
    usage: int | None = None
    report_id: int | None = None
    interface: int | None = None

    def mismatches(self, dev: DeviceId, facts: DeviceFacts | None = None) -> tuple[str, ...]:
        """The keys given that ``dev`` does not agree with (empty: it matches). Called by
        :meth:`matches` and by ``hidbpfd devices`` (which names them for near misses)."""
        f = facts or _UNKNOWN
        bad = []
        if self.bus is not None and self.bus != dev.bus:
            bad.append("bus")
        if self.vendor is not None and self.vendor != dev.vendor:
            bad.append("vendor")
        if self.product is not None and self.product != dev.product:
            bad.append("product")
        for key, value in (("name", dev.name), ("uniq", dev.uniq), ("phys", dev.phys)):
            glob = getattr(self, key)
            if glob is not None and not fnmatchcase(value, glob):
                bad.append(key)
        if self.usage_page is not None:
            apps = f.applications or ()
            if not any(a >> 16 == self.usage_page for a in apps):
                bad.append("usage_page")
            elif self.usage is not None and (self.usage_page << 16 | self.usage) not in apps:
                bad.append("usage")
        if self.report_id is not None and self.report_id not in (f.report_ids or ()):
            bad.append("report_id")
        if self.interface is not None and self.interface != f.interface:
            bad.append("interface")
        return tuple(bad)

    def matches(self, dev: DeviceId, facts: DeviceFacts | None = None) -> bool:
        """True if ``dev`` (with what is known of its descriptor and interface) agrees with
        every key given."""
        return not self.mismatches(dev, facts)

    @property
    def keys(self) -> tuple[str, ...]:
        """The keys this table gives."""
        return tuple(k for k in KEYS if getattr(self, k) is not None)

    def __str__(self) -> str:
        parts = []
        if self.bus is not None:
            parts.append(f"bus={bus_name(self.bus)}")
        for k in ("vendor", "product", "usage_page", "usage"):
            v = getattr(self, k)
            if v is not None:
                parts.append(f"{k}={v:#06x}")
        parts += [
            f"{k}={v!r}"
            for k, v in (("name", self.name), ("uniq", self.uniq), ("phys", self.phys))
            if v is not None
        ]
        parts += [
            f"{k}={v}"
            for k, v in (("report_id", self.report_id), ("interface", self.interface))
            if v is not None
        ]
        return " ".join(parts)
