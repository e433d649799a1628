"""Drive the :class:`~hidbpfd.engine.scheduler.Scheduler` from a timerfd on the asyncio loop.

asyncio's own timers round their epoll timeout up to whole milliseconds (FACTS.md); a timerfd
with an absolute CLOCK_MONOTONIC deadline, watched with ``loop.add_reader``, wakes the loop at
the deadline itself. Python 3.11 has no ``os.timerfd_*`` (3.13 does), so this is a small ctypes
mirror of ``<sys/timerfd.h>``.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import errno
import logging
import os
import time
from typing import Final

from hidbpfd.engine.scheduler import Scheduler

log = logging.getLogger(__name__)

CLOCK_MONOTONIC: Final = 1
TFD_NONBLOCK: Final = os.O_NONBLOCK
TFD_CLOEXEC: Final = os.O_CLOEXEC
TFD_TIMER_ABSTIME: Final = 1


class _Timespec(ctypes.Structure):
    # struct timespec { time_t tv_sec; long tv_nsec; };
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


class _Itimerspec(ctypes.Structure):
    # struct itimerspec { struct timespec it_interval; struct timespec it_value; };
    _fields_ = [("it_interval", _Timespec), ("it_value", _Timespec)]


_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
# int timerfd_create(int clockid, int flags);
_libc.timerfd_create.argtypes = [ctypes.c_int, ctypes.c_int]
_libc.timerfd_create.restype = ctypes.c_int
# int timerfd_settime(int fd, int flags, const struct itimerspec *new, struct itimerspec *old);
_libc.timerfd_settime.argtypes = [
    ctypes.c_int,
    ctypes.c_int,
    ctypes.POINTER(_Itimerspec),
    ctypes.c_void_p,
]
_libc.timerfd_settime.restype = ctypes.c_int


def timerfd_create() -> int:
    """A non-blocking CLOCK_MONOTONIC timerfd."""
    fd: int = _libc.timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC)
    if fd < 0:
        e = ctypes.get_errno()
        raise OSError(e, f"timerfd_create: {os.strerror(e)}")
    return fd


def timerfd_set_abs(fd: int, deadline_ns: int | None) -> None:
    """Arm ``fd`` for an absolute CLOCK_MONOTONIC deadline, or disarm it (None)."""
    spec = _Itimerspec()
    if deadline_ns is not None:
        # 0 would disarm: a deadline at or before boot is "now"
        deadline_ns = max(deadline_ns, 1)
        spec.it_value.tv_sec, spec.it_value.tv_nsec = divmod(deadline_ns, 1_000_000_000)
    if _libc.timerfd_settime(fd, TFD_TIMER_ABSTIME, ctypes.byref(spec), None) < 0:
        e = ctypes.get_errno()
        raise OSError(e, f"timerfd_settime: {os.strerror(e)}")


class TimerfdDriver:
    """Keeps one timerfd armed for the scheduler's earliest deadline and runs due work.

    Created by the daemon with its scheduler and loop; pass :meth:`on_deadline` to the
    scheduler as its ``on_deadline`` callback. :meth:`close` removes the reader and closes the fd.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, *, spin_ns: int = 0) -> None:
        """``spin_ns`` > 0 trades CPU for precision: the timerfd fires that much before the
        deadline and the loop spins on the clock to the deadline itself, hiding the ~150 µs an
        idle CPU takes to wake up (FACTS.md). Opt-in (``hidbpfd run --timer-spin-us``)."""
        self.loop = loop
        self.spin_ns = spin_ns
        self.fd = timerfd_create()
        self.scheduler: Scheduler | None = None
        self._armed: int | None = None
        self.wakeups = 0
        loop.add_reader(self.fd, self._fire)

    def bind(self, scheduler: Scheduler) -> None:
        """Attach the scheduler whose work this driver runs (once, at start-up)."""
        self.scheduler = scheduler
        self.on_deadline(scheduler.next_deadline())

    def on_deadline(self, deadline_ns: int | None) -> None:
        """The scheduler's earliest deadline may have changed: re-arm if it did."""
        if deadline_ns != self._armed and self.fd >= 0:
            self._armed = deadline_ns
            timerfd_set_abs(self.fd, None if deadline_ns is None else deadline_ns - self.spin_ns)

    def _fire(self) -> None:
        try:
            os.read(self.fd, 8)
        except BlockingIOError:
            return
        except OSError as e:  # pragma: no cover - only on a closed fd
            if e.errno != errno.EBADF:
                raise
            return
        self.wakeups += 1
        self._armed = None
        if self.scheduler is not None:
            if self.spin_ns:
                due = self.scheduler.next_deadline()
                if due is not None and due - time.monotonic_ns() <= self.spin_ns:
                    while time.monotonic_ns() < due:  # at most spin_ns
                        pass
            self.scheduler.run_due()
            self.on_deadline(self.scheduler.next_deadline())

    def close(self) -> None:
        """Stop: remove the reader, close the fd. Called by the daemon on shutdown."""
        if self.fd >= 0:
            self.loop.remove_reader(self.fd)
            os.close(self.fd)
            self.fd = -1
