"""What the daemon shows: ``hidbpfd status`` (a JSON-able dict), systemd's STATUS= line
(every 5 s), and the ``monitor`` clients' subscriptions to the dispatch's outcomes (and the
in-kernel engine's records)."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from typing import Any, Final

from hidbpfd.daemon.programs import Programs
from hidbpfd.engine.dispatch import Outcome
from hidbpfd.model import bus_name

log = logging.getLogger("hidbpfd.daemon")  # the daemon's one logger, whichever part logs

MONITOR_BACKLOG: Final = 8192
"""Outcomes waiting for monitor clients at most; more are dropped (counted, and each client is
told ``{"dropped": N}``): a flood costs monitor lines, never the drain of the ring."""
MONITOR_SLICE: Final = 256
"""Outcomes turned into monitor lines per turn of the loop while the ring is empty."""
MONITOR_SLICE_BUSY: Final = 16
"""... and while the ring had records (those were handled first)."""


class Observability(Programs):
    """Status and ``monitor`` subscriptions, the part of :class:`hidbpfd.daemon.Daemon` that
    the control socket and systemd read."""

    def _subscribe(self, fn: Callable[[dict[str, Any]], None]) -> Callable[[], None]:
        self._subscribers.append(fn)
        if self._publish not in self.dispatch.observers:
            self.dispatch.observers.append(self._publish)
            self._observers_changed()

        def unsubscribe() -> None:
            self._subscribers.remove(fn)
            if not self._subscribers and self._publish in self.dispatch.observers:
                self.dispatch.observers.remove(self._publish)
                self._observers_changed()

        return unsubscribe

    def _observers_changed(self) -> None:
        """The in-kernel engine writes a record per step only while someone listens."""
        if self.engine is not None:
            try:
                self.engine.set_observed(bool(self.dispatch.observers))
            except OSError as e:
                log.warning("in-kernel engine: cannot switch its records: %s", e)

    def _publish(self, o: Outcome) -> None:
        """An outcome for the monitor clients: queued as is (no formatting on the drain's
        path), turned into lines by :meth:`_flush_monitor` once the ring is drained."""
        if not self._subscribers:
            return
        if len(self._monitor_q) >= MONITOR_BACKLOG:
            self._monitor_lost += 1
            self.monitor_dropped += 1
        else:
            self._monitor_q.append(o)
        if self._monitor_flush is None:
            self._monitor_flush = self.loop.call_soon(self._flush_monitor)

    def _flush_monitor(self) -> None:
        """Monitor lines, after the actions: drain the ring first (its records' actions run
        now, their outcomes join the queue), then format a slice of the queue (a small one
        when the ring had records) and come back on the next turn of the loop for the rest."""
        self._monitor_flush = None
        q = self._monitor_q
        if not self._subscribers:
            q.clear()
            self._monitor_lost = 0
            return
        try:
            busy = self.source.consume()
        except Exception:  # the ring's reader logs its own failures
            busy = 0
        subscribers = list(self._subscribers)
        if self._monitor_lost:
            lost = {"dropped": self._monitor_lost}
            self._monitor_lost = 0
            for fn in subscribers:
                fn(lost)
        for _ in range(min(len(q), MONITOR_SLICE_BUSY if busy else MONITOR_SLICE)):
            o = q.popleft()
            item = {
                "t": o.t_ns / 1e9,
                "device": o.device.key,
                "name": o.device.name,
                "kind": o.kind,
                "data": o.data.hex(),
                "policy": o.policy,
                "detail": o.detail,
            }
            for fn in subscribers:
                fn(item)
        if (q or self._monitor_lost) and self._monitor_flush is None:
            self._monitor_flush = self.loop.call_soon(self._flush_monitor)

    def _tick_status(self) -> None:
        self.notifier.status(self.status_line())
        self._status_timer = self.loop.call_later(5.0, self._tick_status)

    def status_line(self) -> str:
        """One line for systemd's STATUS=: devices, policies, events."""
        slots = self.dispatch.slots.values()
        npol = sum(len(s.bindings) for s in slots)
        seen = sum(s.counters.seen for s in slots)
        injected = sum(s.counters.injected for s in slots)
        errors = sum(s.counters.errors for s in slots)
        for km in self.kernel.values():
            st = self.engine.stats(km.hid.id.kernel_id) if self.engine is not None else {}
            npol += len(km.bindings)
            seen += st.get("matched", 0)
            injected += st.get("injected", 0)
            errors += st.get("errors", 0)
        managed = len(self.managed.keys() | self.kernel.keys() | self._served_by_programs())
        return (
            f"{managed} of {len(self.present)} HID devices managed, {npol} policies; "
            f"{seen} reports heard, {injected} injected, {errors} errors"
        )

    def _served_by_programs(self) -> set[str]:
        """Devices with at least one program served (loaded by ``[[program]]`` or pinned by
        another loader, without error): managed even with no ``[[policy]]``."""
        return {k for k, pd in self.programs.items() if any(not sp.error for sp in pd.programs)}

    def status(self) -> dict[str, Any]:
        """Everything ``hidbpfd status`` shows, as a JSON-able dict."""
        devices = []
        by_programs = self._served_by_programs()
        for key, hd in sorted(self.present.items()):
            d = hd.id
            entry: dict[str, Any] = {
                "hid_id": key,
                "name": d.name,
                "bus": bus_name(d.bus),
                "vendor": f"{d.vendor:04x}",
                "product": f"{d.product:04x}",
                "hidraw": hd.hidraw,
                "managed": key in self.managed,
            }
            self._kernel_status(key, entry)
            if key in self.refused:
                entry["refused"] = self.refused[key]
            if key in self.programs:
                entry["programs"] = self._programs_status(key)
                if not entry["managed"] and key in by_programs:
                    entry.update(managed=True, served_by="programs")
            m = self.managed.get(key)
            slot = self.dispatch.slots.get(key)
            if m is not None and slot is not None:
                c = slot.counters
                entry.update(
                    files=m.files,
                    policies=[f"{b.label}: {b.policy.describe()}" for b in slot.bindings],
                    bpf=m.attach,
                    can_hold=slot.can_hold,
                    inject_sink=m.io.injector.name if m.io.injector else "none",
                    counters={
                        "seen": c.seen,
                        "matched": c.matched,
                        "held": c.held,
                        "injected": c.injected,
                        "output": c.output,
                        "feature": c.feature,
                        "errors": c.errors,
                    },
                    pending=self.scheduler.count_where(_for_device(key)),
                )
            devices.append(entry)
        try:
            drops = self.source.drops()
        except Exception as e:  # the status must answer even if BPF misbehaves
            drops = -1
            log.debug("drops: %s", e)
        return {
            "pid": os.getpid(),
            "uptime_s": round((time.monotonic_ns() - self.started_ns) / 1e9, 1),
            "config": self.config_paths,
            "files": [f.path for f in self.config.files],
            "config_errors": [str(e) for e in self.config.errors],
            "reloads": self.reloads,
            "knobs": self.knobs,
            "devices": devices,
            "ring_drops": drops,
            "ring": {
                "bytes": getattr(self.source, "ring_bytes", 0),
                "why": getattr(self.source, "ring_why", ""),
            },
            "monitor_dropped": self.monitor_dropped,
            "unknown_records": self.router.unknown,
            "latency": {
                "ring_to_dispatch": self.event_latency.summary(),
                "timer_lateness": self.timer_lateness.summary(),
            },
            "timer_wakeups": self.driver.wakeups,
            "watchdog_pings": self.notifier.watchdog_pings,
            "summary": self.status_line(),
        }

    def _kernel_status(self, key: str, entry: dict[str, Any]) -> None:
        """A device's in-kernel engine (or why it was refused), in ``status`` terms."""
        km = self.kernel.get(key)
        refused = self.kernel_refused.get(key)
        if km is not None and self.engine is not None:
            st = self.engine.stats(km.hid.id.kernel_id)
            entry.update(
                managed=True,
                engine="kernel",
                files=km.files,
                policies=[f"{b.label}: {b.policy.describe()}" for b in km.bindings],
                bpf=km.attach,
                can_hold=True,
                inject_sink="in-kernel engine (bpf_wq: hid_bpf_input_report / hw requests)",
                counters={
                    "seen": st.get("matched", 0),
                    "matched": st.get("matched", 0),
                    "held": st.get("held", 0),
                    "injected": st.get("injected", 0),
                    "output": st.get("output", 0),
                    "feature": st.get("feature", 0),
                    "errors": st.get("errors", 0),
                },
                kernel_stats=st,
                pending="in kernel",
            )
        elif refused is not None:
            entry["kernel_refused"] = refused
            if key not in self.managed:
                entry.update(
                    managed=True,
                    engine="kernel",
                    policies=[],
                    bpf=f"in-kernel engine REFUSED: {refused}",
                    can_hold=False,
                    inject_sink="none",
                    counters={},
                    pending=0,
                )


def _for_device(key: str) -> Callable[[Any], bool]:
    return lambda k: isinstance(k, tuple) and k[0] == key
