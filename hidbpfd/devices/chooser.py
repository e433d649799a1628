"""Choosing each managed device's sinks, from what the kernel offers (and logging the choice).

- inject, the first that works, per device:

  1. the **in-kernel injector** (``hid_bpf_input_report`` through BPF_PROG_RUN), which puts the
     report into the *same* device so its identity, quirks and settings still apply;
  2. a **uhid mirror** (:mod:`hidbpfd.devices.uhid_mirror`) when ``/dev/uhid`` is usable: a
     sibling HID device with the same descriptor, fed UHID_INPUT2; the kernel's HID drivers
     make the evdev events;
  3. **uinput** (:mod:`hidbpfd.devices.uinput`) when ``/dev/uinput`` is usable: the report is
     turned into evdev events by our own descriptor parser and mapping;
  4. none, logged with the reason for each option (``inject``, ``release-guard`` and
     re-injection by ``defer`` cannot work there).

  "Usable" is what :func:`hidbpfd.kernel.probe.probe` says about the node plus our access to it; a
  sink that then fails to build (no descriptor, uhid refusing, nothing mappable) falls through
  to the next with its reason. Our own mirrors get no sink (no mirror of a mirror).
- output / feature: the device's hidraw node (:mod:`hidbpfd.devices.hidraw`).
"""

from __future__ import annotations

import importlib
import logging
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Final

from hidbpfd.devices.descriptor import DescriptorError, parse
from hidbpfd.devices.sinks import Injector, ReportIO
from hidbpfd.devices.udev import HidDevice
from hidbpfd.devices.uhid import UHID_PATH
from hidbpfd.devices.uhid_mirror import UhidMirror, is_mirror, read_descriptor
from hidbpfd.kernel.source import BpfEventSource
from hidbpfd.model import DeviceId

log = logging.getLogger(__name__)


class BpfInjector:
    """Injects into the same device through the in-kernel injector program."""

    name = "in-kernel (hid_bpf_input_report)"

    def __init__(self, source: BpfEventSource, hid_id: int) -> None:
        self.source = source
        self.hid_id = hid_id

    def inject(self, data: bytes) -> None:
        """One BPF_PROG_RUN (~10 µs); raises OSError (BpfError) on failure."""
        self.source.inject(self.hid_id, data)

    def close(self) -> None:
        """Nothing to release."""


Probe = Callable[[], Mapping[str, Mapping[str, object]]]


def _probe() -> Mapping[str, Mapping[str, object]]:
    from hidbpfd.kernel.probe import probe

    return probe(load=False)


def _usable(checks: Mapping[str, Mapping[str, object]], key: str, path: str) -> str:
    """Why the ``key`` node cannot be used ("" if it can)."""
    check = checks.get(key, {})
    if not check.get("ok"):
        return str(check.get("reason", "not probed"))
    if not os.access(path, os.R_OK | os.W_OK):
        return f"{path} is not readable and writable by uid {os.geteuid()}"
    return ""


KERNEL_INJECTOR: Final = "in-kernel"


def kernel_injector_reason() -> str:
    """Why the in-kernel injector would not load on this kernel, from its BTF alone ("" if it
    would): the test :class:`BpfEventSource` makes before loading it. For ``hidbpfd
    devices``, which predicts without loading anything."""
    from hidbpfd.kernel.probe import kernel_btf
    from hidbpfd.kernel.source import IO_PROGRAMS

    btf = kernel_btf()
    if not btf.ok:
        return btf.reason
    missing = [k for k in IO_PROGRAMS["hidbpfd_io_input"] if k not in btf.funcs]
    return f"kfunc {', '.join(missing)} not in kernel BTF" if missing else ""


