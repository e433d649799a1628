"""Test helpers: build configs and recordings from literals, replay them, compare traces."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from hidbpfd.config import Config, load
from hidbpfd.replay.recording import RecordedDevice, Recording
from hidbpfd.replay.virtual import FilterBackend, replay

# The failure bound of every wait in the tests: a condition polled, an answer or event awaited, a
# process or daemon starting or stopping. A passing test never pays it (the wait ends as soon as
# the condition holds), so it is sized for a loaded 2-vCPU CI machine and a guest under software
# emulation, not for speed (speed is measured by `hidbpfd bench`, never in tests).
# HIDBPFD_TEST_LIMIT_S overrides it.
LIMIT_S = float(os.environ.get("HIDBPFD_TEST_LIMIT_S", "60"))

DEVICE = "[device]\nvendor = 0x1234\nproduct = 0x5678\n"


def config_from(tmp: Path, toml: str, name: str = "50-1234__5678-test.toml") -> Config:
    """Write ``toml`` (a [device] table is prepended if missing) and load it; fail on errors."""
    text = toml if "[device]" in toml else DEVICE + toml
    p = tmp / name
    p.write_text(text)
    cfg = load([p])
    assert not cfg.errors, "\n".join(map(str, cfg.errors))
    return cfg


def recording(
    events: Sequence[tuple[float, str]], *, vendor: int = 0x1234, product: int = 0x5678
) -> Recording:
    """One USB device with ``events`` as (ms, "hex bytes")."""
    d = RecordedDevice(0, name="test device", bus=3, vendor=vendor, product=product)
    d.events = [(round(t * 1e6), bytes.fromhex(h)) for t, h in events]
    return Recording("<test>", [d])


Trace = list[tuple[float, str, str]]


def run(
    cfg: Config, events: Sequence[tuple[float, str]], backend: FilterBackend | None = None
) -> Trace:
    """Replay ``events`` and return the trace as (ms, kind, "hex") triples."""
    return [
        (round(line.t * 1000, 3), line.kind, line.data)
        for line in replay(recording(events), cfg, backend=backend)
    ]


def norm(expected: Sequence[tuple[float, str, str]]) -> Trace:
    """Expected traces are written with spaced hex; normalise to the trace's form."""
    return [(float(t), k, h.replace(" ", "")) for t, k, h in expected]


# A vendor-defined device with a short input report 0x01 (8 bytes, its ID included) and one of
# 200 bytes, 0x02: longer than the 128 bytes a ring record carries (issue 10, item 4).
LONG_REPORT_RDESC = bytes.fromhex(
    "06 00 ff 09 01 a1 01"  # vendor page, application collection
    " 85 01 09 02 15 00 26 ff 00 75 08 95 07 81 02"  # report 0x01: 7 data bytes
    " 85 02 09 03 95 c7 81 02"  # report 0x02: 199 data bytes
    " c0"
)

# The long-report tests' policies: a defer that could hold report 0x02 (200 bytes, longer than a
# ring record: refused) and an inject of report 0x01 (runs).
LONG_REPORT_POLICIES = """\
[[policy]]
type = "defer"
name = "hold-long"
match = "02 00"
delay_ms = {delay_ms}

[[policy]]
type = "inject"
name = "short-macro"
match = "01 68"
reports = ["{macro}"]
"""
LONG_REPORT_USER_FILE = "50-1234__5678-long.toml"
# What the refusal of the userspace file's defer says (file, policy, report, length, the limit).
LONG_REPORT_REFUSAL = (
    LONG_REPORT_USER_FILE,
    "policy[0]",
    "hold-long",
    "input report 0x02 of 200 bytes",
    "128 bytes",
)
LONG_REPORT_KERNEL_FILE = "50-1234__5679-long-kernel.toml"


def long_report_policies(
    product: int | None = None, *, kernel: bool = False, macro: str = "01 04", delay_ms: int = 20
) -> str:
    """The long-report policy file: for device 1234:``product`` (none: no [device] table), on
    the in-kernel engine with ``kernel``; ``macro`` is the report the inject sends."""
    text = LONG_REPORT_POLICIES.format(delay_ms=delay_ms, macro=macro)
    if product is not None:
        text = f"[device]\nvendor = 0x1234\nproduct = {product:#06x}\n\n" + text
    return ('engine = "kernel"\n' if kernel else "") + text


def write_long_report_files(cfg: Path, macro: str = "01 04") -> None:
    """Both long-report files in ``cfg``: 1234:5678 on the userspace engine, 1234:5679 on the
    in-kernel one."""
    (cfg / LONG_REPORT_USER_FILE).write_text(long_report_policies(0x5678, macro=macro))
    (cfg / LONG_REPORT_KERNEL_FILE).write_text(
        long_report_policies(0x5679, kernel=True, macro=macro)
    )
