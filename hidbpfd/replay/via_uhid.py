"""``hidbpfd replay --device uhid``: the capture played in real time on real uhid devices, with
the real daemon; the trace is observed, not computed (see :mod:`hidbpfd.replay.live`).

Needs /dev/uhid, hidraw and a BPF-capable kernel (HID-BPF to hold reports, the in-kernel
injector to inject): run it inside ``hidbpfd vm`` on machines whose kernel lacks them.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys

from hidbpfd.config import Config
from hidbpfd.replay.recording import Recording
from hidbpfd.replay.virtual import TraceLine, replay

SETTLE_S = 0.5


async def observe(
    rec: Recording, config_paths: list[str]
) -> tuple[list[TraceLine], list[TraceLine]]:
    """Play ``rec`` on uhid devices with the daemon using ``config_paths``. Returns the observed
    trace, and the virtual replay of the reports as they were really sent (the reference for
    the daemon's timing)."""
    from hidbpfd.config import load
    from hidbpfd.replay.live import LiveSession

    cfg = load(config_paths)
    virtual = list(replay(rec, cfg))
    last_event = (rec.events()[-1][0] - rec.events()[0][0]) / 1e9 if rec.events() else 0.0
    tail = max((line.t for line in virtual), default=0.0) - last_event
    async with LiveSession(config_paths) as live:
        real = await live.play(rec, settle_s=max(tail, 0.0) + SETTLE_S)
        as_sent = list(replay(live.as_sent(rec), cfg, attach_ns=live.attach_offset()))
    return real, as_sent


def replay_uhid(rec: Recording, cfg: Config, args: argparse.Namespace) -> int:
    """CLI entry point; prints the JSON-lines trace."""
    if not os.path.exists("/dev/uhid"):
        print(
            "hidbpfd replay --device uhid: /dev/uhid not found (no uhid in this kernel). "
            "Try: hidbpfd vm -- hidbpfd replay --device uhid ...",
            file=sys.stderr,
        )
        return 1
    lines, _ = asyncio.run(observe(rec, [args.config]))
    for line in lines:
        print(line.json())
    return 0
