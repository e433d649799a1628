"""The daemon's devices served by the in-kernel engine (``engine = "kernel"`` files): the engine
is created on first use, attached per device (or refused, with the reason logged and shown in
``status``), re-attached on reload when a device's kernel files changed, detached on removal."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from hidbpfd.daemon.state import DaemonState, KernelEngineLike, KernelManaged, ReloadResult
from hidbpfd.devices.udev import HidDevice
from hidbpfd.engine.dispatch import Binding, Outcome, refusal, split_too_long
from hidbpfd.service.logs import fields

log = logging.getLogger("hidbpfd.daemon")  # the daemon's one logger, whichever part logs


class KernelEngines(DaemonState):
    """The in-kernel engine's part of :class:`hidbpfd.daemon.Daemon`."""

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
            reason = _too_long(hd, kernel)
            if not reason:
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


def _too_long(hd: HidDevice, bindings: Sequence[Binding]) -> str | None:
    """Why the in-kernel engine cannot run ``bindings`` on ``hd`` because a policy could hold
    an input report longer than the engine keeps (its report descriptor says how long they
    are), or None."""
    _, refused = split_too_long(bindings, hd.facts.input_lengths)
    return refusal(*refused[0]) if refused else None
