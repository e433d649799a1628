"""The daemon's BPF programs (``[[program]]`` in policy files): each object listed by a file is
loaded on every device the file's ``[device]`` matches, its request ring watched on the loop,
its requests served (:class:`hidbpfd.engine.requests.ProgramServer`) with the scheduler and the
device's sinks; its callbacks run by BPF_PROG_RUN in the device's I/O worker. Reload swaps an
object whose file changed (held reports are released first), removal detaches."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Any, Final

from hidbpfd.config import Config, ProgramRef
from hidbpfd.daemon.state import (
    DaemonState,
    ProgramDevice,
    ProgramHandle,
    ProgramLoader,
    ServedProgram,
)
from hidbpfd.devices.facts import report_sizes
from hidbpfd.devices.sinks import DeviceIO
from hidbpfd.devices.udev import HidDevice
from hidbpfd.devices.uhid_mirror import read_descriptor
from hidbpfd.engine.dispatch import Outcome
from hidbpfd.engine.requests import Limits, ProgramServer
from hidbpfd.model import DeviceId
from hidbpfd.service.logs import fields

log = logging.getLogger("hidbpfd.daemon")  # the daemon's one logger, whichever part logs


def _stamp(path: str) -> tuple[int, int]:
    try:
        st = os.stat(path)
    except OSError:
        return (0, 0)
    return (st.st_mtime_ns, st.st_size)


PIN_RESCAN_S: Final = (0.5, 1.5, 3.0, 6.0, 12.0)
"""After a device appears: when to look again for objects another loader pinned for it."""


class PinnedRef(ProgramRef):
    """The :class:`ProgramRef` of an object another loader pinned (no policy file):
    ``file``, ``object`` and ``path`` are its pin directory."""

    __slots__ = ()

    @property
    def label(self) -> str:
        """``pinned:<pin directory>``, for logs, status and traces."""
        return f"pinned:{self.path}"


class _Target:
    """A :class:`~hidbpfd.engine.requests.ProgramTarget`: one object's requests to its device."""

    def __init__(self, io: DeviceIO, sp: ServedProgram, on_error: Callable[[str], None]) -> None:
        self.io = io
        self.sp = sp
        self.on_error = on_error
        self.origin = sp.ref.label

    def _handle(self) -> ProgramHandle:
        assert self.sp.handle is not None
        return self.sp.handle

    def inject(self, data: bytes, *, held: bool) -> None:
        h = self._handle()
        if held:  # hidbpfd_defer lets exactly this report through
            h.set_passing(len(data))
        try:
            self.io.inject(data, self.origin)
        finally:
            if held:
                h.set_passing(0)

    def output(self, data: bytes) -> None:
        self.io.output(data, self.origin)

    def set_feature(self, data: bytes) -> None:
        self.io.set_feature(data, self.origin)

    def call(self, name: str, key: int, arg: int) -> None:
        h = self._handle()

        def done(ret: int) -> None:
            if ret < 0:
                self.on_error(f"callback {name}(key={key}, arg={arg}) returned {ret}")

        self.io.call(lambda: h.run_callback(name, key, arg), self.origin, done)

    def drain(self) -> None:
        if self.sp.handle is not None:
            self.sp.handle.consume()

    def key_done(self, key: int, ts_ns: int) -> None:
        if self.sp.handle is not None:
            try:
                self.sp.handle.key_done(key, ts_ns)
            except OSError as e:
                log.debug("%s: key %d: %s", self.origin, key, e)


