"""``hidbpfd devices``: every HID device present and what hidbpfd would do with it.

Per device (from ``/sys/bus/hid/devices``; nothing is opened): identity, hidraw node, driver,
USB interface, the report descriptor's application collections and reports (ID and size per
input / output / feature, from :mod:`hidbpfd.devices.descriptor`), the policy files that match
it and those that miss by one ``[device]`` key (naming it), what the kernel can do for it
(hold reports or only observe them; the injection sink :mod:`hidbpfd.devices.chooser` would
pick), and what the running daemon says about it (its control socket's ``status``; "no
daemon" if none answers).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Final

from hidbpfd.config import Config, load
from hidbpfd.devices.descriptor import DescriptorError, ReportKind, parse, usage_name
from hidbpfd.devices.facts import descriptor_facts, read_uevent, usb_interface
from hidbpfd.devices.udev import device_id_from
from hidbpfd.model import DeviceFacts, DeviceId, bus_name

HID_DEVICES: Final = Path("/sys/bus/hid/devices")
NO_DAEMON: Final = "no daemon"


def _uevent(path: Path) -> dict[str, str]:
    try:
        return read_uevent(path)
    except OSError:
        return {}


def reports_summary(descriptor: bytes) -> dict[str, Any]:
    """``{"input": [{"id": 2, "size": 8}], "output": [...], "feature": [...],
    "applications": ["Digitizer 0x02"]}``; sizes in bytes with the ID byte; ``error`` instead
    if the descriptor cannot be parsed."""
    try:
        rd = parse(descriptor)
    except DescriptorError as e:
        return {"error": str(e)}
    out: dict[str, Any] = {"applications": [usage_name(a) for a in rd.applications]}
    for kind in ReportKind:
        out[kind.value] = [
            {"id": rid, "size": rd.report_length(rid, kind)} for rid in rd.report_ids(kind)
        ]
    return out


def near_misses(cfg: Config, dev: DeviceId, facts: DeviceFacts) -> list[dict[str, Any]]:
    """Files that miss ``dev`` by exactly one ``[device]`` key while agreeing on another."""
    out = []
    for f in cfg.files:
        bad = f.match.mismatches(dev, facts)
        if len(bad) == 1 and len(f.match.keys) > 1:
            out.append({"file": f.path, "key": bad[0]})
    return out


def kernel_view(checks: Mapping[str, Mapping[str, object]], kernel_injector: str) -> dict[str, Any]:
    """What the kernel offers any device: ``filter`` (hold / observe only / none) and its
    reason, from the probe (the daemon's order: HID-BPF, else the tracing fallback)."""
    from hidbpfd.kernel.bpf import OPS_OBJECT

    ops = checks.get("hid_bpf_struct_ops", {})
    tracing = checks.get("tracing", {})
    if ops.get("ok") and OPS_OBJECT.exists():
        filt, why = "hold", f"HID-BPF struct_ops ({ops.get('reason')})"
    elif tracing.get("ok"):
        filt, why = "observe only", f"no HID-BPF ({ops.get('reason')}); {tracing.get('reason')}"
    else:
        filt = "none"
        why = f"no HID-BPF ({ops.get('reason')}); tracing: {tracing.get('reason')}"
    return {"filter": filt, "filter_reason": why, "checks": checks, "injector": kernel_injector}


def _sink(dev: DeviceId, kv: Mapping[str, Any]) -> dict[str, Any]:
    from hidbpfd.devices.chooser import plan

    options = plan(dev, kv["injector"], kv["checks"])
    if not options:
        return {"inject_sink": "none", "inject_reason": "a hidbpfd uhid mirror gets no sink"}
    chosen = next((name for name, why in options if not why), "none")
    return {
        "inject_sink": chosen,
        "inject_reason": "; ".join(f"{n}: {why}" for n, why in options if why) or "",
    }


def describe(
    hid_dir: Path,
    cfg: Config,
    kv: Mapping[str, Any],
    daemon: Mapping[str, Any] | None,
    sys_root: Path = Path("/sys"),
) -> dict[str, Any]:
    """One device's entry (``hid_dir``: its ``/sys/bus/hid/devices/<hid id>``)."""
    props = _uevent(hid_dir / "uevent")
    dev = device_id_from(hid_dir.name, props)
    try:
        descriptor = (hid_dir / "report_descriptor").read_bytes()
    except OSError:
        descriptor = b""
    interface = usb_interface(hid_dir, sys_root)
    facts = descriptor_facts(descriptor, interface)
    try:
        hidraw = sorted(f"/dev/{n}" for n in os.listdir(hid_dir / "hidraw"))
    except OSError:
        hidraw = []
    driver = (
        os.path.basename(os.readlink(hid_dir / "driver")) if (hid_dir / "driver").exists() else ""
    )
    entry: dict[str, Any] = {
        "hid_id": dev.hid_id or hid_dir.name,
        "bus": bus_name(dev.bus),
        "vendor": f"{dev.vendor:04x}",
        "product": f"{dev.product:04x}",
        "name": dev.name,
        "phys": dev.phys,
        "uniq": dev.uniq,
        "hidraw": hidraw[0] if hidraw else "",
        "driver": driver,
        "interface": interface,
        "descriptor": reports_summary(descriptor) if descriptor else {"error": "unreadable"},
        "policies": [f.path for f in cfg.files_for(dev, facts)],
        "near_misses": near_misses(cfg, dev, facts),
    }
    entry["kernel"] = {"filter": kv["filter"], "filter_reason": kv["filter_reason"]}
    entry["kernel"].update(_sink(dev, kv))
    entry["daemon"] = _daemon_view(entry["hid_id"], daemon)
    return entry


def _daemon_view(hid_id: str, status: Mapping[str, Any] | None) -> dict[str, Any] | str:
    if status is None:
        return NO_DAEMON
    for d in status.get("devices", []):
        if d.get("hid_id") == hid_id:
            out = {"managed": bool(d.get("managed"))}
            for k in ("engine", "files", "bpf", "inject_sink", "kernel_refused", "refused"):
                if k in d:
                    out[k] = d[k]
            return out
    return {"managed": False, "seen": False}


def daemon_status(socket_path: str) -> dict[str, Any] | None:
    """The daemon's ``status``, or None if no daemon answers at ``socket_path``."""
    from hidbpfd.service.control import request

    try:
        st = request(socket_path, "status", timeout=5.0)
    except (OSError, ValueError):
        return None
    return None if "error" in st or "devices" not in st else st


def inventory(
    config: Sequence[str | Path],
    socket_path: str,
    *,
    hid_devices: Path | None = None,
    sys_root: Path = Path("/sys"),
    kv: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Everything ``hidbpfd devices --json`` prints (``kv``: a :func:`kernel_view` to use
    instead of probing this kernel)."""
    cfg = load([p for p in config if Path(p).exists()])
    if kv is None:
        kv = _probe_kernel()
    status = daemon_status(socket_path)
    try:
        dirs = sorted((hid_devices or HID_DEVICES).iterdir())
    except OSError:
        dirs = []
    return {
        "config": [str(p) for p in config],
        "kernel": {k: v for k, v in kv.items() if k != "checks"},
        "config_errors": [str(e) for e in cfg.errors],
        "daemon": NO_DAEMON if status is None else f"pid {status.get('pid')}",
        "devices": [describe(d, cfg, kv, status, sys_root) for d in dirs],
    }


def _probe_kernel() -> dict[str, Any]:
    from hidbpfd.devices.chooser import kernel_injector_reason
    from hidbpfd.kernel.probe import probe

    try:
        checks: Mapping[str, Mapping[str, object]] = probe(load=True)
        kinj = kernel_injector_reason()
    except Exception as e:  # the listing must work on a machine without BPF
        checks = {}
        kinj = f"probe failed: {e}"
    return kernel_view(checks, kinj)


def _reports_text(desc: Mapping[str, Any]) -> str:
    if "error" in desc:
        return f"descriptor: {desc['error']}"
    parts = []
    for kind in ("input", "output", "feature"):
        reps = desc.get(kind, [])
        if reps:
            parts.append(
                f"{kind} "
                + ", ".join(
                    f"#{r['id']} {r['size']} B" if r["id"] else f"{r['size']} B" for r in reps
                )
            )
    apps = ", ".join(desc.get("applications", [])) or "none"
    return f"applications: {apps}; reports: {'; '.join(parts) or 'none'}"


def render(inv: Mapping[str, Any]) -> str:
    """The human table: one line per device, then its details indented."""
    devs = inv["devices"]
    if not devs:
        return f"no HID devices (daemon: {inv['daemon']})"
    rows = [("HID ID", "HIDRAW", "BUS", "VID:PID", "DRIVER", "NAME")]
    rows += [
        (
            d["hid_id"],
            d["hidraw"] or "-",
            d["bus"],
            f"{d['vendor']}:{d['product']}",
            d["driver"] or "-",
            d["name"],
        )
        for d in devs
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    out = [f"daemon: {inv['daemon']}"]
    for e in inv["config_errors"]:
        out.append(f"config error: {e}")
    for i, r in enumerate(rows):
        out.append("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=False)) + "  " + r[5])
        if i == 0:
            continue
        d = devs[i - 1]
        iface = "-" if d["interface"] is None else str(d["interface"])
        out.append(f"    phys {d['phys'] or '-'}  uniq {d['uniq'] or '-'}  interface {iface}")
        out.append(f"    {_reports_text(d['descriptor'])}")
        pols = ", ".join(Path(p).name for p in d["policies"]) or "none"
        out.append(f"    policies: {pols}")
        for m in d["near_misses"]:
            out.append(f"    almost: {Path(m['file']).name} ([device] {m['key']} differs)")
        k = d["kernel"]
        out.append(f"    kernel: {k['filter']}; inject via {k['inject_sink']}")
        dm = d["daemon"]
        if isinstance(dm, str):
            out.append(f"    daemon: {dm}")
        else:
            state = "managed" if dm.get("managed") else "not managed"
            if dm.get("engine") == "kernel":
                state += " (in-kernel engine)"
            out.append(f"    daemon: {state}")
    return "\n".join(out)


def main(config: Sequence[str | Path], socket_path: str, as_json: bool) -> int:
    """``hidbpfd devices [--json]``; exit 0 (a listing; config errors are shown in it)."""
    inv = inventory(config, socket_path)
    print(json.dumps(inv, indent=2, default=str) if as_json else render(inv))
    return 0
