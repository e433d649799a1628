"""Latency samples kept for ``hidbpfd status``: a bounded window, percentiles on demand."""

from __future__ import annotations

from collections import deque


class Window:
    """The last ``size`` samples (ns); :meth:`summary` gives n, p50, p90, p99, max in µs."""

    def __init__(self, size: int = 4096) -> None:
        self.samples: deque[int] = deque(maxlen=size)
        self.total = 0

    def add(self, ns: int) -> None:
        """Record one sample (called on the hot path: O(1))."""
        self.samples.append(ns)
        self.total += 1

    def summary(self) -> dict[str, float]:
        """Percentiles of the window, in µs (empty dict with no samples)."""
        if not self.samples:
            return {}
        s = sorted(self.samples)
        n = len(s)

        def pct(p: float) -> float:
            return round(s[min(n - 1, int(p * n))] / 1000, 1)

        return {
            "n": self.total,
            "p50_us": pct(0.5),
            "p90_us": pct(0.9),
            "p99_us": pct(0.99),
            "max_us": round(s[-1] / 1000, 1),
        }
