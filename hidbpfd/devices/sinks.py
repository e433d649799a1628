"""Where the dispatch's actions go for real devices: one :class:`DeviceIO` per managed device.

- **inject** goes to the device's injector, chosen once per device from what the kernel has
  (logged): the in-kernel injector (``hid_bpf_input_report`` run with BPF_PROG_RUN — the report
  enters the *same* device, keeping its identity), else a uhid mirror device. Injection is fast
  and non-blocking, so it runs on the loop.
- **output / set feature / get feature** go through the device's hidraw node. They can block
  (a device that does not answer a GET_REPORT blocks the ioctl until the kernel gives up, ~5 s
  for uhid and usbhid), so each runs off the loop, in order, on the device's own thread
  (:class:`DeviceThread`, never a shared pool), driven by one worker task per device with a
  timeout: a silent device never delays another one, and a device's steps never
  overtake each other. The thread ends with its device (:meth:`DeviceIO.close`; a call still
  in the kernel then ends it when the kernel returns).

A device that vanishes mid-write gives one log line naming the device and the policy; the
error is counted and the other devices carry on. Which failures are logged at ERROR (one per
trigger of a policy, not one per retry) is the error callback's choice (the daemon asks the
dispatch).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import logging
import queue
import threading
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, Protocol

from hidbpfd.devices.hidraw import DeviceGone
from hidbpfd.engine.dispatch import ReplyFn
from hidbpfd.model import DeviceId

log = logging.getLogger(__name__)

IO_TIMEOUT_S = 1.0
STUCK_S = 10.0
CLOSE_WAIT_S = 2.0
QUEUE_MAX = 256
JOIN_S = 0.05


class Injector(Protocol):
    """Puts a report into a device's input stream (sync, fast, non-blocking)."""

    name: str

    def inject(self, data: bytes) -> None:
        """Inject one report; raises OSError on failure."""

    def close(self) -> None:
        """Release what the injector holds."""


class ReportIO(Protocol):
    """Output and feature reports to a device (hidraw); blocking calls, run off the loop."""

    def output(self, data: bytes) -> None:
        """Write an output report."""

    def set_feature(self, data: bytes) -> None:
        """HIDIOCSFEATURE."""

    def get_feature(self, report_id: int, length: int) -> bytes:
        """HIDIOCGFEATURE."""

    def close(self) -> None:
        """Close the node."""


ErrorFn = Callable[[DeviceId, str, str], None]


@dataclass(slots=True)
class _Op:
    kind: str
    data: bytes
    origin: str
    report_id: int = 0
    length: int = 0
    reply: ReplyFn | None = None
    fn: Callable[[], int] | None = None
    """A ``call``: the blocking work (a BPF program's callback), run by the worker."""
    on_result: Callable[[int], None] | None = None


