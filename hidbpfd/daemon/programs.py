"""The daemon's BPF programs (``[[program]]`` in policy files): each object listed by a file is
loaded on every device the file's ``[device]`` matches, its request ring watched on the loop,
its requests served (:class:`hidbpfd.engine.requests.ProgramServer`) with the scheduler and the
device's sinks; its callbacks run by BPF_PROG_RUN in the device's I/O worker. Reload swaps an
object whose file changed (held reports are released first), removal detaches."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Any

from hidbpfd.config import Config, ProgramRef
from hidbpfd.daemon.state import DaemonState, ProgramDevice, ProgramHandle, ServedProgram
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

    def _serve_programs(self, hd: HidDevice, config: Config | None = None) -> None:
        """Load the programs ``config`` (default: the daemon's) lists for ``hd`` (udev add,
        reload). A program that cannot load is logged and shown in ``status``; the others,
        and the device's policies, carry on."""
        refs = (config or self.config).programs_for(hd.id, hd.facts)
        if not refs:
            return
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
        try:
            sizes = report_sizes(read_descriptor(hd))
        except OSError as e:
            log.warning(
                "%s: report descriptor unreadable (%s): requests limited to 512 bytes",
                hd.id.describe(),
                e,
            )
            sizes = (0, 0, 0)
        for ref in refs:
            pd.programs.append(self._load_program(pd, ref, sizes))

    def _load_program(
        self, pd: ProgramDevice, ref: ProgramRef, sizes: tuple[int, int, int]
    ) -> ServedProgram:
        dev = pd.hid.id
        sp = ServedProgram(ref, _stamp(ref.path))
        if self._program_loader is None:
            sp.error = "this daemon was built without BPF program support"
        else:
            try:
                handle = self._program_loader(
                    ref.path, dev.kernel_id, lambda raw: self._on_program_record(sp, raw)
                )
                handle.load()
            except Exception as e:  # a bad object must not stop the daemon or other devices
                sp.error = f"load failed: {e}"
            else:
                sp.handle = handle
                sp.engine = handle.engine
        if sp.error:
            log.error(
                "%s: %s: NOT loaded: %s",
                dev.describe(),
                ref.label,
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
            "%s: %s loaded (%s engine%s)",
            dev.describe(),
            ref.label,
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
        old = [(sp.ref, sp.stamp) for sp in pd.programs] if pd else []
        new = [(r, _stamp(r.path)) for r in refs]
        if old == new:
            return False
        self._close_program_io(self._unserve_programs(key, release=True))
        self._serve_programs(hd, config)
        return True

    def _programs_status(self, key: str) -> list[dict[str, Any]]:
        """Each program of a device, for ``status``."""
        pd = self.programs.get(key)
        out: list[dict[str, Any]] = []
        for sp in pd.programs if pd else []:
            entry: dict[str, Any] = {"program": sp.ref.label, "object": sp.ref.path}
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
