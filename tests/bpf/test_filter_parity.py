"""The C filter (through the feeder and the ring buffer) agrees with hidbpfd.engine.filter.Filter.

One table of (rules, reports) with the expected (matched, held, truncated) per report (None:
no rule fired), checked against both implementations, plus the armed mask after every
report; then random tables (hypothesis) where the Python filter is the oracle.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Sequence
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hidbpfd.engine.filter import RECORD_DATA_MAX, Filter, Verdict
from hidbpfd.kernel.filter_codec import VERDICT_HOLD, VERDICT_NOTIFY, VERDICT_QUIET
from hidbpfd.model import ANY_REPORT, RULES_MAX, DeviceRule, Pattern, Rule, RuleFlag
from hidbpfd.replay.via_bpf import EPOCH_NS
from tests.bpf.conftest import Collected, new_hid_id

pytestmark = pytest.mark.bpf

H = RuleFlag.HOLD
A = RuleFlag.ARM
W = RuleFlag.WHEN_ARMED

Expect = tuple[int, bool, bool] | None


def r(pattern: str | Pattern, flags: RuleFlag = RuleFlag.NONE, group: int = 0) -> DeviceRule:
    """A table entry from TOML-style hex (``"*"`` for any report)."""
    pat = (
        pattern
        if isinstance(pattern, Pattern)
        else ANY_REPORT
        if pattern == "*"
        else Pattern.parse(pattern)
    )
    return DeviceRule(Rule(pat, flags), group)


def x(text: str, pad_to: int = 0) -> bytes:
    """A report from spaced hex, zero-padded to ``pad_to`` bytes."""
    data = bytes.fromhex(text)
    return data + bytes(max(0, pad_to - len(data)))


@dataclass(frozen=True)
class Case:
    name: str
    rules: Sequence[DeviceRule]
    steps: Sequence[tuple[bytes, Expect]]
    can_hold: bool = True


THIRTY_TWO = [r(f"{i:02x}", H if i % 2 else RuleFlag.NONE, group=i) for i in range(RULES_MAX - 1)]
THIRTY_TWO.append(r("*", A, group=31))

CASES = [
    Case(
        "any report", [r("*")], [(x("01"), (1, False, False)), (x("ff 00 00"), (1, False, False))]
    ),
    Case(
        "exact bytes",
        [r("01 02")],
        [
            (x("01 02"), (1, False, False)),
            (x("01 02 03"), (1, False, False)),
            (x("01 03"), None),
            (x("02 02"), None),
        ],
    ),
    Case("report shorter than the pattern", [r("01 02 03")], [(x("01 02"), None), (x("01"), None)]),
    Case(
        "wildcards",
        [r("01 ?? 03 ??")],
        [
            (x("01 aa 03 bb"), (1, False, False)),
            (x("01 00 03 00 09"), (1, False, False)),
            (x("01 aa 04 bb"), None),
            (x("01 aa 03"), None),
        ],
    ),
    Case(
        "partial-bit mask",
        [r(Pattern(b"\x10\x80", b"\x0f\x80"))],
        [(x("a0 81"), (1, False, False)), (x("a1 81"), None), (x("30 7f"), None)],
    ),
    Case(
        "mask shorter than the pattern",
        [r(Pattern(b"\x01\x02", b"\xff"))],
        [(x("01 ff"), (1, False, False)), (x("01"), None), (x("02 02"), None)],
    ),
    Case(
        "32-byte pattern",
        [r(" ".join(["5a"] * 31 + ["??"]))],
        [
            (x("5a" * 31 + "00"), (1, False, False)),
            (x("5a" * 31), None),
            (x("5a" * 30 + "00 00"), None),
        ],
    ),
    Case(
        "hold",
        [r("02", H), r("03")],
        [(x("02 01"), (1, True, False)), (x("03 01"), (2, False, False)), (x("04"), None)],
    ),
    Case(
        "hold when the kernel cannot", [r("02", H)], [(x("02"), (1, False, False))], can_hold=False
    ),
    Case(
        "longer than a record: truncated, never held",
        [r("02", H)],
        [
            (x("02", RECORD_DATA_MAX), (1, True, False)),
            (x("02", RECORD_DATA_MAX + 1), (1, False, True)),
            (x("02", 300), (1, False, True)),
        ],
    ),
    Case(
        "several rules fire at once",
        [r("*"), r("01"), r("01 02", H), r("09")],
        [
            (x("01 02"), (0b0111, True, False)),
            (x("01 03"), (0b0011, False, False)),
            (x("09"), (0b1001, False, False)),
        ],
    ),
    Case(
        "arm then fire once",
        [r("01", A, group=0), r("*", W, group=0)],
        [
            (x("02"), None),  # not armed: the WHEN_ARMED rule is not even tried
            (x("01"), (0b01, False, False)),  # arms; WHEN_ARMED sees the mask from before
            (x("02"), (0b10, False, False)),  # fires and disarms
            (x("02"), None),
        ],
    ),
    Case(
        "one report ends a wait and starts the next",
        [r("01", A, group=5), r("01", W, group=5)],
        [
            (x("01"), (0b01, False, False)),
            (x("01"), (0b11, False, False)),
            (x("01"), (0b11, False, False)),
        ],
    ),
    Case(
        "groups are independent",
        [r("01", A, group=3), r("02", A, group=7), r("*", W | H, group=3), r("*", W, group=7)],
        [
            (x("01"), (0b0001, False, False)),
            (x("05"), (0b0100, True, False)),  # only group 3 was armed
            (x("02"), (0b0010, False, False)),
            (x("05"), (0b1000, False, False)),
            (x("05"), None),
        ],
    ),
    Case(
        "32 rules, bit 31, group 31",
        THIRTY_TWO,
        [
            (x("00"), (1 | 1 << 31, False, False)),
            (x("01"), (1 << 1 | 1 << 31, True, False)),
            (x("1e 00"), (1 << 30 | 1 << 31, False, False)),
            (x("7f"), (1 << 31, False, False)),
        ],
    ),
]


def python_run(case: Case) -> list[tuple[Expect, int]]:
    """(verdict, armed mask after) per step, from the reference filter."""
    f = Filter(case.rules, can_hold=case.can_hold)
    out: list[tuple[Expect, int]] = []
    for report, _ in case.steps:
        v: Verdict | None = f.run(report)
        out.append(((v.matched, v.held, v.truncated) if v else None, f.armed))
    return out


def python_timed(
    rules: Sequence[DeviceRule], reports: Sequence[bytes], times: Sequence[int], can_hold: bool
) -> list[tuple[Expect, int]]:
    """(verdict, armed groups after) per report sent at ``times``, from the reference filter."""
    f = Filter(rules, can_hold=can_hold)
    out: list[tuple[Expect, int]] = []
    for rep, t in zip(reports, times, strict=True):
        v = f.run(rep, now_ns=t)
        out.append(((v.matched, v.held, v.truncated) if v else None, f.armed_at(t)))
    return out


def kernel_run(
    kernel: Collected,
    rules: Sequence[DeviceRule],
    reports: Sequence[bytes],
    can_hold: bool,
    times: Sequence[int] | None = None,
) -> list[tuple[Expect, int]]:
    """(verdict, armed mask after) per report, from the BPF filter through feed + ring; with
    ``times``, each report is fed at that time (``EPOCH_NS + t``, as ``replay --via-bpf``)."""
    src = kernel.source
    hid_id = new_hid_id()
    src.set_rules(hid_id, rules)
    kernel.take()
    out: list[tuple[Expect, int]] = []
    try:
        for k, report in enumerate(reports):
            now = 0 if times is None else EPOCH_NS + times[k]
            verdict = src.feed(hid_id, report, can_hold=can_hold, now_ns=now)
            recs = kernel.take()
            armed = src.armed(hid_id) if times is None else src.armed(hid_id, now_ns=now)
            if verdict == VERDICT_QUIET:
                assert recs == []
                out.append((None, armed))
                continue
            assert verdict in (VERDICT_NOTIFY, VERDICT_HOLD), verdict
            assert len(recs) == 1, recs
            rec = recs[0]
            assert rec.hid_id == hid_id
            assert rec.length == len(report)
            assert rec.data == report[:RECORD_DATA_MAX]
            assert rec.held == (verdict == VERDICT_HOLD)
            out.append(((rec.matched, rec.held, rec.truncated), armed))
    finally:
        src.clear_rules(hid_id)
    return out


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_table_python(case: Case) -> None:
    got = [v for v, _ in python_run(case)]
    assert got == [e for _, e in case.steps]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_table_kernel_agrees(kernel: Collected, case: Case) -> None:
    want = python_run(case)
    got = kernel_run(kernel, case.rules, [rep for rep, _ in case.steps], case.can_hold)
    assert [v for v, _ in got] == [e for _, e in case.steps]
    assert got == want  # including the armed mask after every report


def test_records_carry_kernel_timestamps(kernel: Collected) -> None:
    src = kernel.source
    hid_id = new_hid_id()
    src.set_rules(hid_id, [r("*")])
    before = time.monotonic_ns()
    src.feed(hid_id, x("01"))
    after = time.monotonic_ns()
    (rec,) = kernel.take()
    src.clear_rules(hid_id)
    assert before <= rec.ts_ns <= after  # bpf_ktime_get_ns() is CLOCK_MONOTONIC


DEFER_FLUSH = [  # defer, 100 ms, on_cancel = "flush": what policies/defer.py asks for
    DeviceRule(Rule(Pattern.parse("02 00"), H | A, arm_ns=100_000_000), 0),
    DeviceRule(Rule(ANY_REPORT, W | H), 0),
]
MS = 1_000_000


def test_an_expired_deferral_cancels_nothing(kernel: Collected) -> None:
    """Issue 10 item 5: after defer's delay expired (the daemon re-injected the held report),
    the next report, whatever it is, passes untouched and writes no ring record, in the
    reference filter and in the kernel's; before the expiry it still cancels."""
    reports = [x("02 00 00 00"), x("02 01 e8 03"), x("02 00 00 00"), x("02 20 10 04")]
    times = [20 * MS, 200 * MS, 300 * MS, 330 * MS]
    want: list[tuple[Expect, int]] = [
        ((0b01, True, False), 1),  # held, armed until 120 ms
        (None, 0),  # 200 ms: the deferral expired at 120 ms: untouched, no record
        ((0b01, True, False), 1),  # held again
        ((0b10, True, False), 0),  # 330 ms < 400 ms: cancels (flush holds it), disarms
    ]
    assert python_timed(DEFER_FLUSH, reports, times, True) == want
    assert kernel_run(kernel, DEFER_FLUSH, reports, times=times, can_hold=True) == want
    # the boundary: at the deadline exactly the arm is over (the daemon's timer ran first)
    edge = [x("02 00"), x("05")]
    for t, fired in ((100 * MS - 1, True), (100 * MS, False)):
        got = kernel_run(kernel, DEFER_FLUSH, edge, True, times=[0, t])
        assert python_timed(DEFER_FLUSH, edge, [0, t], True) == got
        assert (got[1][0] is not None) == fired, (t, got)


