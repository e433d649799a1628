"""Clean layers: model, policies, config and the engine import nothing from kernel, devices or
service, the daemon or I/O libraries (STYLE.md rule 7); the pure parsers of devices/ and replay/
(report descriptors, captures, the virtual replay) neither. Checked on the source, so a lazy
import counts too."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[2] / "hidbpfd"
PURE = [
    "model.py",
    "devices/descriptor.py",
    "devices/facts.py",
    "devices/uhid_protocol.py",
    "replay/recording.py",
    "replay/virtual.py",
    *[f"policies/{p.name}" for p in (PKG / "policies").glob("*.py")],
    *[f"config/{p.name}" for p in (PKG / "config").glob("*.py")],
    # the engine, but for its timerfd driver (the one fd the scheduler owns; ctypes for timerfd)
    *[f"engine/{p.name}" for p in (PKG / "engine").glob("*.py") if p.name != "timerfd.py"],
]
# engine/timerfd.py may talk to the kernel (it is the scheduler's clock source) but not to the
# other layers.
LAYERED = {"engine/timerfd.py"}
FORBIDDEN = (
    "hidbpfd.kernel",
    "hidbpfd.devices.udev",
    "hidbpfd.devices.hidraw",
    "hidbpfd.devices.uhid",
    "hidbpfd.devices.uinput",
    "hidbpfd.devices.sinks",
    "hidbpfd.devices.chooser",
    "hidbpfd.devices.uhid_mirror",
    "hidbpfd.service",
    "hidbpfd.replay.via_bpf",
    "hidbpfd.replay.via_uhid",
    "hidbpfd.replay.live",
    "hidbpfd.runtime",
    "hidbpfd.demo",
    "hidbpfd.daemon",
    "hidbpfd.cli",
    "hidbpfd.commands",
    "hidbpfd.vm",
    "hidbpfd.kernel.probe",
    "hidbpfd.bench",
    "asyncio",
    "ctypes",
    "socket",
    "pyudev",
    "evdev",
    "hid",
    "systemd",
    "subprocess",
)


def imports(path: Path) -> set[str]:
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module)
    return out


@pytest.mark.parametrize("rel", sorted(PURE))
def test_pure_module_imports(rel: str) -> None:
    bad = sorted(
        m for m in imports(PKG / rel) if any(m == f or m.startswith(f + ".") for f in FORBIDDEN)
    )
    assert not bad, f"hidbpfd/{rel} imports {bad}"


LAYERS = ("hidbpfd.kernel", "hidbpfd.devices", "hidbpfd.service", "hidbpfd.daemon", "hidbpfd.cli")
LAYERS += ("hidbpfd.commands",)


@pytest.mark.parametrize("rel", sorted(LAYERED))
def test_layered_module_imports(rel: str) -> None:
    bad = sorted(
        m for m in imports(PKG / rel) if any(m == f or m.startswith(f + ".") for f in LAYERS)
    )
    assert not bad, f"hidbpfd/{rel} imports {bad}"


def test_lower_layers_never_import_upper_ones() -> None:
    """kernel/ and devices/ never reach up into service/, the daemon, the CLI or bench/."""
    upper = ("hidbpfd.service", "hidbpfd.daemon", "hidbpfd.cli", "hidbpfd.bench", "hidbpfd.runtime")
    upper += ("hidbpfd.commands",)
    bad = []
    for pkg in ("kernel", "devices"):
        for path in (PKG / pkg).rglob("*.py"):
            for m in imports(path):
                if any(m == f or m.startswith(f + ".") for f in upper):
                    bad.append(f"{path.relative_to(PKG)} imports {m}")
    assert not bad, bad


def test_the_check_sees_imports() -> None:
    """Guard the guard: the scanner does find an import where there is one."""
    assert "hidbpfd.model" in imports(PKG / "engine/filter.py")


# The packages split by meaning: each part may import only the parts listed before it (and never
# its own package's __init__, which re-exports them), so the order below is their layering.
PARTS = {
    "daemon": ("state", "kernel_engine", "programs", "devices", "status", "reload", "lifecycle"),
    "vm": ("setup", "rootfs", "qmp", "command", "boot"),
    "kernel/libbpf": ("library", "syscalls", "objects", "ringbuf", "btf"),
    "bench/devices": (
        "plan",
        "measure",
        "monitors",
        "daemon_process",
        "device",
        "latency",
        "load",
        "programs",
        "results",
        "plotting",
        "runner",
    ),
}


@pytest.mark.parametrize("pkg", sorted(PARTS))
def test_parts_import_only_the_parts_below_them(pkg: str) -> None:
    order = PARTS[pkg]
    dotted = "hidbpfd." + pkg.replace("/", ".")
    assert sorted(
        p.stem for p in (PKG / pkg).glob("*.py") if not p.stem.startswith("__")
    ) == sorted(order), f"hidbpfd/{pkg}/ has parts the layer test does not place"
    bad = []
    for i, part in enumerate(order):
        for m in imports(PKG / pkg / f"{part}.py"):
            if m == dotted:
                bad.append(f"{part} imports its package {m}")
            elif m.startswith(dotted + "."):
                other = m.removeprefix(dotted + ".").split(".", 1)[0]
                if other not in order[:i]:
                    bad.append(f"{part} imports {m}, not below it")
    assert not bad, bad


def test_the_vm_tier_stands_alone() -> None:
    """hidbpfd/vm/ boots a kernel on a host that has none of the rest working: the standard
    library and itself only."""
    bad = [
        f"{path.relative_to(PKG)} imports {m}"
        for path in (PKG / "vm").glob("*.py")
        for m in imports(path)
        if m.startswith("hidbpfd") and not m.startswith("hidbpfd.vm")
    ]
    assert not bad, bad


def test_the_daemon_never_reaches_up() -> None:
    """The daemon's parts serve the CLI, the live replay and the benchmark; never the reverse."""
    upper = ("hidbpfd.cli", "hidbpfd.runtime", "hidbpfd.bench", "hidbpfd.vm", "hidbpfd.demo")
    upper += ("hidbpfd.replay.live", "hidbpfd.commands")
    bad = [
        f"{path.relative_to(PKG)} imports {m}"
        for path in (PKG / "daemon").glob("*.py")
        for m in imports(path)
        if any(m == u or m.startswith(u + ".") for u in upper)
    ]
    assert not bad, bad
