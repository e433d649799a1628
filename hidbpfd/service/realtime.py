"""The real-time knobs of the settings file (``[realtime]``), applied to this process."""

from __future__ import annotations

import ctypes
import errno
import os
from typing import Final

from hidbpfd.config.settings import Settings

# What a refusal means when it is the service's: the shipped unit's sandbox refuses all three
# (RestrictRealtime=yes, @resources denied, systemd's 8 MiB LimitMEMLOCK=), measured in the
# systemd tier (tests/service/test_realtime_service.py).
UNIT_HINT: Final = (
    "hidbpfd.service refuses the real-time knobs unless its real-time drop-in is installed: "
    "see docs/service.md, 'Real-time knobs under the unit'"
)
REFUSED: Final = (errno.EPERM, errno.ENOMEM)


def _refused(err: int, what: str) -> OSError:
    text = f"{what}: {os.strerror(err)}"
    if err in REFUSED and os.environ.get("INVOCATION_ID"):  # run by systemd
        text += f" ({UNIT_HINT})"
    e = OSError(text)  # one argument: str(e) is the text alone, without "[Errno N]"
    e.errno = err
    return e


def apply_realtime(s: Settings) -> None:
    """CPU affinity, SCHED_FIFO and mlockall for this process, before the loop starts.
    Raises OSError naming the knob that the system refused (e.g. the unit's
    ``RestrictRealtime=yes`` refuses SCHED_FIFO with EPERM); run by systemd, a refusal also
    says which drop-in allows it."""
    if s.cpu is not None:
        try:
            os.sched_setaffinity(0, {s.cpu})
        except OSError as e:
            raise _refused(e.errno or 0, f"cpu = {s.cpu}: sched_setaffinity") from None
    if s.sched_fifo:
        try:
            os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(s.sched_fifo))
        except OSError as e:
            raise _refused(
                e.errno or 0, f"sched_fifo = {s.sched_fifo}: sched_setscheduler"
            ) from None
    if s.mlockall:
        libc = ctypes.CDLL(None, use_errno=True)
        mcl_current, mcl_future = 1, 2  # <sys/mman.h>
        if libc.mlockall(mcl_current | mcl_future) != 0:
            raise _refused(ctypes.get_errno(), "mlockall = true: mlockall")
