"""The report descriptor parser, table-driven: items, the fields of every capture's descriptor
(report IDs, offsets, usages, logical ranges, variable vs array), values read from the
captures' own reports, the kernel's reading rules, and every kind of error."""

from __future__ import annotations

from pathlib import Path

import pytest

from hidbpfd.devices.descriptor import (
    DescriptorError,
    Field,
    ItemType,
    ReportKind,
    items,
    parse,
    usage_name,
)
from hidbpfd.replay.recording import load

CAPTURES = Path(__file__).resolve().parents[1] / "captures"
IN, OUT, FEAT = ReportKind.INPUT, ReportKind.OUTPUT, ReportKind.FEATURE


def descriptor(capture: str) -> bytes:
    return load(CAPTURES / capture).devices[0].descriptor


def h(text: str) -> bytes:
    return bytes.fromhex(text)


# A boot mouse: 3 buttons, 5 bits padding, relative X/Y/wheel from -127 to 127; no report ID.
MOUSE = h(
    "05 01 09 02 a1 01 09 01 a1 00 05 09 19 01 29 03 15 00 25 01 95 03 75 01 81 02"
    " 95 01 75 05 81 03 05 01 09 30 09 31 09 38 15 81 25 7f 75 08 95 03 81 06 c0 c0"
)

# --- items -----------------------------------------------------------------------------------

ITEMS = {
    "usage page, 1 byte": ("05 01", [(ItemType.GLOBAL, 0x0, "01")]),
    "logical maximum, 2 bytes": ("26 ff 00", [(ItemType.GLOBAL, 0x2, "ff00")]),
    "4-byte usage": ("0b 01 00 0d 00", [(ItemType.LOCAL, 0x0, "01000d00")]),
    "end collection, no data": ("c0", [(ItemType.MAIN, 0xC, "")]),
    "input": ("81 02", [(ItemType.MAIN, 0x8, "02")]),
    "long item skipped": ("fe 02 10 aa bb 09 01", [(ItemType.LOCAL, 0x0, "01")]),
}


@pytest.mark.parametrize("name", ITEMS)
def test_items(name: str) -> None:
    raw, expected = ITEMS[name]
    got = [(i.type, i.tag, i.data.hex()) for i in items(h(raw))]
    assert got == expected


def test_item_signed_and_unsigned() -> None:
    (item,) = items(h("15 81"))
    assert (item.unsigned, item.signed) == (0x81, -127)


# --- the captures' descriptors ---------------------------------------------------------------

# (kind, report id, bit offset, size, count, variable, constant, first usage, last usage,
#  logical min, logical max, application)
Row = tuple[ReportKind, int, int, int, int, bool, bool, int, int, int, int, int]
FIELDS: dict[str, list[Row]] = {
    "macro-key.hid": [  # keyboard: modifier bitfield + 2-key array, report ID 1
        (IN, 1, 8, 1, 8, True, False, 0x0700E0, 0x0700E7, 0, 1, 0x010006),
        (IN, 1, 16, 8, 2, False, False, 0x070000, 0x0700FF, 0, 255, 0x010006),
    ],
    "pen-proximity.hid": [  # pen: tip/barrel/eraser, padding, in range, padding, X/Y, pressure
        (IN, 2, 8, 1, 3, True, False, 0x0D0042, 0x0D0045, 0, 1, 0x0D0002),
        (IN, 2, 11, 1, 2, True, True, 0, 0, 0, 1, 0x0D0002),
        (IN, 2, 13, 1, 1, True, False, 0x0D0032, 0x0D0032, 0, 1, 0x0D0002),
        (IN, 2, 14, 1, 2, True, True, 0, 0, 0, 1, 0x0D0002),
        (IN, 2, 16, 16, 2, True, False, 0x010030, 0x010031, 0, 0x7FFF, 0x0D0002),
        (IN, 2, 48, 16, 1, True, False, 0x0D0030, 0x0D0030, 0, 0x1FFF, 0x0D0002),
    ],
    "release-guard.hid": [  # consumer control: one 16-bit array entry, usages 0..0x3ff
        (IN, 3, 8, 16, 1, False, False, 0x0C0000, 0x0C03FF, 0, 0x3FF, 0x0C0001),
    ],
    "wakeup-reinit.hid": [  # vendor page: input, output and feature reports
        (IN, 0x10, 8, 8, 3, True, False, 0xFF000002, 0xFF000002, 0, 255, 0xFF000001),
        (OUT, 0x10, 8, 8, 4, True, False, 0xFF000003, 0xFF000003, 0, 255, 0xFF000001),
        (FEAT, 5, 8, 8, 1, True, False, 0xFF000004, 0xFF000004, 0, 255, 0xFF000001),
    ],
}


