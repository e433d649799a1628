"""Building the real daemon: the BPF event source, the sinks chosen per device, udev.

One place for ``hidbpfd run``, ``replay --device uhid``, ``demo`` and the device tests, so
they all run the daemon exactly as the service does.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from hidbpfd.config.load import Config
from hidbpfd.config.settings import Settings
from hidbpfd.daemon import Daemon
from hidbpfd.devices.chooser import injector_factory, report_io_factory
from hidbpfd.devices.facts import read_uevent, sysfs_facts
from hidbpfd.devices.sinks import Injector
from hidbpfd.devices.udev import HidDevice, device_id_from
from hidbpfd.engine.dispatch import Observer
from hidbpfd.kernel import orphans, pins
from hidbpfd.kernel.engine import KernelEngine
from hidbpfd.kernel.programs import check_object, load_program
from hidbpfd.kernel.ringsize import ring_size
from hidbpfd.kernel.source import BpfEventSource

log = logging.getLogger("hidbpfd.daemon")


def build_daemon(
    config_paths: Sequence[str | Path],
    *,
    socket_path: str | None = None,
    observers: Sequence[Observer] = (),
    sleep_bus: str | None = "system",
    settings: Settings | None = None,
) -> Daemon:
    """The daemon with the real BPF source, in-kernel injector / hidraw sinks and udev, and the
    in-kernel engine for ``engine = "kernel"`` files (loaded on first use)."""
    sources: list[BpfEventSource] = []
    ring_kib = (settings or Settings()).ring_kib

    def make_source(cb: Callable[[Any], None]) -> BpfEventSource:
        # called once by Daemon.run(), before any device is attached: first let go of what
        # an earlier instance (an older version, or one killed mid-run) left registered
        orphans.clean()
        # the config is loaded by now (Daemon.run loads it first); the devices not yet
        size = ring_size(devices_with_rules(d.config), ring_kib=ring_kib)
        log.info("BPF ring buffer: %s", size.describe())
        src = BpfEventSource(cb, ring_bytes=size.bytes)
        src.ring_why = size.why
        sources.append(src)
        return src

    def make_injector(hd: HidDevice) -> Injector | None:
        return injector_factory(sources[0])(hd)

    def make_engine(on_outcome: Observer) -> KernelEngine:
        return KernelEngine(on_outcome)

    d = Daemon(
        config_paths,
        make_source,
        make_injector,
        report_io_factory,
        socket_path=socket_path,
        observers=observers,
        sleep_bus=sleep_bus,
        engine_factory=make_engine,
        settings=settings,
        program_loader=load_program,
        object_check=check_object,
        pinned_scan=pinned_scan((settings or Settings()).pin_roots),
        pinned_loader=pinned_loader,
    )
    return d


def devices_with_rules(config: Config, sys_root: Path = Path("/sys")) -> int:
    """HID devices present now (sysfs) that ``config`` gives userspace-engine policies to: what
    the ring is sized for (:func:`hidbpfd.kernel.ringsize.ring_size`)."""
    n = 0
    for dev in sorted((sys_root / "bus/hid/devices").glob("*")):
        try:
            hid = device_id_from(dev.name, read_uevent(dev / "uevent"))
            facts = sysfs_facts(dev)
        except OSError:
            continue  # gone meanwhile
        if any(f.engine != "kernel" and f.bindings for f in config.files_for(hid, facts)):
            n += 1
    return n


def pinned_scan(roots: Sequence[str]) -> Callable[[str], list[tuple[str, str]]]:
    """The daemon's view of :func:`hidbpfd.kernel.pins.scan` over ``roots`` (``pin_roots``)."""
    roots = tuple(roots)

    def scan(sysname: str) -> list[tuple[str, str]]:
        return [
            (p.path, f"{pins.NOT_SERVED}: {', '.join(p.missing)}" if p.missing else "")
            for p in pins.scan(roots, sysname)
        ]

    return scan


def pinned_loader(path: str, hid_id: int, on_record: Callable[[bytes], None]) -> Any:
    """Open an object another loader pinned at ``path`` (then ``load()``)."""
    d = Path(path)
    return pins.PinnedInstance(
        pins.PinnedObject(str(d.parent.parent), d.parent.name, d.name, path), hid_id, on_record
    )
