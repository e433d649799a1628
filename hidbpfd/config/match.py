"""The ``[device]`` table: which devices a policy file applies to."""

from __future__ import annotations

from dataclasses import dataclass
from fnmatch import fnmatchcase

from hidbpfd.model import DeviceId, bus_name


@dataclass(frozen=True, slots=True)
class DeviceMatch:
    """Every key given must match; ``name``/``uniq``/``phys`` are case-sensitive globs."""

    bus: int | None = None
    vendor: int | None = None
    product: int | None = None
    name: str | None = None
    uniq: str | None = None
    phys: str | None = None

    def matches(self, dev: DeviceId) -> bool:
        """True if ``dev`` agrees with every key given."""
        return (
            (self.bus is None or self.bus == dev.bus)
            and (self.vendor is None or self.vendor == dev.vendor)
            and (self.product is None or self.product == dev.product)
            and (self.name is None or fnmatchcase(dev.name, self.name))
            and (self.uniq is None or fnmatchcase(dev.uniq, self.uniq))
            and (self.phys is None or fnmatchcase(dev.phys, self.phys))
        )

    def __str__(self) -> str:
        parts = []
        if self.bus is not None:
            parts.append(f"bus={bus_name(self.bus)}")
        if self.vendor is not None:
            parts.append(f"vendor={self.vendor:#06x}")
        if self.product is not None:
            parts.append(f"product={self.product:#06x}")
        parts += [
            f"{k}={v!r}"
            for k, v in (("name", self.name), ("uniq", self.uniq), ("phys", self.phys))
            if v is not None
        ]
        return " ".join(parts)
