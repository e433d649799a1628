"""Clocks: the daemon reads CLOCK_MONOTONIC; replay and tests drive a virtual one.

Policies never read a clock themselves: the dispatch passes ``now_ns`` in. The scheduler takes
a clock so that the same code runs on real and virtual time.
"""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    """Something that says what time it is, in CLOCK_MONOTONIC nanoseconds."""

    def now_ns(self) -> int:
        """The current time; never goes backwards."""
        ...


class MonotonicClock:
    """The real clock (``time.monotonic_ns``, the same clock as ``bpf_ktime_get_ns``)."""

    def now_ns(self) -> int:
        """The current CLOCK_MONOTONIC time."""
        return time.monotonic_ns()


class VirtualClock:
    """A clock that only moves when told to: replay and tests own it."""

    def __init__(self, start_ns: int = 0) -> None:
        self._now = start_ns

    def now_ns(self) -> int:
        """The time last set."""
        return self._now

    def set(self, t_ns: int) -> None:
        """Move to ``t_ns``; called by the replay driver and by tests. Never moves backwards."""
        if t_ns < self._now:
            raise ValueError(f"virtual clock cannot go back from {self._now} to {t_ns}")
        self._now = t_ns
