"""The scheduler: bpf_timer semantics on a virtual clock (tests never sleep)."""

from __future__ import annotations

from hidbpfd.engine.clock import VirtualClock
from hidbpfd.engine.scheduler import Scheduler


def make() -> tuple[Scheduler, VirtualClock, list[tuple[int, str]]]:
    clock = VirtualClock()
    return Scheduler(clock), clock, []


def test_runs_at_deadline_not_before() -> None:
    s, clock, ran = make()
    s.start("a", 10, lambda: ran.append((clock.now_ns(), "a")))
    s.run_until(9)
    assert ran == []
    s.run_until(10)
    assert ran == [(10, "a")]
    assert not s.pending("a")


def test_rearm_replaces_never_doubles() -> None:
    s, clock, ran = make()
    s.start("a", 10, lambda: ran.append((clock.now_ns(), "first")))
    clock.set(5)
    s.start("a", 10, lambda: ran.append((clock.now_ns(), "second")))
    assert len(s) == 1
    s.run_until(100)
    assert ran == [(15, "second")]


def test_cancel_never_runs() -> None:
    s, _, ran = make()
    s.start("a", 10, lambda: ran.append((0, "a")))
    assert s.cancel("a")
    assert not s.cancel("a")
    s.run_until(100)
    assert ran == []


def test_cancel_while_due() -> None:
    """Two items due at once; the first cancels the second, which must not run."""
    s, clock, ran = make()
    s.start("a", 10, lambda: (ran.append((clock.now_ns(), "a")), s.cancel("b")))
    s.start("b", 10, lambda: ran.append((clock.now_ns(), "b")))
    clock.set(50)  # both are overdue when the driver gets to run them
    s.run_due()
    assert ran == [(50, "a")]


def test_rearm_while_due_moves_it() -> None:
    s, clock, ran = make()
    s.start(
        "a",
        10,
        lambda: (
            ran.append((clock.now_ns(), "a")),
            s.start("b", 5, lambda: ran.append((clock.now_ns(), "b2"))),
        ),
    )
    s.start("b", 10, lambda: ran.append((clock.now_ns(), "b")))
    s.run_until(100)
    assert ran == [(10, "a"), (15, "b2")]


def test_order_by_deadline_then_start_order() -> None:
    s, clock, ran = make()
    s.start("late", 30, lambda: ran.append((clock.now_ns(), "late")))
    s.start("x", 20, lambda: ran.append((clock.now_ns(), "x")))
    s.start("y", 20, lambda: ran.append((clock.now_ns(), "y")))
    s.run_until(100)
    assert [r[1] for r in ran] == ["x", "y", "late"]


def test_work_started_by_work_runs_in_same_pass_when_due() -> None:
    s, clock, ran = make()
    s.start("a", 10, lambda: s.start("b", 0, lambda: ran.append((clock.now_ns(), "b"))))
    s.run_until(10)
    assert ran == [(10, "b")]


def test_base_ns_counts_from_the_event() -> None:
    s, clock, ran = make()
    clock.set(100)
    s.start("a", 20, lambda: ran.append((clock.now_ns(), "a")), base_ns=90)
    assert s.deadline("a") == 110


def test_cancel_where_and_deadline_callback() -> None:
    seen: list[int | None] = []
    clock = VirtualClock()
    s = Scheduler(clock, on_deadline=seen.append)
    s.start(("dev1", 1, "k"), 10, lambda: None)
    s.start(("dev2", 1, "k"), 5, lambda: None)
    assert seen[-1] == 5
    assert s.cancel_where(lambda k: isinstance(k, tuple) and k[0] == "dev2") == 1
    assert seen[-1] == 10
    assert s.pending(("dev1", 1, "k")) and not s.pending(("dev2", 1, "k"))


def test_negative_delay_refused() -> None:
    s, _, _ = make()
    try:
        s.start("a", -1, lambda: None)
    except ValueError as e:
        assert "negative" in str(e)
    else:
        raise AssertionError("negative delay accepted")
