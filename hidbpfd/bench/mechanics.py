"""``hidbpfd bench --mechanics``: the deferred-work mechanics of both paths, on any BPF kernel.

Userspace rows run the daemon's own code: the BPF filter (fed with BPF_PROG_RUN from a second
thread, so the loop really sleeps in epoll like it does waiting for a device), the ring buffer on
the asyncio loop, the dispatch and a policy, the timerfd-driven scheduler. Kernel rows run the
primitives the in-kernel HID-BPF path uses (``bench.bpf.c``), timed in their own callbacks:

- ``event_to_action``: report → the daemon's dispatch has produced an action, vs
  ``bpf_wq_start`` → the wq callback runs (where the kernel path can do sleepable IO);
- ``timer_lateness_{1,10,50}ms``: the daemon's scheduler vs bpf_timer → bpf_wq (the two hops
  HID-BPF needs for delayed sleepable work); bpf_timer alone is reported as
  ``timer_only_lateness_*``;
- ``drain_rate``: matched records per second the daemon drains (decode + dispatch), in p50.

Userspace and kernel runs are interleaved, sample by sample, so both see the same machine.
"""

from __future__ import annotations

import asyncio
import ctypes
import struct
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

from hidbpfd.bench.report import Result, percentiles
from hidbpfd.engine.clock import MonotonicClock
from hidbpfd.engine.dispatch import Binding, Dispatcher, RecordRouter
from hidbpfd.engine.scheduler import Scheduler
from hidbpfd.engine.stats import Window
from hidbpfd.engine.timerfd import TimerfdDriver
from hidbpfd.kernel import libbpf as lb
from hidbpfd.kernel.filter_codec import FEED_FORMAT, Record
from hidbpfd.kernel.source import BpfEventSource
from hidbpfd.model import DeviceId, Pattern
from hidbpfd.policies.inject import InjectPolicy

BENCH_OBJECT: Final = Path(__file__).resolve().parent.parent / "kernel" / "bpf" / "bench.bpf.o"
# struct hidbpfd_bench_ctx { __u64 delay_ns; __u32 mode; __u32 seq; };
CTX_FORMAT: Final = "<QII"
# struct hidbpfd_bench_sample { __u64 due_ns; __u64 ran_ns; __u32 mode; __u32 seq; };
SAMPLE_FORMAT: Final = "<QQII"
MODE_TIMER, MODE_TIMER_WQ, MODE_WQ = 0, 1, 2
SPIN_NS: Final = 300_000
EXAMPLE_CONFIG: Final = str(Path(__file__).resolve().parents[2] / "config")
DEVICE: Final = DeviceId(3, 0x1209, 0xBE00, "bench", hid_id="0003:1209:BE00.7F00")
REPORT: Final = bytes.fromhex("0101020304050607")


class KernelPrimitives:
    """bench.bpf.o loaded: arm bpf_timer / bpf_wq from userspace, collect callback samples."""

    def __init__(self) -> None:
        from hidbpfd.kernel import probe

        self.obj = lb.BpfObject.open_file(str(probe.kernel_btf().wq_build(BENCH_OBJECT)))
        self.obj.load()
        self.samples: list[tuple[int, int, int, int]] = []
        self.ring = lb.RingBuffer(self.obj.map("bench_ring").fd, self._sample)
        self._ctx = ctypes.create_string_buffer(struct.calcsize(CTX_FORMAT))
        ret = lb.prog_test_run(
            self.obj.program("hidbpfd_bench_init").fd, ctypes.create_string_buffer(8)
        )
        if ret != 0:
            raise lb.BpfError("hidbpfd_bench_init", -ret if ret < 0 else ret)

    def _sample(self, raw: bytes) -> None:
        self.samples.append(struct.unpack_from(SAMPLE_FORMAT, raw))

    def run_one(self, mode: int, delay_ns: int, seq: int, timeout_s: float = 2.0) -> float:
        """Arm once and wait for the callback's sample; returns its lateness in µs."""
        struct.pack_into(CTX_FORMAT, self._ctx, 0, delay_ns, mode, seq)
        self.samples.clear()
        ret = lb.prog_test_run(self.obj.program("hidbpfd_bench_arm").fd, self._ctx)
        if ret != 0:
            raise lb.BpfError("hidbpfd_bench_arm", -ret if ret < 0 else ret)
        deadline = time.monotonic() + timeout_s + delay_ns / 1e9
        while not self.samples:
            self.ring.poll(100)
            if time.monotonic() > deadline:
                raise TimeoutError(f"no callback for mode {mode}")
        due, ran, _, _ = self.samples[0]
        return (ran - due) / 1000

    def close(self) -> None:
        """Unload."""
        self.ring.free()
        self.obj.close()


