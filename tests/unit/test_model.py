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


def test_device_rate_limit() -> None:
    import logging

    from hidbpfd.service.logs import DeviceRateLimit, fields

    now = [0.0]
    f = DeviceRateLimit(burst=3, interval=10, clock=lambda: now[0])
    dev = DeviceId(3, 1, 2, hid_id="0003:0001:0002.0001")

    def rec(msg: str, **extra: str) -> logging.LogRecord:
        r = logging.LogRecord("t", logging.ERROR, __file__, 1, msg, None, None)
        r.__dict__.update(extra)
        return r

    flood = [f.filter(rec("x", **fields(dev))) for _ in range(10)]
    assert flood == [True] * 3 + [False] * 7
    assert f.filter(rec("other device", **fields(DeviceId(3, 9, 9, hid_id="0003:0009:0009.0002"))))
    assert f.filter(rec("no device"))
    now[0] = 11.0
    r = rec("again", **fields(dev))
    assert f.filter(r) and "7 more messages about this device were suppressed" in r.msg
