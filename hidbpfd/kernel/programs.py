"""HID-BPF program objects written with ``<hidbpfd/api.h>`` (``[[program]]`` in policy files):
inspect one (``hidbpfd check``), load and attach it on a device, serve its request ring.

An object is loaded once per device (its ``hid_bpf_ops`` struct_ops carries the device's
``hid_id``, written into the ELF image before open, as :mod:`hidbpfd.kernel.source` does for its
own struct_ops), registered through a BPF link (``BPF_F_LINK`` set before load: the kernel
unregisters it when the daemon's link fd closes, however the daemon ends), and its maps are
its own: one request ring, state and key table per (object, device).

An object built for the userspace engine has the ring ``hidbpfd_requests``; one built with
``-DHIDBPFD_ENGINE_KERNEL`` has none, and is only loaded and attached (its work runs in the
kernel).
"""

from __future__ import annotations

import ctypes
import errno
import logging
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from hidbpfd.kernel import libbpf as lb
from hidbpfd.kernel import requests as rq

log = logging.getLogger("hidbpfd.kernel.programs")

OPS_TYPE: Final = "hid_bpf_ops"
BTF_KIND_VAR: Final = 14
BTF_KIND_DATASEC: Final = 15
STRUCT_OPS_SECTIONS: Final = (".struct_ops", ".struct_ops.link")


class ObjectError(ValueError):
    """The object cannot be used as a program: the message says why and what to do."""


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    """What :func:`inspect_object` found in an object file."""

    path: str
    ops_map: str
    """The ``hid_bpf_ops`` struct_ops variable (= its map's name)."""
    engine: str
    """``userspace`` (it has the request ring) or ``kernel``."""
    callbacks: frozenset[str]
    """What ``hidbpfd_call`` may name: its ``SEC("syscall")`` programs (userspace engine),
    its ``HIDBPFD_CALLBACK`` bpf_wq functions (kernel engine)."""


def _struct_ops_types(lib: lb.Libbpf, btf: int) -> dict[str, str]:
    """variable name -> struct type name, for the struct_ops variables of an object's BTF."""
    out: dict[str, str] = {}

    def typ(tid: int) -> tuple[int, int, int, int, str]:
        ptr = lib.check_ptr("btf__type_by_id", lib.fn("btf__type_by_id")(btf, tid))
        name_off, info, size_or_type = struct.unpack("<III", ctypes.string_at(ptr, 12))
        name = lib.fn("btf__name_by_offset")(btf, name_off)
        return ptr, (info >> 24) & 0x1F, info & 0xFFFF, size_or_type, (name or b"").decode()

    for sec in STRUCT_OPS_SECTIONS:
        sid = lib.fn("btf__find_by_name_kind")(btf, sec.encode(), BTF_KIND_DATASEC)
        if sid <= 0:
            continue
        ptr, _kind, vlen, _size, _name = typ(sid)
        # struct btf_var_secinfo { __u32 type; __u32 offset; __u32 size; } after the type
        for i in range(vlen):
            var_id, _off, _sz = struct.unpack("<III", ctypes.string_at(ptr + 12 + 12 * i, 12))
            _p, kind, _v, target, var_name = typ(var_id)
            if kind != BTF_KIND_VAR:
                continue
            out[var_name] = typ(target)[4]
    return out


WQ_CALLBACK_PREFIX: Final = "hidbpfd__wq_"
"""What ``HIDBPFD_CALLBACK(name, ...)`` names the bpf_wq function of a kernel-engine build
(``include/hidbpfd/api_wq.h``)."""


def _wq_callbacks(lib: lb.Libbpf, btf: int) -> frozenset[str]:
    """A kernel-engine object's callbacks: its BTF functions ``hidbpfd__wq_NAME`` (static
    subprograms, not programs: a bpf_wq runs them), as NAME."""
    out = set()
    tid = 1
    while True:  # btf__type_by_id answers NULL past the last type
        ptr = lib.fn("btf__type_by_id")(btf, tid)
        if not ptr:
            break
        name_off, info = struct.unpack("<II", ctypes.string_at(ptr, 8))
        if (info >> 24) & 0x1F == lb.BTF_KIND_FUNC:
            name = (lib.fn("btf__name_by_offset")(btf, name_off) or b"").decode()
            if name.startswith(WQ_CALLBACK_PREFIX):
                out.add(name.removeprefix(WQ_CALLBACK_PREFIX))
        tid += 1
    return frozenset(out)


