"""What this kernel (and this libbpf) can do for hidbpfd: ``python -m hidbpfd.kernel.probe``.

The daemon calls :func:`probe` once at startup to pick its sinks and event source; the
BPF tests call it to skip with a reason. Every entry is ``{"ok": bool, "reason": str}``
(plus ``"errno"`` where a system call refused). Most answers come from the kernel's BTF
(:func:`kernel_btf`) and /dev or /sys; two load real programs (the feeder, the tracing
fallback) because only the verifier knows. Results are cached for the life of the process;
``probe(refresh=True)`` asks again.
"""

from __future__ import annotations

import argparse
import ctypes
import errno
import functools
import json
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from hidbpfd.kernel import libbpf as lb
from hidbpfd.kernel.bpf import MAIN_OBJECT
from hidbpfd.kernel.filter_codec import FEED_SIZE

VMLINUX_BTF: Final = Path("/sys/kernel/btf/vmlinux")
HID_MODULE_BTF: Final = Path("/sys/kernel/btf/hid")

KFUNCS: Final = (
    "hid_bpf_allocate_context",
    "hid_bpf_release_context",
    "hid_bpf_get_data",
    "hid_bpf_input_report",
    "hid_bpf_try_input_report",
    "hid_bpf_hw_output_report",
    "hid_bpf_hw_request",
)
TRACE_TARGET: Final = "hid_report_raw_event"
"""Where the tracing fallback hooks: every transport's reports pass there."""
WQ_CALLBACK: Final = "bpf_wq_set_callback"
"""The bpf_wq callback kfunc since Linux 7.0; before, ``bpf_wq_set_callback_impl``."""
FUNCS: Final = (
    *KFUNCS,
    "bpf_wq_init",
    "bpf_wq_start",
    WQ_CALLBACK,
    WQ_CALLBACK + "_impl",
    TRACE_TARGET,
)
"""Every function the probe looks up in the kernel's BTF (the in-kernel engine's kfuncs too)."""
STRUCTS: Final = ("hid_bpf_ops", "bpf_struct_ops_hid_bpf_ops", "bpf_wq", "hid_device")

Check = dict[str, object]


def ok(reason: str) -> Check:
    """A supported feature, with what was found."""
    return {"ok": True, "reason": reason}


def no(reason: str, err: int | None = None) -> Check:
    """A missing feature, with why (and the errno where a call refused)."""
    out: Check = {"ok": False, "reason": reason}
    if err is not None:
        out["errno"] = err
        out["errno_name"] = errno.errorcode.get(err, str(err))
    return out


@dataclass(frozen=True, slots=True)
class KernelBtf:
    """What the kernel's BTF (vmlinux + the hid module) says exists."""

    ok: bool
    reason: str
    funcs: frozenset[str] = frozenset()
    structs: frozenset[str] = frozenset()
    device_event_arity: int | None = None
    """Parameters of ``hid_bpf_ops.hid_device_event`` (3 with ``source``), None if absent."""
    trace_target_arity: int | None = None
    """Parameters of ``hid_report_raw_event`` (6 since Linux 7.0: ``bufsize``), None if absent."""
    ops_value_offset: int | None = None
    """Where ``struct hid_bpf_ops`` starts in a registered HID-BPF struct_ops map's value
    (``bpf_struct_ops_hid_bpf_ops.data``), None if absent (orphans are logged by hid_id)."""

    @property
    def hid_bpf(self) -> bool:
        """HID-BPF struct_ops (Linux 6.11+, CONFIG_HID_BPF)."""
        return "hid_bpf_ops" in self.structs and "hid_bpf_get_data" in self.funcs

    def has_kfuncs(self, *names: str) -> bool:
        """All of ``names`` exist (as BTF functions; the kernel lists kfuncs there)."""
        return all(n in self.funcs for n in names)

    def wq_build(self, obj: Path) -> Path:
        """The build of ``obj`` (a source using ``wq_compat.h``) for this kernel's bpf_wq
        callback kfunc: ``X.bpf.o`` for ``bpf_wq_set_callback`` (7.0+), ``X.wq_impl.bpf.o``
        for the older ``bpf_wq_set_callback_impl``."""
        if WQ_CALLBACK not in self.funcs and WQ_CALLBACK + "_impl" in self.funcs:
            return obj.with_name(obj.name.removesuffix(".bpf.o") + ".wq_impl.bpf.o")
        return obj


