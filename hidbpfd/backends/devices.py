"""Choosing each managed device's sinks, from what the kernel offers (and logging the choice).

- inject: the in-kernel injector (``hid_bpf_input_report`` through BPF_PROG_RUN), which puts the
  report into the *same* device so its identity, quirks and settings still apply; where the
  kernel lacks it, none (logged at start-up for every affected device: ``inject``,
  ``release-guard`` and re-injection by ``defer`` cannot work there).
- output / feature: the device's hidraw node (:mod:`hidbpfd.backends.hidraw`).
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable

from hidbpfd.backends.bpf import BpfEventSource
from hidbpfd.backends.sinks import Injector, ReportIO
from hidbpfd.backends.udev import HidDevice

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


def injector_factory(source: BpfEventSource) -> Callable[[HidDevice], Injector | None]:
    """``hd -> Injector | None`` for the daemon."""

    def make(hd: HidDevice) -> Injector | None:
        if source.has_program("hidbpfd_io_input"):
            return BpfInjector(source, hd.id.kernel_id)
        log.warning(
            "%s: no injection sink: %s",
            hd.id.describe(),
            source.skipped.get("hidbpfd_io_input", "in-kernel injector not loaded"),
        )
        return None

    return make


def report_io_factory(hd: HidDevice) -> Callable[[], ReportIO]:
    """Opens the device's hidraw node lazily, on first output/feature (in the I/O worker)."""

    def open_() -> ReportIO:
        hidraw = importlib.import_module("hidbpfd.backends.hidraw")
        rio: ReportIO = hidraw.HidrawReportIO(hd.hidraw)
        return rio

    return open_
