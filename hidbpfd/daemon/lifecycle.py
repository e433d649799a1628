"""The daemon's life: start-up → run → shutdown (:class:`Daemon`; the package docstring of
:mod:`hidbpfd.daemon` says the order). Devices, the in-kernel engine, reload and status are its
parts in the sibling modules."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import signal
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from hidbpfd.config import Config, load
from hidbpfd.config.settings import Settings
from hidbpfd.daemon.reload import Reloading
from hidbpfd.daemon.state import (
    EngineFactory,
    EventSource,
    InjectorFactory,
    KernelEngineLike,
    KernelManaged,
    Managed,
    PinnedLoader,
    PinnedScan,
    ProgramLoader,
    ReportIOFactory,
)
from hidbpfd.devices.sinks import RoutingSink
from hidbpfd.devices.udev import HidDevice, HidWatcher
from hidbpfd.engine.clock import MonotonicClock
from hidbpfd.engine.dispatch import Dispatcher, Observer, RecordRouter
from hidbpfd.engine.scheduler import Scheduler
from hidbpfd.engine.stats import Window
from hidbpfd.engine.timerfd import TimerfdDriver
from hidbpfd.kernel.libbpf import release_heap
from hidbpfd.model import DeviceId
from hidbpfd.service.control import ControlServer
from hidbpfd.service.notify import Notifier
from hidbpfd.service.sleep import SleepWatcher

log = logging.getLogger("hidbpfd.daemon")  # the daemon's one logger, whichever part logs


class Daemon(Reloading):
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
        program_loader: ProgramLoader | None = None,
        object_check: Callable[[str], str | None] | None = None,
        pinned_scan: PinnedScan | None = None,
        pinned_loader: PinnedLoader | None = None,
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
        self._monitor_q = collections.deque()
        self._monitor_lost = 0
        self.monitor_dropped = 0
        """Monitor lines the daemon dropped (its queue full: actions go first), since start."""
        self._monitor_flush = None
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
        self.refused: dict[str, list[str]] = {}
        """Per device: the userspace policies refused for it (why), for ``status``."""
        self._program_loader = program_loader
        self._object_check = object_check
        self.programs = {}
        """Devices with BPF programs ([[program]]) loaded, by hid id."""
        self._pinned_scan = pinned_scan
        self._pinned_loader = pinned_loader
        """Objects other loaders pinned (``pin_roots``): how to find and open them."""
        self._rescans = {}

    # --- lifecycle -----------------------------------------------------------------------

    async def run(self) -> int:
        """Start, serve until stopped, shut down. Returns the exit code."""
        loop = asyncio.get_running_loop()
        self.loop = loop
        self.config = load(self.config_paths, inspect=self._object_check)
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
        for handles in self._rescans.values():
            for h in handles:
                h.cancel()
        self._rescans.clear()
        for key in list(self.programs):  # held reports released first: nothing is lost
            pio = self._unserve_programs(key, release=True)
            if pio is not None:
                await pio.close()
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