@functools.cache
def kernel_btf() -> KernelBtf:
    """Read the facts from /sys/kernel/btf once per process (about 50 ms)."""
    if not VMLINUX_BTF.exists():
        return KernelBtf(
            False, f"{VMLINUX_BTF} missing: kernel built without CONFIG_DEBUG_INFO_BTF"
        )
    try:
        btfs = [lb.Btf(str(VMLINUX_BTF))]
        if HID_MODULE_BTF.exists():
            btfs.append(lb.Btf(str(HID_MODULE_BTF), base=btfs[0]))
    except lb.BpfError as e:
        return KernelBtf(False, str(e))
    try:
        funcs = frozenset(f for f in FUNCS if any(b.find(f, lb.BTF_KIND_FUNC) for b in btfs))
        structs = frozenset(s for s in STRUCTS if any(b.find(s, lb.BTF_KIND_STRUCT) for b in btfs))
        arity = next(
            (a for b in btfs if (a := b.member_func_arity("hid_bpf_ops", "hid_device_event"))),
            None,
        )
        trace_arity = next((a for b in btfs if (a := b.func_arity(TRACE_TARGET))), None)
        ops_off = next(
            (
                o
                for b in btfs
                if (o := b.member_offset("bpf_struct_ops_hid_bpf_ops", "data")) is not None
            ),
            None,
        )
    finally:
        for b in reversed(btfs):
            b.free()
    where = "vmlinux + hid module" if len(btfs) > 1 else "vmlinux"
    return KernelBtf(True, f"{VMLINUX_BTF} ({where})", funcs, structs, arity, trace_arity, ops_off)


def _libbpf_version() -> Check:
    try:
        lib = lb.libbpf()
    except lb.BpfError as e:
        return no(str(e), e.errno)
    if lib.has("libbpf_major_version"):
        major = int(lib.fn("libbpf_major_version")())
        minor = int(lib.fn("libbpf_minor_version")())
        return ok(f"libbpf {major}.{minor}")
    return ok("libbpf (version unknown)")


def _ring_buffer() -> Check:
    try:
        fd = lb.map_create(lb.BPF_MAP_TYPE_RINGBUF, 0, 0, 4096)
    except lb.BpfError as e:
        return no(f"cannot create a BPF ring buffer: {e}", e.errno)
    os.close(fd)
    return ok("BPF_MAP_TYPE_RINGBUF created")


def _load_only(obj_path: Path, programs: Sequence[str]) -> lb.BpfObject:
    """Open the main object and load only ``programs`` (a small ring: this is a probe)."""
    obj = lb.BpfObject.open_file(str(obj_path))
    try:
        for name, prog in obj.programs.items():
            prog.set_autoload(name in programs)
        obj.map("hidbpfd_ring").set_max_entries(4096)
        with lb.capture_log(quiet=True):  # failures are this probe's answer, not warnings
            obj.load()
    except BaseException:
        obj.close()
        raise
    return obj


def _feeder(obj_path: Path) -> Check:
    if not obj_path.exists():
        return no(f"{obj_path} not built. Try: python -m hidbpfd.kernel.bpf.build", errno.ENOENT)
    try:
        obj = _load_only(obj_path, ["hidbpfd_feed"])
    except lb.BpfError as e:
        return no(f"loading the feeder: {e}", e.errno)
    try:
        ctx = ctypes.create_string_buffer(FEED_SIZE)  # struct hidbpfd_feed, no device 0 rules
        ret = lb.prog_test_run(obj.program("hidbpfd_feed").fd, ctx)
    except lb.BpfError as e:
        return no(f"BPF_PROG_RUN of the feeder: {e}", e.errno)
    finally:
        obj.close()
    return ok(f"SEC(syscall) feeder loaded and ran (retval {ret})")


def _tracing(obj_path: Path, btf: KernelBtf) -> Check:
    if not btf.ok:
        return no(btf.reason)
    if TRACE_TARGET not in btf.funcs:
        return no(f"{TRACE_TARGET} not in kernel BTF: no HID core (CONFIG_HID) loaded")
    if not obj_path.exists():
        return no(f"{obj_path} not built. Try: python -m hidbpfd.kernel.bpf.build", errno.ENOENT)
    reasons = []
    first_errno = 0
    for prog, kind in (("hidbpfd_trace_fentry", "fentry"), ("hidbpfd_trace_kprobe", "kprobe")):
        stage = "load"
        try:
            obj = _load_only(obj_path, [prog])
            stage = "attach"
            try:
                with lb.capture_log(quiet=True):
                    obj.program(prog).attach().destroy()
            finally:
                obj.close()
        except lb.BpfError as e:
            err = e.errno or 0
            reasons.append(f"{kind} on {TRACE_TARGET}: {stage} refused: {_errno_text(err)}")
            first_errno = first_errno or err
            continue
        return ok(f"{kind} on {TRACE_TARGET} loads and attaches (observe only)")
    return no("; ".join(reasons), first_errno)


def _errno_text(err: int) -> str:
    return f"{errno.errorcode.get(err, str(err))} ({os.strerror(err)})"