def inspect_object(path: str | Path, lib: lb.Libbpf | None = None) -> ObjectInfo:
    """Open (never load) ``path`` and say what it is; ObjectError if it is no program for
    ``[[program]]``: unreadable, not a BPF object, no ``hid_bpf_ops`` struct_ops."""
    p = Path(path)
    try:
        with p.open("rb") as f:
            magic = f.read(4)
    except OSError as e:
        raise ObjectError(f"cannot read {p}: {e.strerror}") from e
    if magic != b"\x7fELF":
        raise ObjectError(f"{p} is not a BPF object (no ELF header). Build it: hidbpfd compile")
    lib = lib or lb.libbpf()
    try:
        with lb.capture_log(quiet=True) as lines:
            obj = lb.BpfObject.open_file(str(p), lib)
    except lb.BpfError as e:
        why = "; ".join(lines[-2:]) or str(e)
        raise ObjectError(f"libbpf cannot open {p}: {why}") from e
    try:
        maps = obj.maps
        types = {name: m.type for name, m in maps.items()}
        btf = obj.btf
        ops_types = _struct_ops_types(lib, btf) if btf else {}
        ops = [
            n
            for n, t in types.items()
            if t == lb.BPF_MAP_TYPE_STRUCT_OPS and ops_types.get(n) == OPS_TYPE
        ]
        has_ring = types.get(rq.REQUESTS_MAP) == lb.BPF_MAP_TYPE_RINGBUF
        if has_ring:
            callbacks = frozenset(
                name for name, prog in obj.programs.items() if prog.section == "syscall"
            )
        else:
            callbacks = _wq_callbacks(lib, btf) if btf else frozenset()
    finally:
        obj.close()
    if not ops:
        others = sorted(
            f"{n} ({ops_types.get(n, '?')})"
            for n, t in types.items()
            if t == lb.BPF_MAP_TYPE_STRUCT_OPS
        )
        raise ObjectError(
            f"{p} has no struct_ops of type struct {OPS_TYPE}"
            + (f" (it has {', '.join(others)})" if others else "")
            + '. Declare one: SEC(".struct_ops") struct hid_bpf_ops NAME = { ... }'
        )
    if len(ops) > 1:
        raise ObjectError(f"{p} has {len(ops)} hid_bpf_ops struct_ops ({', '.join(ops)}); use one")
    if has_ring:
        # what the userspace engine needs besides the ring (all declared by <hidbpfd/api.h>)
        need = {rq.STATE_MAP: 2, rq.KEYS_MAP: 1, rq.PASSING_MAP: 2}  # ARRAY, HASH, ARRAY
        bad = sorted(n for n, t in need.items() if types.get(n) != t)
        if bad:
            raise ObjectError(
                f"{p} has the request ring but not the maps {', '.join(bad)} of this "
                "hidbpfd's <hidbpfd/api.h>: rebuild it with hidbpfd compile"
            )
    return ObjectInfo(str(p), ops[0], "userspace" if has_ring else "kernel", callbacks)


