"""Round trips of the ring-buffer record and rule-table encodings (no kernel needed)."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hidbpfd.engine.filter import RECORD_DATA_MAX, RuleTableError, arm_us
from hidbpfd.kernel.filter_codec import (
    DEVICE_RULES_SIZE,
    REC_HELD,
    REC_TRUNCATED,
    RECORD_SIZE,
    Record,
    decode_record,
    decode_rules,
    encode_record,
    encode_rules,
)
from hidbpfd.model import ANY_REPORT, PATTERN_MAX, RULES_MAX, DeviceRule, Pattern, Rule, RuleFlag

records = st.builds(
    lambda hid, ts, m, fl, data, extra: Record(hid, ts, m, fl, len(data) + extra, data),
    st.integers(0, 2**32 - 1),
    st.integers(0, 2**64 - 1),
    st.integers(0, 2**32 - 1),
    st.sampled_from([0, REC_HELD, REC_TRUNCATED]),
    st.binary(min_size=0, max_size=RECORD_DATA_MAX),
    st.integers(0, 0),
)


@given(records)
def test_record_round_trip(rec: Record) -> None:
    raw = encode_record(rec)
    assert len(raw) == RECORD_SIZE == 152
    assert decode_record(raw) == rec


def test_record_of_a_long_report_keeps_length_and_128_bytes() -> None:
    data = bytes(range(200))
    raw = struct.pack("<QQIHH128s", 5, 1, 9, REC_TRUNCATED, 200, data[:128])
    rec = decode_record(raw)
    assert (rec.length, rec.data, rec.truncated, rec.held) == (200, data[:128], True, False)


def test_record_ignores_bytes_past_the_report() -> None:
    raw = struct.pack("<QQIHH128s", 5, 1, 9, REC_HELD, 3, b"\x01\x02\x03" + b"\xee" * 125)
    rec = decode_record(raw)
    assert rec.data == b"\x01\x02\x03" and rec.held and not rec.truncated


rules = st.builds(
    lambda data, mask, flags, group, arm_ns: DeviceRule(
        Rule(Pattern(data, mask[: len(data)]), RuleFlag(flags), arm_ns), group
    ),
    st.binary(max_size=PATTERN_MAX),
    st.binary(min_size=PATTERN_MAX, max_size=PATTERN_MAX),
    st.integers(0, 7),
    st.integers(0, RULES_MAX - 1),
    st.none() | st.integers(0, 2**40),
)


@given(st.lists(rules, max_size=RULES_MAX))
def test_rules_round_trip(table: list[DeviceRule]) -> None:
    raw = encode_rules(table)
    assert len(raw) == DEVICE_RULES_SIZE == 2312
    got = decode_rules(raw)
    assert len(got) == len(table)
    for (pattern, mask, length, flags, group, arm), dr in zip(got, table, strict=True):
        n = len(dr.rule.pattern.data)
        assert length == n
        assert pattern == dr.rule.pattern.data + bytes(PATTERN_MAX - n)
        assert mask == dr.rule.pattern.mask + bytes(PATTERN_MAX - n)  # zero past the pattern
        assert (flags, group, arm) == (int(dr.rule.flags), dr.group, arm_us(dr.rule))
        if dr.rule.arm_ns is None:
            assert arm == 0  # never expires
        else:  # whole µs, rounded up, at least 1 (0 would mean "never"), at most a __u32
            assert arm == min(2**32 - 1, max(1, -(-dr.rule.arm_ns // 1000)))


def test_short_mask_is_padded_with_dont_care() -> None:
    (entry,) = decode_rules(encode_rules([DeviceRule(Rule(Pattern(b"\x01\x02", b"\xff")), 0)]))
    assert entry[1] == b"\xff" + bytes(PATTERN_MAX - 1)


def test_any_report_is_an_empty_rule() -> None:
    (entry,) = decode_rules(encode_rules([DeviceRule(Rule(ANY_REPORT, RuleFlag.HOLD), 3)]))
    assert entry == (bytes(PATTERN_MAX), bytes(PATTERN_MAX), 0, int(RuleFlag.HOLD), 3, 0)


@pytest.mark.parametrize(
    ("table", "error"),
    [
        ([DeviceRule(Rule(ANY_REPORT), 0)] * (RULES_MAX + 1), RuleTableError),
        ([DeviceRule(Rule(ANY_REPORT), RULES_MAX)], RuleTableError),
        ([DeviceRule(Rule(Pattern(bytes(33), b"\xff" * 33)), 0)], ValueError),
    ],
    ids=["33 rules", "group 32", "33-byte pattern"],
)
def test_tables_that_do_not_fit(table: list[DeviceRule], error: type[Exception]) -> None:
    with pytest.raises(error):
        encode_rules(table)
