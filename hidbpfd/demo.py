"""``hidbpfd demo``: the three needs (and release-guard), shown end to end.

Each scenario is a built-in capture of a virtual device plus its example policy from
``config/``; the demo runs it and prints a readable trace — what the device sent, what the
daemon did with it, what readers and the device observed — and a one-line summary per device.

``--replay`` (the default where no uhid is available) runs the captures through the real
dispatch and policies on virtual time.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from hidbpfd.config import load
from hidbpfd.dispatch import Outcome
from hidbpfd.recording import load as load_rec
from hidbpfd.replay import replay

PKG_ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True, slots=True)
class Scenario:
    """One need: a title, its capture, its policy file, and what to look for."""

    title: str
    capture: str
    config: str
    point: str


SCENARIOS: tuple[Scenario, ...] = (
    Scenario(
        "defer: a pen whose out-of-proximity reports cannot be trusted",
        "pen-proximity.hid",
        "50-28bd__0905-pen-proximity.toml",
        "the spurious out-of-proximity report at 20 ms is dropped; the real ones arrive 20 ms late",
    ),
    Scenario(
        "inject: a macro key (F13 types Ctrl+C)",
        "macro-key.hid",
        "50-1209__a001-macro-key.toml",
        "readers never see F13; they see Ctrl+C down, then all keys up 5 ms later",
    ),
    Scenario(
        "reinit: a device that must be re-initialised when it wakes up",
        "wakeup-reinit.hid",
        "50-1209__a002-wakeup-reinit.toml",
        "on plug-in and after each wake-up report: output report, 10 ms, feature report, verified",
    ),
    Scenario(
        "release-guard: a remote that forgets a key release",
        "release-guard.hid",
        "50-1209__a003-release-guard.toml",
        "the release lost at 1000 ms is injected at 1500 ms",
    ),
)

_STYLE = {
    "pass": "  pass   ",
    "inject": "» inject ",
    "output": "→ output ",
    "feature": "→ feature",
    "hold": "  hold   ",
}


def find_data(rel: str) -> Path:
    """A shipped file (config/, tests/captures/) from a source checkout."""
    p = PKG_ROOT / rel
    if not p.exists():
        raise FileNotFoundError(f"{p} not found: hidbpfd demo runs from a source checkout")
    return p


def run_replay_demo(out: TextIO = sys.stdout, scenarios: Sequence[Scenario] = SCENARIOS) -> int:
    """Run every scenario on virtual time; print the trace and a summary. Returns 0."""
    bold, plain = ("\033[1m", "\033[0m") if out.isatty() else ("", "")
    for sc in scenarios:
        cfg = load([find_data("config/" + sc.config)])
        rec = load_rec(find_data("tests/captures/" + sc.capture))
        held: list[Outcome] = []

        def keep_holds(o: Outcome, held: list[Outcome] = held) -> None:
            if o.kind == "hold":
                held.append(o)

        print(f"\n{bold}{sc.title}{plain}\n  {sc.config} on {rec.devices[0].name!r}\n", file=out)
        lines = list(replay(rec, cfg, observers=[keep_holds]))
        events = sorted(
            [(round(line.t * 1000, 3), 1, line.kind, line.data) for line in lines]
            + [
                (round((o.t_ns - rec.events()[0][0]) / 1e6, 3), 0, "hold", o.data.hex())
                for o in held
            ]
        )
        for t_ms, _, kind, data in events:
            print(
                f"  {t_ms:8.1f} ms  {_STYLE.get(kind, kind):9} {bytes.fromhex(data).hex(' ')}",
                file=out,
            )
        counts = {
            k: sum(1 for line in lines if line.kind == k)
            for k in ("pass", "inject", "output", "feature")
        }
        print(
            f"\n  summary: {len(rec.events())} reports from the device, {len(held)} held, "
            + ", ".join(f"{v} {k}" for k, v in counts.items())
            + f"\n  → {sc.point}",
            file=out,
        )
    return 0


def main(argv: Sequence[str]) -> int:
    """``hidbpfd demo [--replay]``."""
    return run_replay_demo()
