"""``reinit``: talk back to a device that says it woke up (or was just plugged in, or resumed).

On a report matching ``match`` and/or the device events named in ``on`` (``report``, ``added``,
``resume``), send ``send`` — output and feature reports with waits between them. With
``verify``, get a feature report afterwards and compare it with ``verify.expect``; on a mismatch
or an error, try the whole sequence again, up to ``retries`` more times. A new trigger while an
attempt is running restarts from the first step.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from hidbpfd.model import (
    Action,
    Cancel,
    DeviceEvent,
    FeatureReply,
    GetFeature,
    InputEvent,
    Pattern,
    Rule,
    RuleFlag,
    Schedule,
    SendOutput,
    SetFeature,
)
from hidbpfd.policies.base import Context, Policy
from hidbpfd.policies.params import Feature, Kind, Output, Param, ParamError, SendStep, Verify, Wait

_STEP = "step"
_VERIFY = "verify"


@dataclass(slots=True)
class ReinitState:
    """Where the current attempt is: steps left, attempt number, what happened last."""

    queue: deque[SendStep] = field(default_factory=deque)
    attempt: int = 0
    active: bool = False
    outcome: str = ""


@dataclass(frozen=True, slots=True)
class Reinit(Policy[ReinitState]):
    """See the module docstring."""

    TYPE = "reinit"
    SUMMARY = "on a wake-up report (or added/resume), send output/feature reports, verify, retry"
    PARAMS = (
        Param("match", Kind.PATTERN, "the report that says the device needs re-initialising"),
        Param(
            "on",
            Kind.CHOICES,
            "triggers: report, added, resume",
            choices=("report", "added", "resume"),
        ),
        Param(
            "send",
            Kind.SEND_STEPS,
            "output/feature reports and {wait_ms = N} pauses",
            required=True,
        ),
        Param("retries", Kind.INT, "extra attempts when verify fails", default=0, maximum=100),
        Param(
            "verify",
            Kind.VERIFY,
            "{report_id, expect, length}: check a feature report after sending",
        ),
        Param("pass_trigger", Kind.BOOL, "let readers see the trigger report", default=True),
        Param("name", Kind.TEXT, "a name for logs", default=""),
    )

    send: tuple[SendStep, ...]
    match: Pattern | None = None
    on: tuple[str, ...] = ("report",)
    retries: int = 0
    verify: Verify | None = None
    pass_trigger: bool = True
    name: str = ""

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> Reinit:
        """``on`` defaults to ``["report"]``; ``report`` needs ``match``; retries need verify."""
        p = dict(params)
        if p.get("on") is None:
            p["on"] = ("report",) if p.get("match") is not None else ()
        if not p["on"]:
            raise ParamError(
                "on", "nothing triggers this policy", 'Set match = "..." or on = ["added"]'
            )
        if "report" in p["on"] and p.get("match") is None:
            raise ParamError("match", 'on = ["report"] needs a match pattern', 'Add match = "..."')
        if p["match"] is not None and "report" not in p["on"]:
            raise ParamError(
                "on", 'match is set but on does not list "report"', 'Add "report" to on'
            )
        if p.get("retries") and p.get("verify") is None:
            raise ParamError(
                "retries",
                "retries without verify never retry",
                'Add verify = {report_id = ..., expect = "..."}',
            )
        return cls(**p)

    def rules(self) -> tuple[Rule, ...]:
        """The wake-up report, if any."""
        if self.match is None or "report" not in self.on:
            return ()
        return (Rule(self.match, RuleFlag.NONE if self.pass_trigger else RuleFlag.HOLD),)

    def new_state(self) -> ReinitState:
        """Idle."""
        return ReinitState()

    def on_event(self, ctx: Context[ReinitState], event: InputEvent, fired: int) -> list[Action]:
        """The device said it woke up."""
        return self._begin(ctx.state)

    def on_device(self, ctx: Context[ReinitState], what: DeviceEvent) -> list[Action]:
        """``added`` / ``resume``, when listed in ``on``."""
        return self._begin(ctx.state) if what in self.on else []

    def on_timer(self, ctx: Context[ReinitState], key: str) -> list[Action]:
        """A wait between steps is over."""
        return self._advance(ctx.state)

    def on_reply(self, ctx: Context[ReinitState], reply: FeatureReply) -> list[Action]:
        """Compare the verify read-back; retry or finish."""
        st = ctx.state
        if not st.active or reply.key != _VERIFY or self.verify is None:
            return []
        if reply.data is not None and self.verify.expect.matches(reply.data):
            st.active = False
            st.outcome = f"verified after {st.attempt + 1} attempt(s)"
            return []
        if st.attempt < self.retries:
            st.attempt += 1
            st.queue = deque(self.send)
            return self._advance(st)
        st.active = False
        got = reply.error or (reply.data.hex(" ") if reply.data is not None else "nothing")
        st.outcome = f"verify failed after {st.attempt + 1} attempt(s): got {got}"
        return []

    def _begin(self, st: ReinitState) -> list[Action]:
        st.queue = deque(self.send)
        st.attempt = 0
        st.active = True
        return [Cancel(_STEP), *self._advance(st)]

    def _advance(self, st: ReinitState) -> list[Action]:
        out: list[Action] = []
        while st.queue:
            step = st.queue.popleft()
            if isinstance(step, Wait):
                out.append(Schedule(_STEP, step.ns))
                return out
            out.append(SendOutput(step.data) if isinstance(step, Output) else SetFeature(step.data))
        if self.verify is not None:
            out.append(GetFeature(self.verify.report_id, self.verify.length, _VERIFY))
        else:
            st.active = False
            st.outcome = "sent"
        return out

    def describe(self) -> str:
        trig = ", ".join(("report " + str(self.match)) if t == "report" else t for t in self.on)
        n = sum(1 for s in self.send if isinstance(s, Output | Feature))
        return f"reinit on {trig}: {n} reports" + (
            f", verify, {self.retries} retries" if self.verify else ""
        )
