"""HID report descriptors, parsed into typed fields: which bits of which report mean what.

Used by the uinput sink (:mod:`hidbpfd.devices.uinput`) to turn an input report into evdev
events. Pure: no I/O, no kernel; :func:`parse` is called once per device, :meth:`Field.values`
once per field of every injected report.

The grammar is the HID 1.11 specification's (section 6.2.2), read the way the kernel's
``drivers/hid/hid-core.c`` reads it where the two differ:

- an item is a prefix byte ``tag:4 | type:2 | size:2`` (size 3 means 4 bytes) and its data,
  little-endian; ``0xFE`` starts a long item (skipped, as the kernel does);
- *global* items (usage page, logical/physical extents, unit, report size/count/ID, push/pop)
  persist until changed; *local* items (usages, usage ranges) are consumed by the next *main*
  item (input/output/feature, collection, end collection);
- a usage given in 1 or 2 bytes takes the usage page current at the main item (spec 6.2.2.8,
  ``hid_concatenate_last_usage_page``); a 4-byte usage carries its own page;
- logical (and physical) maximum is read unsigned unless the minimum is negative
  (``hid_parser_global``), so ``15 00 25 ff`` is 0..255;
- a variable field with fewer usages than its count repeats the last usage; an array field's
  value ``v`` names usage ``usages[v - logical_min]`` (out of range: no usage);
- fields wider than 32 bits are kept for the layout but give no values (``hid_field_extract``).

Report IDs: when the descriptor declares any, every report starts with its ID byte and field
offsets here count from the start of the report *including* that byte, so a report can be read
exactly as hidraw delivers it or as it is injected.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import Final

# Usage pages (HID Usage Tables 1.5, section 3)
PAGE_GENERIC_DESKTOP: Final = 0x01
PAGE_SIMULATION: Final = 0x02
PAGE_KEYBOARD: Final = 0x07
PAGE_LED: Final = 0x08
PAGE_BUTTON: Final = 0x09
PAGE_CONSUMER: Final = 0x0C
PAGE_DIGITIZER: Final = 0x0D

PAGE_NAMES: Final[dict[int, str]] = {
    PAGE_GENERIC_DESKTOP: "Generic Desktop",
    PAGE_SIMULATION: "Simulation",
    PAGE_KEYBOARD: "Keyboard/Keypad",
    PAGE_LED: "LED",
    PAGE_BUTTON: "Button",
    PAGE_CONSUMER: "Consumer",
    PAGE_DIGITIZER: "Digitizer",
}

# include/linux/hid.h: #define HID_MAX_USAGES 12288 (usages per field; more are an error there)
MAX_USAGES: Final = 12288
# include/linux/hid.h: #define HID_MAX_IDS 256
MAX_REPORT_ID: Final = 255

# Main item data bits (HID 1.11, 6.2.2.5), include/linux/hid.h HID_MAIN_ITEM_*
FLAG_CONSTANT: Final = 0x001
FLAG_VARIABLE: Final = 0x002
FLAG_RELATIVE: Final = 0x004
FLAG_WRAP: Final = 0x008
FLAG_NONLINEAR: Final = 0x010
FLAG_NO_PREFERRED: Final = 0x020
FLAG_NULL_STATE: Final = 0x040
FLAG_BUFFERED_BYTES: Final = 0x100


class ItemType(enum.IntEnum):
    """bType of a short item (``include/linux/hid.h``: HID_ITEM_TYPE_*)."""

    MAIN = 0
    GLOBAL = 1
    LOCAL = 2
    LONG = 3


# Main item tags (HID_MAIN_ITEM_TAG_*)
MAIN_INPUT: Final = 0x8
MAIN_OUTPUT: Final = 0x9
MAIN_COLLECTION: Final = 0xA
MAIN_FEATURE: Final = 0xB
MAIN_END_COLLECTION: Final = 0xC

# Global item tags (HID_GLOBAL_ITEM_TAG_*)
GLOBAL_USAGE_PAGE: Final = 0x0
GLOBAL_LOGICAL_MINIMUM: Final = 0x1
GLOBAL_LOGICAL_MAXIMUM: Final = 0x2
GLOBAL_PHYSICAL_MINIMUM: Final = 0x3
GLOBAL_PHYSICAL_MAXIMUM: Final = 0x4
GLOBAL_UNIT_EXPONENT: Final = 0x5
GLOBAL_UNIT: Final = 0x6
GLOBAL_REPORT_SIZE: Final = 0x7
GLOBAL_REPORT_ID: Final = 0x8
GLOBAL_REPORT_COUNT: Final = 0x9
GLOBAL_PUSH: Final = 0xA
GLOBAL_POP: Final = 0xB

# Local item tags (HID_LOCAL_ITEM_TAG_*)
LOCAL_USAGE: Final = 0x0
LOCAL_USAGE_MINIMUM: Final = 0x1
LOCAL_USAGE_MAXIMUM: Final = 0x2
LOCAL_DELIMITER: Final = 0xA

# Collection types (HID_COLLECTION_*)
COLLECTION_PHYSICAL: Final = 0
COLLECTION_APPLICATION: Final = 1
COLLECTION_LOGICAL: Final = 2

_LONG_ITEM: Final = 0xFE


class DescriptorError(ValueError):
    """The descriptor cannot be parsed; the message gives the byte offset and why."""


def usage_name(usage: int) -> str:
    """``Keyboard/Keypad 0x68`` for an extended (page << 16 | id) usage; for log lines."""
    page, uid = usage >> 16, usage & 0xFFFF
    return f"{PAGE_NAMES.get(page, f'page 0x{page:04x}')} 0x{uid:02x}"


@dataclass(frozen=True, slots=True)
class Item:
    """One short item: where it starts, its type and tag, and its raw data (0, 1, 2 or 4
    bytes, little-endian)."""

    offset: int
    type: ItemType
    tag: int
    data: bytes

    @property
    def unsigned(self) -> int:
        """The data as an unsigned number (``item_udata``)."""
        return int.from_bytes(self.data, "little") if self.data else 0

    @property
    def signed(self) -> int:
        """The data as a two's complement number of its own size (``item_sdata``)."""
        return int.from_bytes(self.data, "little", signed=True) if self.data else 0


