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
3. Otherwise ``armed`` loses the group bits of matched ``WHEN_ARMED`` rules, then gains the group
   bits of matched ``ARM`` rules (in that order: a report can end one wait and start the next).
4. The report is held if any matched rule has ``HOLD`` and the kernel can hold, and the report
   fits a record (``RECORD_DATA_MAX``); a record goes to the daemon. If the record cannot be
   written (ring buffer full) the report passes, the drop counter grows, and ``armed`` is left
   as it was before (the daemon never heard of it).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from hidbpfd.model import RULES_MAX, DeviceRule, RuleFlag

RECORD_DATA_MAX: Final = 128
"""Report bytes a ring-buffer record carries (``HIDBPFD_RECORD_DATA_MAX``)."""


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


class Filter:
    """The filter state of one device: its rule table and armed mask.

    Owned by the replay (one per device); the daemon's equivalent lives in BPF maps.
    """

    def __init__(self, rules: Sequence[DeviceRule], *, can_hold: bool = True) -> None:
        check_table(rules)
        self.rules: tuple[DeviceRule, ...] = tuple(rules)
        self.armed = 0
        self.can_hold = can_hold

    def run(self, report: bytes, *, ring_full: bool = False) -> Verdict | None:
        """Apply the filter to one report; None when no rule fired (the daemon hears nothing)."""
        matched = 0
        hold = False
        disarm = 0
        arm = 0
        for i, dr in enumerate(self.rules):
            flags = dr.rule.flags
            bit = 1 << dr.group
            if flags & RuleFlag.WHEN_ARMED and not self.armed & bit:
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
        self.armed = (self.armed & ~disarm) | arm
        truncated = len(report) > RECORD_DATA_MAX
        return Verdict(matched, hold and self.can_hold and not truncated, truncated)