class ProgramInstance:
    """One object loaded and attached on one device. Created by the daemon; ``on_record(raw)``
    is called from :meth:`consume` once per request record, in ring order."""

    def __init__(
        self,
        info: ObjectInfo,
        hid_id: int,
        on_record: Callable[[bytes], None],
        *,
        burst: int = 0,
        interval_ns: int = 0,
        attach: bool = True,
    ) -> None:
        self.info = info
        self._attach = attach
        """False: load only (tests on kernels without HID-BPF, with objects that have no
        struct_ops: the request side works the same)."""
        self.hid_id = hid_id
        self._on_record = on_record
        self._obj: lb.BpfObject | None = None
        self._link: lb.StructOpsLink | None = None
        self._ring: lb.RingBuffer | None = None
        self._state_fd = -1
        self._keys_fd = -1
        self._passing_fd = -1
        self._burst = burst
        self._interval_ns = interval_ns

    @property
    def engine(self) -> str:
        """``userspace`` (requests come through the ring) or ``kernel``."""
        return self.info.engine

    @property
    def callbacks(self) -> frozenset[str]:
        """The object's SEC("syscall") programs."""
        return self.info.callbacks

    def load(self) -> None:
        """Load and attach (BpfError with the verifier's last lines on failure)."""
        image = Path(self.info.path).read_bytes()
        if self._attach:
            hid_id = struct.pack("<i", self.hid_id)
            image = lb.elf_patch(image, self.info.ops_map, 0, hid_id)
        obj = lb.BpfObject.open_mem(image)
        try:
            if self._attach:
                obj.map(self.info.ops_map).set_map_flags(lb.BPF_F_LINK)
            with lb.capture_log(quiet=True) as lines:
                try:
                    obj.load()
                except lb.BpfError as e:
                    tail = [ln for ln in lines if ln.strip()][-6:]
                    raise lb.BpfError(
                        f"load {Path(self.info.path).name}", e.errno or 0, " | ".join(tail)
                    ) from e
            if self.info.engine == "userspace":
                # the budget before the program can run; the ring consumer before requests
                self._state_fd = obj.map(rq.STATE_MAP).fd
                self._keys_fd = obj.map(rq.KEYS_MAP).fd
                self._passing_fd = obj.map(rq.PASSING_MAP).fd
                st = rq.State(self._burst, self._interval_ns, 0, 0, 0, 0)
                lb.map_update(self._state_fd, struct.pack("<I", 0), rq.encode_state(st))
                self._ring = lb.RingBuffer(obj.map(rq.REQUESTS_MAP).fd, self._on_record)
            if self._attach:
                self._link = obj.map(self.info.ops_map).attach_struct_ops()
        except BaseException:
            if self._link:
                self._link.destroy()
                self._link = None
            obj.close()
            raise
        self._obj = obj
        log.info(
            "%s %s hid_id %d (%s engine)",
            Path(self.info.path).name,
            "attached to" if self._link else "loaded (not attached) for",
            self.hid_id,
            self.info.engine,
        )

    @property
    def epoll_fd(self) -> int:
        """Readable when requests wait (-1 for a kernel-engine object: nothing to read)."""
        return self._ring.epoll_fd if self._ring else -1

    def consume(self) -> int:
        """Handle every waiting request now; returns how many."""
        return self._ring.consume() if self._ring else 0

    def run_callback(self, name: str, key: int, arg: int) -> int:
        """BPF_PROG_RUN the object's SEC("syscall") program ``name`` with struct
        hidbpfd_call_args; returns its return value. Blocking (it may talk to the device):
        the daemon calls it off the loop."""
        if self._obj is None:
            raise lb.BpfError(f"callback {name}", errno.ENODEV, "object unloaded")
        ctx = ctypes.create_string_buffer(
            struct.pack(rq.CALL_ARGS_FORMAT, self.hid_id, key, arg), rq.CALL_ARGS_SIZE
        )
        return lb.prog_test_run(self._obj.program(name).fd, ctx)

    def program_fd(self, name: str) -> int:
        """The fd of the object's program ``name`` (tests drive its SEC("syscall") programs)."""
        if self._obj is None:
            raise lb.BpfError(f"program {name}", errno.ENODEV, "object unloaded")
        return self._obj.program(name).fd

    def state(self) -> rq.State | None:
        """The state map (counters, budget), or None for a kernel-engine object."""
        if self._state_fd < 0:
            return None
        raw = lb.map_lookup(self._state_fd, struct.pack("<I", 0), rq.STATE_SIZE)
        return rq.decode_state(raw) if raw else None

    def set_passing(self, size: int) -> None:
        """Tell the program that the daemon re-injects a held report of ``size`` bytes now
        (0: done); hidbpfd_defer lets that one report through."""
        if self._passing_fd >= 0:
            lb.map_update(self._passing_fd, struct.pack("<I", 0), struct.pack("<I", size))

    def key_done(self, key: int, ts_ns: int) -> None:
        """Clear ``key`` from the program's pending keys if its arm is still ``ts_ns``."""
        if self._keys_fd < 0:
            return
        k = struct.pack("<I", key)
        v = lb.map_lookup(self._keys_fd, k, 8)
        if v is not None and struct.unpack("<Q", v)[0] == ts_ns:
            lb.map_delete(self._keys_fd, k)

    def close(self) -> None:
        """Detach and unload (idempotent)."""
        if self._ring:
            self._ring.free()
            self._ring = None
        if self._link:
            self._link.destroy()
            self._link = None
        if self._obj:
            self._obj.close()
            self._obj = None
        self._state_fd = self._keys_fd = self._passing_fd = -1


def load_program(path: str, hid_id: int, on_record: Callable[[bytes], None]) -> ProgramInstance:
    """The daemon's program loader: inspect ``path`` (ObjectError) and make its instance for
    ``hid_id`` (then :meth:`ProgramInstance.load`)."""
    return ProgramInstance(inspect_object(path), hid_id, on_record)


def check_object(path: str) -> str | None:
    """For the config loader (``[[program]]``): None if ``path`` is a usable object, else
    what is wrong with it."""
    try:
        inspect_object(path)
    except ObjectError as e:
        return str(e)
    return None