def plan(
    dev: DeviceId,
    kernel_injector: str,
    checks: Mapping[str, Mapping[str, object]],
    *,
    uhid_path: str = UHID_PATH,
    uinput_path: str = "/dev/uinput",
) -> list[tuple[str, str]]:
    """The injection sinks for ``dev`` in the order they are tried, each with why it cannot be
    used ("" if it can): ``kernel_injector`` is that reason for the in-kernel injector,
    ``checks`` the probe's answer. Empty for our own mirrors. Used by the injector factory
    (which then builds the first usable one, falling through on failure) and by
    ``hidbpfd devices`` (which names the first usable one)."""
    if is_mirror(dev):
        return []
    return [
        (KERNEL_INJECTOR, kernel_injector),
        ("uhid", _usable(checks, "uhid", uhid_path)),
        ("uinput", _usable(checks, "uinput", uinput_path)),
    ]


def injector_factory(
    source: BpfEventSource,
    *,
    probe: Probe = _probe,
    uhid_path: str = UHID_PATH,
    uinput_path: str = "/dev/uinput",
    sys_root: Path = Path("/sys"),
) -> Callable[[HidDevice], Injector | None]:
    """``hd -> Injector | None`` for the daemon, called on the loop when it starts managing a
    device; the order and reasons are in this module's docstring, the choice is logged."""

    def mirror(hd: HidDevice) -> Injector:
        return UhidMirror(hd.id, read_descriptor(hd, sys_root), uhid_path=uhid_path)

    def uinput(hd: HidDevice) -> Injector:
        # imported here: python-evdev and the HID->evdev tables cost the daemon ~1.7 MB of
        # RSS, and most devices never need this sink (the in-kernel injector comes first)
        import evdev

        from hidbpfd.devices.evdev_map import EventMapper
        from hidbpfd.devices.uinput import UinputInjector

        mapper = EventMapper(parse(read_descriptor(hd, sys_root)), hd.id.describe())
        dev = hd.id
        try:
            return UinputInjector(
                mapper,
                name=dev.name or f"{dev.vendor:04x}:{dev.product:04x}",
                bus=dev.bus,
                vendor=dev.vendor,
                product=dev.product,
                phys=dev.phys,
                devnode=uinput_path,
            )
        except evdev.UInputError as e:
            raise OSError(f"uinput refused the device: {e}") from e

    def make(hd: HidDevice) -> Injector | None:
        dev = hd.id
        if is_mirror(dev):
            log.info("%s: this is a hidbpfd uhid mirror; it gets no injection sink", dev.describe())
            return None
        if source.has_program("hidbpfd_io_input"):
            return BpfInjector(source, dev.kernel_id)
        why = [
            "in-kernel injector: "
            + source.skipped.get("hidbpfd_io_input", "in-kernel injector not loaded")
        ]
        try:
            checks = probe()
        except Exception as e:  # a broken probe must not cost the device its management
            log.exception("%s: probing the kernel failed", dev.describe())
            checks = {k: {"ok": False, "reason": f"probe failed: {e}"} for k in ("uhid", "uinput")}
        builders: dict[str, Callable[[HidDevice], Injector]] = {"uhid": mirror, "uinput": uinput}
        options = plan(dev, why[0], checks, uhid_path=uhid_path, uinput_path=uinput_path)
        for key, unusable in options[1:]:
            reason = unusable
            if not reason:
                try:
                    injector = builders[key](hd)
                except (OSError, ValueError, DescriptorError) as e:
                    reason = f"{type(e).__name__}: {e}"
                else:
                    log.info(
                        "%s: injecting through %s (not used: %s)",
                        dev.describe(),
                        injector.name,
                        "; ".join(why),
                    )
                    return injector
            why.append(f"{key}: {reason}")
        log.warning("%s: no injection sink: %s", dev.describe(), "; ".join(why))
        return None

    return make


def report_io_factory(hd: HidDevice) -> Callable[[], ReportIO]:
    """Opens the device's hidraw node lazily, on first output/feature (in the I/O worker)."""

    def open_() -> ReportIO:
        hidraw = importlib.import_module("hidbpfd.devices.hidraw")
        rio: ReportIO = hidraw.HidrawReportIO(hd.hidraw)
        return rio

    return open_
