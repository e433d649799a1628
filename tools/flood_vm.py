#!/usr/bin/env python3
"""Issue 10 item 6's scenario in the VM (measurement, not a test): PENS uhid pens sending out-of-proximity reports at a
total RATE for SECONDS, MONITORS monitor clients (half never reading), the real daemon of the
worktree ROOT (argv[1]). Prints ring drops (= held-class reports that leaked, by design), held,
daemon CPU. Usage, in the VM tier:
    .venv/bin/hidbpfd vm -- .venv/bin/python tools/flood_vm.py "$PWD" 1000,2200,4000 10"""

import asyncio
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(HERE))
from hidbpfd.devices.uhid import UhidDevice
from hidbpfd.replay.recording import load as load_rec
from hidbpfd.service.control import request

ROOT = Path(sys.argv[1])
RATES = [int(x) for x in sys.argv[2].split(",")]
SECONDS = float(sys.argv[3])
PENS, MONITORS = 32, 50
OUT = bytes.fromhex("0200000000000000")


def cpu_ns(pid):
    f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) * 1e9 / os.sysconf("SC_CLK_TCK")


async def main():
    rec = load_rec(HERE / "tests/captures/pen-proximity.hid").devices[0]
    work = Path(tempfile.mkdtemp())
    cfg = work / "d"
    shutil.copytree(ROOT / "config", cfg)
    pens = []
    for _ in range(PENS):
        u = UhidDevice()
        u.create(
            rec.name, rec.descriptor, rec.bus, rec.vendor, rec.product, phys=rec.phys, uniq=rec.uniq
        )
        await u.wait_hidraw(timeout_s=120)
        pens.append(u)
    ids = {u.hid_name() for u in pens}
    sock = str(work / "c.sock")
    logf = open(work / "log", "wb")
    p = subprocess.Popen(
        [
            str(ROOT / ".venv/bin/python"),
            "-m",
            "hidbpfd",
            "--log-level",
            "info",
            "run",
            "--config",
            str(cfg),
            "--socket",
            sock,
        ],
        cwd=ROOT,
        stdout=logf,
        stderr=subprocess.STDOUT,
    )
    st = None
    for _ in range(600):
        await asyncio.sleep(0.5)
        try:
            st = await asyncio.to_thread(request, sock, "status", timeout=60)
            if sum(1 for d in st["devices"] if d["hid_id"] in ids and d.get("managed")) == PENS:
                break
        except OSError:
            pass
    loop = asyncio.get_running_loop()
    socks = []
    lines = [0]

    async def rd(s):
        try:
            while c := await loop.sock_recv(s, 1 << 16):
                lines[0] += c.count(b"\n")
        except OSError:
            pass

    for i in range(MONITORS):
        s = socket.socket(socket.AF_UNIX)
        s.setblocking(False)
        await loop.sock_connect(s, sock)
        await loop.sock_sendall(s, b'{"cmd": "monitor"}\n')
        socks.append(s)
        if i % 2 == 0:
            loop.create_task(rd(s))
    await asyncio.sleep(1)

    def counts(st):
        seen = sum(
            d.get("counters", {}).get("seen", 0) for d in st["devices"] if d["hid_id"] in ids
        )
        held = sum(
            d.get("counters", {}).get("held", 0) for d in st["devices"] if d["hid_id"] in ids
        )
        return seen, held, st["ring_drops"]

    ring = st.get("ring", {}).get("bytes", 1 << 20)
    for rate in RATES:
        st = await asyncio.to_thread(request, sock, "status", timeout=60)
        s0, h0, d0 = counts(st)
        c0 = cpu_ns(p.pid)
        total = int(rate * SECONDS)
        sent = 0
        t0 = time.monotonic()
        while sent < total:
            due = min(total, int((time.monotonic() - t0) * rate) + 1)
            while sent < due:
                pens[sent % PENS].input(OUT)
                sent += 1
            await asyncio.sleep(0.0005)
        el = time.monotonic() - t0
        for _ in range(1200):
            st = await asyncio.to_thread(request, sock, "status", timeout=60)
            s1, h1, d1 = counts(st)
            if (s1 - s0) + (d1 - d0) >= sent:
                break
            await asyncio.sleep(0.25)
        drain = time.monotonic() - t0 - el
        cpu = cpu_ns(p.pid) - c0
        print(
            f"{ROOT.name}: ring {ring // 1024} KiB; {rate}/s offered, {sent / el:.0f}/s sent, {sent} sent; held {h1 - h0}; ring_drops (leaked) {d1 - d0} ({(d1 - d0) / sent * 100:.1f}%); drained {drain:.1f} s after the stream; daemon CPU {cpu / max(1, s1 - s0) / 1000:.0f} us/report; monitor_dropped {st.get('monitor_dropped')}; monitor lines read {lines[0]}",
            flush=True,
        )
    for s in socks:
        s.close()
    p.terminate()
    p.wait(30)
    for u in pens:
        u.destroy()


asyncio.run(main())