def items(descriptor: bytes) -> Iterator[Item]:
    """Every short item of ``descriptor`` in order (long items are skipped).

    Raises :class:`DescriptorError` when an item runs past the end.
    """
    pos = 0
    end = len(descriptor)
    while pos < end:
        prefix = descriptor[pos]
        if prefix == _LONG_ITEM:
            if pos + 3 > end:
                raise DescriptorError(f"offset {pos}: long item header runs past the end")
            size = descriptor[pos + 1]
            if pos + 3 + size > end:
                raise DescriptorError(f"offset {pos}: long item of {size} bytes runs past the end")
            pos += 3 + size
            continue
        size = (0, 1, 2, 4)[prefix & 0x3]
        if pos + 1 + size > end:
            raise DescriptorError(
                f"offset {pos}: item 0x{prefix:02x} needs {size} data bytes, {end - pos - 1} left"
            )
        yield Item(
            pos, ItemType((prefix >> 2) & 0x3), prefix >> 4, descriptor[pos + 1 : pos + 1 + size]
        )
        pos += 1 + size


class ReportKind(enum.Enum):
    """Which main item declared a field."""

    INPUT = "input"
    OUTPUT = "output"
    FEATURE = "feature"


_MAIN_KIND: Final = {
    MAIN_INPUT: ReportKind.INPUT,
    MAIN_OUTPUT: ReportKind.OUTPUT,
    MAIN_FEATURE: ReportKind.FEATURE,
}


