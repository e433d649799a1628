"""``inject``: on a matching report, inject a sequence of reports, with waits between them.

For macro keys. Reports and ``{wait_ms = N}`` steps run in order; a trigger that arrives while a
sequence is still running queues its own sequence behind it (sequences never interleave).
``pass_trigger = false`` holds the trigger in the kernel so readers never see it.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from hidbpfd.model import Action, Inject, InputEvent, Pattern, Rule, RuleFlag, Schedule
from hidbpfd.policies.base import Context, Policy
from hidbpfd.policies.params import InjectStep, Kind, Param, Wait

_KEY = "step"


@dataclass(slots=True)
class InjectState:
    """Steps still to run, and whether a wait is pending."""

    queue: deque[InjectStep] = field(default_factory=deque)
    waiting: bool = False


def run_steps(queue: deque[InjectStep]) -> tuple[list[Action], int | None]:
    """Pop reports until a wait; returns the injections and the wait (ns) that stopped us."""
    out: list[Action] = []
    while queue:
        step = queue.popleft()
        if isinstance(step, Wait):
            return out, step.ns
        out.append(Inject(step))
    return out, None


@dataclass(frozen=True, slots=True)
class InjectPolicy(Policy[InjectState]):
    """See the module docstring."""

    TYPE = "inject"
    SUMMARY = "on a matching report, inject a sequence of reports with optional waits"
    PARAMS = (
        Param("match", Kind.PATTERN, "the trigger report", required=True),
        Param(
            "reports",
            Kind.INJECT_STEPS,
            "reports to inject, and {wait_ms = N} pauses",
            required=True,
        ),
        Param("pass_trigger", Kind.BOOL, "let readers see the trigger report", default=True),
        Param("name", Kind.TEXT, "a name for logs", default=""),
    )

    match: Pattern
    reports: tuple[InjectStep, ...]
    pass_trigger: bool = True
    name: str = ""

    def rules(self) -> tuple[Rule, ...]:
        """The trigger; held when it must not pass."""
        return (Rule(self.match, RuleFlag.NONE if self.pass_trigger else RuleFlag.HOLD),)

    def new_state(self) -> InjectState:
        """No sequence running."""
        return InjectState()

    def on_event(self, ctx: Context[InjectState], event: InputEvent, fired: int) -> list[Action]:
        """Queue the sequence; start it unless one is waiting."""
        st = ctx.state
        st.queue.extend(self.reports)
        return [] if st.waiting else self._advance(st)

    def on_timer(self, ctx: Context[InjectState], key: str) -> list[Action]:
        """A wait is over: continue."""
        ctx.state.waiting = False
        return self._advance(ctx.state)

    def _advance(self, st: InjectState) -> list[Action]:
        out, wait = run_steps(st.queue)
        if wait is not None:
            st.waiting = True
            out.append(Schedule(_KEY, wait))
        return out

    def describe(self) -> str:
        n = sum(1 for s in self.reports if isinstance(s, bytes))
        return f"inject {n} reports on {self.match}" + (
            "" if self.pass_trigger else " (trigger held)"
        )