class Programs(DaemonState):
    """The ``[[program]]`` part of :class:`hidbpfd.daemon.Daemon`."""

    def _program_device(self, hd: HidDevice) -> ProgramDevice:
        """The device's record of programs (made on its first program, with its sinks)."""
        key = hd.id.key
        pd = self.programs.get(key)
        if pd is None:
            io = DeviceIO(
                hd.id,
                self._injector_factory(hd),
                self._report_io_factory(hd),
                self._program_io_error,
            )
            pd = self.programs[key] = ProgramDevice(hd, io)
        return pd

    @staticmethod
    def _report_sizes(hd: HidDevice) -> tuple[int, int, int]:
        try:
            return report_sizes(read_descriptor(hd))
        except OSError as e:
            log.warning(
                "%s: report descriptor unreadable (%s): requests limited to 512 bytes",
                hd.id.describe(),
                e,
            )
            return (0, 0, 0)

    def _serve_programs(self, hd: HidDevice, config: Config | None = None) -> None:
        """Load the programs ``config`` (default: the daemon's) lists for ``hd`` (udev add,
        reload), then serve what other loaders pinned for it. A program that cannot load is
        logged and shown in ``status``; the others, and the device's policies, carry on."""
        refs = (config or self.config).programs_for(hd.id, hd.facts)
        if refs:
            pd = self._program_device(hd)
            sizes = self._report_sizes(hd)
            for ref in refs:
                pd.programs.append(self._load_program(pd, ref, sizes, self._program_loader))
        self._serve_pinned(hd)
        self._schedule_rescans(hd)

    def _serve_pinned(self, hd: HidDevice) -> bool:
        """Serve the objects other loaders pinned for ``hd`` under the pin roots that are not
        served yet (udev add and change, the rescans after an add, reload); those that could
        not be served are tried again. True if any new."""
        if self._pinned_scan is None or self._pinned_loader is None:
            return False
        try:
            found = self._pinned_scan(hd.id.key)
        except OSError as e:
            log.debug("%s: pin scan: %s", hd.id.describe(), e)
            return False
        pd = self.programs.get(hd.id.key)
        if pd is not None:  # one that could not be served is tried again (pins chmod-ed since)
            pd.programs = [sp for sp in pd.programs if not (sp.pinned and sp.error)]
        have = {sp.pinned for sp in pd.programs} if pd else set()
        new = [(path, why) for path, why in found if path not in have]
        if not new:
            return False
        pd = self._program_device(hd)
        sizes = self._report_sizes(hd)
        for path, why in new:
            ref = PinnedRef(path, 0, path, path)
            sp = self._load_program(pd, ref, sizes, self._pinned_loader, pinned=path, refused=why)
            pd.programs.append(sp)
        return True

    def _schedule_rescans(self, hd: HidDevice) -> None:
        """Another loader (udev-hid-bpf, run by udev for the same device) pins its maps after
        the device appeared, maybe after the daemon heard of it: look again a few times."""
        if self._pinned_scan is None:
            return
        key = hd.id.key
        for h in self._rescans.pop(key, []):
            h.cancel()
        self._rescans[key] = [self.loop.call_later(t, self._rescan, key) for t in PIN_RESCAN_S]

    def _rescan(self, key: str) -> None:
        hd = self.present.get(key)
        if hd is not None:
            self._serve_pinned(hd)

    def _drop_pinned_gone(self, key: str) -> None:
        """Stop serving pinned objects whose pins are gone (the other loader unloaded)."""
        pd = self.programs.get(key)
        if pd is None:
            return
        for sp in list(pd.programs):
            if sp.pinned and not os.path.exists(sp.pinned):
                self._unload_program(pd, sp, release=False)
                pd.programs.remove(sp)

    def _load_program(
        self,
        pd: ProgramDevice,
        ref: ProgramRef,
        sizes: tuple[int, int, int],
        loader: ProgramLoader | None,
        *,
        pinned: str = "",
        refused: str = "",
    ) -> ServedProgram:
        dev = pd.hid.id
        sp = ServedProgram(ref, _stamp(ref.path), pinned=pinned)
        if refused:
            sp.error = refused
        elif loader is None:
            sp.error = "this daemon was built without BPF program support"
        else:
            try:
                handle = loader(
                    ref.path, dev.kernel_id, lambda raw: self._on_program_record(sp, raw)
                )
                handle.load()
            except Exception as e:  # a bad object must not stop the daemon or other devices
                sp.error = f"load failed: {e}" if not pinned else f"cannot serve: {e}"
            else:
                sp.handle = handle
                sp.engine = handle.engine
        if sp.error:
            log.error(
                "%s: %s: NOT %s: %s",
                dev.describe(),
                ref.label,
                "served" if pinned else "loaded",
                sp.error,
                extra=fields(dev, file=ref.file),
            )
            return sp
        assert sp.handle is not None
        if sp.engine == "userspace":
            limits = Limits(*sizes, callbacks=sp.handle.callbacks)
            sp.server = ProgramServer(
                dev,
                ref.label,
                self.scheduler,
                _Target(pd.io, sp, lambda what: self._program_error(sp, what)),
                limits,
                self._program_observers,
            )
            sp.reader_fd = sp.handle.epoll_fd
            self.loop.add_reader(sp.reader_fd, self._program_readable, sp)
        log.info(
            "%s: %s %s (%s engine%s)",
            dev.describe(),
            ref.label,
            "served (pinned by another loader)" if pinned else "loaded",
            sp.engine,
            f"; callbacks: {', '.join(sorted(sp.handle.callbacks)) or 'none'}"
            if sp.server
            else ": its work runs in the kernel",
        )
        self._publish_program(dev, "added", ref.label, f"{sp.engine} engine")
        return sp

    def _program_observers(self) -> list[Callable[[Outcome], None]]:
        return self.dispatch.observers

    def _publish_program(self, dev: DeviceId, kind: str, label: str, detail: str) -> None:
        for obs in self.dispatch.observers:
            obs(Outcome(self.scheduler.clock.now_ns(), dev, kind, b"", label, detail))

    def _on_program_record(self, sp: ServedProgram, raw: bytes) -> None:
        if sp.server is not None:
            sp.server.on_record(raw)

    def _program_readable(self, sp: ServedProgram) -> None:
        try:
            if sp.handle is not None:
                sp.handle.consume()
        except Exception:
            log.exception("%s: request handler failed", sp.ref.label)

    def _program_error(self, sp: ServedProgram, what: str) -> None:
        dev = sp.server.device if sp.server else None
        log.error("%s: %s: %s", dev.describe() if dev else "?", sp.ref.label, what)
        if sp.server is not None:
            sp.server.error(what)

    def _program_io_error(self, device: DeviceId, origin: str, what: str) -> None:
        log.error(
            "%s: %s: %s", device.describe(), origin, what, extra=fields(device, policy=origin)
        )
        pd = self.programs.get(device.key)
        for sp in pd.programs if pd else []:
            if sp.ref.label == origin and sp.server is not None:
                sp.server.error(what)

    def _unload_program(self, pd: ProgramDevice, sp: ServedProgram, *, release: bool) -> None:
        if sp.server is not None:
            try:
                sp.server.close(release=release)
            except OSError as e:
                log.debug("%s: release: %s", sp.ref.label, e)
        if sp.reader_fd >= 0:
            self.loop.remove_reader(sp.reader_fd)
            sp.reader_fd = -1
        if sp.handle is not None:
            sp.handle.close()
            sp.handle = None
            log.info("%s: %s detached", pd.hid.id.describe(), sp.ref.label)

    def _unserve_programs(self, key: str, *, release: bool) -> DeviceIO | None:
        """Detach every program of a device (removal: ``release`` False, its held reports die
        with it; shutdown, reload: True). Returns its DeviceIO for the caller to close."""
        pd = self.programs.pop(key, None)
        if pd is None:
            return None
        for sp in pd.programs:
            self._unload_program(pd, sp, release=release)
        return pd.io

    def _close_program_io(self, io: DeviceIO | None) -> None:
        if io is None:
            return
        task = self.loop.create_task(io.close(), name=f"hidbpfd-close-programs-{io.device.key}")
        self._pending_close.add(task)
        task.add_done_callback(self._pending_close.discard)

    def _reload_programs(self, hd: HidDevice, config: Config) -> bool:
        """Apply a reload to a device's programs: unchanged objects keep running; a changed
        list, or an object file that changed, is swapped (held reports released first).
        True if anything changed."""
        key = hd.id.key
        refs = config.programs_for(hd.id, hd.facts)
        pd = self.programs.get(key)
        old = [(sp.ref, sp.stamp) for sp in pd.programs if not sp.pinned] if pd else []
        new = [(r, _stamp(r.path)) for r in refs]
        if old == new:
            self._drop_pinned_gone(key)
            return self._serve_pinned(hd)
        self._close_program_io(self._unserve_programs(key, release=True))
        self._serve_programs(hd, config)
        return True

    def _programs_status(self, key: str) -> list[dict[str, Any]]:
        """Each program of a device, for ``status``."""
        pd = self.programs.get(key)
        out: list[dict[str, Any]] = []
        for sp in pd.programs if pd else []:
            entry: dict[str, Any] = {"program": sp.ref.label, "object": sp.ref.path}
            if sp.pinned:
                entry["loader"] = "pinned by another loader"
                entry["pinned"] = sp.pinned
            if sp.error:
                entry["error"] = sp.error
                out.append(entry)
                continue
            entry["engine"] = sp.engine
            if sp.server is not None and sp.handle is not None:
                c = sp.server.counters
                try:
                    st = sp.handle.state()
                except OSError:
                    st = None
                entry.update(
                    requests=c.requests,
                    held=c.held,
                    injected=c.injected,
                    output=c.output,
                    feature=c.feature,
                    calls=c.calls,
                    cancelled=c.cancelled,
                    errors=c.errors,
                    refused=dict(c.refused),
                    drops={
                        "over_budget": st.over_budget if st else -1,
                        "ring_full": st.ring_full if st else -1,
                    },
                    pending=sp.server.pending(),
                )
            out.append(entry)
        return out
