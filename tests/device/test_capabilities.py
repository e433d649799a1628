"""Which capabilities the daemon really needs (for units/hidbpfd.service), measured: as root we
create a uhid device, then a child process running as nobody with only a given set of ambient
capabilities tries each thing the daemon does with BPF. The table is printed (docs/service.md quotes it);
the test asserts that the unit's set is enough and that each capability in it is needed."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from hidbpfd.replay.recording import load as load_rec
from tests.device.conftest import run

ROOT = Path(__file__).resolve().parents[2]
UNIT_CAPS = ("bpf", "perfmon")
pytestmark = [
    pytest.mark.device,
    pytest.mark.skipif(shutil.which("setpriv") is None, reason="setpriv not installed"),
]

CHILD = r"""
import json, sys
sys.path.insert(0, sys.argv[2])
kid = int(sys.argv[1])
out = {}
try:
    from hidbpfd.kernel.source import BpfEventSource
    from hidbpfd.model import DeviceRule, Pattern, Rule, RuleFlag
    src = BpfEventSource(lambda r: None, ring_bytes=1 << 16)
    src.open(); out["load"] = "ok"
except Exception as e:
    out["load"] = f"{type(e).__name__}: {e}"[:160]; print(json.dumps(out)); sys.exit(0)
def step(name, fn):
    try:
        r = fn(); out[name] = "ok" if r is None or r == "hid_bpf" or isinstance(r, int) and r >= 0 else str(r)[:160]
    except Exception as e:
        out[name] = f"{type(e).__name__}: {e}"[:160]
step("attach", lambda: src.attach_device(kid))
step("rules", lambda: src.set_rules(kid, [DeviceRule(Rule(Pattern.parse("02 00"), RuleFlag.HOLD), 0)]))
step("feed", lambda: src.feed(kid, bytes.fromhex("0200")))
step("inject", lambda: src.inject(kid, bytes.fromhex("0200000000000000")))
src.close()
print(json.dumps(out))
"""

SETS = [
    ("bpf",),
    ("bpf", "perfmon"),
    ("bpf", "sys_admin"),
    ("perfmon", "sys_admin"),
    ("bpf", "perfmon", "sys_admin"),
]


def try_caps(caps: tuple[str, ...], kid: int) -> dict[str, str]:
    c = ",".join(f"+{x}" for x in caps)
    cmd = [
        "setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
        f"--inh-caps=-all,{c}", f"--ambient-caps=-all,{c}", f"--bounding-set=-all,{c}",
        sys.executable, "-c", CHILD, str(kid), str(ROOT),
    ]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    try:
        result: dict[str, str] = json.loads(out.stdout.strip().splitlines()[-1])
    except (json.JSONDecodeError, IndexError):
        result = {"load": f"child failed: {out.stderr.strip()[-200:]}"}
    return result


def test_capabilities(uhid_available: None) -> None:
    from hidbpfd.devices.uhid import UhidDevice

    rec = load_rec(ROOT / "tests/captures/pen-proximity.hid").devices[0]

    async def body() -> dict[tuple[str, ...], dict[str, str]]:
        dev = UhidDevice()
        dev.create(rec.name, rec.descriptor, rec.bus, rec.vendor, rec.product, phys="hidbpfd-caps")
        try:
            await dev.wait_hidraw()
            kid = int((dev.hid_name() or "0.0").rsplit(".", 1)[1], 16)
            results = {}
            for caps in SETS:
                results[caps] = await asyncio.to_thread(try_caps, caps, kid)
            return results
        finally:
            dev.destroy()

    results = run(body(), 600)
    steps = ("load", "attach", "rules", "feed", "inject")
    print("\ncapabilities (as nobody)          " + "  ".join(f"{s:<8}" for s in steps))
    for caps, r in results.items():
        print(
            f"{' '.join(caps):<34}"
            + "  ".join(f"{('ok' if r.get(s) == 'ok' else 'FAIL'):<8}" for s in steps)
        )
        for s in steps:
            if r.get(s, "ok") != "ok":
                print(f"    {s}: {r[s]}")
    unit = (ROOT / "units/hidbpfd.service").read_text()
    assert "CapabilityBoundingSet=" + " ".join(f"CAP_{c.upper()}" for c in UNIT_CAPS) in unit
    assert all(results[UNIT_CAPS].get(s) == "ok" for s in steps), results[UNIT_CAPS]
    # and each of them is needed
    assert results[("bpf",)].get("load") != "ok"
