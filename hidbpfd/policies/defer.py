"""``defer``: hold a report, and let it through later only if nothing else came first.

For the pen whose "out of proximity" report cannot be trusted: hold it for ``delay_ms``; if a
report matching ``cancel_on`` (default: any report of the device) arrives first, the held one is
dropped (``on_cancel = "drop"``) or released just before the newcomer (``"flush"``); otherwise it
is re-injected when the delay expires. A new matching report while one is held, that does not
itself cancel, releases the older one first: nothing is lost without a cancelling report.

The hold happens in the kernel (a HOLD rule). ``cancel_on`` is a WHEN_ARMED rule: the daemon
only hears "any report" while something is held. With ``flush`` the cancelling report is held
too (the kernel delivers reports before the daemon hears of them), and the policy re-injects the
old report and then the newcomer, so readers see them in their original order.
"""

from __future__ import annotations

from dataclasses import dataclass

from hidbpfd.model import (
    ANY_REPORT,
    Action,
    Cancel,
    InputEvent,
    Pattern,
    Reinject,
    Rule,
    RuleFlag,
    Schedule,
)
from hidbpfd.policies.base import Context, Policy
from hidbpfd.policies.params import Kind, Param

_MATCH = 1 << 0
_CANCEL = 1 << 1
_KEY = "release"


@dataclass(slots=True)
class DeferState:
    """The report currently held, if any."""

    held: bytes | None = None


@dataclass(frozen=True, slots=True)
class Defer(Policy[DeferState]):
    """See the module docstring."""

    TYPE = "defer"
    SUMMARY = "hold a matching report for delay_ms; drop it if another report comes first"
    PARAMS = (
        Param("match", Kind.PATTERN, "reports to hold", required=True),
        Param("delay_ms", Kind.DURATION_MS, "how long to hold them", required=True),
        Param(
            "cancel_on",
            Kind.PATTERN,
            "reports that cancel the held one (default: any)",
            default=ANY_REPORT,
        ),
        Param(
            "on_cancel",
            Kind.CHOICE,
            "drop the held report, or flush it before the newcomer",
            default="drop",
            choices=("drop", "flush"),
        ),
        Param("name", Kind.TEXT, "a name for logs", default=""),
    )

    match: Pattern
    delay_ms: int  # in ns once converted (Kind.DURATION_MS)
    cancel_on: Pattern = ANY_REPORT
    on_cancel: str = "drop"
    name: str = ""

    def rules(self) -> tuple[Rule, ...]:
        """Hold + arm on ``match``; ``cancel_on`` only while armed."""
        cancel = RuleFlag.WHEN_ARMED | (
            RuleFlag.HOLD if self.on_cancel == "flush" else RuleFlag.NONE
        )
        # the arm ends with the delay: a report after the expiry is not a cancel
        arm = Rule(self.match, RuleFlag.HOLD | RuleFlag.ARM, arm_ns=self.delay_ms)
        return (arm, Rule(self.cancel_on, cancel))

    def new_state(self) -> DeferState:
        """Nothing held."""
        return DeferState()

    def on_event(self, ctx: Context[DeferState], event: InputEvent, fired: int) -> list[Action]:
        """Cancel (drop/flush) what is held, then hold the newcomer if it matched."""
        st = ctx.state
        out: list[Action] = []
        if st.held is not None and (fired & _CANCEL or (fired & _MATCH and event.held)):
            if fired & _CANCEL:
                if self.on_cancel == "flush":
                    out.append(Reinject(st.held))
            else:  # superseded by a newer match that does not cancel: release, never lose
                out.append(Reinject(st.held))
            st.held = None
            out.append(Cancel(_KEY))
        if fired & _MATCH and event.held:
            st.held = event.data
            out.append(Schedule(_KEY, self.delay_ms))
        elif fired & _CANCEL and event.held and self.on_cancel == "flush":
            out.append(Reinject(event.data))  # held only to keep the order: let it through now
        return out

    def on_timer(self, ctx: Context[DeferState], key: str) -> list[Action]:
        """The delay expired with nothing cancelling: re-inject the held report."""
        held, ctx.state.held = ctx.state.held, None
        return [Reinject(held)] if held is not None else []

    def describe(self) -> str:
        return (
            f"defer {self.match} {self.delay_ms / 1e6:g} ms ({self.on_cancel} on {self.cancel_on})"
        )
