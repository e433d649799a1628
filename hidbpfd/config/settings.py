"""The daemon's own settings: ``/etc/hidbpfd/hidbpfd.toml`` (``run --settings FILE``).

Policies live in per-device files (``devices.d``); this file holds what belongs to the process:
the ring buffer's size and the latency knobs, all off by default because each one trades
something (CPU, memory, the scheduler's fairness) for latency::

    [daemon]
    ring_kib = 0           # BPF ring buffer, KiB (power of 2; 0: sized from the devices)
    timer_spin_us = 0      # wake this early for each deferred action, then spin to the deadline
    busy_poll = false      # poll the ring instead of sleeping: one CPU for the idle wake-up
    pin_roots = ["/sys/fs/bpf/hid"]  # where other loaders pin programs' maps (docs/programs.md)

    [realtime]
    sched_fifo = 0         # SCHED_FIFO priority 1-99 (0: normal scheduling)
    cpu = 1                # pin to this CPU (absent: any)
    mlockall = false       # lock the daemon's memory (no page faults on the hot path)

Command-line flags of ``run`` override the file. Errors name the file, the line and the key
(the same :class:`ConfigError` as policy files); a broken settings file stops ``run`` before it
starts, since running with half of the operator's settings would be a silent surprise.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any, Final

from hidbpfd.config.errors import ConfigError, ConfigErrors
from hidbpfd.config.locate import Locator
from hidbpfd.config.read import ReadError, read_toml

DEFAULT_FILE: Final = "/etc/hidbpfd/hidbpfd.toml"


@dataclass(frozen=True, slots=True)
class Settings:
    """Process-wide settings (see the module docstring for the TOML)."""

    ring_kib: int = 0
    """0: sized from the devices and their rules at start (:mod:`hidbpfd.kernel.ringsize`)."""
    timer_spin_us: int = 0
    busy_poll: bool = False
    sched_fifo: int = 0
    cpu: int | None = None
    mlockall: bool = False
    pin_roots: tuple[str, ...] = ("/sys/fs/bpf/hid",)

    def override(self, **given: Any) -> Settings:
        """These settings with the values given on the command line (None: not given);
        ValueError names the flag whose value is wrong."""
        kinds = {k: kind for t in _KEYS.values() for k, kind in t.items()}
        for k, v in given.items():
            if v is not None and (why := _check(k, v, kinds[k])) is not None:
                raise ValueError(f"--{k.replace('_', '-')} {v}: {why}")
        values: dict[str, Any] = {
            k: tuple(v) if isinstance(v, list) else v for k, v in given.items() if v is not None
        }
        out = replace(self, **values)
        if out.busy_poll and out.sched_fifo:
            raise ValueError(f"busy_poll with sched_fifo: {CLASH} ({CLASH_HINT})")
        return out

    def knobs(self) -> list[str]:
        """The latency knobs that are on, for the log and ``status``."""
        on = []
        if self.timer_spin_us:
            on.append(f"timer_spin_us={self.timer_spin_us}")
        if self.busy_poll:
            on.append("busy_poll")
        if self.sched_fifo:
            on.append(f"sched_fifo={self.sched_fifo}")
        if self.cpu is not None:
            on.append(f"cpu={self.cpu}")
        if self.mlockall:
            on.append("mlockall")
        return on


CLASH: Final = (
    "a busy-polling SCHED_FIFO task is throttled by the kernel (sched_rt_runtime_us: ~50 ms "
    "stalls every second, measured: event p99 46 ms)"
)
CLASH_HINT: Final = "Use busy_poll or sched_fifo, not both"

_KEYS: Final[dict[str, dict[str, str]]] = {
    "daemon": {
        "ring_kib": "int",
        "timer_spin_us": "int",
        "busy_poll": "bool",
        "pin_roots": "paths",
    },
    "realtime": {"sched_fifo": "int", "cpu": "int", "mlockall": "bool"},
}
assert {k for t in _KEYS.values() for k in t} == {f.name for f in fields(Settings)}


def _check(key: str, v: object, kind: str) -> str | None:
    """What is wrong with ``v`` for ``key``, or None."""
    if kind == "bool":
        return None if isinstance(v, bool) else "must be true or false"
    if kind == "paths":
        ok = isinstance(v, (list, tuple)) and all(isinstance(x, str) and x for x in v)
        return None if ok else 'must be a list of directories (e.g. ["/sys/fs/bpf/hid"])'

    if not isinstance(v, int) or isinstance(v, bool):
        return "must be an integer"
    if key == "ring_kib" and v != 0 and (v < 4 or v & (v - 1)):
        return "must be a power of 2, at least 4 (or 0: sized from the devices)"
    if key == "timer_spin_us" and not 0 <= v <= 10_000:
        return "must be 0-10000"
    if key == "sched_fifo" and not 0 <= v <= 99:
        return "must be 0 (off) or a priority 1-99"
    if key == "cpu" and not 0 <= v < (os.cpu_count() or 1):
        return f"must be a CPU of this machine (0-{(os.cpu_count() or 1) - 1})"
    return None


def load_settings(path: str | Path, *, missing_ok: bool = False) -> Settings:
    """Read and validate ``path``; raises :class:`ConfigErrors` listing every problem.
    ``missing_ok``: a missing file means the defaults (the default path is optional)."""
    p = Path(path)
    f = str(p)
    if missing_ok and not p.exists() and not p.is_symlink():
        return Settings()
    try:
        text, doc = read_toml(p)
    except ReadError as e:
        if e.what.startswith("cannot read: No such file"):
            e = ReadError(0, "(file)", "not found", "Create it, or drop --settings")
        raise ConfigErrors([e.error(f)]) from None
    loc = Locator(text)
    errs: list[ConfigError] = []
    values: dict[str, Any] = {}
    for table, body in doc.items():
        keys = _KEYS.get(table)
        if keys is None or not isinstance(body, dict):
            errs.append(
                ConfigError(
                    f,
                    loc.line(table),
                    table,
                    f"unknown table {table!r}" if keys is None else "must be a table",
                    "Use [daemon] and [realtime] only",
                )
            )
            continue
        for key, v in body.items():
            full = f"{table}.{key}"
            if key not in keys:
                errs.append(
                    ConfigError(
                        f,
                        loc.line(full),
                        full,
                        f"unknown key {key!r}",
                        f"[{table}] takes {', '.join(keys)}",
                    )
                )
            elif (why := _check(key, v, keys[key])) is not None:
                errs.append(ConfigError(f, loc.line(full), full, f"{v!r} {why}"))
            else:
                values[key] = tuple(v) if isinstance(v, list) else v
    if not errs and values.get("busy_poll") and values.get("sched_fifo"):
        errs.append(
            ConfigError(f, loc.line("daemon.busy_poll"), "daemon.busy_poll", CLASH, CLASH_HINT)
        )
    if errs:
        raise ConfigErrors(errs)
    return Settings(**values)