class DeviceIO:
    """The sinks of one device, and the worker task and thread that own its hidraw I/O.

    Created by the daemon when it starts managing a device; :meth:`close` (on removal or
    shutdown) cancels the worker, lets the thread go and closes the nodes.
    """

    def __init__(
        self,
        device: DeviceId,
        injector: Injector | None,
        report_io: Callable[[], ReportIO],
        on_error: ErrorFn,
        *,
        timeout_s: float = IO_TIMEOUT_S,
    ) -> None:
        self.device = device
        self.injector = injector
        self._open_report_io = report_io
        self._report_io: ReportIO | None = None
        self._lock = threading.Lock()
        """Guards ``_report_io`` and ``closed`` between the worker's thread (which opens the
        node) and :meth:`close` (on the loop): a node opened after close is closed at once."""
        self.on_error = on_error
        self.timeout_s = timeout_s
        self._queue: asyncio.Queue[_Op] = asyncio.Queue(QUEUE_MAX)
        self._thread = DeviceThread(f"hidbpfd-io-{device.key}")
        self._worker = asyncio.get_running_loop().create_task(
            self._run(), name=f"hidbpfd-io-{device.key}"
        )
        self.closed = False
        self.gone = ""
        """Why the device is known to be gone (set by the first I/O error saying so); its
        further I/O is dropped without more log lines until the registry removes it."""
        self.dropped = 0

    # --- called by RoutingSink, on the loop ---

    def inject(self, data: bytes, origin: str) -> None:
        """Inject now (errors are reported, never raised)."""
        if self.gone:
            self.dropped += 1
            return
        if self.injector is None:
            self._fail(origin, "inject", "no injection sink for this device (see start-up log)")
            return
        try:
            self.injector.inject(data)
        except OSError as e:
            self._fail(origin, "inject", _oserror(e))

    def submit(self, op: _Op) -> None:
        """Queue an output/feature operation for the worker."""
        if self.gone:
            self._drop(op)
            return
        if self.closed:
            self._fail(op.origin, op.kind, "device is gone")
            return
        try:
            self._queue.put_nowait(op)
        except asyncio.QueueFull:
            self._fail(op.origin, op.kind, f"{QUEUE_MAX} operations already queued; dropped")

    def output(self, data: bytes, origin: str) -> None:
        """Queue an output report (the BPF programs' requests; policies go through
        :class:`RoutingSink`)."""
        self.submit(_Op("output", data, origin))

    def set_feature(self, data: bytes, origin: str) -> None:
        """Queue a SET_FEATURE."""
        self.submit(_Op("feature", data, origin))

    def call(self, fn: Callable[[], int], origin: str, on_result: Callable[[int], None]) -> None:
        """Queue blocking work that talks to the device (a BPF program's sleepable callback,
        run by BPF_PROG_RUN): in order with this device's output and feature reports, off
        the loop, with the same timeout. ``on_result`` gets its return value on the loop;
        an OSError it raises is reported like a failed write."""
        self.submit(_Op("call", b"", origin, fn=fn, on_result=on_result))

    # --- the worker ---

    async def _run(self) -> None:
        # Open the node now, off the loop, so the first report is not delayed by it. asyncio.wait
        # and not wait_for: cancelling this task must never wait for a thread stuck in the kernel.
        opening = _owned(self._thread.call(self._ensure_open))
        opened, _ = await asyncio.wait({opening}, timeout=self.timeout_s)
        if opened and opening.exception() is not None:
            log.debug(
                "%s: opening the report node early failed (%s); will retry on use",
                self.device.describe(),
                opening.exception(),
            )
        while True:
            op = await self._queue.get()
            if self.gone:
                self._drop(op)
                continue
            fut = _owned(self._thread.call(functools.partial(self._do, op)))
            start = time.monotonic()
            done, _ = await asyncio.wait({fut}, timeout=self.timeout_s)
            late = ""
            if not done:
                # The policy gets its answer now; the log line waits for the call's fate (the
                # kernel bounds it: uhid and usbhid give up after 5 s), so a device that hangs
                # and then vanishes gives one line, and two calls never overlap on a device.
                if op.reply:
                    op.reply(None, "timeout")
                    op.reply = None
                done, _ = await asyncio.wait({fut}, timeout=STUCK_S)
                if not done:
                    self._fail(
                        op.origin,
                        op.kind,
                        f"no answer within {self.timeout_s + STUCK_S:g} s (device stuck)",
                    )
                    continue
                late = f" after no answer for {time.monotonic() - start:.1f} s"
            try:
                result = fut.result()
            except OSError as e:
                self._fail(op.origin, op.kind, _oserror(e) + late)
                if op.reply:
                    op.reply(None, _oserror(e))
                continue
            if late:
                self._fail(
                    op.origin, op.kind, f"answered only{late} (timeout {self.timeout_s:g} s)"
                )
            elif op.reply:
                op.reply(result, "")
            elif op.on_result is not None and isinstance(result, int):
                op.on_result(result)

    def _ensure_open(self) -> ReportIO:
        """The report node, opened on first use (in an executor thread)."""
        if (rio := self._report_io) is not None:
            return rio
        rio = self._open_report_io()
        with self._lock:
            if not self.closed and self._report_io is None:
                self._report_io = rio
                return rio
            keep = self._report_io
        if keep is not None and not self.closed:
            rio.close()  # another thread opened it first
            return keep
        # closed while we were opening (the device went away): never keep the fd
        rio.close()
        raise DeviceGone(self.device.key, errno.ENODEV, "open", "closed while opening")

    def _do(self, op: _Op) -> bytes | int | None:
        if op.fn is not None:
            return op.fn()
        rio = self._ensure_open()
        if op.kind == "output":
            rio.output(op.data)
        elif op.kind == "feature":
            rio.set_feature(op.data)
        else:
            return rio.get_feature(op.report_id, op.length)
        return None

    def _drop(self, op: _Op) -> None:
        self.dropped += 1
        if op.reply:
            op.reply(None, f"device gone ({self.gone})")

    def _fail(self, origin: str, what: str, why: str) -> None:
        if self.gone:
            self.dropped += 1
            return
        if "(device gone)" in why:
            self.gone = why.split(" after no answer", maxsplit=1)[0]
            why += "; dropping its further I/O until it is removed"
        self.on_error(self.device, origin, f"{what} failed: {why}")

    async def close(self) -> None:
        """Stop the worker and the thread, close the nodes; pending operations are dropped. A
        node the worker is still opening (the thread in the kernel) is closed by that thread
        when it returns; a call still in the kernel ends the thread when the kernel returns
        (the device is gone by then, or about to be: uhid and usbhid give up within ~5 s)."""
        with self._lock:
            self.closed = True
        self._worker.cancel()
        done, _ = await asyncio.wait({self._worker}, timeout=CLOSE_WAIT_S)
        if not done:
            log.warning(
                "%s: I/O worker did not stop within %g s", self.device.describe(), CLOSE_WAIT_S
            )
        await self._thread.stop(CLOSE_WAIT_S)
        with self._lock:
            rio, self._report_io = self._report_io, None
        for res in (rio, self.injector):
            if res is not None:
                try:
                    res.close()
                except OSError as e:
                    log.debug("%s: close: %s", self.device.describe(), e)


_Job = tuple[Callable[[], Any], "asyncio.Future[Any]"] | None


