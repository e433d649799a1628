"""Human-readable forms of ``status`` and ``monitor`` (the daemon sends JSON)."""

from __future__ import annotations

from typing import Any

_PCTS = ("p50_us", "p90_us", "p99_us", "max_us")


def _program_lines(d: dict[str, Any]) -> list[str]:
    out = []
    for p in d.get("programs", []):
        if "pinned" in p:
            out.append(f"      program {p['program']}: {p['loader']} ({p['pinned']})")
        if "error" in p:
            what = "NOT served" if "pinned" in p else "NOT loaded"
            out.append(f"      program {p['program']}: {what}: {p['error']}")
            continue
        if p.get("engine") != "userspace":
            out.append(
                f"      program {p['program']}: {p.get('engine')} engine (work in the kernel)"
            )
            continue
        drops = p.get("drops", {})
        refused = ", ".join(f"{k} {v}" for k, v in p.get("refused", {}).items()) or "none"
        out.append(
            f"      program {p['program']}: requests {p['requests']}, held {p['held']}, "
            f"injected {p['injected']}, output {p['output']}, feature {p['feature']}, "
            f"calls {p['calls']}, cancelled {p['cancelled']}, errors {p['errors']}, "
            f"pending {p['pending']}"
        )
        out.append(
            f"        drops: over budget {drops.get('over_budget')}, ring full "
            f"{drops.get('ring_full')}; refused: {refused}"
        )
    return out


def _device_lines(d: dict[str, Any]) -> list[str]:
    head = f"  {d['hid_id']} {d['name']!r} ({d['bus']} {d['vendor']}:{d['product']}, {d['hidraw']})"
    refused = [f"      REFUSED {r}" for r in d.get("refused", [])]
    if d.get("served_by") == "programs":  # no [[policy]]: its programs are the daemon's work
        return [head + ": programs only", *refused, *_program_lines(d)]
    if not d.get("managed"):
        if d.get("programs"):
            return [head, *refused, *_program_lines(d)]
        return [head + (": every policy refused" if refused else ": no policy"), *refused]
    hold = "yes" if d["can_hold"] else "no"
    out = [
        head,
        f"      BPF: {d['bpf']} (can hold: {hold}); inject: {d['inject_sink']}; "
        f"pending work: {d['pending']}",
    ]
    out += [f"      policy {p}" for p in d.get("policies", [])] + refused
    out.append("      " + ", ".join(f"{k} {v}" for k, v in d.get("counters", {}).items()))
    return out + _program_lines(d)


def render_status(st: dict[str, Any]) -> str:
    """``hidbpfd status`` without ``--json``."""
    nfiles, nrel = len(st.get("files", [])), st.get("reloads", 0)
    out = [
        f"hidbpfd (pid {st.get('pid')}, up {st.get('uptime_s')} s): {st.get('summary', '')}",
        f"  config: {', '.join(st.get('config', []))} — {nfiles} file(s) loaded, {nrel} reload(s)",
    ]
    out += [f"  config error: {e}" for e in st.get("config_errors", [])]
    for name, s in st.get("latency", {}).items():
        if s:
            pct = ", ".join(f"{k[:-3]} {s[k]} µs" for k in _PCTS)
            out.append(f"  latency {name}: {pct} (n={s['n']})")
    drops, unknown = st.get("ring_drops"), st.get("unknown_records")
    out.append(f"  ring buffer drops: {drops}; unknown records: {unknown}")
    ring = st.get("ring") or {}
    if ring.get("bytes"):
        out.append(f"  ring buffer: {ring['bytes'] // 1024} KiB ({ring.get('why', '')})")
    if st.get("monitor_dropped"):
        out.append(f"  monitor lines dropped (the daemon's queue full): {st['monitor_dropped']}")
    for d in st.get("devices", []):
        out += _device_lines(d)
    return "\n".join(out)


_ARROW = {
    "pass": "  pass",
    "hold": "  HOLD",
    "inject": "→ inject",
    "output": "→ output",
    "feature": "→ feature",
    "get_feature": "→ get feature",
    "reply": "← reply",
    "schedule": "  schedule",
    "cancel": "  cancel",
    "timer": "  timer",
    "error": "! error",
    "request": "  request",
    "call": "→ call",
    "refused": "! refused",
}


def render_event(e: dict[str, Any]) -> str:
    """One ``hidbpfd monitor`` line."""
    if "dropped" in e:
        return f"... {e['dropped']} events dropped (monitor too slow)"
    kind = e.get("kind", "")
    parts = [f"{e.get('t', 0):.6f}", e.get("device", ""), _ARROW.get(kind, kind)]
    data = bytes.fromhex(e.get("data", "")).hex(" ")
    if data:
        parts.append(data)
    if e.get("policy"):
        parts.append(f"[{e['policy']}]")
    if e.get("detail"):
        parts.append(e["detail"])
    return "  ".join(parts)