def row(f: Field) -> Row:
    first = f.usages[0] if f.usages else 0
    last = f.usages[-1] if f.usages else 0
    return (
        f.kind,
        f.report_id,
        f.bit_offset,
        f.size,
        f.count,
        f.variable,
        f.constant,
        first,
        last,
        f.logical_min,
        f.logical_max,
        f.application,
    )


@pytest.mark.parametrize("capture", FIELDS)
def test_capture_fields(capture: str) -> None:
    d = parse(descriptor(capture))
    assert d.numbered
    assert [row(f) for f in d.fields] == FIELDS[capture]


LENGTHS = {
    ("macro-key.hid", 1, IN): 4,
    ("pen-proximity.hid", 2, IN): 8,
    ("release-guard.hid", 3, IN): 3,
    ("wakeup-reinit.hid", 0x10, IN): 4,
    ("wakeup-reinit.hid", 0x10, OUT): 5,
    ("wakeup-reinit.hid", 5, FEAT): 2,
    ("wakeup-reinit.hid", 5, IN): 0,
}


@pytest.mark.parametrize(("capture", "rid", "kind"), LENGTHS)
def test_report_lengths_match_the_captures(capture: str, rid: int, kind: ReportKind) -> None:
    d = parse(descriptor(capture))
    assert d.report_length(rid, kind) == LENGTHS[(capture, rid, kind)]
    if kind is IN and LENGTHS[(capture, rid, kind)]:
        for _, report in load(CAPTURES / capture).devices[0].events:
            assert len(report) == d.report_length(report[0], IN)


def test_pen_physical_collection_is_the_stylus() -> None:
    d = parse(descriptor("pen-proximity.hid"))
    assert {f.physical for f in d.fields} == {0x0D0020}


# (capture, report, field index, values)
VALUES = {
    "modifiers: left ctrl": ("macro-key.hid", "01 01 06 00", 0, (1, 0, 0, 0, 0, 0, 0, 0)),
    "key array: C": ("macro-key.hid", "01 01 06 00", 1, (6, 0)),
    "pen in range, bits 5": ("pen-proximity.hid", "02 20 e8 03 d0 07 00 00", 2, (1,)),
    "pen tip": ("pen-proximity.hid", "02 21 b0 04 da 07 2c 01", 0, (1, 0, 0)),
    "pen X/Y little-endian": ("pen-proximity.hid", "02 21 b0 04 da 07 2c 01", 4, (1200, 2010)),
    "pen pressure": ("pen-proximity.hid", "02 21 b0 04 da 07 2c 01", 5, (300,)),
    "consumer 16-bit entry": ("release-guard.hid", "03 e9 00", 0, (0xE9,)),
    "short report reads zeros": ("pen-proximity.hid", "02 21", 4, (0, 0)),
}


@pytest.mark.parametrize("name", VALUES)
def test_values(name: str) -> None:
    capture, report, index, expected = VALUES[name]
    f = parse(descriptor(capture)).fields[index]
    assert f.values(h(report)) == expected


ARRAYS = {
    "one key, usage 0 in the other slot": ("macro-key.hid", "01 00 06 00", (0x070006, 0x070000)),
    "two keys": ("macro-key.hid", "01 00 04 05", (0x070004, 0x070005)),
    "zero is usage 0 (no event)": ("macro-key.hid", "01 00 00 00", (0x070000, 0x070000)),
    "volume up": ("release-guard.hid", "03 e9 00", (0x0C00E9,)),
    "out of the logical range: nothing": ("release-guard.hid", "03 00 04", ()),
}


@pytest.mark.parametrize("name", ARRAYS)
def test_array_usages(name: str) -> None:
    capture, report, expected = ARRAYS[name]
    d = parse(descriptor(capture))
    (array,) = [f for f in d.fields if not f.variable]
    assert array.array_usages(h(report)) == expected


# --- the kernel's reading rules --------------------------------------------------------------


def test_unnumbered_signed_relative_mouse() -> None:
    d = parse(MOUSE)
    assert not d.numbered and d.report_ids() == (0,)
    buttons, pad, axes = d.fields
    assert buttons.usages == (0x090001, 0x090002, 0x090003) and buttons.application == 0x010002
    assert buttons.physical == 0x010001 and pad.constant
    assert axes.relative and axes.signed and (axes.logical_min, axes.logical_max) == (-127, 127)
    assert axes.usages == (0x010030, 0x010031, 0x010038)
    assert axes.values(h("01 05 fb ff")) == (5, -5, -1)
    assert d.report_length(0) == 4


