"""The reference filter: which reports wake the daemon, which are held (table-driven)."""

from __future__ import annotations

import pytest

from hidbpfd.devices.facts import descriptor_facts
from hidbpfd.engine.filter import (
    ARM_US_MAX,
    RECORD_DATA_MAX,
    Filter,
    RuleTableError,
    Verdict,
    arm_us,
    too_long_to_hold,
)
from hidbpfd.model import ANY_REPORT, DeviceRule, Pattern, Rule, RuleFlag
from tests.helpers import LONG_REPORT_RDESC

H, A, W = RuleFlag.HOLD, RuleFlag.ARM, RuleFlag.WHEN_ARMED
N = RuleFlag.NONE


def P(s: str) -> Pattern:
    return Pattern.parse(s)


# (rules as (pattern, flags, group), [(report hex, expected (matched, held) or None)])
CASES = {
    "no rules, nothing fires": ([], [("01 02", None)]),
    "plain notify": ([(P("01"), N, 0)], [("01 00", (0b1, False)), ("02 00", None)]),
    "hold": ([(P("01 ??"), H, 0)], [("01 00", (0b1, True)), ("01", None)]),
    "defer shape: any report only while armed": (
        [(P("02 00"), H | A, 0), (ANY_REPORT, W, 0)],
        [
            ("02 20", None),  # not armed: 'any' stays silent
            ("02 00", (0b01, True)),  # arms
            ("02 20", (0b10, False)),  # fires, disarms
            ("02 20", None),  # silent again
            ("02 00", (0b01, True)),
            ("02 00", (0b11, True)),  # cancels the old one and arms again
            ("02 21", (0b10, False)),
        ],
    ),
    "groups are independent": (
        [(P("01"), A, 0), (P("09"), W, 0), (P("02"), A, 1), (P("09"), W, 1)],
        [
            ("09", None),
            ("01", (0b0001, False)),
            ("09", (0b0010, False)),
            ("02", (0b0100, False)),
            ("09", (0b1000, False)),
        ],
    ),
    "several rules fire at once": (
        [(P("01"), N, 0), (P("01 02"), H, 1), (P("??"), N, 2)],
        [("01 02", (0b111, True)), ("01 03", (0b101, False)), ("05", (0b100, False))],
    ),
}


@pytest.mark.parametrize("name", list(CASES))
def test_filter_table(name: str) -> None:
    rules, seq = CASES[name]
    f = Filter([DeviceRule(Rule(p, fl), g) for p, fl, g in rules])
    for report, expected in seq:
        v = f.run(bytes.fromhex(report))
        got = None if v is None else (v.matched, v.held)
        assert got == expected, f"{name}: report {report}"


def test_cannot_hold_notifies_without_holding() -> None:
    f = Filter([DeviceRule(Rule(P("01"), H), 0)], can_hold=False)
    v = f.run(b"\x01")
    assert v is not None and v.matched == 1 and not v.held


def test_long_report_is_truncated_and_never_held() -> None:
    f = Filter([DeviceRule(Rule(P("01"), H), 0)])
    v = f.run(b"\x01" * (RECORD_DATA_MAX + 1))
    assert v is not None and v.truncated and not v.held


def test_ring_full_passes_and_leaves_armed_alone() -> None:
    f = Filter([DeviceRule(Rule(P("01"), H | A), 0), DeviceRule(Rule(ANY_REPORT, W), 0)])
    assert f.run(b"\x01", ring_full=True) is None
    assert f.armed == 0
    assert f.run(b"\x05") is None  # still not armed: the daemon never heard of the hold


def test_table_limits() -> None:
    with pytest.raises(RuleTableError, match="32"):
        Filter([DeviceRule(Rule(ANY_REPORT), 0)] * 33)
    with pytest.raises(RuleTableError, match="group"):
        Filter([DeviceRule(Rule(ANY_REPORT), 32)])


def test_an_expired_arm_lets_the_next_report_pass_unseen() -> None:
    """Issue 10 item 5: defer's arm lasts as long as its delay. After the delay expired (the
    daemon re-injected the held report) the cancel rule fires no more: the next report, whatever
    it is, passes and wakes nobody; until then it cancels."""
    ms = 1_000_000
    f = Filter(
        [
            DeviceRule(Rule(P("02 00"), H | A, arm_ns=100 * ms), 0),
            DeviceRule(Rule(ANY_REPORT, W | H), 0),
        ]
    )
    assert f.run(b"\x02\x00", now_ns=20 * ms) == Verdict(0b01, True, False)
    assert f.armed_at(120 * ms - 1) == 1 and f.armed_at(120 * ms) == 0
    assert f.run(b"\x02\x01", now_ns=200 * ms) is None  # no record: nobody wakes up
    assert f.run(b"\x02\x00", now_ns=300 * ms) == Verdict(0b01, True, False)
    assert f.run(b"\x02\x20", now_ns=330 * ms) == Verdict(0b10, True, False)  # still cancels
    assert f.armed_at(330 * ms) == 0


def test_an_arm_without_a_deadline_never_expires() -> None:
    f = Filter([DeviceRule(Rule(P("01"), A), 0), DeviceRule(Rule(ANY_REPORT, W), 0)])
    assert f.run(b"\x01", now_ns=0) is not None
    assert f.run(b"\x05", now_ns=10**15) == Verdict(0b10, False, False)


def test_arm_us_rounds_up_and_saturates() -> None:
    assert arm_us(Rule(ANY_REPORT, A)) == 0  # never expires
    assert arm_us(Rule(ANY_REPORT, A, arm_ns=0)) == 1  # expires at once (0 would be never)
    assert arm_us(Rule(ANY_REPORT, A, arm_ns=1_001)) == 2
    assert arm_us(Rule(ANY_REPORT, A, arm_ns=2**60)) == ARM_US_MAX


def test_a_hold_rule_that_can_match_a_report_too_long_to_hold() -> None:
    """Issue 10, item 4: which HOLD rules could meet a report longer than a record (the
    daemon refuses their policies on that device, both engines)."""
    lengths = descriptor_facts(LONG_REPORT_RDESC).input_lengths
    assert lengths == ((1, 8), (2, 200))

    def hits(text: str, flags: RuleFlag = RuleFlag.HOLD) -> list[tuple[int, int]]:
        rule = Rule(Pattern.parse(text) if text else ANY_REPORT, flags)
        return [(t.report_id, t.length) for t in too_long_to_hold([rule], lengths)]

    assert hits("02 00") == [(2, 200)]
    assert hits("?? 00") == [(2, 200)]  # a wildcard ID matches every report
    assert hits("") == [(2, 200)]  # an empty pattern matches every report
    assert hits("01 00") == []  # report 1 is short
    assert hits("02 00", RuleFlag.NONE) == []  # not held: 128 bytes are enough to be told
    assert hits("02 00", RuleFlag.HOLD | RuleFlag.ARM) == [(2, 200)]
    assert too_long_to_hold([Rule(Pattern.parse("02"), RuleFlag.HOLD)], None) == []
    # an unnumbered device: every pattern short enough can match its one report
    assert [
        t.report_id
        for t in too_long_to_hold([Rule(Pattern.parse("05"), RuleFlag.HOLD)], ((0, 300),))
    ] == [0]
    reason = too_long_to_hold([Rule(Pattern.parse("02 00"), RuleFlag.HOLD)], lengths)[0].reason()
    assert "input report 0x02 of 200 bytes" in reason and "128 bytes" in reason