def test_rule_swap_keeps_armed_mask(kernel: Collected) -> None:
    src = kernel.source
    hid_id = new_hid_id()
    src.set_rules(hid_id, [r("01", A, group=2)])
    src.feed(hid_id, x("01"))
    assert src.armed(hid_id) == 1 << 2
    src.set_rules(hid_id, [r("01", A, group=2), r("*", W, group=2)])
    assert src.armed(hid_id) == 1 << 2
    assert src.feed(hid_id, x("02")) == VERDICT_NOTIFY
    assert src.armed(hid_id) == 0
    src.clear_rules(hid_id)
    assert src.feed(hid_id, x("01")) == VERDICT_QUIET
    kernel.take()


# ----------------------------------------------------------------- random tables

_byte = st.integers(0, 3)  # a small alphabet, so patterns do match
_pattern = st.one_of(
    st.just(ANY_REPORT),
    st.lists(st.tuples(_byte, st.sampled_from([0x00, 0xFF, 0x01])), min_size=1, max_size=6).map(
        lambda bs: Pattern(bytes(b for b, _ in bs), bytes(m for _, m in bs))
    ),
)
_rule = st.builds(
    lambda p, f, g, arm: DeviceRule(Rule(p, RuleFlag(f), arm), g),
    _pattern,
    st.integers(0, 7),
    st.integers(0, 3),
    st.sampled_from([None, None, 0, 1_500, 4_000, 10_000]),
)
_report = st.one_of(
    st.lists(_byte, min_size=1, max_size=8).map(bytes),
    st.integers(RECORD_DATA_MAX - 1, RECORD_DATA_MAX + 2).map(lambda n: bytes([1]) * n),
)


@settings(max_examples=150)  # the rest: the shared profile (tests/conftest.py)
@given(
    rules=st.lists(_rule, min_size=1, max_size=RULES_MAX),
    reports=st.lists(_report, min_size=1, max_size=12),
    can_hold=st.booleans(),
    gaps=st.lists(st.integers(0, 5_000), min_size=12, max_size=12),
)
def test_random_tables_agree(
    kernel: Collected,
    rules: list[DeviceRule],
    reports: list[bytes],
    can_hold: bool,
    gaps: list[int],
) -> None:
    # reports 0-5 µs apart: arms of 1.5-10 µs expire between some of them
    times = list(itertools.accumulate(gaps[: len(reports)]))
    want = python_timed(rules, reports, times, can_hold)
    assert kernel_run(kernel, rules, reports, can_hold, times=times) == want