RULES = {
    # logical maximum is unsigned unless the minimum is negative (hid_parser_global)
    "15 00 25 ff: 0..255": ("15 00 25 ff 75 08 95 01 09 01 81 02", "logical", (0, 255)),
    "15 81 25 7f: -127..127": ("15 81 25 7f 75 08 95 01 09 01 81 02", "logical", (-127, 127)),
    "15 ff 25 01: -1..1": ("15 ff 25 01 75 02 95 01 09 01 81 02", "logical", (-1, 1)),
    # the unit exponent is a 4-bit nibble: 0x0d is -3
    "unit exponent nibble": ("55 0d 75 08 95 01 09 01 81 02", "exponent", (-3,)),
    "unit exponent byte": ("55 fd 75 08 95 01 09 01 81 02", "exponent", (-3,)),
    # fewer usages than the count: the last one repeats
    "last usage repeats": ("05 09 09 01 09 02 75 01 95 04 81 02", "usage", (0x90001, 0x90002)),
    # the usage page at the main item applies to 1-2 byte usages; a 4-byte usage has its own
    "page at the main item": ("09 30 05 01 75 08 95 01 81 02", "usage", (0x010030,)),
    "4-byte usage": ("05 01 0b 30 00 0d 00 75 08 95 01 81 02", "usage", (0x0D0030,)),
    # push / pop of the globals
    "push pop": ("75 08 a4 75 10 b4 95 01 09 01 81 02", "size", (8,)),
    # a delimiter's alternative usages: only the first set counts
    "delimiter": (
        "05 07 a9 01 09 04 a9 00 a9 01 09 05 a9 00 75 08 95 01 81 00",
        "usages",
        (0x070004,),
    ),
}


@pytest.mark.parametrize("name", RULES)
def test_rules(name: str) -> None:
    raw, what, expected = RULES[name]
    (f,) = parse(h(raw)).fields
    got = {
        "logical": (f.logical_min, f.logical_max),
        "exponent": (f.unit_exponent,),
        "usage": (f.usage(0), f.usage(3)) if f.count > 1 else (f.usage(0),),
        "size": (f.size,),
        "usages": f.usages,
    }[what]
    assert got == expected


def test_offsets_count_per_report_id_and_kind() -> None:
    # ID 1: 8-bit input and output; ID 2: 16-bit input; back to ID 1: another 8-bit input
    raw = (
        "75 08 95 01 85 01 09 01 81 02 09 02 91 02 85 02 75 10 09 03 81 02 85 01 75 08 09 04 81 02"
    )
    d = parse(h(raw))
    assert [(f.kind, f.report_id, f.bit_offset) for f in d.fields] == [
        (IN, 1, 8),
        (OUT, 1, 8),
        (IN, 2, 8),
        (IN, 1, 16),
    ]
    assert d.report_ids() == (1, 2) and d.report_ids(OUT) == (1,)
    assert d.report_length(1) == 3 and d.report_length(2) == 3 and d.report_length(1, OUT) == 2
    assert d.report_id_of(h("02 00 00")) == 2


def test_wide_fields_give_no_values() -> None:
    (f,) = parse(h("75 28 95 01 09 01 81 02")).fields
    assert f.size == 40 and f.values(bytes(5)) == ()


ERRORS = {
    "truncated item": ("05 01 26 ff", "offset 2: item 0x26 needs 2 data bytes, 1 left"),
    "truncated long item": ("fe 05 00 01", "offset 0: long item of 5 bytes"),
    "end collection without collection": ("c0", "offset 0: end collection without collection"),
    "pop without push": ("b4", "offset 0: pop without push"),
    "report ID 0": ("85 00", "offset 0: report ID 0 not in 1..255"),
    "usage maximum without minimum": ("29 05", "offset 0: usage maximum without a minimum"),
    "reversed usage range": ("19 05 29 01", "offset 2: usage range 0x5..0x1 is reversed"),
    "report size too big": ("76 01 02", "offset 0: report size 513 > 256"),
    "fields before and after an ID": (
        "75 08 95 01 09 01 81 02 85 01 09 02 81 02",
        "fields declared both before and after the first report ID",
    ),
    "empty": ("", "empty report descriptor"),
}


@pytest.mark.parametrize("name", ERRORS)
def test_errors(name: str) -> None:
    raw, message = ERRORS[name]
    with pytest.raises(DescriptorError) as err:
        parse(h(raw))
    assert message in str(err.value)


def test_unclosed_collection_is_tolerated() -> None:
    (f,) = parse(h("05 01 09 02 a1 01 75 08 95 01 09 30 81 06")).fields
    assert f.application == 0x010002


USAGE_NAMES = {
    0x070068: "Keyboard/Keypad 0x68",
    0x0C00E9: "Consumer 0xe9",
    0xFF000002: "page 0xff00 0x02",
}


@pytest.mark.parametrize("usage", USAGE_NAMES)
def test_usage_name(usage: int) -> None:
    assert usage_name(usage) == USAGE_NAMES[usage]