def _dev_node(name: str, module: str, config: str) -> Check:
    node = Path("/dev") / name
    if node.exists():
        return ok(f"{node} present")
    release = os.uname().release
    mods = Path("/lib/modules") / release
    for listing in ("modules.dep", "modules.builtin"):
        try:
            text = (mods / listing).read_text()
        except OSError:
            continue
        if f"/{module}.ko" in text:
            return no(
                f"{node} missing; module {module} available. Try: modprobe {module}", errno.ENOENT
            )
    return no(
        f"{node} missing and no {module} module for {release} ({config} not set?)", errno.ENOENT
    )


def _hidraw() -> Check:
    cls = Path("/sys/class/hidraw")
    if not cls.exists():
        return no("no /sys/class/hidraw: CONFIG_HIDRAW not set or hid not loaded", errno.ENOENT)
    nodes = sorted(p.name for p in cls.iterdir())
    return ok(
        f"hidraw class present, {len(nodes)} device(s)" + (f": {' '.join(nodes)}" if nodes else "")
    )


def _btf_checks(btf: KernelBtf) -> dict[str, Check]:
    out: dict[str, Check] = {"btf": ok(btf.reason) if btf.ok else no(btf.reason, errno.ENOENT)}
    if not btf.ok:
        for key in ("bpf_wq", "hid_bpf_struct_ops", *KFUNCS[3:]):
            out[key] = no("no kernel BTF")
        return out
    out["bpf_wq"] = (
        ok("bpf_wq_init kfunc present (Linux 6.10+)")
        if "bpf_wq_init" in btf.funcs
        else no("bpf_wq_init not in kernel BTF (needs Linux 6.10+)")
    )
    if btf.hid_bpf:
        src = "with" if (btf.device_event_arity or 0) >= 3 else "without"
        out["hid_bpf_struct_ops"] = ok(f"struct hid_bpf_ops present, hid_device_event {src} source")
    elif "hid_device" in btf.structs:
        out["hid_bpf_struct_ops"] = no(
            "struct hid_bpf_ops not in BTF: CONFIG_HID_BPF not set or Linux < 6.11"
        )
    else:
        out["hid_bpf_struct_ops"] = no("no HID in this kernel (struct hid_device not in BTF)")
    for f in KFUNCS[3:]:
        out[f] = ok("kfunc in kernel BTF") if f in btf.funcs else no(f"{f} not in kernel BTF")
    return out


def _probe(obj_path: Path, load: bool) -> dict[str, Check]:
    out: dict[str, Check] = {"kernel": ok(os.uname().release), "libbpf": _libbpf_version()}
    btf = kernel_btf() if out["libbpf"]["ok"] else KernelBtf(False, "libbpf unavailable")
    out.update(_btf_checks(btf))
    bpf_ok = bool(out["libbpf"]["ok"])
    out["ring_buffer"] = _ring_buffer() if bpf_ok else no("libbpf unavailable")
    skipped = "not tried (probe --no-load)"
    bpf_ok = bpf_ok and bool(out["ring_buffer"]["ok"])
    if load and bpf_ok:
        out["feeder"] = _feeder(obj_path)
        out["tracing"] = _tracing(obj_path, btf)
    else:
        reason = skipped if bpf_ok else "BPF unavailable: " + str(out["ring_buffer"]["reason"])
        out["feeder"] = no(reason)
        out["tracing"] = no(reason)
    out["uhid"] = _dev_node("uhid", "uhid", "CONFIG_UHID")
    out["uinput"] = _dev_node("uinput", "uinput", "CONFIG_INPUT_UINPUT")
    out["hidraw"] = _hidraw()
    return out


@functools.cache
def _cached(obj_path: Path, load: bool) -> str:
    return json.dumps(_probe(obj_path, load))


def probe(
    *, obj_path: Path = MAIN_OBJECT, load: bool = True, refresh: bool = False
) -> dict[str, Check]:
    """Every feature as ``{"ok", "reason"[, "errno"]}``; cached per process (a fresh copy
    each call). ``load=False`` skips the checks that load programs (feeder, tracing)."""
    if refresh:
        _cached.cache_clear()
        kernel_btf.cache_clear()
    result: dict[str, Check] = json.loads(_cached(obj_path, load))
    return result


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m hidbpfd.kernel.probe [--no-load] [--compact]``: print the JSON; always exit 0."""
    p = argparse.ArgumentParser(prog="python -m hidbpfd.kernel.probe", description=__doc__)
    p.add_argument("--no-load", action="store_true", help="skip checks that load BPF programs")
    p.add_argument("--object", type=Path, default=MAIN_OBJECT, help="hidbpfd.bpf.o to try")
    p.add_argument("--compact", action="store_true", help="one line")
    args = p.parse_args(argv)
    try:
        result = probe(obj_path=args.object, load=not args.no_load)
    except Exception as e:
        result = {"probe": no(f"probe failed: {type(e).__name__}: {e}")}
    print(json.dumps(result, indent=None if args.compact else 2, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
