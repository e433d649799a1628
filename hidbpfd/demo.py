"""``hidbpfd demo``: the three needs (and release-guard), shown end to end.

Each scenario is a built-in capture of a virtual device plus its example policy from
``config/``; the demo runs it and prints a readable trace — what the device sent, what the
daemon did with it, what readers and the device observed — and a one-line summary per device.

By default the demo is **live**: each scenario's device is created with uhid, the real daemon
(HID-BPF filter, in-kernel injector, hidraw) serves it, the capture's reports are sent in real
time, and the trace shows what the device sent, what the kernel held, and what readers and the
device really observed. Where this kernel has no uhid or HID-BPF, the demo runs itself inside
the VM tier (``hidbpfd vm``). ``--replay`` runs the captures through the same dispatch and
policies on virtual time instead, with no devices at all.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from hidbpfd.config import load
from hidbpfd.engine.dispatch import Outcome
from hidbpfd.replay.recording import load as load_rec
from hidbpfd.replay.virtual import replay

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


async def _live_scenario(sc: Scenario, out: TextIO, bold: str, plain: str) -> None:
    from hidbpfd.replay.live import LiveSession

    cfg = find_data("config/" + sc.config)
    rec = load_rec(find_data("tests/captures/" + sc.capture))
    print(
        f"\n{bold}{sc.title}{plain}\n  {sc.config} on a uhid device {rec.devices[0].name!r}",
        file=out,
    )
    async with LiveSession([str(cfg)]) as live:
        virtual_tail = max((line.t for line in replay(rec, load([cfg]))), default=0.0)
        last = (rec.events()[-1][0] - rec.events()[0][0]) / 1e9
        await live.play(rec, settle_s=max(virtual_tail - last, 0.0) + 0.3)
        m = next(iter(live.daemon.managed.values()), None)
        if m is not None:
            inj = m.io.injector.name if m.io.injector else "none"
            print(f"  kernel: BPF {m.attach}, inject: {inj}\n", file=out)
        rows: list[tuple[int, str, bytes]] = [(t, "sent", data) for t, _, data in live.sent]
        rows += [(o.t_ns, "hold", o.data) for o in live.outcomes if o.kind == "hold"]
        rows += [(t, kind, data) for t, kind, data, _ in live.lines]
        rows.sort(key=lambda r: r[0])
        style = {
            "sent": "  device sends",
            "hold": "  kernel HOLDS",
            "pass": "    readers get",
            "inject": "  » injected  ",
            "output": "  → output    ",
            "feature": "  → feature   ",
        }
        for t, kind, data in rows:
            print(
                f"  {(t - live.t0) / 1e6:8.1f} ms  {style.get(kind, kind)}  {data.hex(' ')}",
                file=out,
            )
        n = {k: sum(1 for _, kind, _ in rows if kind == k) for k in style}
        print(
            f"\n  summary: {n['sent']} reports sent, {n['hold']} held by the kernel, "
            f"{n['pass']} passed, {n['inject']} injected, {n['output']} output, "
            f"{n['feature']} feature\n  → {sc.point}",
            file=out,
        )


def run_live_demo(out: TextIO = sys.stdout, scenarios: Sequence[Scenario] = SCENARIOS) -> int:
    """Every scenario on real uhid devices with the real daemon."""
    import asyncio

    bold, plain = ("\033[1m", "\033[0m") if out.isatty() else ("", "")
    for sc in scenarios:
        asyncio.run(_live_scenario(sc, out, bold, plain))
    return 0


def can_run_live() -> str:
    """Empty when this kernel can run the live demo, else why not."""
    import os

    from hidbpfd.kernel.probe import probe

    if not os.path.exists("/dev/uhid"):
        return "no /dev/uhid"
    caps = probe()
    for key in ("hid_bpf_struct_ops", "hid_bpf_input_report"):
        if not caps.get(key, {}).get("ok"):
            return f"{key}: {caps.get(key, {}).get('reason', 'missing')}"
    return ""


def main(argv: Sequence[str]) -> int:
    """``hidbpfd demo [--replay | --live]``: live where possible, in the VM otherwise."""
    if "--replay" in argv:
        return run_replay_demo()
    why = can_run_live()
    if not why:
        return run_live_demo()
    if "--live" in argv:
        print(f"hidbpfd demo: cannot run live here ({why})", file=sys.stderr)
        return 1
    print(
        f"hidbpfd demo: this kernel cannot run it ({why}); running it in the VM tier "
        "(hidbpfd vm: a HID-capable kernel under qemu, set up on first use)",
        file=sys.stderr,
    )
    import importlib

    try:
        vm = importlib.import_module("hidbpfd.vm")
        rc: int = vm.main([sys.executable, "-m", "hidbpfd", "demo", "--live"])
    except Exception as e:  # no VM here: show the virtual replay rather than nothing
        print(
            f"hidbpfd demo: the VM tier is not available ({e}); showing the virtual replay",
            file=sys.stderr,
        )
        return run_replay_demo()
    return rc
