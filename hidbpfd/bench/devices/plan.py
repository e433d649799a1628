"""What a device benchmark run does: the two engines' devices (IDs, report descriptor),
how many samples of each scenario (:class:`Plan`), the policy files both engines get, and the
reports that trigger each policy."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Final

ENGINES: Final = ("userspace", "kernel")
VENDOR: Final = 0x1209
PRODUCTS: Final[dict[str, int]] = {"userspace": 0xBE01, "kernel": 0xBE02}
DEFER_DELAYS_MS: Final = (1, 10, 50)
LOAD_RATE: Final = 8000
INJECT_WAIT_MS: Final = 2
OUTPUT_REPORT: Final = bytes.fromhex("10 b1 b2 b3 b4 b5")
RELEASE: Final = bytes.fromhex("01 06 00 00")

# A vendor-defined device: input report 1 (4 bytes), output 0x10 (5), feature 5 (2).
DESCRIPTOR: Final = bytes(
    [
        0x06, 0x00, 0xFF,  # Usage Page (Vendor Defined 0xFF00)
        0x09, 0x01,  # Usage (0x01)
        0xA1, 0x01,  # Collection (Application)
        0x15, 0x00,  # .. Logical Minimum (0)
        0x26, 0xFF, 0x00,  # .. Logical Maximum (255)
        0x75, 0x08,  # .. Report Size (8)
        0x85, 0x01, 0x95, 0x04, 0x09, 0x02, 0x81, 0x02,  # .. ID 1: 4 x Input
        0x85, 0x10, 0x95, 0x05, 0x09, 0x03, 0x91, 0x02,  # .. ID 0x10: 5 x Output
        0x85, 0x05, 0x95, 0x02, 0x09, 0x04, 0xB1, 0x02,  # .. ID 5: 2 x Feature
        0xC0,  # End Collection
    ]
)  # fmt: skip


class BenchUnavailable(RuntimeError):
    """This machine cannot run the device benchmark; the message says why and what to do."""


# ----------------------------------------------------------------------------- the plan


@dataclass(frozen=True, slots=True)
class Plan:
    """How much of each scenario to run (per engine)."""

    defer: dict[int, int]
    """delay ms -> samples"""
    inject: int
    reinit: int
    load_s: float
    rates: tuple[int, ...]
    rate_s: float
    gap_ms: tuple[float, float] = (3.0, 8.0)
    load_rate: int = LOAD_RATE
    programs: int = 0
    """triggers of each example program (per engine)"""


def plan(*, quick: bool = False, samples: int | None = None) -> Plan:
    """``--quick`` (under two minutes in the VM), the full run, or ``samples`` of everything
    (tests)."""
    if samples is not None:
        n = max(1, samples)
        return Plan({ms: n for ms in DEFER_DELAYS_MS}, n, n, 0.5, (1000, 4000), 0.25, programs=n)
    if quick:
        return Plan(
            {1: 50, 10: 50, 50: 20}, 40, 40, 1.5, (1000, 2000, 4000, 8000), 0.5, programs=20
        )
    return Plan(
        {1: 300, 10: 300, 50: 100},
        200,
        200,
        5.0,
        (1000, 2000, 4000, 8000, 16000, 32000),
        2.0,
        programs=100,
    )


def policy_text(engine: str) -> str:
    """The policy file for the device of ``engine``: the same policies for both engines."""
    defers = "".join(
        f"""
[[policy]]
type = "defer"
name = "defer-{ms}ms"
match = "01 {0x20 + i:02x}"
delay_ms = {ms}
cancel_on = "01 ff"
"""
        for i, ms in enumerate(DEFER_DELAYS_MS, 1)
    )
    return f"""# hidbpfd bench: the {engine} engine's device
engine = "{engine}"

[device]
vendor = {VENDOR:#06x}
product = {PRODUCTS[engine]:#06x}
{defers}
[[policy]]
type = "inject"
name = "inject"
match = "01 03"
reports = ["01 a1 00 00", {{wait_ms = {INJECT_WAIT_MS}}}, "01 a2 00 00"]
pass_trigger = false

[[policy]]
type = "reinit"
name = "reinit"
match = "01 04"
send = [{{output = "{OUTPUT_REPORT.hex(" ")}"}}]

[[policy]]
type = "release-guard"
name = "throughput"
match = "01 05 ??"
release = "{RELEASE.hex(" ")}"
release_match = "01 06"
timeout_ms = 60000
"""


def policy_files(directory: Path) -> dict[str, Path]:
    """Write both engines' files into ``directory``; engine -> path."""
    out = {}
    for engine in ENGINES:
        p = directory / f"50-{VENDOR:04x}__{PRODUCTS[engine]:04x}-bench-{engine}.toml"
        p.write_text(policy_text(engine))
        out[engine] = p
    return out


def defer_trigger(delay_ms: int, seq: int) -> bytes:
    """The report defer_<delay_ms> holds (unique per sample)."""
    return bytes([0x01, 0x21 + DEFER_DELAYS_MS.index(delay_ms), seq & 0xFF, (seq >> 8) & 0xFF])


def unmatched(seq: int) -> bytes:
    """A report no rule matches."""
    return bytes([0x01, 0x00, seq & 0xFF, (seq >> 8) & 0xFF])


def matched(seq: int) -> bytes:
    """A report the throughput policy matches (a press: re-arms its timeout)."""
    return bytes([0x01, 0x05, 0x01 + seq % 200, (seq >> 8) & 0xFF])


def sustained(steps: list[tuple[float, int, int, int]]) -> float:
    """The highest achieved rate (of ``(rate, sent, handled, drops)`` steps) at which every
    report was handled with no drop, in a row from the lowest; 0 if even the first failed."""
    best = 0.0
    for rate, sent, handled, drops in steps:
        if handled < sent or drops:
            break
        best = max(best, rate)
    return best
