"""The report filter, in Python: the reference for ``hidbpfd_filter()`` in ``bpf/hidbpfd.h``.

The kernel runs the filter on every input report of a device that has rules and decides two
things: does the daemon hear about this report (a ring-buffer record), and is the report held
back from the device's readers. The replay uses this class; ``replay --via-bpf`` runs the C
version; tests check that both give the same answers. Keep them in step.

Semantics, for a report ``r`` of a device with rule table ``rules`` and armed mask ``armed``:

1. ``matched`` = the set of rules *i* whose pattern matches ``r`` and, if the rule is
   ``WHEN_ARMED``, whose group bit is set in ``armed`` (evaluated against ``armed`` as it was
   before this report).
2. If ``matched`` is empty: the report passes and nobody wakes up.
   A group is armed while its bit is set and the report comes before the group's deadline:
   an ``ARM`` rule with ``arm_ns`` arms until ``ts + arm_ns`` (rounded up to whole µs, as the
   kernel keeps it, :func:`arm_us`), so an arm ends by itself when the policy's wait (defer's
   delay, release-guard's timeout) expires; without ``arm_ns`` it never expires.
3. Otherwise ``armed`` loses the group bits of matched ``WHEN_ARMED`` rules, then gains the group
   bits of matched ``ARM`` rules (in that order: a report can end one wait and start the next),
   each with its new deadline (two rules arming one group: the later deadline).
4. The report is held if any matched rule has ``HOLD`` and the kernel can hold, and the report
   fits a record (``RECORD_DATA_MAX``); a record goes to the daemon. If the record cannot be
   written (ring buffer full) the report passes, the drop counter grows, and ``armed`` is left
   as it was before (the daemon never heard of it).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from hidbpfd.model import RULES_MAX, DeviceRule, Rule, RuleFlag

RECORD_DATA_MAX: Final = 128
"""Report bytes a ring-buffer record carries (``HIDBPFD_RECORD_DATA_MAX``)."""
ARM_US_MAX: Final = 0xFFFF_FFFF
"""``struct hidbpfd_rule.arm_us`` is a __u32: arms last at most ~71 minutes."""
NEVER: Final = (1 << 64) - 1
"""The deadline of an arm that never expires (U64_MAX in ``struct hidbpfd_armed.until``)."""


def arm_us(rule: Rule) -> int:
    """``struct hidbpfd_rule.arm_us`` for ``rule``: its ``arm_ns`` in µs, rounded up (at least
    1, at most :data:`ARM_US_MAX`); 0 when the arm never expires."""
    if rule.arm_ns is None:
        return 0
    return min(ARM_US_MAX, max(1, -(-rule.arm_ns // 1000)))


def arm_deadline(rule: Rule, now_ns: int) -> int:
    """When an arm set by ``rule`` at ``now_ns`` expires (:data:`NEVER` if it does not)."""
    us = arm_us(rule)
    return now_ns + us * 1000 if us else NEVER


@dataclass(frozen=True, slots=True)
class Verdict:
    """The filter's answer for one report that fired at least one rule."""

    matched: int
    held: bool
    truncated: bool


class RuleTableError(ValueError):
    """A device's rules do not fit the kernel's table."""


def check_table(rules: Sequence[DeviceRule]) -> None:
    """Raise :class:`RuleTableError` if ``rules`` do not fit ``RULES_MAX`` slots and groups."""
    if len(rules) > RULES_MAX:
        raise RuleTableError(
            f"{len(rules)} rules for one device; the kernel table holds {RULES_MAX}"
        )
    for r in rules:
        if not 0 <= r.group < RULES_MAX:
            raise RuleTableError(f"arm group {r.group} out of range 0..{RULES_MAX - 1}")


