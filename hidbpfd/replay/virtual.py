"""Deterministic replay: a capture through the real filter semantics, dispatch and policies.

Virtual time only; nothing sleeps. The trace says what the device's readers and the device
itself would observe: ``pass`` (an original report delivered), ``inject`` (a report put into
the input stream, re-injected held ones included), ``output`` / ``feature`` (what the device
receives). Held or dropped reports print nothing. Timers due at the same instant as a report
run before it.

The replay device answers a GET_FEATURE with the last feature report set with that report id
(an echo device), or an error when none was set.

How reports are filtered is pluggable (:class:`FilterBackend`): the Python reference filter by
default, the real BPF filter with ``--via-bpf``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from hidbpfd.config import Config
from hidbpfd.devices.facts import descriptor_facts, interface_from_phys
from hidbpfd.engine.clock import VirtualClock
from hidbpfd.engine.dispatch import Dispatcher, Outcome, ReplyFn, refusal, split_too_long
from hidbpfd.engine.filter import Filter, Verdict
from hidbpfd.engine.scheduler import Scheduler
from hidbpfd.model import DeviceId, DeviceRule, InputEvent
from hidbpfd.replay.recording import Recording

log = logging.getLogger(__name__)

TRACE_KINDS = frozenset({"pass", "inject", "output", "feature"})
_SETTLE_LIMIT = 1_000_000


class FilterBackend(Protocol):
    """Decides what the daemon hears about each report, device by device."""

    def set_rules(self, device: DeviceId, rules: Sequence[DeviceRule]) -> None:
        """Install a device's rule table (called once per device, before its first report)."""

    def run(self, device: DeviceId, report: bytes, t_ns: int) -> Verdict | None:
        """Filter one report sent at ``t_ns`` (the replay's clock); None when no rule fired."""


class PyFilterBackend:
    """The Python reference filter (:class:`hidbpfd.engine.filter.Filter`), one per device."""

    def __init__(self) -> None:
        self._filters: dict[str, Filter] = {}

    def set_rules(self, device: DeviceId, rules: Sequence[DeviceRule]) -> None:
        """New table, armed mask cleared."""
        self._filters[device.key] = Filter(rules)

    def run(self, device: DeviceId, report: bytes, t_ns: int) -> Verdict | None:
        """Apply the device's filter (no rules: nothing fires)."""
        f = self._filters.get(device.key)
        return f.run(report, now_ns=t_ns) if f else None


@dataclass(frozen=True, slots=True)
class TraceLine:
    """One line of the replay trace."""

    t: float
    kind: str
    data: str
    device: str
    policy: str = ""

    def json(self) -> str:
        """The JSON-lines form: ``{"t", "kind", "data", "device"[, "policy"]}``."""
        d: dict[str, Any] = {
            "t": self.t,
            "kind": self.kind,
            "data": self.data,
            "device": self.device,
        }
        if self.policy:
            d["policy"] = self.policy
        return json.dumps(d)


class EchoDevice:
    """The replay's stand-in for the device: records nothing itself (the trace comes from the
    dispatch's outcomes) and answers GET_FEATURE with the last SET_FEATURE of that id."""

    def __init__(self) -> None:
        self.features: dict[tuple[str, int], bytes] = {}

    def inject(self, device: DeviceId, data: bytes, origin: str) -> None:
        """Nothing to do: the outcome is traced by the dispatch."""

    def output(self, device: DeviceId, data: bytes, origin: str) -> None:
        """Nothing to do: the outcome is traced by the dispatch."""

    def set_feature(self, device: DeviceId, data: bytes, origin: str) -> None:
        """Remember it for a later GET_FEATURE."""
        if data:
            self.features[(device.key, data[0])] = data

    def get_feature(
        self, device: DeviceId, report_id: int, length: int, origin: str, reply: ReplyFn
    ) -> None:
        """Answer at once with the remembered report, cut or padded to ``length``."""
        data = self.features.get((device.key, report_id))
        if data is None:
            reply(None, f"no feature report {report_id:#04x} was set")
        else:
            reply(data[:length].ljust(length, b"\0"), "")


def replay(
    rec: Recording,
    config: Config,
    *,
    backend: FilterBackend | None = None,
    observers: Sequence[Callable[[Outcome], None]] = (),
    attach_ns: int | None = None,
) -> Iterator[TraceLine]:
    """Run a capture and yield its trace lines in time order. Devices are attached at the first
    event's time, or at ``attach_ns`` (same time base as the events) when given: the live
    replay uses that to model devices that were plugged in before playback began."""
    events = rec.events()
    t0 = events[0][0] if events else 0
    clock = VirtualClock(t0 if attach_ns is None else min(attach_ns, t0))
    lines: list[TraceLine] = []

    def rel(t_ns: int) -> float:
        return round((t_ns - t0) / 1e9, 6)

    def observe(o: Outcome) -> None:
        if o.kind in TRACE_KINDS:
            lines.append(TraceLine(rel(o.t_ns), o.kind, o.data.hex(), o.device.key, o.policy))

    sched = Scheduler(clock)
    disp = Dispatcher(sched, EchoDevice(), [observe, *observers])
    be = backend or PyFilterBackend()
    ids = {d.index: d.device_id() for d in rec.devices}
    for d in rec.devices:
        dev = ids[d.index]
        facts = descriptor_facts(d.descriptor, interface_from_phys(d.phys, d.bus))
        bindings, refused = split_too_long(config.bindings_for(dev, facts), facts.input_lengths)
        for b, long in refused:  # as the daemon does: never a silent no-op
            log.error("%s: %s", dev.describe(), refusal(b, long))
        slot = disp.attach(dev, bindings)
        be.set_rules(dev, slot.table)
    yield from _drain(lines)
    for t_ns, d, data in events:
        sched.run_until(t_ns)
        yield from _drain(lines)
        dev = ids[d.index]
        verdict = be.run(dev, data, t_ns)
        if verdict is None:
            lines.append(TraceLine(rel(t_ns), "pass", data.hex(), dev.key))
        else:
            disp.on_event(
                InputEvent(dev, t_ns, data, verdict.matched, verdict.held, verdict.truncated)
            )
        yield from _drain(lines)
    for _ in range(_SETTLE_LIMIT):
        due = sched.next_deadline()
        if due is None:
            break
        sched.run_until(due)
        yield from _drain(lines)
    else:
        raise RuntimeError("replay: deferred work keeps re-arming itself; gave up")


def _drain(lines: list[TraceLine]) -> Iterator[TraceLine]:
    out = list(lines)
    lines.clear()
    yield from out
