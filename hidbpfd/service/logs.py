"""Logging: the journal with structured fields under systemd, plain text otherwise; and a
per-device rate limit so a misbehaving device cannot flood either.

Log calls about a device pass ``extra=fields(device, policy=..., file=...)``; under systemd the
journal gets ``HIDBPFD_DEVICE`` (hid id), ``HIDBPFD_VENDOR``, ``HIDBPFD_PRODUCT``,
``HIDBPFD_POLICY`` and ``HIDBPFD_FILE`` as fields (``journalctl HIDBPFD_DEVICE=0003:...``).
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable

from hidbpfd.model import DeviceId


def fields(device: DeviceId, *, policy: str = "", file: str = "") -> dict[str, str]:
    """Structured fields for a log call about ``device``."""
    out = {
        "HIDBPFD_DEVICE": device.key,
        "HIDBPFD_VENDOR": f"{device.vendor:04x}",
        "HIDBPFD_PRODUCT": f"{device.product:04x}",
    }
    if policy:
        out["HIDBPFD_POLICY"] = policy
    if file:
        out["HIDBPFD_FILE"] = file
    return out


class DeviceRateLimit(logging.Filter):
    """At most ``burst`` records per device per ``interval`` seconds; the first record after a
    suppressed stretch says how many were dropped. Records without a device pass."""

    def __init__(
        self, burst: int = 10, interval: float = 10.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        super().__init__()
        self.burst = burst
        self.interval = interval
        self.clock = clock
        self._windows: dict[
            str, tuple[float, int, int]
        ] = {}  # device -> (start, count, suppressed)

    def filter(self, record: logging.LogRecord) -> bool:
        """Called by the handler for every record."""
        dev = getattr(record, "HIDBPFD_DEVICE", None)
        if dev is None:
            return True
        now = self.clock()
        start, count, suppressed = self._windows.get(dev, (now, 0, 0))
        if now - start >= self.interval:
            start, count = now, 0
        if count >= self.burst:
            self._windows[dev] = (start, count, suppressed + 1)
            return False
        if suppressed:
            record.msg = (
                f"{record.msg} ({suppressed} more messages about this device were suppressed)"
            )
            suppressed = 0
        self._windows[dev] = (start, count + 1, suppressed)
        return True


def setup(level: str = "warning", *, journal: bool | None = None) -> logging.Handler:
    """Configure the root logger once (called by the CLI). ``journal`` defaults to "stderr is
    connected to the journal" ($JOURNAL_STREAM, set by systemd)."""
    use_journal = bool(os.environ.get("JOURNAL_STREAM")) if journal is None else journal
    handler: logging.Handler | None = None
    if use_journal:
        try:
            from systemd.journal import JournalHandler

            handler = JournalHandler(SYSLOG_IDENTIFIER="hidbpfd")
        except ImportError:
            handler = None
    if handler is None:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("hidbpfd: %(levelname)s: %(message)s"))
    handler.addFilter(DeviceRateLimit())
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    root.addHandler(handler)
    root.setLevel(level.upper())
    return handler
