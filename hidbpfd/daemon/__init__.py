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

The daemon is one class, :class:`Daemon`, written in parts by what they do:

- :mod:`.state` — what the daemon holds and what it needs of the layers below (protocols);
- :mod:`.lifecycle` — :class:`Daemon` itself: start-up, run, shutdown;
- :mod:`.devices` — a device appears, is set up, goes away (and resume, I/O errors);
- :mod:`.kernel_engine` — devices served by the in-kernel engine;
- :mod:`.programs` — BPF program objects (``[[program]]``) loaded per device, their requests;
- :mod:`.reload` — SIGHUP / ``hidbpfd reload``;
- :mod:`.status` — ``status``, systemd's STATUS= line and the ``monitor`` subscribers.
"""

from hidbpfd.daemon.lifecycle import Daemon
from hidbpfd.daemon.state import (
    EngineFactory,
    EventSource,
    InjectorFactory,
    KernelEngineLike,
    KernelManaged,
    Managed,
    PinnedLoader,
    PinnedScan,
    ProgramHandle,
    ProgramLoader,
    ReloadResult,
    ReportIOFactory,
)

__all__ = [
    "Daemon",
    "EngineFactory",
    "EventSource",
    "InjectorFactory",
    "KernelEngineLike",
    "KernelManaged",
    "Managed",
    "PinnedLoader",
    "PinnedScan",
    "ProgramHandle",
    "ProgramLoader",
    "ReloadResult",
    "ReportIOFactory",
]
