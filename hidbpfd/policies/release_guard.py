"""``release-guard``: inject the release a device forgot to send.

After a report matching ``match`` (a press), if no report matching ``release_match`` (default:
exactly ``release``) arrives within ``timeout_ms``, inject ``release`` once. Every new press
re-arms the timeout. The release watch is a WHEN_ARMED rule, so the daemon hears releases only
while a press is pending.
"""

from __future__ import annotations

from dataclasses import dataclass

from hidbpfd.model import Action, Cancel, Inject, InputEvent, Pattern, Rule, RuleFlag, Schedule
from hidbpfd.policies.base import Context, Policy
from hidbpfd.policies.params import Kind, Param

_KEY = "timeout"


@dataclass(slots=True)
class GuardState:
    """Whether a press is waiting for its release."""

    pressed: bool = False


@dataclass(frozen=True, slots=True)
class ReleaseGuard(Policy[GuardState]):
    """See the module docstring."""

    TYPE = "release-guard"
    SUMMARY = "after a press, inject the release if the device does not send it in time"
    PARAMS = (
        Param("match", Kind.PATTERN, "the press report", required=True),
        Param("release", Kind.REPORT, "the release report to inject", required=True),
        Param(
            "timeout_ms", Kind.DURATION_MS, "how long to wait for the real release", required=True
        ),
        Param("release_match", Kind.PATTERN, "reports that count as a release (default: release)"),
        Param("name", Kind.TEXT, "a name for logs", default=""),
    )

    match: Pattern
    release: bytes
    timeout_ms: int  # ns once converted
    release_match: Pattern | None = None
    name: str = ""

    @property
    def release_pattern(self) -> Pattern:
        """What counts as a release."""
        if self.release_match is not None:
            return self.release_match
        return Pattern(self.release, b"\xff" * len(self.release))

    def rules(self) -> tuple[Rule, ...]:
        """The press arms; the release is heard only while armed."""
        # the arm ends with the timeout: a release after it was injected wakes nobody
        return (
            Rule(self.match, RuleFlag.ARM, arm_ns=self.timeout_ms),
            Rule(self.release_pattern, RuleFlag.WHEN_ARMED),
        )

    def new_state(self) -> GuardState:
        """Nothing pressed."""
        return GuardState()

    def on_event(self, ctx: Context[GuardState], event: InputEvent, fired: int) -> list[Action]:
        """A release ends the wait; a press (re)starts it."""
        st = ctx.state
        if self.release_pattern.matches(event.data):
            if st.pressed:
                st.pressed = False
                return [Cancel(_KEY)]
            return []
        st.pressed = True
        return [Schedule(_KEY, self.timeout_ms)]

    def on_timer(self, ctx: Context[GuardState], key: str) -> list[Action]:
        """No release came in time: inject one."""
        ctx.state.pressed = False
        return [Inject(self.release)]

    def describe(self) -> str:
        ms = self.timeout_ms / 1e6
        return f"release-guard {self.match} -> {self.release.hex(' ')} after {ms:g} ms"