class UserspacePath:
    """The daemon's path: filter → ring buffer → loop → dispatch → policy → action."""

    def __init__(self, loop: asyncio.AbstractEventLoop, *, spin_ns: int = 0) -> None:
        self.loop = loop
        self.src = BpfEventSource(self._record, ring_bytes=1 << 22)
        self.src.open()
        self.driver = TimerfdDriver(loop, spin_ns=spin_ns)
        self.lateness: list[float] = []
        self.scheduler = Scheduler(
            MonotonicClock(), self.driver.on_deadline, lambda ns: self.lateness.append(ns / 1000)
        )
        self.driver.bind(self.scheduler)
        self.current_ts = 0
        self.action_latency: list[float] = []
        self.dispatch = Dispatcher(self.scheduler, self)
        policy = InjectPolicy(Pattern.parse("01"), (b"\x00",))
        slot = self.dispatch.attach(DEVICE, [Binding(policy, "<bench>", 0)])
        self.src.set_rules(DEVICE.kernel_id, slot.table)
        self.records = 0
        # the daemon's own per-record path (its latency window included)
        self.router = RecordRouter(self.dispatch, {DEVICE.kernel_id: DEVICE}, Window().add)

    def _record(self, rec: Record) -> None:
        self.records += 1
        self.current_ts = rec.ts_ns
        self.router(rec)

    # the dispatch's sink: the injection is the action we time
    def inject(self, device: DeviceId, data: bytes, origin: str) -> None:
        self.action_latency.append((time.monotonic_ns() - self.current_ts) / 1000)

    def output(self, device: DeviceId, data: bytes, origin: str) -> None:
        pass

    def set_feature(self, device: DeviceId, data: bytes, origin: str) -> None:
        pass

    def get_feature(
        self, device: DeviceId, report_id: int, length: int, origin: str, reply: Any
    ) -> None:
        pass

    def close(self) -> None:
        self.src.remove_from_loop()
        self.src.close()
        self.driver.close()


# The feeder runs in a child process, as a device's reports come from outside the daemon: a
# thread would share the GIL with the loop (and, busy polling, make it sleep on the GIL).
# It drops the real-time knobs it inherited (a SCHED_FIFO busy poller pinned to its CPU would
# never let a pinned SCHED_FIFO child run).
FEEDER_START_TIMEOUT_S: Final = 300.0
_FEEDER: Final = """
import ctypes, os, sys, time
from hidbpfd.kernel import libbpf as lb
os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))
os.sched_setaffinity(0, range(os.cpu_count() or 1))
fd, n, gap = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
ctx = ctypes.create_string_buffer(bytes.fromhex(sys.argv[4]))
print("ready", flush=True)
for _ in range(n):
    time.sleep(gap)
    lb.prog_test_run(fd, ctx)
"""


async def _event_to_action(
    up: UserspacePath, n: int, gap_s: float, *, busy_poll: bool = False
) -> list[float]:
    """Feed ``n`` matching reports from another process, ``gap_s`` apart, while the loop
    sleeps in epoll (or busy-polls the ring); latency = the filter's kernel timestamp -> the
    dispatch hands over the action."""
    import sys

    up.action_latency.clear()
    up.src.add_to_loop(up.loop)
    stop = asyncio.Event()
    poller = up.loop.create_task(up.src.busy_poll(stop)) if busy_poll else None
    fd = up.src.feeder_fd()
    ctx = struct.pack(FEED_FORMAT, DEVICE.kernel_id, len(REPORT), 1, REPORT, 0)
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        _FEEDER,
        str(fd),
        str(n),
        str(gap_s),
        ctx.hex(),
        pass_fds=(fd,),
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        # The child's start-up (an interpreter, ctypes, libbpf) is not what is measured and can
        # take many seconds under emulation on a loaded machine: the deadline for the samples
        # starts once it says it is ready.
        assert child.stdout is not None
        async with asyncio.timeout(FEEDER_START_TIMEOUT_S):
            line = await child.stdout.readline()
        if line != b"ready\n":
            raise RuntimeError(f"the feeder process failed to start (exit {await child.wait()})")
        async with asyncio.timeout(n * gap_s * 10 + 30):
            while len(up.action_latency) < n:  # noqa: ASYNC110 - polls a counter the loop fills
                await asyncio.sleep(0.05)
    finally:
        stop.set()
        if poller is not None:
            await poller
        if child.returncode is None:
            child.kill()
        await child.wait()
        up.src.remove_from_loop()
    return list(up.action_latency)