@dataclass(frozen=True, slots=True)
class TooLong:
    """A HOLD rule that can match an input report longer than a record carries: the filter
    would let that report pass unheld (and the policy could not re-inject it whole)."""

    report_id: int
    length: int
    rule: Rule

    def reason(self) -> str:
        """Why the policy is refused, for its log line (the caller names file, policy, device)."""
        which = f"input report {self.report_id:#04x}" if self.report_id else "its input report"
        return (
            f"it holds reports matching {self.rule.pattern} and can match {which} of "
            f"{self.length} bytes (the device's report descriptor), longer than the "
            f"{RECORD_DATA_MAX} bytes hidbpfd can hold and re-inject (a ring record's data): "
            "that report would pass unheld, the policy silently not applied"
        )

    def hint(self) -> str:
        """What to do about it."""
        if self.report_id:
            return f"Try a match whose first byte is another report ID than {self.report_id:#04x}"
        return "This device's reports cannot be held; use a policy that does not hold them"


def too_long_to_hold(
    rules: Sequence[Rule], input_lengths: Sequence[tuple[int, int]] | None
) -> list[TooLong]:
    """The input reports of a device (``(report ID, bytes)``, from its report descriptor;
    :attr:`hidbpfd.model.DeviceFacts.input_lengths`) longer than :data:`RECORD_DATA_MAX` that
    a HOLD rule of ``rules`` can match: at least as long as the pattern, and, for a numbered
    report, its ID agreeing with the pattern's first byte where that is not a wildcard.

    Called by the daemon when it loads a device's policies (both engines): a policy with such
    a rule is refused with the reason, never run as a silent no-op. Empty when the lengths are
    unknown (no descriptor to go by)."""
    out: list[TooLong] = []
    for rid, length in input_lengths or ():
        if length <= RECORD_DATA_MAX:
            continue
        for r in rules:
            p = r.pattern
            if not r.flags & RuleFlag.HOLD or len(p.data) > length:
                continue
            if rid and p.data and (rid & p.mask[0]) != (p.data[0] & p.mask[0]):
                continue
            out.append(TooLong(rid, length, r))
            break
    return out


class Filter:
    """The filter state of one device: its rule table, armed mask and arm deadlines.

    Owned by the replay (one per device); the daemon's equivalent lives in BPF maps.
    """

    def __init__(self, rules: Sequence[DeviceRule], *, can_hold: bool = True) -> None:
        check_table(rules)
        self.rules: tuple[DeviceRule, ...] = tuple(rules)
        self.armed = 0
        """Group bits as the kernel keeps them (an expired arm's bit may stay set)."""
        self.until = [0] * RULES_MAX
        """When each group's arm expires (``struct hidbpfd_armed.until``)."""
        self.can_hold = can_hold

    def armed_at(self, now_ns: int) -> int:
        """The groups armed at ``now_ns`` (set, and not expired)."""
        return sum(
            1 << g for g in range(RULES_MAX) if self.armed >> g & 1 and now_ns < self.until[g]
        )

    def run(self, report: bytes, *, now_ns: int = 0, ring_full: bool = False) -> Verdict | None:
        """Apply the filter to one report sent at ``now_ns`` (CLOCK_MONOTONIC, or a replay's
        clock); None when no rule fired (the daemon hears nothing)."""
        matched = 0
        hold = False
        disarm = 0
        arm = 0
        armed = self.armed_at(now_ns) if self.armed else 0
        for i, dr in enumerate(self.rules):
            flags = dr.rule.flags
            bit = 1 << dr.group
            if flags & RuleFlag.WHEN_ARMED and not armed & bit:
                continue
            if not dr.rule.pattern.matches(report):
                continue
            matched |= 1 << i
            if flags & RuleFlag.WHEN_ARMED:
                disarm |= bit
            if flags & RuleFlag.ARM:
                arm |= bit
            if flags & RuleFlag.HOLD:
                hold = True
        if not matched or ring_full:
            return None
        seen = 0
        for i, dr in enumerate(self.rules):
            if matched >> i & 1 and dr.rule.flags & RuleFlag.ARM:
                due = arm_deadline(dr.rule, now_ns)
                if not seen >> dr.group & 1 or due > self.until[dr.group]:
                    self.until[dr.group] = due
                seen |= 1 << dr.group
        self.armed = (self.armed & ~disarm) | arm
        truncated = len(report) > RECORD_DATA_MAX
        return Verdict(matched, hold and self.can_hold and not truncated, truncated)
