"""What the daemon holds (:class:`DaemonState`, the attributes every part of :class:`Daemon`
reads), the records it keeps per device, and what it needs of the layers below it (protocols, so
tests can pass fakes)."""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from hidbpfd.config import Config, ConfigError, ProgramRef
from hidbpfd.devices.sinks import DeviceIO, Injector, ReportIO, RoutingSink
from hidbpfd.devices.udev import HidDevice, HidWatcher
from hidbpfd.engine.dispatch import Binding, Dispatcher, Observer, Outcome, RecordRouter
from hidbpfd.engine.requests import ProgramServer
from hidbpfd.engine.scheduler import Scheduler
from hidbpfd.engine.stats import Window
from hidbpfd.engine.timerfd import TimerfdDriver
from hidbpfd.model import DeviceId, DeviceRule
from hidbpfd.service.control import ControlServer
from hidbpfd.service.notify import Notifier
from hidbpfd.service.sleep import SleepWatcher


class ProgramHandle(Protocol):
    """What the daemon needs of a BPF program object loaded on one device
    (:class:`hidbpfd.kernel.programs.ProgramInstance`)."""

    @property
    def engine(self) -> str: ...
    @property
    def callbacks(self) -> frozenset[str]: ...
    @property
    def epoll_fd(self) -> int: ...
    def load(self) -> None: ...
    def consume(self) -> int: ...
    def run_callback(self, name: str, key: int, arg: int) -> int: ...
    def state(self) -> Any: ...
    def set_passing(self, size: int) -> None: ...
    def key_done(self, key: int, ts_ns: int) -> None: ...
    def close(self) -> None: ...


ProgramLoader = Callable[[str, int, Callable[[bytes], None]], ProgramHandle]
PinnedScan = Callable[[str], list[tuple[str, str]]]
"""``(device sysname) -> [(pin directory, why it cannot be served or "")]``: the objects other
loaders pinned for the device (:func:`hidbpfd.kernel.pins.scan` over the pin roots)."""
PinnedLoader = Callable[[str, int, Callable[[bytes], None]], ProgramHandle]
"""``(pin directory, hid_id, on_record) -> handle`` (not opened yet)."""
"""``(object path, hid_id, on_record) -> handle`` (not loaded yet); raises ValueError/OSError
for an object that is no program."""


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
    def consume(self) -> int: ...
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


@dataclass(slots=True)
class ServedProgram:
    """One object on one device: loaded (``handle``, ``server``) or refused (``error``)."""

    ref: ProgramRef
    stamp: tuple[int, int]
    handle: ProgramHandle | None = None
    server: ProgramServer | None = None
    engine: str = ""
    error: str = ""
    reader_fd: int = -1
    pinned: str = ""
    """For an object another loader attached: its pin directory (not ``[[program]]``)."""


@dataclass(slots=True)
class ProgramDevice:
    """A device the daemon loaded programs on, and its sinks for them."""

    hid: HidDevice
    io: DeviceIO
    programs: list[ServedProgram] = field(default_factory=list)


InjectorFactory = Callable[[HidDevice], Injector | None]
ReportIOFactory = Callable[[HidDevice], Callable[[], ReportIO]]


class DaemonState:
    """The attributes of :class:`hidbpfd.daemon.Daemon`, declared once for its parts (the
    devices, kernel-engine, reload and status mixins). Set by ``Daemon.__init__`` and, for the
    objects start-up builds, by ``Daemon.run``; this class holds no values itself."""

    # set by __init__
    config_paths: list[str]
    _source_factory: Callable[[Callable[[Any], None]], EventSource]
    _injector_factory: InjectorFactory
    _report_io_factory: ReportIOFactory
    _watcher_factory: Callable[..., HidWatcher]
    _observers: list[Observer]
    config: Config
    managed: dict[str, Managed]
    present: dict[str, HidDevice]
    by_kid: dict[int, DeviceId]
    ready: asyncio.Event
    _stop: asyncio.Event
    _pending_close: set[asyncio.Task[None]]
    socket_path: str | None
    notifier: Notifier
    control: ControlServer | None
    _subscribers: list[Callable[[dict[str, Any]], None]]
    _monitor_q: collections.deque[Outcome]
    _monitor_lost: int
    monitor_dropped: int
    _monitor_flush: asyncio.Handle | None
    event_latency: Window
    timer_lateness: Window
    started_ns: int
    timer_spin_ns: int
    busy_poll: bool
    knobs: list[str]
    reloads: int
    _status_timer: asyncio.TimerHandle | None
    sleep_bus: str | None
    sleep: SleepWatcher | None
    _engine_factory: EngineFactory | None
    engine: KernelEngineLike | None
    engine_error: str
    kernel: dict[str, KernelManaged]
    kernel_refused: dict[str, str]
    refused: dict[str, list[str]]
    _program_loader: ProgramLoader | None
    _object_check: Callable[[str], str | None] | None
    programs: dict[str, ProgramDevice]
    _pinned_scan: PinnedScan | None
    _pinned_loader: PinnedLoader | None
    _rescans: dict[str, list[asyncio.TimerHandle]]
    # set by run (start-up)
    loop: asyncio.AbstractEventLoop
    driver: TimerfdDriver
    scheduler: Scheduler
    sink: RoutingSink
    dispatch: Dispatcher
    router: RecordRouter
    source: EventSource
    watcher: HidWatcher
