"""The real-time knobs of the settings file (``[realtime]``), applied to this process."""

from __future__ import annotations

import ctypes
import os

from hidbpfd.config.settings import Settings


def apply_realtime(s: Settings) -> None:
    """CPU affinity, SCHED_FIFO and mlockall for this process, before the loop starts.
    Raises OSError naming the knob that the system refused (e.g. the unit's
    ``RestrictRealtime=yes`` refuses SCHED_FIFO with EPERM)."""
    if s.cpu is not None:
        try:
            os.sched_setaffinity(0, {s.cpu})
        except OSError as e:
            raise OSError(e.errno, f"cpu = {s.cpu}: sched_setaffinity: {e.strerror}") from None
    if s.sched_fifo:
        try:
            os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(s.sched_fifo))
        except OSError as e:
            raise OSError(
                e.errno, f"sched_fifo = {s.sched_fifo}: sched_setscheduler: {e.strerror}"
            ) from None
    if s.mlockall:
        libc = ctypes.CDLL(None, use_errno=True)
        mcl_current, mcl_future = 1, 2  # <sys/mman.h>
        if libc.mlockall(mcl_current | mcl_future) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"mlockall = true: mlockall: {os.strerror(err)}")
