"""The daemon: start-up → run → shutdown, one process, one asyncio loop.

Start-up, in this order: load the policy files (a bad file is logged and skipped, the others
serve), load the BPF objects (filter, HID-BPF attach, injector) and watch the ring buffer,
start the timerfd that drives the scheduler, then watch udev (monitor, enumerate, drain), which
attaches every present device that has policies. Then the loop runs until SIGTERM/SIGINT.
SIGHUP reloads the policy files: a file that now has errors keeps its last good version, so a
bad reload never stops serving a device.

Per managed device: the BPF program is attached to it (HID-BPF if the kernel has it, so it can
hold reports; else the tracing fallback, which cannot), its rule table is written to the BPF
map, its injector and hidraw I/O are set up (:mod:`hidbpfd.devices.sinks`), and the dispatch
starts serving it. Removal undoes all of it and cancels the device's pending work.

Policy files with ``engine = "kernel"`` are not run here: their device gets the in-kernel
engine (:mod:`hidbpfd.kernel.engine`, created on first use) instead of the filter and
the dispatch; the daemon forwards ``added`` / ``resume`` to it and relays its records to the
observers (``monitor``) and its counters to ``status``. Where the kernel cannot run a file's
policies the daemon logs why and runs none of them (one device runs one engine: a device that
also matches userspace files keeps those, and its kernel files are refused).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from hidbpfd.config import Config, ConfigError, PolicyFile, load
from hidbpfd.config.settings import Settings
from hidbpfd.devices.sinks import DeviceIO, Injector, ReportIO, RoutingSink
from hidbpfd.devices.udev import HidDevice, HidWatcher
from hidbpfd.devices.uhid_mirror import is_mirror
from hidbpfd.engine.clock import MonotonicClock
from hidbpfd.engine.dispatch import (
    Binding,
    Dispatcher,
    Observer,
    Outcome,
    RecordRouter,
    build_table,
)
from hidbpfd.engine.scheduler import Scheduler
from hidbpfd.engine.stats import Window
from hidbpfd.engine.timerfd import TimerfdDriver
from hidbpfd.kernel.libbpf import release_heap
from hidbpfd.model import DeviceId, DeviceRule, bus_name
from hidbpfd.service.control import ControlServer
from hidbpfd.service.logs import fields
from hidbpfd.service.notify import Notifier
from hidbpfd.service.sleep import SleepWatcher

log = logging.getLogger(__name__)


class KernelEngineLike(Protocol):
    """What the daemon needs of :class:`hidbpfd.kernel.engine.KernelEngine`."""

    def supports(self, bindings: Sequence[Binding]) -> str | None: ...
    def attach(
        self, hid_id: int, bindings: Sequence[Binding], *, device: DeviceId | None = None
    ) -> str: ...
    def detach(self, hid_id: int) -> None: ...
    def device_event(self, hid_id: int, what: str) -> None: ...
    def set_observed(self, on: bool) -> None: ...
    def stats(self, hid_id: int) -> dict[str, int]: ...
    def add_to_loop(self, loop: asyncio.AbstractEventLoop) -> None: ...
    def close(self) -> None: ...


EngineFactory = Callable[[Observer], KernelEngineLike]


@dataclass(slots=True)
class KernelManaged:
    """A device whose policies run in the in-kernel engine."""

    hid: HidDevice
    bindings: list[Binding]
    files: list[str]
    attach: str


class EventSource(Protocol):
    """What the daemon needs of the BPF layer (:class:`hidbpfd.kernel.source.BpfEventSource`)."""

    def open(self) -> None: ...
    def add_to_loop(self, loop: asyncio.AbstractEventLoop) -> None: ...
    def remove_from_loop(self) -> None: ...
    async def busy_poll(self, stop: asyncio.Event) -> None: ...
    def attach_device(self, hid_id: int) -> str: ...
    def detach_device(self, hid_id: int) -> None: ...
    def can_hold(self, hid_id: int) -> bool: ...
    def set_rules(self, hid_id: int, rules: Sequence[DeviceRule]) -> None: ...
    def clear_rules(self, hid_id: int) -> None: ...
    def drops(self) -> int: ...
    def close(self) -> None: ...


@dataclass(slots=True)
class Managed:
    """A device the daemon serves."""

    hid: HidDevice
    io: DeviceIO
    attach: str
    table: tuple[DeviceRule, ...]
    files: list[str] = field(default_factory=list)


@dataclass(slots=True)
class ReloadResult:
    """What a reload did: per-file errors (those files kept their last good version), and
    which devices changed policies."""

    errors: list[ConfigError]
    changed: list[str]
    added: list[str]
    removed: list[str]

    def summary(self) -> str:
        """One line for logs and ``hidbpfd reload``."""
        parts = [f"{len(self.changed)} device(s) changed"]
        if self.added:
            parts.append(f"{len(self.added)} newly managed")
        if self.removed:
            parts.append(f"{len(self.removed)} no longer managed")
        if self.errors:
            parts.append(f"{len(self.errors)} error(s): bad files keep their last good version")
        return ", ".join(parts)


InjectorFactory = Callable[[HidDevice], Injector | None]
ReportIOFactory = Callable[[HidDevice], Callable[[], ReportIO]]


class Daemon:
    """Owns every long-lived object; created by ``hidbpfd run``, tests and the demo."""

    def __init__(
        self,
        config_paths: Sequence[str | Path],
        source_factory: Callable[[Callable[[Any], None]], EventSource],
        injector_factory: InjectorFactory,
        report_io_factory: ReportIOFactory,
        *,
        observers: Sequence[Observer] = (),
        watcher_factory: Callable[..., HidWatcher] = HidWatcher,
        socket_path: str | None = None,
        notifier: Notifier | None = None,
        sleep_bus: str | None = "system",
        engine_factory: EngineFactory | None = None,
        settings: Settings | None = None,
    ) -> None:
        settings = settings or Settings()
        self.config_paths = [str(p) for p in config_paths]
        self._source_factory = source_factory
        self._injector_factory = injector_factory
        self._report_io_factory = report_io_factory
        self._watcher_factory = watcher_factory
        self._observers = list(observers)
        self.config = Config()
        self.managed: dict[str, Managed] = {}
        self.present: dict[str, HidDevice] = {}
        self.by_kid: dict[int, DeviceId] = {}
        self.ready = asyncio.Event()
        self._stop = asyncio.Event()
        self._pending_close: set[asyncio.Task[None]] = set()
        self.socket_path = socket_path
        self.notifier = notifier or Notifier()
        self.control: ControlServer | None = None
        self._subscribers: list[Callable[[dict[str, Any]], None]] = []
        self.event_latency = Window()
        self.timer_lateness = Window()
        self.started_ns = time.monotonic_ns()
        self.timer_spin_ns = settings.timer_spin_us * 1000
        """Opt-in early wake-up + spin for timers (``timer_spin_us``), set before run()."""
        self.busy_poll = settings.busy_poll
        """Poll the ring instead of sleeping (one CPU for the idle wake-up; ``busy_poll``)."""
        self.knobs = settings.knobs()
        """The latency knobs that are on (settings file / flags), for the log and status."""
        self.reloads = 0
        self._status_timer: asyncio.TimerHandle | None = None
        self.sleep_bus = sleep_bus
        self.sleep: SleepWatcher | None = None
        self._engine_factory = engine_factory
        self.engine: KernelEngineLike | None = None
        self.engine_error = ""
        self.kernel: dict[str, KernelManaged] = {}
        """Devices served by the in-kernel engine, by hid id."""
        self.kernel_refused: dict[str, str] = {}
        """Devices whose kernel-engine files were refused, and why."""

    # --- lifecycle -----------------------------------------------------------------------

    async def run(self) -> int:
        """Start, serve until stopped, shut down. Returns the exit code."""
        loop = asyncio.get_running_loop()
        self.loop = loop
        self.config = load(self.config_paths)
        for e in [*self.config.errors, *self.config.warnings]:
            (log.warning if e.warning else log.error)("%s", e)
        log.info(
            "%d policy file(s) loaded, %d rejected",
            len(self.config.files),
            len({e.file for e in self.config.errors}),
        )

        self.driver = TimerfdDriver(loop, spin_ns=self.timer_spin_ns)
        self.scheduler = Scheduler(
            MonotonicClock(), self.driver.on_deadline, self.timer_lateness.add
        )
        self.driver.bind(self.scheduler)
        self.sink = RoutingSink(self._io_error)
        # _publish joins the observers only while a `monitor` client listens: with no
        # observer the dispatch builds no Outcome per report (the drain's hot path)
        self.dispatch = Dispatcher(self.scheduler, self.sink, self._observers)

        self.router = RecordRouter(self.dispatch, self.by_kid, self.event_latency.add)
        self.source = self._source_factory(self.router)
        self.source.open()
        self.source.add_to_loop(loop)
        poller = loop.create_task(self.source.busy_poll(self._stop)) if self.busy_poll else None

        self.watcher = self._watcher_factory(self._added, self._removed, self._changed)
        self.watcher.start(loop)

        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop)
        loop.add_signal_handler(signal.SIGHUP, self._sighup)
        try:
            if self.socket_path:
                self.control = ControlServer(
                    self.socket_path, self.status, self._reload_for_client, self._subscribe
                )
                await self.control.start()
            if self.sleep_bus is not None:
                addr = None if self.sleep_bus == "system" else self.sleep_bus
                self.sleep = SleepWatcher(self.resumed, bus_address=addr)
                await self.sleep.start()
            release_heap()  # start-up's garbage (BTF parsing, module compiles) back to the OS
            self.ready.set()
            self.notifier.ready(self.status_line())
            self.notifier.start_watchdog(loop)
            self._tick_status()
            log.info(
                "ready: %d device(s) present, %d managed; latency knobs: %s",
                len(self.present),
                len(self.managed),
                ", ".join(self.knobs) or "none",
            )
            await self._stop.wait()
        finally:
            if poller is not None:
                poller.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await poller
            await self._shutdown()
        return 0

    def stop(self) -> None:
        """Ask the daemon to stop (signal handlers, tests)."""
        self._stop.set()

    async def _shutdown(self) -> None:
        loop = self.loop
        self.notifier.stopping()
        self.notifier.stop_watchdog()
        if self._status_timer is not None:
            self._status_timer.cancel()
        if self.control is not None:
            await self.control.close()
        if self.sleep is not None:
            self.sleep.stop()
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(sig)
        self.watcher.stop()
        for key in list(self.managed):
            io = self._detach(key)
            if io is not None:
                await io.close()
        if self._pending_close:
            await asyncio.gather(*self._pending_close, return_exceptions=True)
        for key in list(self.kernel):
            self._detach_kernel(key)
        if self.engine is not None:
            self.engine.close()
        self.source.remove_from_loop()
        self.source.close()
        self.driver.close()
        log.info("stopped")

    # --- devices -------------------------------------------------------------------------

    def _added(self, hd: HidDevice) -> None:
        self.present[hd.id.key] = hd
        if is_mirror(hd.id):  # our own injection sink for another device: never managed
            log.debug("%s: a hidbpfd uhid mirror, not managed", hd.id.describe())
            return
        bindings = self.config.bindings_for(hd.id, hd.facts)
        if not bindings:
            log.debug("%s: no policy file matches", hd.id.describe())
            return
        self._manage(hd, bindings)

    def _manage(self, hd: HidDevice, bindings: Sequence[Binding]) -> None:
        bindings = self._manage_kernel(hd, bindings)
        if not bindings:
            return
        dev = hd.id
        kid = dev.kernel_id
        table, _, _ = build_table(bindings)
        attach = self.source.attach_device(kid)
        can_hold = self.source.can_hold(kid)
        self.source.set_rules(kid, table)
        injector = self._injector_factory(hd)
        io = DeviceIO(dev, injector, self._report_io_factory(hd), self._io_error)
        files = [f.path for f in self.config.files_for(dev, hd.facts)]
        self.managed[dev.key] = Managed(hd, io, attach, table, files)
        self.sink.devices[dev.key] = io
        self.by_kid[kid] = dev
        log.info(
            "%s (%s): %d policies from %s; BPF: %s; inject: %s; output/feature: hidraw %s",
            dev.describe(),
            hd.hidraw,
            len(bindings),
            ", ".join(Path(f).name for f in files),
            attach,
            injector.name if injector else "none",
            hd.hidraw,
        )
        self.dispatch.attach(dev, bindings, can_hold=can_hold)

    def _removed(self, hd: HidDevice) -> None:
        self.present.pop(hd.id.key, None)
        self._detach_kernel(hd.id.key)
        self.kernel_refused.pop(hd.id.key, None)
        self._let_go(hd.id.key)

    def _changed(self, hd: HidDevice) -> None:
        self.present[hd.id.key] = hd

    def _let_go(self, key: str) -> None:
        """Stop serving a device now (pending work cancelled, BPF state cleared); its nodes
        are closed by a task the daemon owns and awaits on shutdown."""
        io = self._detach(key)
        if io is None:
            return
        task = self.loop.create_task(io.close(), name=f"hidbpfd-close-{key}")
        self._pending_close.add(task)
        task.add_done_callback(self._pending_close.discard)

    def _detach(self, key: str) -> DeviceIO | None:
        m = self.managed.pop(key, None)
        if m is None:
            return None
        dev = m.hid.id
        self.dispatch.detach(dev)
        self.sink.devices.pop(key, None)
        self.by_kid.pop(dev.kernel_id, None)
        try:
            self.source.clear_rules(dev.kernel_id)
            self.source.detach_device(dev.kernel_id)
        except OSError as e:
            log.debug("%s: BPF detach: %s", dev.describe(), e)
        log.info("%s: no longer managed", dev.describe())
        return m.io

    def resumed(self) -> None:
        """The system resumed: ``resume`` triggers for every managed device."""
        for key in list(self.managed):
            self.dispatch.device_event(self.managed[key].hid.id, "resume")
        for km in list(self.kernel.values()):
            try:
                assert self.engine is not None
                self.engine.device_event(km.hid.id.kernel_id, "resume")
            except OSError as e:
                log.error("%s: in-kernel engine resume trigger: %s", km.hid.id.describe(), e)

    # --- the in-kernel engine ----------------------------------------------------------

    def _split_engines(
        self, hd: HidDevice, bindings: Sequence[Binding]
    ) -> tuple[list[Binding], list[Binding], list[str]]:
        """(kernel-engine bindings, the others, the kernel files' paths) for ``hd``."""
        kfiles = [f for f in self.config.files_for(hd.id, hd.facts) if f.engine == "kernel"]
        kernel = [b for f in kfiles for b in f.bindings]
        kset = set(kernel)
        return kernel, [b for b in bindings if b not in kset], [f.path for f in kfiles]

    def _kernel_engine(self) -> KernelEngineLike | None:
        """The engine, created on first use (None, with :attr:`engine_error`, if it cannot
        be)."""
        if self.engine is None and not self.engine_error:
            if self._engine_factory is None:
                self.engine_error = "this daemon was built without the in-kernel engine"
            else:
                try:
                    self.engine = self._engine_factory(self._kernel_outcome)
                    self.engine.add_to_loop(self.loop)
                    self.engine.set_observed(bool(self.dispatch.observers))
                except Exception as e:  # a broken engine must not stop the daemon
                    self.engine_error = f"cannot start the in-kernel engine: {e}"
        return self.engine

    def _manage_kernel(self, hd: HidDevice, bindings: Sequence[Binding]) -> list[Binding]:
        """Attach the in-kernel engine for ``hd``'s kernel-engine files (or log why not);
        returns the bindings left for the userspace path."""
        dev = hd.id
        kernel, user, kfiles = self._split_engines(hd, bindings)
        if not kernel:
            return user
        names = ", ".join(Path(f).name for f in kfiles)
        reason: str | None
        if user:
            others = sorted({Path(b.file).name for b in user})
            reason = (
                f"the device also matches userspace-engine file(s) {', '.join(others)} and one "
                'device runs one engine. Try engine = "kernel" in those too, or "userspace" here'
            )
        else:
            engine = self._kernel_engine()
            reason = self.engine_error if engine is None else engine.supports(kernel)
        attach = ""
        if not reason:
            assert self.engine is not None
            try:
                attach = self.engine.attach(dev.kernel_id, kernel, device=dev)
            except (ValueError, OSError) as e:
                reason = f"attach failed: {e}"
        if reason:
            self.kernel_refused[dev.key] = reason
            log.error(
                "%s: %s: in-kernel engine refused, these policies do NOT run: %s",
                dev.describe(),
                names,
                reason,
                extra=fields(dev, file=kfiles[0]),
            )
            return user
        assert self.engine is not None
        self.kernel_refused.pop(dev.key, None)
        self.kernel[dev.key] = KernelManaged(hd, kernel, kfiles, attach)
        log.info(
            "%s (%s): %d policies from %s in the kernel: %s",
            dev.describe(),
            hd.hidraw,
            len(kernel),
            names,
            attach,
        )
        try:
            self.engine.device_event(dev.kernel_id, "added")
        except OSError as e:
            log.error("%s: in-kernel engine added trigger: %s", dev.describe(), e)
        return user

    def _detach_kernel(self, key: str) -> bool:
        """Detach the device's in-kernel engine (removal, reload, shutdown); True if it had one."""
        km = self.kernel.pop(key, None)
        if km is None or self.engine is None:
            return False
        try:
            self.engine.detach(km.hid.id.kernel_id)
        except OSError as e:
            log.debug("%s: engine detach: %s", km.hid.id.describe(), e)
        log.info("%s: no longer served by the in-kernel engine", km.hid.id.describe())
        return True

    def _reload_kernel(
        self, hd: HidDevice, bindings: Sequence[Binding], res: ReloadResult
    ) -> list[Binding]:
        """Apply a reload to the device's kernel-engine files: unchanged ones keep running
        (and their state), changed ones are re-attached fresh. Returns the userspace
        bindings."""
        key = hd.id.key
        kernel, user, _ = self._split_engines(hd, bindings)
        km = self.kernel.get(key)
        if km is not None and km.bindings == kernel and not user:
            return user
        if km is None and not kernel:
            self.kernel_refused.pop(key, None)
            return user
        had = self._detach_kernel(key)
        self.kernel_refused.pop(key, None)
        if kernel:
            self._manage_kernel(hd, bindings)
        if key in self.kernel and not had:
            res.added.append(key)
        elif had and key not in self.kernel and not user:
            res.removed.append(key)
        else:
            res.changed.append(key)
        return user

    def _kernel_outcome(self, o: Outcome) -> None:
        """A record of the in-kernel engine, to the dispatch's observers (``monitor``)."""
        for obs in self.dispatch.observers:
            obs(o)

    # --- events --------------------------------------------------------------------------

    def _io_error(self, device: DeviceId, origin: str, what: str) -> None:
        file = origin.split("#", 1)[0]
        log.error(
            "%s: %s: %s",
            device.describe(),
            origin,
            what,
            extra=fields(device, policy=origin, file=file),
        )
        self.dispatch.report_error(device, origin, what)

    # --- reload --------------------------------------------------------------------------

    def _sighup(self) -> None:
        res = self.reload()
        (log.warning if res.errors else log.info)("reload: %s", res.summary())

    def _reload_for_client(self) -> dict[str, Any]:
        res = self.reload()
        (log.warning if res.errors else log.info)("reload (control socket): %s", res.summary())
        return {
            "ok": not res.errors,
            "summary": res.summary(),
            "errors": [str(e) for e in res.errors],
            "changed": res.changed,
            "added": res.added,
            "removed": res.removed,
        }

    def reload(self) -> ReloadResult:
        """Re-read the policy files and apply the difference without disrupting devices.

        A file with errors keeps its last good version (or stays out, if it never loaded).
        Unchanged policies keep their state and pending work; the rule tables in the BPF map are
        swapped in place; devices that gain or lose all policies are taken on or let go.
        """
        self.notifier.reloading()
        try:
            return self._reload()
        finally:
            self.reloads += 1
            self.notifier.ready(self.status_line())

    def _reload(self) -> ReloadResult:
        new = load(self.config_paths)
        for e in new.errors:
            log.error("%s", e)
        old_by_path = {f.path: f for f in self.config.files}
        bad = {e.file for e in new.errors}
        files: dict[str, PolicyFile] = {f.path: f for f in new.files}
        for path in bad:
            if path in old_by_path:
                files[path] = old_by_path[path]
        merged = Config(
            files=sorted(files.values(), key=lambda f: Path(f.path).name), errors=new.errors
        )
        self.config = merged
        res = ReloadResult(new.errors, [], [], [])
        for key, hd in list(self.present.items()):
            bindings = self._reload_kernel(hd, merged.bindings_for(hd.id, hd.facts), res)
            m = self.managed.get(key)
            if m is None:
                if bindings:
                    self._manage(hd, bindings)
                    res.added.append(key)
                continue
            if not bindings:
                self._let_go(key)
                res.removed.append(key)
                continue
            slot = self.dispatch.slots.get(key)
            if slot is not None and slot.bindings == list(bindings):
                continue
            slot = self.dispatch.rebind(hd.id, bindings)
            if slot.table != m.table:
                self.source.set_rules(hd.id.kernel_id, slot.table)
                m.table = slot.table
            m.files = [f.path for f in merged.files_for(hd.id, hd.facts)]
            res.changed.append(key)
        return res

    # --- observability -------------------------------------------------------------------

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
        if not self._subscribers:
            return
        item = {
            "t": o.t_ns / 1e9,
            "device": o.device.key,
            "name": o.device.name,
            "kind": o.kind,
            "data": o.data.hex(),
            "policy": o.policy,
            "detail": o.detail,
        }
        for fn in list(self._subscribers):
            fn(item)

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
        managed = len(self.managed.keys() | self.kernel.keys())
        return (
            f"{managed} of {len(self.present)} HID devices managed, {npol} policies; "
            f"{seen} reports heard, {injected} injected, {errors} errors"
        )

    def status(self) -> dict[str, Any]:
        """Everything ``hidbpfd status`` shows, as a JSON-able dict."""
        devices = []
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
