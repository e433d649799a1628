"""Event → policies → actions → sinks: the one path every report and timer takes.

::

    source (BPF ring buffer, or the replay's Filter) ──► Dispatcher.on_event(InputEvent)
        │  verdict: Pass / Hold (the filter already decided; recorded as an outcome)
        └─► for each policy of the device whose rules fired: Policy.on_event(ctx, event, fired)
                └─► actions, executed in order:
                      Inject / Reinject ─► Sink.inject          (outcome "inject")
                      SendOutput        ─► Sink.output          (outcome "output")
                      SetFeature        ─► Sink.set_feature     (outcome "feature")
                      GetFeature        ─► Sink.get_feature ──► reply ─► Policy.on_reply
                      Schedule / Cancel ─► Scheduler ──► (due) ─► Policy.on_timer ─► actions …

Everything runs on one thread (the daemon's loop, or the replay's virtual time), one callback
at a time, so a policy always sees a consistent per-device state. Each outcome goes to the
observers (the replay's trace, ``monitor``, counters). Nothing here does I/O: sinks do, and
their failures come back as logged errors naming the device and the policy, never as
exceptions that could stop other devices.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections import deque
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from hidbpfd.engine.filter import TooLong, too_long_to_hold
from hidbpfd.engine.scheduler import Scheduler
from hidbpfd.model import (
    Action,
    Cancel,
    Counters,
    DeviceEvent,
    DeviceId,
    DeviceRule,
    FeatureReply,
    GetFeature,
    Inject,
    InputEvent,
    Reinject,
    RuleFlag,
    Schedule,
    SendOutput,
    SetFeature,
)
from hidbpfd.policies.base import Context, Policy

log = logging.getLogger(__name__)

ReplyFn = Callable[[bytes | None, str], None]


@dataclass(frozen=True, slots=True)
class Binding:
    """A configured policy: the policy, the file it came from, its place in that file.

    Built by the config loader; equal bindings (same file, index and parameters) are the same
    policy across a reload, which is how pending work of unchanged policies survives one.
    """

    policy: Policy[Any]
    file: str
    index: int
    label: str = field(init=False, compare=False, repr=False)
    """``50-xppen__deco-pen.toml#0 defer`` (or the policy's ``name``) — for logs and traces;
    computed once (it is on every action's path)."""

    def __post_init__(self) -> None:
        name = getattr(self.policy, "name", "") or self.policy.TYPE
        object.__setattr__(self, "label", f"{Path(self.file).name}#{self.index} {name}")


class Sink(Protocol):
    """Where actions go: the daemon's hidraw/uhid/uinput/BPF sinks, or the replay's device.

    Called by the dispatch, on the loop. Methods must not block and must not raise for device
    I/O errors: they report them through their own logging (naming device and ``origin``).
    """

    def inject(self, device: DeviceId, data: bytes, origin: str) -> None:
        """Deliver ``data`` into the device's input stream."""

    def output(self, device: DeviceId, data: bytes, origin: str) -> None:
        """Send an output report."""

    def set_feature(self, device: DeviceId, data: bytes, origin: str) -> None:
        """Set a feature report."""

    def get_feature(
        self, device: DeviceId, report_id: int, length: int, origin: str, reply: ReplyFn
    ) -> None:
        """Get a feature report; later (or now) call ``reply(data, "")`` or ``reply(None, err)``."""


@dataclass(frozen=True, slots=True)
class Outcome:
    """Something the dispatch did, for observers: the replay trace, ``monitor``, counters.

    ``kind`` is one of: ``pass``, ``hold`` (verdicts on a report), ``inject``, ``output``,
    ``feature``, ``get_feature``, ``reply``, ``schedule``, ``cancel``, ``timer``, ``added``,
    ``removed``, ``resume``, ``error``.
    """

    t_ns: int
    device: DeviceId
    kind: str
    data: bytes = b""
    policy: str = ""
    detail: str = ""


Observer = Callable[[Outcome], None]


@dataclass(slots=True)
class DeviceSlot:
    """A device the dispatch serves: its policies, their state, its rule table, counters."""

    device: DeviceId
    generation: int
    bindings: list[Binding]
    uids: list[int]
    states: list[Any]
    table: tuple[DeviceRule, ...]
    can_hold: bool
    groups: list[tuple[int, int, int]] = field(default_factory=list)
    """(policy index, offset of its first rule, mask of its rules) per policy, for on_event."""
    counters: Counters = field(default_factory=Counters)
    triggers: dict[int, int] = field(default_factory=dict)
    """Per policy uid: how many times it was triggered (a matching report, ``added``,
    ``resume``); its timers and replies continue the latest trigger's work."""
    logged: dict[int, int] = field(default_factory=dict)
    """Per policy uid: the trigger whose first I/O error was logged
    (:meth:`Dispatcher.report_error`)."""

    def set_table(self, bindings: Sequence[Binding]) -> None:
        """The rule table and match groups of ``bindings``."""
        self.table, offsets, masks = build_table(bindings)
        self.groups = [(i, off, m) for i, (off, m) in enumerate(zip(offsets, masks, strict=True))]


def build_table(bindings: Sequence[Binding]) -> tuple[tuple[DeviceRule, ...], list[int], list[int]]:
    """The device's filter table (policy *i*'s rules in group *i*), and for each policy the
    offset of its first rule and the mask of its rules in the table's match bits."""
    table: list[DeviceRule] = []
    offsets: list[int] = []
    masks: list[int] = []
    for group, b in enumerate(bindings):
        rules = b.policy.rules()
        offsets.append(len(table))
        masks.append(((1 << len(rules)) - 1) << len(table))
        table.extend(DeviceRule(r, group) for r in rules)
    return tuple(table), offsets, masks


def split_too_long(
    bindings: Sequence[Binding], input_lengths: Sequence[tuple[int, int]] | None
) -> tuple[list[Binding], list[tuple[Binding, TooLong]]]:
    """``bindings`` that can run on a device with these input report lengths, and those that
    cannot, each with its first :class:`~hidbpfd.engine.filter.TooLong` (a HOLD rule that can
    match a report too long to hold). Called wherever policies are loaded for a device (the
    daemon, both engines; the virtual replay), which refuse the latter with the reason."""
    keep: list[Binding] = []
    refused: list[tuple[Binding, TooLong]] = []
    for b in bindings:
        long = too_long_to_hold(b.policy.rules(), input_lengths)
        if long:
            refused.append((b, long[0]))
        else:
            keep.append(b)
    return keep, refused


def refusal(b: Binding, long: TooLong) -> str:
    """The reason a policy is refused on a device, naming file and policy (the caller adds the
    device)."""
    return f"{b.file}: policy[{b.index}] ({b.label}): refused: {long.reason()}. {long.hint()}"


class EventRecord(Protocol):
    """What the event source hands over per report (``hidbpfd.kernel.filter_codec.Record``)."""

    @property
    def hid_id(self) -> int: ...
    @property
    def ts_ns(self) -> int: ...
    @property
    def matched(self) -> int: ...
    @property
    def data(self) -> bytes: ...
    @property
    def held(self) -> bool: ...
    @property
    def truncated(self) -> bool: ...


class RecordRouter:
    """The daemon's per-record path: a ring-buffer record → its device (by kernel id) → an
    :class:`InputEvent` for the dispatch; ``latency(ns)`` hears ring → dispatch for each.
    One object, so ``bench --mechanics`` times exactly the path the daemon runs."""

    __slots__ = ("devices", "dispatch", "latency", "unknown")

    def __init__(
        self,
        dispatch: Dispatcher,
        devices: dict[int, DeviceId],
        latency: Callable[[int], None] | None = None,
    ) -> None:
        self.dispatch = dispatch
        self.devices = devices
        self.latency = latency
        self.unknown = 0
        """Records of devices we no longer (or not yet) serve."""

    def __call__(self, rec: EventRecord) -> None:
        dev = self.devices.get(rec.hid_id)
        if dev is None:
            self.unknown += 1
            return
        if self.latency is not None:
            self.latency(time.monotonic_ns() - rec.ts_ns)
        self.dispatch.on_event(
            InputEvent(dev, rec.ts_ns, rec.data, rec.matched, rec.held, rec.truncated)
        )


class Dispatcher:
    """Routes events, timers, replies and device changes to policies and their actions to a sink.

    Owned by the daemon (or a replay); the event source calls :meth:`on_event`, the device
    registry calls :meth:`attach` / :meth:`detach` / :meth:`device_event`.
    """

    def __init__(
        self, scheduler: Scheduler, sink: Sink, observers: Sequence[Observer] = ()
    ) -> None:
        self.scheduler = scheduler
        self.sink = sink
        self.observers: list[Observer] = list(observers)
        self.slots: dict[str, DeviceSlot] = {}
        self._uid = itertools.count(1)
        self._gen = itertools.count(1)
        self._queue: deque[tuple[DeviceSlot, int, int, _Callback, tuple[Any, ...]]] = deque()
        self._busy = False
        self.unknown_events = 0

    # --- devices ---------------------------------------------------------------------------

    def attach(
        self, device: DeviceId, bindings: Sequence[Binding], *, can_hold: bool = True
    ) -> DeviceSlot:
        """Start serving ``device`` with ``bindings`` (fresh state); runs ``added`` triggers.

        Called by the device registry when a device appears (or by replay at start). A device
        that is already attached is detached first: re-add starts clean.
        """
        if device.key in self.slots:
            self.detach(device)
        slot = DeviceSlot(
            device=device,
            generation=next(self._gen),
            bindings=list(bindings),
            uids=[next(self._uid) for _ in bindings],
            states=[b.policy.new_state() for b in bindings],
            table=(),
            can_hold=can_hold,
        )
        slot.set_table(bindings)
        self.slots[device.key] = slot
        if not can_hold:
            for b in bindings:
                if b.policy.holds():
                    log.warning(
                        "%s: %s needs the kernel to hold reports, which this device's BPF attach "
                        "cannot do; its reports will pass and it cannot defer or swallow them",
                        device.describe(),
                        b.label,
                    )
        self._emit(slot, self.scheduler.clock.now_ns(), "added", detail=f"{len(bindings)} policies")
        self.device_event(device, "added")
        return slot

    def rebind(self, device: DeviceId, bindings: Sequence[Binding]) -> DeviceSlot:
        """Swap a device's policies after a reload: unchanged bindings keep their state and
        pending work; removed ones have their work cancelled; new ones start fresh (no
        ``added`` trigger: the device did not come back)."""
        old = self.slots.get(device.key)
        if old is None:
            return self.attach(device, bindings)
        kept = {b: (uid, st) for b, uid, st in zip(old.bindings, old.uids, old.states, strict=True)}
        uids: list[int] = []
        states: list[Any] = []
        for b in bindings:
            uid, st = kept.pop(b, (next(self._uid), b.policy.new_state()))
            uids.append(uid)
            states.append(st)
        gone = {uid for uid, _ in kept.values()}
        self.scheduler.cancel_where(lambda k: _key_dev(k) == device.key and _key_uid(k) in gone)
        old.set_table(bindings)
        old.bindings, old.uids, old.states = list(bindings), uids, states
        return old

    def detach(self, device: DeviceId) -> None:
        """Stop serving ``device``: ``removed`` callbacks (their actions dropped), pending work
        cancelled, state forgotten. Called by the registry on remove, and before re-add."""
        slot = self.slots.pop(device.key, None)
        if slot is None:
            return
        now = self.scheduler.clock.now_ns()
        for b, st in zip(slot.bindings, slot.states, strict=True):
            try:
                b.policy.on_device(Context(device, now, st, slot.can_hold), "removed")
            except Exception:
                log.exception("%s: %s failed on removal", device.describe(), b.label)
        n = self.scheduler.cancel_where(lambda k: _key_dev(k) == device.key)
        self._emit(slot, now, "removed", detail=f"{n} pending cancelled")

    def device_event(self, device: DeviceId, what: DeviceEvent) -> None:
        """``added`` or ``resume`` for every policy of the device (``on = [...]`` triggers)."""
        slot = self.slots.get(device.key)
        if slot is None:
            return
        now = self.scheduler.clock.now_ns()
        if what != "added":
            self._emit(slot, now, what)
        for i, uid in enumerate(slot.uids):
            slot.triggers[uid] = slot.triggers.get(uid, 0) + 1
            self._call(slot, i, now, _on_device, (what,))

    # --- events, timers, replies ---------------------------------------------------------

    def on_event(self, event: InputEvent) -> None:
        """A report the filter told us about. Called by the event source, in arrival order."""
        slot = self.slots.get(event.device.key)
        if slot is None:
            self.unknown_events += 1
            return
        c = slot.counters
        c.seen += 1
        now = event.ts_ns
        held = event.held
        if held:
            c.held += 1
        if self.observers:
            self._emit(slot, now, "hold" if held else "pass", event.data)
        matched = event.matched
        if not matched:
            return
        c.matched += 1
        triggers = slot.triggers
        for i, off, mask in slot.groups:
            fired = (matched & mask) >> off
            if fired:
                uid = slot.uids[i]
                triggers[uid] = triggers.get(uid, 0) + 1
                self._call(slot, i, now, _on_event, (event, fired))

    def _timer(self, dev_key: str, gen: int, i: int, key: str) -> None:
        slot = self.slots.get(dev_key)
        if slot is None or slot.generation != gen or i >= len(slot.bindings):
            return
        now = self.scheduler.clock.now_ns()
        self._emit(slot, now, "timer", policy=slot.bindings[i].label, detail=key)
        self._call(slot, i, now, _on_timer, (key,))

    def _reply(self, dev_key: str, gen: int, uid: int, reply: FeatureReply) -> None:
        slot = self.slots.get(dev_key)
        if slot is None or slot.generation != gen or uid not in slot.uids:
            return
        i = slot.uids.index(uid)
        now = self.scheduler.clock.now_ns()
        self._emit(slot, now, "reply", reply.data or b"", slot.bindings[i].label, reply.error)
        self._call(slot, i, now, _on_reply, (reply,))

    # --- running policies and their actions -------------------------------------------------

    def _call(
        self, slot: DeviceSlot, i: int, now: int, fn: _Callback, args: tuple[Any, ...]
    ) -> None:
        """Run one policy callback and its actions; a callback that its own actions cause (a
        sink calling back, a zero delay) runs after it, in order. The hot path: no closure,
        one Context per call."""
        if self._busy:
            self._queue.append((slot, i, now, fn, args))
            return
        self._busy = True
        try:
            self._run(slot, i, now, fn, args)
            while self._queue:
                self._run(*self._queue.popleft())
        finally:
            self._busy = False

    def _run(
        self, slot: DeviceSlot, i: int, now: int, fn: _Callback, args: tuple[Any, ...]
    ) -> None:
        """One callback, never letting one policy's bug escape."""
        b = slot.bindings[i]
        try:
            actions = fn(b.policy, Context(slot.device, now, slot.states[i], slot.can_hold), *args)
            if actions:
                self._execute(slot, i, now, actions)
        except Exception as e:
            slot.counters.errors += 1
            log.exception("%s: %s raised", slot.device.describe(), b.label)
            self._emit(slot, now, "error", policy=b.label, detail=f"{type(e).__name__}: {e}")

    def _execute(self, slot: DeviceSlot, i: int, now: int, actions: Sequence[Action]) -> None:
        b = slot.bindings[i]
        dev = slot.device
        label = b.label
        c = slot.counters
        for a in actions:
            match a:
                case Inject(data) | Reinject(data):
                    c.injected += 1
                    self._emit(slot, now, "inject", data, label)
                    self.sink.inject(dev, data, label)
                case SendOutput(data):
                    c.output += 1
                    self._emit(slot, now, "output", data, label)
                    self.sink.output(dev, data, label)
                case SetFeature(data):
                    c.feature += 1
                    self._emit(slot, now, "feature", data, label)
                    self.sink.set_feature(dev, data, label)
                case GetFeature(rid, length, key):
                    self._emit(slot, now, "get_feature", bytes([rid]), label, f"{length} bytes")
                    gen, uid = slot.generation, slot.uids[i]
                    cb = _make_reply(self, dev.key, gen, uid, key)
                    self.sink.get_feature(dev, rid, length, label, cb)
                case Schedule(key, delay):
                    gen, uid = slot.generation, slot.uids[i]
                    work = _make_timer(self, dev.key, gen, uid, key)
                    self.scheduler.start((dev.key, uid, key), delay, work, base_ns=now)
                    self._emit(
                        slot, now, "schedule", policy=label, detail=f"{key} +{delay / 1e6:g} ms"
                    )
                case Cancel(key):
                    if self.scheduler.cancel((dev.key, slot.uids[i], key)):
                        self._emit(slot, now, "cancel", policy=label, detail=key)
                case _:
                    raise TypeError(f"{label} returned {a!r}, which is not an action")

    def _emit(
        self,
        slot: DeviceSlot,
        t_ns: int,
        kind: str,
        data: bytes = b"",
        policy: str = "",
        detail: str = "",
    ) -> None:
        if not self.observers:
            return
        o = Outcome(t_ns, slot.device, kind, data, policy, detail)
        for obs in self.observers:
            obs(o)

    def report_error(self, device: DeviceId, origin: str, what: str) -> bool:
        """A sink's I/O failed: count it and tell the observers. Called by the daemon for its
        sinks, on the loop. True if this is the first error of the current trigger of the
        policy labelled ``origin`` (or of no known policy): the one worth an ERROR line.
        Retries (a reinit's verify failing again) and later steps of the same trigger are
        counted and observed as well, but return False."""
        slot = self.slots.get(device.key)
        if slot is None:
            return True
        slot.counters.errors += 1
        self._emit(slot, self.scheduler.clock.now_ns(), "error", policy=origin, detail=what)
        for b, uid in zip(slot.bindings, slot.uids, strict=True):
            if b.label == origin:
                trigger = slot.triggers.get(uid, 0)
                if slot.logged.get(uid) == trigger:
                    return False
                slot.logged[uid] = trigger
                return True
        return True

    def holds_needed(self, device_key: str) -> bool:
        """True if any rule of the device holds reports."""
        slot = self.slots.get(device_key)
        return bool(slot) and any(r.rule.flags & RuleFlag.HOLD for r in slot.table)  # type: ignore[union-attr]


_Callback = Callable[..., list[Action]]
"""``fn(policy, ctx, *args)``: one of the four below."""


def _on_event(p: Policy[Any], ctx: Context[Any], event: InputEvent, fired: int) -> list[Action]:
    return p.on_event(ctx, event, fired)


def _on_timer(p: Policy[Any], ctx: Context[Any], key: str) -> list[Action]:
    return p.on_timer(ctx, key)


def _on_reply(p: Policy[Any], ctx: Context[Any], reply: FeatureReply) -> list[Action]:
    return p.on_reply(ctx, reply)


def _on_device(p: Policy[Any], ctx: Context[Any], what: DeviceEvent) -> list[Action]:
    return p.on_device(ctx, what)


def _key_dev(k: Hashable) -> object:
    return k[0] if isinstance(k, tuple) else None


def _key_uid(k: Hashable) -> object:
    return k[1] if isinstance(k, tuple) else None


def _make_timer(d: Dispatcher, dev_key: str, gen: int, uid: int, key: str) -> Callable[[], None]:
    def fire() -> None:
        slot = d.slots.get(dev_key)
        if slot is not None and uid in slot.uids:
            d._timer(dev_key, gen, slot.uids.index(uid), key)

    return fire


def _make_reply(d: Dispatcher, dev_key: str, gen: int, uid: int, key: str) -> ReplyFn:
    def reply(data: bytes | None, error: str) -> None:
        r = FeatureReply(key, data, error)
        slot = d.slots.get(dev_key)
        if slot is None:
            return
        d._reply(dev_key, gen, uid, r)

    return reply