@dataclass(frozen=True, slots=True)
class Field:
    """``count`` elements of ``size`` bits each, at ``bit_offset`` of report ``report_id``.

    ``usages`` are extended usages (``page << 16 | id``). ``application`` and ``physical``
    are the usages of the innermost enclosing application and physical collections (0 if
    none): the kernel maps buttons and digitizer ranges by them, and so do we.
    """

    kind: ReportKind
    report_id: int
    bit_offset: int
    size: int
    count: int
    flags: int
    usages: tuple[int, ...]
    logical_min: int
    logical_max: int
    physical_min: int = 0
    physical_max: int = 0
    unit: int = 0
    unit_exponent: int = 0
    application: int = 0
    physical: int = 0

    @property
    def constant(self) -> bool:
        """Padding or constant data (nothing to map)."""
        return bool(self.flags & FLAG_CONSTANT)

    @property
    def variable(self) -> bool:
        """Each element is the value of its own usage; else an array of usage indices."""
        return bool(self.flags & FLAG_VARIABLE)

    @property
    def relative(self) -> bool:
        """Values are changes (a mouse), not positions."""
        return bool(self.flags & FLAG_RELATIVE)

    @property
    def signed(self) -> bool:
        """Values are two's complement (the kernel's rule: a negative logical minimum)."""
        return self.logical_min < 0

    @property
    def bit_length(self) -> int:
        """Bits the field occupies in its report."""
        return self.size * self.count

    def usage(self, index: int) -> int:
        """The usage of element ``index`` of a variable field (the last usage repeats); 0 if
        the field has no usages."""
        if not self.usages:
            return 0
        return self.usages[min(index, len(self.usages) - 1)]

    def values(self, report: bytes) -> tuple[int, ...]:
        """Every element's value in ``report`` (ID byte included, when numbered).

        Missing bytes of a short report read as zeros (``hid_report_raw_event`` pads them the
        same way). Fields wider than 32 bits give an empty tuple.
        """
        if self.size > 32 or self.size == 0:
            return ()
        end_byte = (self.bit_offset + self.bit_length + 7) // 8
        chunk = report[self.bit_offset // 8 : end_byte]
        bits = int.from_bytes(chunk, "little") >> (self.bit_offset % 8)
        mask = (1 << self.size) - 1
        sign = 1 << (self.size - 1)
        out = []
        for i in range(self.count):
            v = (bits >> (i * self.size)) & mask
            if self.signed and v & sign:
                v -= 1 << self.size
            out.append(v)
        return tuple(out)

    def array_usages(self, report: bytes) -> tuple[int, ...]:
        """For an array field: the usages its elements name in ``report`` (in order, without
        the out-of-range "no usage" values)."""
        found = []
        for v in self.values(report):
            idx = v - self.logical_min
            if self.logical_min <= v <= self.logical_max and 0 <= idx < len(self.usages):
                found.append(self.usages[idx])
        return tuple(found)


@dataclass(frozen=True, slots=True)
class ReportDescriptor:
    """A parsed descriptor: every field, in descriptor order."""

    fields: tuple[Field, ...]
    numbered: bool
    """Reports start with a report ID byte (the descriptor declares at least one ID)."""
    applications: tuple[int, ...] = ()
    """Usages (``page << 16 | id``) of the top-level application collections, in order."""

    def report_ids(self, kind: ReportKind = ReportKind.INPUT) -> tuple[int, ...]:
        """The IDs of reports of ``kind`` (``(0,)`` for an unnumbered device that has any)."""
        return tuple(sorted({f.report_id for f in self.fields if f.kind is kind}))

    def fields_of(self, report_id: int, kind: ReportKind = ReportKind.INPUT) -> tuple[Field, ...]:
        """The fields of one report."""
        return tuple(f for f in self.fields if f.kind is kind and f.report_id == report_id)

    def report_length(self, report_id: int, kind: ReportKind = ReportKind.INPUT) -> int:
        """Bytes of one report, its ID byte included (0 if there is no such report)."""
        fields = self.fields_of(report_id, kind)
        if not fields:
            return 0
        bits = max(f.bit_offset + f.bit_length for f in fields)
        return (bits + 7) // 8

    def report_id_of(self, report: bytes) -> int:
        """The ID a report carries (its first byte when numbered, else 0)."""
        if self.numbered:
            return report[0] if report else -1
        return 0


@dataclass(slots=True)
class _Globals:
    usage_page: int = 0
    logical_min: int = 0
    logical_max: int = 0
    physical_min: int = 0
    physical_max: int = 0
    unit_exponent: int = 0
    unit: int = 0
    report_size: int = 0
    report_count: int = 0
    report_id: int = 0


@dataclass(slots=True)
class _Locals:
    usages: list[tuple[int, bool]] = field(default_factory=list)
    """(usage, page given in the item) in order."""
    minimum: tuple[int, bool] | None = None
    delimiter_depth: int = 0
    delimiter_sets: int = 0


@dataclass(slots=True)
class _Parser:
    g: _Globals = field(default_factory=_Globals)
    stack: list[_Globals] = field(default_factory=list)
    local: _Locals = field(default_factory=_Locals)
    collections: list[tuple[int, int]] = field(default_factory=list)
    """(type, usage) of the open collections, outermost first."""
    offsets: dict[tuple[ReportKind, int], int] = field(default_factory=dict)
    fields: list[Field] = field(default_factory=list)
    numbered: bool = False
    applications: list[int] = field(default_factory=list)

    def feed(self, item: Item) -> None:
        if item.type is ItemType.MAIN:
            self.main(item)
        elif item.type is ItemType.GLOBAL:
            self.global_(item)
        elif item.type is ItemType.LOCAL:
            self.local_(item)
        # reserved item type 3 with a short prefix: ignored, as the kernel does

    def global_(self, item: Item) -> None:
        g, tag = self.g, item.tag
        if tag == GLOBAL_USAGE_PAGE:
            g.usage_page = item.unsigned & 0xFFFF
        elif tag == GLOBAL_LOGICAL_MINIMUM:
            g.logical_min = item.signed
        elif tag == GLOBAL_LOGICAL_MAXIMUM:
            g.logical_max = item.signed if g.logical_min < 0 else item.unsigned
        elif tag == GLOBAL_PHYSICAL_MINIMUM:
            g.physical_min = item.signed
        elif tag == GLOBAL_PHYSICAL_MAXIMUM:
            g.physical_max = item.signed if g.physical_min < 0 else item.unsigned
        elif tag == GLOBAL_UNIT_EXPONENT:
            raw = item.signed
            # a 4-bit two's complement nibble (HID 1.11 6.2.2.7), as hid_snto32(raw, 4)
            g.unit_exponent = (raw & 0xF) - 16 if 0 <= raw <= 0xF and raw & 0x8 else raw
        elif tag == GLOBAL_UNIT:
            g.unit = item.unsigned
        elif tag == GLOBAL_REPORT_SIZE:
            g.report_size = item.unsigned
            if g.report_size > 256:
                raise DescriptorError(f"offset {item.offset}: report size {g.report_size} > 256")
        elif tag == GLOBAL_REPORT_COUNT:
            g.report_count = item.unsigned
            if g.report_count > MAX_USAGES:
                raise DescriptorError(
                    f"offset {item.offset}: report count {g.report_count} > {MAX_USAGES}"
                )
        elif tag == GLOBAL_REPORT_ID:
            rid = item.unsigned
            if not 0 < rid <= MAX_REPORT_ID:
                raise DescriptorError(f"offset {item.offset}: report ID {rid} not in 1..255")
            g.report_id = rid
            self.numbered = True
        elif tag == GLOBAL_PUSH:
            self.stack.append(replace(g))
        elif tag == GLOBAL_POP:
            if not self.stack:
                raise DescriptorError(f"offset {item.offset}: pop without push")
            self.g = self.stack.pop()

    def local_(self, item: Item) -> None:
        loc, tag = self.local, item.tag
        if tag == LOCAL_DELIMITER:
            if item.unsigned:
                loc.delimiter_depth += 1
                loc.delimiter_sets += 1
            else:
                loc.delimiter_depth = max(0, loc.delimiter_depth - 1)
            return
        if loc.delimiter_depth and loc.delimiter_sets > 1:
            return  # only the first usage set of a delimiter counts (as in the kernel)
        usage = (item.unsigned, len(item.data) == 4)
        if tag == LOCAL_USAGE:
            loc.usages.append(usage)
        elif tag == LOCAL_USAGE_MINIMUM:
            loc.minimum = usage
        elif tag == LOCAL_USAGE_MAXIMUM:
            if loc.minimum is None:
                raise DescriptorError(f"offset {item.offset}: usage maximum without a minimum")
            (lo, lo_paged), (hi, _) = loc.minimum, usage
            if hi < lo:
                raise DescriptorError(
                    f"offset {item.offset}: usage range 0x{lo:x}..0x{hi:x} is reversed"
                )
            if hi - lo + 1 + len(loc.usages) > MAX_USAGES:
                raise DescriptorError(
                    f"offset {item.offset}: more than {MAX_USAGES} usages in one field"
                )
            loc.usages.extend((u, lo_paged) for u in range(lo, hi + 1))
            loc.minimum = None

    def resolved_usages(self) -> tuple[int, ...]:
        page = self.g.usage_page << 16
        return tuple(u if paged else page | (u & 0xFFFF) for u, paged in self.local.usages)

    def main(self, item: Item) -> None:
        tag = item.tag
        if tag == MAIN_COLLECTION:
            usages = self.resolved_usages()
            if not self.collections and item.unsigned & 0xFF == COLLECTION_APPLICATION:
                self.applications.append(usages[0] if usages else 0)
            self.collections.append((item.unsigned & 0xFF, usages[0] if usages else 0))
        elif tag == MAIN_END_COLLECTION:
            if not self.collections:
                raise DescriptorError(f"offset {item.offset}: end collection without collection")
            self.collections.pop()
        elif tag in _MAIN_KIND:
            self.add_field(_MAIN_KIND[tag], item.unsigned)
        self.local = _Locals()

    def innermost(self, kind: int) -> int:
        return next((u for t, u in reversed(self.collections) if t == kind), 0)

    def add_field(self, kind: ReportKind, flags: int) -> None:
        g = self.g
        key = (kind, g.report_id)
        start = self.offsets.get(key, 8 if g.report_id else 0)
        self.offsets[key] = start + g.report_size * g.report_count
        if g.report_size == 0 or g.report_count == 0:
            return
        self.fields.append(
            Field(
                kind=kind,
                report_id=g.report_id,
                bit_offset=start,
                size=g.report_size,
                count=g.report_count,
                flags=flags,
                usages=self.resolved_usages(),
                logical_min=g.logical_min,
                logical_max=g.logical_max,
                physical_min=g.physical_min,
                physical_max=g.physical_max,
                unit=g.unit,
                unit_exponent=g.unit_exponent,
                application=self.innermost(COLLECTION_APPLICATION),
                physical=self.innermost(COLLECTION_PHYSICAL),
            )
        )


def parse(descriptor: bytes) -> ReportDescriptor:
    """Parse a report descriptor (as in sysfs ``report_descriptor`` or a capture's ``R:``).

    Raises :class:`DescriptorError` naming the byte offset of the first problem: a truncated
    item, an end collection or pop with nothing open, a report ID of 0, a reversed usage range,
    sizes beyond the kernel's limits. A collection left open at the end is tolerated (the
    kernel warns and carries on).
    """
    if not descriptor:
        raise DescriptorError("empty report descriptor")
    p = _Parser()
    for item in items(descriptor):
        p.feed(item)
    if p.numbered and any(f.report_id == 0 for f in p.fields):
        raise DescriptorError("fields declared both before and after the first report ID")
    return ReportDescriptor(tuple(p.fields), p.numbered, tuple(p.applications))
