"""The daemon's devices: a HID device appears (udev) and is set up — BPF attach, rule table,
injector and hidraw I/O, dispatch — or goes away and all of it is undone, its pending work
cancelled; plus the ``resume`` trigger and I/O errors of a device's sinks."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from hidbpfd.daemon.kernel_engine import KernelEngines
from hidbpfd.daemon.programs import Programs
from hidbpfd.daemon.state import Managed
from hidbpfd.devices.sinks import DeviceIO
from hidbpfd.devices.udev import HidDevice
from hidbpfd.devices.uhid_mirror import is_mirror
from hidbpfd.engine.dispatch import Binding, build_table, refusal, split_too_long
from hidbpfd.model import DeviceId
from hidbpfd.service.logs import fields

log = logging.getLogger("hidbpfd.daemon")  # the daemon's one logger, whichever part logs


class Devices(KernelEngines, Programs):
    """Device set-up and removal, the part of :class:`hidbpfd.daemon.Daemon` that udev calls."""

    def _added(self, hd: HidDevice) -> None:
        self.present[hd.id.key] = hd
        if is_mirror(hd.id):  # our own injection sink for another device: never managed
            log.debug("%s: a hidbpfd uhid mirror, not managed", hd.id.describe())
            return
        self._serve_programs(hd)
        bindings = self.config.bindings_for(hd.id, hd.facts)
        if not bindings:
            if hd.id.key not in self.programs:
                log.debug("%s: no policy file matches", hd.id.describe())
            return
        self._manage(hd, bindings)

    def _manage(self, hd: HidDevice, bindings: Sequence[Binding]) -> None:
        bindings = self._refuse_too_long(hd, self._manage_kernel(hd, bindings))
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

    def _refuse_too_long(self, hd: HidDevice, bindings: Sequence[Binding]) -> list[Binding]:
        """``bindings`` without the policies that could hold an input report of ``hd`` longer
        than a ring record carries (its report descriptor says how long they are): each is
        refused with an ERROR line naming file, policy, device, report and the limit, and
        listed in ``status``, never run as a silent no-op. Called when the daemon takes a
        device on and on reload."""
        keep, refused = split_too_long(bindings, hd.facts.input_lengths)
        for b, long in refused:
            log.error(
                "%s: %s",
                hd.id.describe(),
                refusal(b, long),
                extra=fields(hd.id, policy=b.label, file=b.file),
            )
        if refused:
            self.refused[hd.id.key] = [refusal(b, long) for b, long in refused]
        else:
            self.refused.pop(hd.id.key, None)
        return keep

    def _removed(self, hd: HidDevice) -> None:
        self.present.pop(hd.id.key, None)
        for h in self._rescans.pop(hd.id.key, []):
            h.cancel()
        self._close_program_io(self._unserve_programs(hd.id.key, release=False))
        self._detach_kernel(hd.id.key)
        self.kernel_refused.pop(hd.id.key, None)
        self.refused.pop(hd.id.key, None)
        self._let_go(hd.id.key)

    def _changed(self, hd: HidDevice) -> None:
        self.present[hd.id.key] = hd
        self._drop_pinned_gone(hd.id.key)
        self._serve_pinned(hd)

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

    def _io_error(self, device: DeviceId, origin: str, what: str) -> None:
        """A sink's I/O failed: counted and observed always; one ERROR line per trigger of the
        policy (its retries' and later steps' failures at DEBUG)."""
        first = self.dispatch.report_error(device, origin, what)
        file = origin.split("#", 1)[0]
        (log.error if first else log.debug)(
            "%s: %s: %s",
            device.describe(),
            origin,
            what,
            extra=fields(device, policy=origin, file=file),
        )