class DeviceThread:
    """One device's thread for its blocking calls (hidraw open, write, feature ioctls).

    Owned by a :class:`DeviceIO`; started on the first :meth:`call`, ended by :meth:`stop`. A
    call stuck in the kernel (a device that never answers a GET_REPORT) holds only this thread:
    no other device waits for it, as they would for a shared pool's threads. Calls run one at
    a time, in order. A daemon thread: a call still in the kernel at exit never delays it.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self._loop = asyncio.get_running_loop()
        self._jobs: queue.SimpleQueue[_Job] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._ended = asyncio.Event()
        self.busy = 0
        """Calls submitted and not finished yet (on the loop's count)."""

    def call(self, fn: Callable[[], Any]) -> asyncio.Future[Any]:
        """Run ``fn()`` on the thread after the calls before it; the future holds its result."""
        fut: asyncio.Future[Any] = self._loop.create_future()
        if self._thread is None:
            self._thread = threading.Thread(target=self._main, name=self.name, daemon=True)
            self._thread.start()
        self.busy += 1
        fut.add_done_callback(self._finished)
        self._jobs.put((fn, fut))
        return fut

    def _finished(self, _: asyncio.Future[Any]) -> None:
        self.busy -= 1

    def _main(self) -> None:
        while (job := self._jobs.get()) is not None:
            fn, fut = job
            try:
                result = fn()
            except BaseException as e:  # handed to the loop, like an executor would
                self._post(_set_exception, fut, e)
            else:
                self._post(_set_result, fut, result)
        self._post(self._ended.set)

    def _post(self, fn: Callable[..., None], *args: Any) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits any more
            self._loop.call_soon_threadsafe(fn, *args)

    async def stop(self, wait_s: float) -> None:
        """End the thread after the calls already queued. Waits for it (at most ``wait_s``)
        unless a call is in the kernel: that one ends the thread when the kernel returns."""
        if self._thread is None:
            return
        self._jobs.put(None)
        if self.busy:
            return
        waiter = self._loop.create_task(self._ended.wait(), name=f"{self.name}-end")
        try:
            await asyncio.wait({waiter}, timeout=wait_s)
        finally:
            waiter.cancel()
        if self._ended.is_set():
            # it told us on its way out: let it finish leaving (its last statement; bounded),
            # so a caller counting threads after close() sees it gone
            self._thread.join(JOIN_S)


def _set_result(fut: asyncio.Future[Any], result: Any) -> None:
    if not fut.done():
        fut.set_result(result)


def _set_exception(fut: asyncio.Future[Any], e: BaseException) -> None:
    if not fut.done():
        fut.set_exception(e)


def _owned(fut: asyncio.Future[Any]) -> asyncio.Future[Any]:
    """``fut`` with its outcome always retrieved: an executor call the worker stopped waiting
    for (timeout, or the worker cancelled when the device went away) may still fail later,
    which asyncio would otherwise log as "Future exception was never retrieved"."""
    fut.add_done_callback(_retrieve)
    return fut


def _retrieve(fut: asyncio.Future[Any]) -> None:
    if not fut.cancelled():
        fut.exception()


def _oserror(e: OSError) -> str:
    """One line for an I/O error; ``(device gone)`` when the device vanished (the hidraw layer
    tells a vanished device from one refusing a report; ENODEV always means gone)."""
    name = errno.errorcode.get(e.errno or 0, "")
    gone = " (device gone)" if isinstance(e, DeviceGone) or e.errno == errno.ENODEV else ""
    return f"{name or 'error'}: {e.strerror or e}{gone}"


class RoutingSink:
    """The dispatch's :class:`~hidbpfd.engine.dispatch.Sink` for the daemon: routes by device."""

    def __init__(self, on_error: ErrorFn) -> None:
        self.devices: dict[str, DeviceIO] = {}
        self.on_error = on_error

    def _io(self, device: DeviceId, origin: str, what: str) -> DeviceIO | None:
        io = self.devices.get(device.key)
        if io is None:
            self.on_error(device, origin, f"{what} failed: device is not managed (gone?)")
        return io

    def inject(self, device: DeviceId, data: bytes, origin: str) -> None:
        """See :class:`DeviceIO.inject`."""
        if io := self._io(device, origin, "inject"):
            io.inject(data, origin)

    def output(self, device: DeviceId, data: bytes, origin: str) -> None:
        """Queue an output report."""
        if io := self._io(device, origin, "output"):
            io.submit(_Op("output", data, origin))

    def set_feature(self, device: DeviceId, data: bytes, origin: str) -> None:
        """Queue a SET_FEATURE."""
        if io := self._io(device, origin, "feature"):
            io.submit(_Op("feature", data, origin))

    def get_feature(
        self, device: DeviceId, report_id: int, length: int, origin: str, reply: ReplyFn
    ) -> None:
        """Queue a GET_FEATURE; ``reply`` runs on the loop with the answer."""
        io = self._io(device, origin, "get_feature")
        if io is None:
            reply(None, "device is not managed")
            return
        io.submit(_Op("get_feature", b"", origin, report_id, length, reply))


Spawn = Callable[[Coroutine[Any, Any, None]], None]
