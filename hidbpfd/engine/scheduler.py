"""Keyed, cancellable deferred work, with the semantics of bpf_timer (+ bpf_wq).

Each piece of work has a key. ``start`` arms it ``delay_ns`` from now, or re-arms it if it is
already pending (never two items for one key, like ``bpf_timer_start`` on a running timer).
``cancel`` disarms it; a cancelled item never runs, even when it was already due and waiting
behind other due work (the "cancel while due" case). Due work runs in deadline order, ties in
the order it was started.

The scheduler does not own a thread or a loop. Its driver calls :meth:`Scheduler.run_due`:

- in the daemon, :class:`hidbpfd.engine.timerfd.TimerfdDriver` arms a timerfd for
  :meth:`next_deadline` and calls ``run_due`` when it fires;
- in replay and tests, :meth:`run_until` advances a :class:`~hidbpfd.engine.clock.VirtualClock`
  from deadline to deadline, so nothing ever sleeps.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field

from hidbpfd.engine.clock import Clock, VirtualClock

Work = Callable[[], None]


@dataclass(order=True, slots=True)
class _Item:
    due_ns: int
    seq: int
    key: Hashable = field(compare=False)
    work: Work = field(compare=False)
    alive: bool = field(default=True, compare=False)


class Scheduler:
    """Deferred work on an injected clock. Owned by the dispatch; one per daemon or replay."""

    def __init__(
        self,
        clock: Clock,
        on_deadline: Callable[[int | None], None] | None = None,
        on_late: Callable[[int], None] | None = None,
    ) -> None:
        """``on_deadline(t)`` is called whenever the earliest deadline may have changed, so a
        real-time driver can re-arm its timer (``None``: nothing pending). ``on_late(ns)`` gets
        how late each item ran (``status`` reports it)."""
        self.clock = clock
        self._heap: list[_Item] = []
        self._items: dict[Hashable, _Item] = {}
        self._seq = itertools.count()
        self._on_deadline = on_deadline
        self._on_late = on_late

    def start(
        self, key: Hashable, delay_ns: int, work: Work, *, base_ns: int | None = None
    ) -> None:
        """Arm (or re-arm) ``key`` to run ``work`` at ``base_ns`` (default: now) + ``delay_ns``.

        The dispatch passes the triggering report's kernel timestamp as ``base_ns``, so the time
        the daemon took to wake up does not lengthen the delay. A deadline already in the past
        runs at the next :meth:`run_due`."""
        if delay_ns < 0:
            raise ValueError(f"negative delay {delay_ns} ns for {key!r}")
        old = self._items.pop(key, None)
        if old is not None:
            old.alive = False
        base = self.clock.now_ns() if base_ns is None else base_ns
        item = _Item(base + delay_ns, next(self._seq), key, work)
        self._items[key] = item
        heapq.heappush(self._heap, item)
        self._notify()

    def cancel(self, key: Hashable) -> bool:
        """Disarm ``key``; True if it was pending. Safe to call from running work."""
        item = self._items.pop(key, None)
        if item is None:
            return False
        item.alive = False
        self._notify()
        return True

    def cancel_where(self, pred: Callable[[Hashable], bool]) -> int:
        """Cancel every pending key for which ``pred(key)`` holds (a device went away)."""
        keys = [k for k in self._items if pred(k)]
        for k in keys:
            self._items.pop(k).alive = False
        if keys:
            self._notify()
        return len(keys)

    def count_where(self, pred: Callable[[Hashable], bool]) -> int:
        """How many pending keys satisfy ``pred`` (``status``, tests)."""
        return sum(1 for k in self._items if pred(k))

    def pending(self, key: Hashable) -> bool:
        """True while ``key`` is armed and has not run."""
        return key in self._items

    def __len__(self) -> int:
        return len(self._items)

    def deadline(self, key: Hashable) -> int | None:
        """When ``key`` is due, or None."""
        item = self._items.get(key)
        return item.due_ns if item else None

    def next_deadline(self) -> int | None:
        """The earliest deadline of live work, or None."""
        heap = self._heap
        while heap and not heap[0].alive:
            heapq.heappop(heap)
        return heap[0].due_ns if heap else None

    def run_due(self, now_ns: int | None = None) -> int:
        """Run every item due at or before ``now_ns`` (default: the clock's now), including work
        that running work starts with a deadline already past. Returns how many ran."""
        now = self.clock.now_ns() if now_ns is None else now_ns
        ran = 0
        while True:
            due = self.next_deadline()
            if due is None or due > now:
                break
            item = heapq.heappop(self._heap)
            del self._items[item.key]
            item.alive = False
            if self._on_late is not None:
                self._on_late(now - item.due_ns)
            item.work()
            ran += 1
        if ran:
            self._notify()
        return ran

    def run_until(self, t_ns: int) -> int:
        """Virtual time only: run due work in order, moving the clock to each deadline, then to
        ``t_ns``. Called by the replay driver between events, and by tests."""
        clock = self.clock
        if not isinstance(clock, VirtualClock):
            raise TypeError("run_until needs a VirtualClock")
        ran = 0
        while (due := self.next_deadline()) is not None and due <= t_ns:
            clock.set(max(due, clock.now_ns()))
            ran += self.run_due(due)
        clock.set(max(t_ns, clock.now_ns()))
        return ran

    def _notify(self) -> None:
        if self._on_deadline is not None:
            self._on_deadline(self.next_deadline())
