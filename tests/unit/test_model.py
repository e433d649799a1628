"""Patterns, hex parsing and device identity."""

from __future__ import annotations

import pytest

from hidbpfd.model import DeviceId, HexError, Pattern, parse_hex


@pytest.mark.parametrize(
    ("pattern", "report", "matches"),
    [
        ("02 00 ?? ??", "02 00 11 22", True),
        ("02 00 ?? ??", "02 00 11 22 33", True),  # longer reports match
        ("02 00 ?? ??", "02 00 11", False),  # shorter ones never do
        ("02 00 ?? ??", "02 01 11 22", False),
        ("?? ff", "aa ff", True),
        ("0200", "02 00", True),  # unspaced pairs
        ("10 FF 80", "10 ff 80 00", True),  # case-insensitive
    ],
)
def test_pattern_matches(pattern: str, report: str, matches: bool) -> None:
    assert Pattern.parse(pattern).matches(bytes.fromhex(report)) is matches


def test_empty_pattern_matches_everything() -> None:
    assert Pattern().matches(b"") and Pattern().matches(b"\x01\x02")


@pytest.mark.parametrize(
    ("text", "wildcards", "message"),
    [
        ("02 0g", True, "bad hex byte '0g'"),
        ("02 0", True, "bad hex byte '0'"),
        ("", True, "empty"),
        ("02 ??", False, "wildcard"),
    ],
)
def test_parse_hex_errors(text: str, wildcards: bool, message: str) -> None:
    with pytest.raises(HexError, match=message):
        parse_hex(text, wildcards=wildcards)


def test_pattern_too_long() -> None:
    with pytest.raises(HexError, match="at most 32"):
        Pattern.parse("00 " * 33)


def test_pattern_str_round_trips() -> None:
    assert str(Pattern.parse("02 00 ?? ff")) == "02 00 ?? ff"


def test_device_kernel_id() -> None:
    d = DeviceId(3, 0x28BD, 0x0905, hid_id="0003:28BD:0905.000A")
    assert d.kernel_id == 10
    assert DeviceId.sysfs_name(3, 0x28BD, 0x905, 10) == "0003:28BD:0905.000A"
    assert DeviceId(3, 1, 2).kernel_id == 0
