"""What the benchmark reads besides device timestamps: the daemon's CPU time and wake-ups
(``/proc``) and the BPF programs' run-time statistics (BPF_ENABLE_STATS)."""

from __future__ import annotations

import ctypes
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final

# ----------------------------------------------------------------------------- measuring


@dataclass(frozen=True, slots=True)
class ProcCounters:
    """A process's CPU time and wake-ups so far."""

    cpu_ns: int
    wakeups: int

    def __sub__(self, other: ProcCounters) -> ProcCounters:
        return ProcCounters(self.cpu_ns - other.cpu_ns, self.wakeups - other.wakeups)


def proc_counters(pid: int, proc: Path = Path("/proc")) -> ProcCounters:
    """utime + stime (``/proc/PID/stat``) and voluntary context switches of every thread
    (``/proc/PID/task/*/status``: each is a sleep the thread woke up from)."""
    stat = (proc / str(pid) / "stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    ticks = int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15 of stat)
    cpu_ns = ticks * 1_000_000_000 // os.sysconf("SC_CLK_TCK")
    wakeups = 0
    for task in (proc / str(pid) / "task").iterdir():
        try:
            for line in (task / "status").read_text().splitlines():
                if line.startswith("voluntary_ctxt_switches:"):
                    wakeups += int(line.split()[1])
        except OSError:  # a thread that just exited
            continue
    return ProcCounters(cpu_ns, wakeups)


# struct bpf_prog_info (include/uapi/linux/bpf.h): char name[16] at 64, __u64 run_time_ns at
# 192, __u64 run_cnt at 200; 232 bytes as of Linux 6.x (a longer kernel struct is fine: the
# kernel copies min(its size, ours))
PROG_INFO_SIZE: Final = 232
PROG_INFO_NAME: Final = 64
PROG_INFO_RUN_TIME: Final = 192
PROG_INFO_RUN_CNT: Final = 200
BPF_STATS_RUN_TIME: Final = 0  # enum bpf_stats_type


class BpfStats:
    """BPF run-time statistics while open (BPF_ENABLE_STATS: the kernel counts while the fd
    lives, like ``sysctl kernel.bpf_stats_enabled=1``), read per program name."""

    def __init__(self) -> None:
        from hidbpfd.kernel import libbpf as lb

        self._lib = lb.libbpf()
        dll = self._lib.dll
        self._get_next = dll.bpf_prog_get_next_id
        self._get_next.argtypes = [ctypes.c_uint32, ctypes.POINTER(ctypes.c_uint32)]
        self._get_next.restype = ctypes.c_int
        self._get_fd = dll.bpf_prog_get_fd_by_id
        self._get_fd.argtypes = [ctypes.c_uint32]
        self._get_fd.restype = ctypes.c_int
        self._info = dll.bpf_obj_get_info_by_fd
        self._info.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.POINTER(ctypes.c_uint32)]
        self._info.restype = ctypes.c_int
        enable = dll.bpf_enable_stats
        enable.argtypes = [ctypes.c_int]
        enable.restype = ctypes.c_int
        self.fd = self._lib.check("bpf_enable_stats", enable(BPF_STATS_RUN_TIME))

    def programs(self) -> Iterator[tuple[str, int, int]]:
        """(name, run_time_ns, run_cnt) of every loaded program."""
        cur = ctypes.c_uint32(0)
        while self._get_next(cur.value, ctypes.byref(cur)) == 0:
            fd = self._get_fd(cur.value)
            if fd < 0:
                continue
            try:
                buf = ctypes.create_string_buffer(PROG_INFO_SIZE)
                size = ctypes.c_uint32(PROG_INFO_SIZE)
                if self._info(fd, buf, ctypes.byref(size)) != 0:
                    continue
                raw = buf.raw
                name = raw[PROG_INFO_NAME : PROG_INFO_NAME + 16].split(b"\0", 1)[0].decode()
                ns = int.from_bytes(raw[PROG_INFO_RUN_TIME : PROG_INFO_RUN_TIME + 8], "little")
                cnt = int.from_bytes(raw[PROG_INFO_RUN_CNT : PROG_INFO_RUN_CNT + 8], "little")
                yield name, ns, cnt
            finally:
                os.close(fd)

    def totals(self, name: str) -> tuple[int, int]:
        """Summed (run_time_ns, run_cnt) of the programs called ``name``."""
        ns = cnt = 0
        for n, t, c in self.programs():
            if n == name:
                ns += t
                cnt += c
        return ns, cnt

    def close(self) -> None:
        """Stop counting (when the last such fd closes)."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


EVENT_PROGRAMS: Final[dict[str, str]] = {"userspace": "hidbpfd_event", "kernel": "engine_event"}
"""The HID-BPF program that sees every report of each engine's device."""