async def _timer_lateness(up: UserspacePath, delay_ns: int) -> float:
    fired = asyncio.Event()
    up.lateness.clear()
    up.scheduler.start(("bench", 0, "t"), delay_ns, fired.set)
    await asyncio.wait_for(fired.wait(), timeout=delay_ns / 1e9 + 60)
    return up.lateness[-1]


def _drain(up: UserspacePath, k: int) -> float:
    """Fill the ring with ``k`` records, then time one full drain through the dispatch."""
    for _ in range(k):
        up.src.feed(DEVICE.kernel_id, REPORT)
    before = up.records
    t0 = time.perf_counter_ns()
    while up.src.consume():  # TURN_RECORDS per call, as the daemon's loop turns
        pass
    dt = time.perf_counter_ns() - t0
    got = up.records - before
    return got / (dt / 1e9) if dt else 0.0


def _daemon_start(config: str, runs: int) -> tuple[list[float], list[float]]:
    """Start ``hidbpfd run`` ``runs`` times with a private NOTIFY_SOCKET: ms to READY=1, and the
    daemon's RSS (MiB) once ready. Prebuilt BPF objects; the host's devices, if any."""
    import os
    import signal
    import socket
    import subprocess
    import sys
    import tempfile

    ready_ms: list[float] = []
    rss: list[float] = []
    for _ in range(runs):
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "notify")
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            sock.bind(path)
            sock.settimeout(FEEDER_START_TIMEOUT_S)  # a failure bound only: TCG + a loaded host
            env = dict(os.environ, NOTIFY_SOCKET=path)
            env.pop("WATCHDOG_USEC", None)
            t0 = time.monotonic()
            proc = subprocess.Popen(
                [sys.executable, "-m", "hidbpfd", "run", "--config", config, "--no-socket"],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            try:
                while b"READY=1" not in sock.recv(4096):
                    pass
                ready_ms.append((time.monotonic() - t0) * 1000)
                with open(f"/proc/{proc.pid}/status") as f:
                    kb = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
                rss.append(kb / 1024)
            finally:
                proc.send_signal(signal.SIGTERM)
                proc.wait(FEEDER_START_TIMEOUT_S)
                sock.close()
    return ready_ms, rss


def _kernel_series(
    kp: KernelPrimitives, mode: int, delay_ns: int, n: int, *, gap_s: float
) -> list[float]:
    out = []
    for i in range(n):
        time.sleep(gap_s)  # the CPU goes idle between samples, as between device reports
        out.append(kp.run_one(mode, delay_ns, i))
    return out


async def run(
    *, quick: bool = False, samples: int | None = None, progress: Callable[[str], None] = print
) -> list[Result]:
    """All mechanics metrics, interleaved; returns the results (both engines). ``samples``
    overrides every sample count (tests use a handful)."""
    loop = asyncio.get_running_loop()
    up = UserspacePath(loop)
    kp = KernelPrimitives()
    results: list[Result] = []
    n_evt = samples or (100 if quick else 300)
    try:
        progress(f"event_to_action: {n_evt} reports 1 ms apart, and {n_evt} bpf_wq starts")
        user = await _event_to_action(up, n_evt, 0.001)
        kern = _kernel_series(kp, MODE_WQ, 0, n_evt, gap_s=0.001)
        results += [
            percentiles(
                "mechanics",
                "userspace",
                "event_to_action",
                "us",
                user,
                "ring buffer -> dispatch -> action",
            ),
            percentiles(
                "mechanics", "kernel", "event_to_action", "us", kern, "bpf_wq_start -> wq callback"
            ),
        ]
        progress(f"event_to_action_busy_poll: {n_evt} reports, the loop polling the ring")
        busy = await _event_to_action(up, n_evt, 0.001, busy_poll=True)
        results.append(
            percentiles(
                "mechanics",
                "userspace",
                "event_to_action_busy_poll",
                "us",
                busy,
                "run --busy-poll: the loop polls the ring instead of sleeping (one CPU)",
            )
        )
        counts = {1: 100, 10: 100, 50: 30} if quick else {1: 300, 10: 300, 50: 100}
        if samples:
            counts = dict.fromkeys(counts, samples)
        for ms, n in counts.items():
            progress(f"timer_lateness_{ms}ms: {n} samples per engine, interleaved")
            u, us, kw, kt = [], [], [], []
            for i in range(n):
                up.driver.spin_ns = 0
                u.append(await _timer_lateness(up, ms * 1_000_000))
                up.driver.spin_ns = SPIN_NS
                us.append(await _timer_lateness(up, ms * 1_000_000))
                up.driver.spin_ns = 0
                kw.append(kp.run_one(MODE_TIMER_WQ, ms * 1_000_000, i))
                kt.append(kp.run_one(MODE_TIMER, ms * 1_000_000, i))
            results += [
                percentiles(
                    "mechanics",
                    "userspace",
                    f"timer_lateness_{ms}ms",
                    "us",
                    u,
                    "timerfd (absolute) on the asyncio loop",
                ),
                percentiles(
                    "mechanics",
                    "kernel",
                    f"timer_lateness_{ms}ms",
                    "us",
                    kw,
                    "bpf_timer -> bpf_wq callback",
                ),
                percentiles(
                    "mechanics",
                    "userspace",
                    f"timer_lateness_{ms}ms_spin",
                    "us",
                    us,
                    f"timerfd {SPIN_NS // 1000} us early, then spin (run --timer-spin-us)",
                ),
                percentiles(
                    "mechanics",
                    "kernel",
                    f"timer_only_lateness_{ms}ms",
                    "us",
                    kt,
                    "bpf_timer callback",
                ),
            ]
        progress(f"timer_lateness_10ms_busy_poll: {counts[10]} samples, the loop polling")
        stop = asyncio.Event()
        poller = loop.create_task(up.src.busy_poll(stop))
        tb: list[float] = []
        tbs: list[float] = []
        try:
            for _ in range(counts[10]):
                tb.append(await _timer_lateness(up, 10_000_000))
                up.driver.spin_ns = SPIN_NS
                tbs.append(await _timer_lateness(up, 10_000_000))
                up.driver.spin_ns = 0
        finally:
            up.driver.spin_ns = 0
            stop.set()
            await poller
        results += [
            percentiles(
                "mechanics",
                "userspace",
                "timer_lateness_10ms_busy_poll",
                "us",
                tb,
                "timerfd seen by the busy-polling loop (busy_poll)",
            ),
            percentiles(
                "mechanics",
                "userspace",
                "timer_lateness_10ms_busy_poll_spin",
                "us",
                tbs,
                f"busy_poll + timer_spin_us = {SPIN_NS // 1000}",
            ),
        ]
        reps, k = (5, 10_000) if quick else (11, 20_000)
        if samples:
            reps, k = samples, 2_000
        progress(f"drain_rate: {reps} drains of {k} queued records")
        rates = [_drain(up, k) for _ in range(reps)]
        results.append(
            percentiles(
                "mechanics",
                "userspace",
                "drain_rate",
                "per_s",
                rates,
                "decode + dispatch, matched records",
            )
        )
        runs = samples or (3 if quick else 5)
        progress(f"start_to_ready: {runs} starts of hidbpfd run")
        config = EXAMPLE_CONFIG
        ready_ms, rss = await asyncio.to_thread(_daemon_start, config, runs)
        results += [
            percentiles(
                "mechanics",
                "userspace",
                "start_to_ready",
                "us",
                [ms * 1000 for ms in ready_ms],
                "hidbpfd run, prebuilt BPF objects",
            ),
            percentiles(
                "mechanics", "userspace", "daemon_rss", "MiB", rss, "hidbpfd run once READY"
            ),
        ]
    finally:
        kp.close()
        up.close()
    return results
