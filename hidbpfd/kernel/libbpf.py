"""A small typed ctypes layer over the system ``libbpf.so.1`` (written against the 1.1 API).

Used by :mod:`hidbpfd.kernel.source` (the event source) and :mod:`hidbpfd.kernel.probe`. Only what
those need is wrapped; every failure raises :class:`BpfError` naming the libbpf call and
the errno. libbpf's own messages go to the ``hidbpfd.libbpf`` logger, and can be captured
around a call with :func:`capture_log` (the loader uses that to learn which program the
verifier refused).

libbpf conventions (1.0+): functions returning an int return ``-errno``; functions
returning a pointer return NULL and set ``errno``. Functions newer than 1.1 are looked up
with :meth:`Libbpf.has` before use.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno as errno_mod
import functools
import logging
import os
import struct
import threading
from collections.abc import Callable, Iterator
from typing import Final, NamedTuple, cast

from hidbpfd.kernel.clib import CallError, CLibrary

log = logging.getLogger("hidbpfd.libbpf")

LIBBPF_SONAME: Final = "libbpf.so.1"

# enum libbpf_print_level
LIBBPF_WARN: Final = 0
LIBBPF_INFO: Final = 1
LIBBPF_DEBUG: Final = 2

# enum bpf_map_type / bpf_map_update flags (include/uapi/linux/bpf.h)
BPF_MAP_TYPE_STRUCT_OPS: Final = 26
BPF_MAP_TYPE_RINGBUF: Final = 27
BPF_ANY: Final = 0
BPF_NOEXIST: Final = 1
BPF_EXIST: Final = 2
# map_flags: a struct_ops map registered only through a BPF link (BPF_LINK_CREATE), never by
# a map update, so the kernel unregisters it when the link's last fd closes (Linux 6.4+)
BPF_F_LINK: Final = 1 << 13
# enum bpf_attach_type: BPF_LINK_CREATE of a struct_ops map (its fd in place of a program's)
BPF_STRUCT_OPS: Final = 44

# BTF kinds (include/uapi/linux/btf.h)
BTF_KIND_PTR: Final = 2
BTF_KIND_STRUCT: Final = 4
BTF_KIND_ENUM: Final = 6
BTF_KIND_FUNC: Final = 12
BTF_KIND_FUNC_PROTO: Final = 13


class BpfError(CallError):
    """A libbpf or bpf(2) operation failed: ``op`` is the call, ``errno`` the reason."""


# int (*libbpf_print_fn_t)(enum libbpf_print_level level, const char *, va_list ap);
# va_list is passed as a pointer on x86-64 (array type) and aarch64 (large struct).
_PRINT_FN = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p)
# typedef int (*ring_buffer_sample_fn)(void *ctx, void *data, size_t size);
_SAMPLE_FN = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t)

_LEVELS: Final = {
    LIBBPF_WARN: logging.WARNING,
    LIBBPF_INFO: logging.INFO,
    LIBBPF_DEBUG: logging.DEBUG,
}


class _LogRouter:
    """Receives libbpf's print callback; logs each line and feeds any active captures."""

    def __init__(self, libc: ctypes.CDLL) -> None:
        self._vsnprintf = libc.vsnprintf
        self._vsnprintf.argtypes = [
            ctypes.c_char_p,
            ctypes.c_size_t,
            ctypes.c_char_p,
            ctypes.c_void_p,
        ]
        self._vsnprintf.restype = ctypes.c_int
        # one call can carry a whole verifier log; its end (the verdict) matters most
        self._buf = ctypes.create_string_buffer(1 << 20)
        self._lock = threading.Lock()
        self.captures: list[list[str]] = []
        self.quiet = 0  # > 0: inside capture_log(quiet=True), log at DEBUG
        self.callback = _PRINT_FN(self._print)

    def _print(self, level: int, fmt: bytes | None, ap: int | None) -> int:
        if fmt is None:
            return 0
        with self._lock:
            n = self._vsnprintf(self._buf, len(self._buf), fmt, ap)
            text = self._buf.value.decode(errors="replace").rstrip("\n")
            for cap in self.captures:
                cap.extend(text.splitlines())
        if text:
            log.log(logging.DEBUG if self.quiet else _LEVELS.get(level, logging.DEBUG), "%s", text)
        return int(n)


# struct bpf_test_run_opts (bpf/bpf.h, libbpf 1.1)
class _TestRunOpts(ctypes.Structure):
    _fields_ = (
        ("sz", ctypes.c_size_t),
        ("data_in", ctypes.c_void_p),
        ("data_out", ctypes.c_void_p),
        ("data_size_in", ctypes.c_uint32),
        ("data_size_out", ctypes.c_uint32),
        ("ctx_in", ctypes.c_void_p),
        ("ctx_out", ctypes.c_void_p),
        ("ctx_size_in", ctypes.c_uint32),
        ("ctx_size_out", ctypes.c_uint32),
        ("retval", ctypes.c_uint32),
        ("repeat", ctypes.c_int),
        ("duration", ctypes.c_uint32),
        ("flags", ctypes.c_uint32),
        ("cpu", ctypes.c_uint32),
        ("batch_size", ctypes.c_uint32),
    )


_VP = ctypes.c_void_p
_CP = ctypes.c_char_p
_I = ctypes.c_int
_U32 = ctypes.c_uint32
_SZ = ctypes.c_size_t

# name: (restype, argtypes). Pointer results are c_void_p (never the default int).
_PROTOS: Final[dict[str, tuple[object, list[object]]]] = {
    "libbpf_set_print": (_VP, [_PRINT_FN]),
    "libbpf_num_possible_cpus": (_I, []),
    "libbpf_major_version": (_U32, []),
    "libbpf_minor_version": (_U32, []),
    "libbpf_get_error": (ctypes.c_long, [_VP]),
    "bpf_object__open_file": (_VP, [_CP, _VP]),
    "bpf_object__open_mem": (_VP, [_VP, _SZ, _VP]),
    "bpf_object__load": (_I, [_VP]),
    "bpf_object__close": (None, [_VP]),
    "bpf_object__next_program": (_VP, [_VP, _VP]),
    "bpf_object__next_map": (_VP, [_VP, _VP]),
    "bpf_program__name": (_CP, [_VP]),
    "bpf_program__section_name": (_CP, [_VP]),
    "bpf_program__set_autoload": (_I, [_VP, ctypes.c_bool]),
    "bpf_program__autoload": (ctypes.c_bool, [_VP]),
    "bpf_program__fd": (_I, [_VP]),
    "bpf_program__attach": (_VP, [_VP]),
    "bpf_map__name": (_CP, [_VP]),
    "bpf_map__type": (_I, [_VP]),
    "bpf_object__btf": (_VP, [_VP]),
    "bpf_map__fd": (_I, [_VP]),
    "bpf_map__set_max_entries": (_I, [_VP, _U32]),
    "bpf_map__max_entries": (_U32, [_VP]),
    "bpf_map__value_size": (_U32, [_VP]),
    "bpf_map__key_size": (_U32, [_VP]),
    "bpf_map__reuse_fd": (_I, [_VP, _I]),
    "bpf_map__set_autocreate": (_I, [_VP, ctypes.c_bool]),
    "bpf_map__initial_value": (_VP, [_VP, ctypes.POINTER(_SZ)]),
    "bpf_map__set_initial_value": (_I, [_VP, _VP, _SZ]),
    "bpf_map__set_map_flags": (_I, [_VP, _U32]),
    "bpf_map__map_flags": (_U32, [_VP]),
    "bpf_map__attach_struct_ops": (_VP, [_VP]),
    "bpf_link__destroy": (_I, [_VP]),
    "bpf_link__disconnect": (None, [_VP]),
    "bpf_link__fd": (_I, [_VP]),
    "bpf_link_create": (_I, [_I, _I, _I, _VP]),
    "bpf_map_get_next_id": (_I, [_U32, ctypes.POINTER(_U32)]),
    "bpf_map_get_fd_by_id": (_I, [_U32]),
    "bpf_obj_get": (_I, [_CP]),
    "bpf_obj_pin": (_I, [_I, _CP]),
    "bpf_obj_get_info_by_fd": (_I, [_I, _VP, ctypes.POINTER(_U32)]),
    "bpf_map_update_elem": (_I, [_I, _VP, _VP, ctypes.c_uint64]),
    "bpf_map_lookup_elem": (_I, [_I, _VP, _VP]),
    "bpf_map_delete_elem": (_I, [_I, _VP]),
    "bpf_map_create": (_I, [_I, _CP, _U32, _U32, _U32, _VP]),
    "bpf_prog_test_run_opts": (_I, [_I, ctypes.POINTER(_TestRunOpts)]),
    "ring_buffer__new": (_VP, [_I, _SAMPLE_FN, _VP, _VP]),
    "ring_buffer__free": (None, [_VP]),
    "ring_buffer__add": (_I, [_VP, _I, _SAMPLE_FN, _VP]),
    "ring_buffer__consume": (_I, [_VP]),
    "ring_buffer__poll": (_I, [_VP, _I]),
    "ring_buffer__epoll_fd": (_I, [_VP]),
    "btf__parse": (_VP, [_CP, _VP]),
    "btf__parse_split": (_VP, [_CP, _VP]),
    "btf__free": (None, [_VP]),
    "btf__find_by_name_kind": (ctypes.c_int32, [_VP, _CP, _U32]),
    "btf__type_by_id": (_VP, [_VP, _U32]),
    "btf__name_by_offset": (_CP, [_VP, _U32]),
}


class Libbpf(CLibrary):
    """The loaded ``libbpf.so.1`` with typed prototypes. Get it with :func:`libbpf`.
    :meth:`has` answers for calls newer than 1.1."""

    def __init__(self, path: str = LIBBPF_SONAME) -> None:
        super().__init__(path, _PROTOS, BpfError, "apt install libbpf1", "not in this libbpf")
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        self.router = _LogRouter(libc)
        self.fn("libbpf_set_print")(self.router.callback)

    def check(self, op: str, ret: int) -> int:
        """Raise for a negative int result (libbpf returns -errno), else return it."""
        if ret < 0:
            raise BpfError(op, -ret)
        return ret

    def check_ptr(self, op: str, ptr: int | None) -> int:
        """Raise with ``errno`` for a NULL pointer result, else return it."""
        if not ptr:
            raise BpfError(op, ctypes.get_errno())
        return ptr


@functools.cache
def libbpf() -> Libbpf:
    """The process-wide library handle (its print callback must stay alive with it)."""
    return Libbpf()


@contextlib.contextmanager
def capture_log(*, quiet: bool = False) -> Iterator[list[str]]:
    """Collect libbpf's messages printed inside the ``with`` block. They are logged too,
    at DEBUG with ``quiet`` (for attempts whose failure the caller reports itself)."""
    router = libbpf().router
    lines: list[str] = []
    router.captures.append(lines)
    router.quiet += quiet
    try:
        yield lines
    finally:
        router.quiet -= quiet
        router.captures.remove(lines)


def _name(p: bytes | None) -> str:
    return p.decode() if p else ""


class Link:
    """An attachment (``struct bpf_link``); :meth:`destroy` detaches."""

    def __init__(self, lib: Libbpf, ptr: int, what: str) -> None:
        self._lib = lib
        self._ptr: int | None = ptr
        self.what = what

    def destroy(self) -> None:
        """Detach; safe to call twice."""
        if self._ptr:
            self._lib.fn("bpf_link__destroy")(self._ptr)
            self._ptr = None


class Program:
    """One program of a :class:`BpfObject`."""

    def __init__(self, lib: Libbpf, ptr: int) -> None:
        self._lib = lib
        self._ptr = ptr
        self.name = _name(lib.fn("bpf_program__name")(ptr))
        self.section = _name(lib.fn("bpf_program__section_name")(ptr))

    @property
    def autoload(self) -> bool:
        """Whether :meth:`BpfObject.load` loads this program."""
        return bool(self._lib.fn("bpf_program__autoload")(self._ptr))

    def set_autoload(self, on: bool) -> None:
        """Include or skip this program at load (before :meth:`BpfObject.load` only)."""
        self._lib.check(
            f"bpf_program__set_autoload({self.name})",
            self._lib.fn("bpf_program__set_autoload")(self._ptr, on),
        )

    @property
    def fd(self) -> int:
        """The loaded program's fd (BpfError before load or when skipped)."""
        return self._lib.check(
            f"bpf_program__fd({self.name})", self._lib.fn("bpf_program__fd")(self._ptr)
        )

    def attach(self) -> Link:
        """Attach by section name (fentry/kprobe/...)."""
        ptr = self._lib.fn("bpf_program__attach")(self._ptr)
        return Link(
            self._lib, self._lib.check_ptr(f"bpf_program__attach({self.name})", ptr), self.name
        )


class Map:
    """One map of a :class:`BpfObject`."""

    def __init__(self, lib: Libbpf, ptr: int) -> None:
        self._lib = lib
        self._ptr = ptr
        self.name = _name(lib.fn("bpf_map__name")(ptr))

    @property
    def fd(self) -> int:
        """The map's fd (valid after load, or after :meth:`reuse_fd`)."""
        return self._lib.check(f"bpf_map__fd({self.name})", self._lib.fn("bpf_map__fd")(self._ptr))

    @property
    def type(self) -> int:
        """``enum bpf_map_type`` of the map definition (BPF_MAP_TYPE_*)."""
        return int(self._lib.fn("bpf_map__type")(self._ptr))

    @property
    def value_size(self) -> int:
        """``value_size`` of the map definition."""
        return int(self._lib.fn("bpf_map__value_size")(self._ptr))

    def set_max_entries(self, n: int) -> None:
        """Resize before load (a ring buffer's size in bytes: a power-of-2 page multiple)."""
        self._lib.check(
            f"bpf_map__set_max_entries({self.name})",
            self._lib.fn("bpf_map__set_max_entries")(self._ptr, n),
        )

    def reuse_fd(self, fd: int) -> None:
        """Use an existing map (of another object) instead of creating one at load."""
        self._lib.check(
            f"bpf_map__reuse_fd({self.name})", self._lib.fn("bpf_map__reuse_fd")(self._ptr, fd)
        )

    def initial_value(self) -> bytes:
        """The initial contents of a global-data map (``.rodata``, ``.data``)."""
        size = ctypes.c_size_t()
        ptr = self._lib.fn("bpf_map__initial_value")(self._ptr, ctypes.byref(size))
        self._lib.check_ptr(f"bpf_map__initial_value({self.name})", ptr)
        return ctypes.string_at(ptr, size.value)

    def set_initial_value(self, data: bytes) -> None:
        """Replace the initial contents of a global-data map, before load."""
        buf = ctypes.create_string_buffer(data, len(data))
        ret = self._lib.fn("bpf_map__set_initial_value")(self._ptr, buf, len(data))
        self._lib.check(f"bpf_map__set_initial_value({self.name})", ret)

    @property
    def map_flags(self) -> int:
        """``map_flags`` of the map definition (as it will be, or was, created)."""
        return int(self._lib.fn("bpf_map__map_flags")(self._ptr))

    def set_map_flags(self, flags: int) -> None:
        """Set ``map_flags`` before load (e.g. :data:`BPF_F_LINK` on a struct_ops map: what
        ``SEC(".struct_ops.link")`` does in libbpf 1.2+, which 1.1 does not know)."""
        self._lib.check(
            f"bpf_map__set_map_flags({self.name})",
            self._lib.fn("bpf_map__set_map_flags")(self._ptr, flags),
        )

    def attach_struct_ops(self) -> StructOpsLink:
        """Register a loaded struct_ops map with its subsystem (e.g. HID-BPF) through a BPF
        link. The map must have been created with :data:`BPF_F_LINK` (:meth:`set_map_flags`
        before load): a map registered by a map update outlives the process, a link does not.

        libbpf 1.1's ``bpf_map__attach_struct_ops`` only writes the value (on a BPF_F_LINK map
        the kernel prepares it, registers nothing) and hands back the map's fd; the link is
        then ``bpf_link_create(map_fd, 0, BPF_STRUCT_OPS)``. libbpf 1.2+ makes the link itself.
        Either way the caller owns one link fd, closed by :meth:`StructOpsLink.destroy`."""
        map_fd = self.fd
        if not map_info(map_fd).map_flags & BPF_F_LINK:
            raise BpfError(
                f"attach_struct_ops({self.name})",
                errno_mod.EINVAL,
                "map created without BPF_F_LINK (set_map_flags before load)",
            )
        lib = self._lib
        ptr = lib.check_ptr(
            f"bpf_map__attach_struct_ops({self.name})",
            lib.fn("bpf_map__attach_struct_ops")(self._ptr),
        )
        link_fd = lib.fn("bpf_link__fd")(ptr)
        if link_fd >= 0 and link_fd != map_fd:  # libbpf 1.2+: a real link; keep our own fd
            try:
                fd = os.dup(link_fd)
            finally:
                lib.fn("bpf_link__destroy")(ptr)
            return StructOpsLink(fd, self.name)
        lib.fn("bpf_link__disconnect")(ptr)  # libbpf 1.1: free its record, detach nothing
        lib.fn("bpf_link__destroy")(ptr)
        ret = lib.fn("bpf_link_create")(map_fd, 0, BPF_STRUCT_OPS, None)
        return StructOpsLink(
            lib.check(f"bpf_link_create({self.name}, BPF_STRUCT_OPS)", ret), self.name
        )


class StructOpsLink:
    """A struct_ops registered through a BPF link (:meth:`Map.attach_struct_ops`). The kernel
    unregisters it when the link's last fd closes: :meth:`destroy`, or the process's exit,
    however it exits (SIGKILL, a crash in a C library). Never a map ``delete_elem``."""

    def __init__(self, fd: int, what: str) -> None:
        self.fd = fd
        self.what = what

    def destroy(self) -> None:
        """Close the link (unregisters, e.g. ``hid_bpf_unreg``); safe to call twice."""
        if self.fd >= 0:
            fd, self.fd = self.fd, -1
            os.close(fd)


class BpfObject:
    """An opened BPF ELF object: set autoloads and maps up, then :meth:`load`."""

    def __init__(self, lib: Libbpf, ptr: int, keep: object = None) -> None:
        self._lib = lib
        self._ptr: int | None = ptr
        self._keep = keep  # open_mem's buffer must outlive the object
        self.programs: dict[str, Program] = {}
        self.maps: dict[str, Map] = {}
        p: int | None = None
        while p := lib.fn("bpf_object__next_program")(ptr, p):
            prog = Program(lib, p)
            self.programs[prog.name] = prog
        m: int | None = None
        while m := lib.fn("bpf_object__next_map")(ptr, m):
            mp = Map(lib, m)
            self.maps[mp.name] = mp

    @classmethod
    def open_file(cls, path: str, lib: Libbpf | None = None) -> BpfObject:
        """Open (parse, not load) an object file."""
        lib = lib or libbpf()
        ptr = lib.fn("bpf_object__open_file")(path.encode(), None)
        return cls(lib, lib.check_ptr(f"bpf_object__open_file({path})", ptr))

    @classmethod
    def open_mem(cls, image: bytes, lib: Libbpf | None = None) -> BpfObject:
        """Open an object from an ELF image in memory (e.g. one patched by :func:`elf_patch`)."""
        lib = lib or libbpf()
        buf = ctypes.create_string_buffer(image, len(image))
        ptr = lib.fn("bpf_object__open_mem")(buf, len(image), None)
        return cls(lib, lib.check_ptr("bpf_object__open_mem", ptr), keep=buf)

    @property
    def btf(self) -> int | None:
        """The object's own BTF (a ``struct btf *`` for the ``btf__*`` calls), or None."""
        assert self._ptr is not None, "object closed"
        ptr = self._lib.fn("bpf_object__btf")(self._ptr)
        return int(ptr) if ptr else None

    def program(self, name: str) -> Program:
        """The program ``name`` (KeyError names the ones there are)."""
        try:
            return self.programs[name]
        except KeyError:
            raise KeyError(f"no program {name!r} in object (has {sorted(self.programs)})") from None

    def map(self, name: str) -> Map:
        """The map ``name``; internal maps also answer to their suffix (``.rodata``)."""
        if name in self.maps:
            return self.maps[name]
        for mname, mp in self.maps.items():
            if name.startswith(".") and mname.endswith(name):
                return mp
        raise KeyError(f"no map {name!r} in object (has {sorted(self.maps)})")

    def load(self) -> None:
        """Create maps, load the autoload programs; BpfError carries libbpf's last lines."""
        assert self._ptr is not None, "object closed"
        with capture_log() as lines:
            ret = self._lib.fn("bpf_object__load")(self._ptr)
        release_heap()
        if ret < 0:
            raise BpfError("bpf_object__load", -ret, "; ".join(lines[-3:]))

    def close(self) -> None:
        """Unload everything this object loaded (maps reused from elsewhere stay)."""
        if self._ptr:
            self._lib.fn("bpf_object__close")(self._ptr)
            self._ptr = None
            self.programs.clear()
            self.maps.clear()


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    try:
        fn = ctypes.CDLL(None).malloc_trim  # glibc; musl has none
    except (AttributeError, OSError):
        return None
    fn.argtypes = [ctypes.c_size_t]
    fn.restype = ctypes.c_int
    return cast("Callable[[int], int]", fn)


def release_heap() -> None:
    """Give the C heap's free memory back to the kernel (glibc ``malloc_trim``).

    bpf_object__load parses the kernel's BTF (vmlinux: ~10 MB here) for CO-RE and frees it;
    glibc keeps the freed pages, so without this a daemon that loaded a few objects stays
    ~12 MB larger than it needs to be (measured: 44 -> 32 MB RSS once READY). Cheap (the
    heap is small) and called only after loads."""
    if (fn := _malloc_trim()) is not None:
        fn(0)


def elf_patch(image: bytes, symbol: str, offset: int, data: bytes) -> bytes:
    """Return ``image`` (an ELF64 little-endian object) with ``data`` written at ``offset``
    into the object of ``symbol``. Used to set a struct_ops member before open, which
    libbpf 1.1 offers no API for."""
    # Elf64_Ehdr: e_shoff at 0x28 (u64); e_shentsize, e_shnum, e_shstrndx at 0x3a (u16 x3)
    if image[:4] != b"\x7fELF" or image[4] != 2 or image[5] != 1:
        raise ValueError("not an ELF64 little-endian object")
    (shoff,) = struct.unpack_from("<Q", image, 0x28)
    shentsize, shnum = struct.unpack_from("<HH", image, 0x3A)
    # Elf64_Shdr: name, type (u32); flags, addr, offset, size (u64); link, info (u32); ...
    sections = [struct.unpack_from("<IIQQQQII", image, shoff + i * shentsize) for i in range(shnum)]
    symtab = next((s for s in sections if s[1] == 2), None)  # SHT_SYMTAB
    if symtab is None:
        raise ValueError("no symbol table")
    strtab_off = sections[symtab[6]][4]
    # Elf64_Sym: name (u32), info, other (u8), shndx (u16), value, size (u64): 24 bytes
    for off in range(symtab[4], symtab[4] + symtab[5], 24):
        name_off, _info, _other, shndx, value, size = struct.unpack_from("<IBBHQQ", image, off)
        end = image.index(b"\0", strtab_off + name_off)
        if image[strtab_off + name_off : end].decode() != symbol:
            continue
        if offset + len(data) > size:
            raise ValueError(f"{symbol} is {size} bytes; cannot write {len(data)} at {offset}")
        pos = sections[shndx][4] + value + offset
        return image[:pos] + data + image[pos + len(data) :]
    raise ValueError(f"no symbol {symbol!r}")


# ----------------------------------------------------------------- map and prog by fd


def map_update(fd: int, key: bytes, value: bytes, flags: int = BPF_ANY) -> None:
    """``bpf_map_update_elem``; an existing HASH value is replaced atomically."""
    lib = libbpf()
    lib.check("bpf_map_update_elem", lib.fn("bpf_map_update_elem")(fd, key, value, flags))


def map_lookup(fd: int, key: bytes, value_size: int) -> bytes | None:
    """``bpf_map_lookup_elem``: the value, or None if there is no such key."""
    lib = libbpf()
    buf = ctypes.create_string_buffer(value_size)
    ret = lib.fn("bpf_map_lookup_elem")(fd, key, buf)
    if ret == -errno_mod.ENOENT:
        return None
    lib.check("bpf_map_lookup_elem", ret)
    return buf.raw


def map_delete(fd: int, key: bytes) -> bool:
    """``bpf_map_delete_elem``: True if the key was there."""
    lib = libbpf()
    ret = lib.fn("bpf_map_delete_elem")(fd, key)
    if ret == -errno_mod.ENOENT:
        return False
    lib.check("bpf_map_delete_elem", ret)
    return True


def map_create(map_type: int, key_size: int, value_size: int, max_entries: int) -> int:
    """``bpf_map_create`` without BTF; returns the fd (the caller closes it)."""
    lib = libbpf()
    ret = lib.fn("bpf_map_create")(map_type, None, key_size, value_size, max_entries, None)
    return lib.check("bpf_map_create", ret)


class MapInfo(NamedTuple):
    """The start of ``struct bpf_map_info`` (what BPF_OBJ_GET_INFO_BY_FD says of a map)."""

    type: int
    id: int
    key_size: int
    value_size: int
    max_entries: int
    map_flags: int
    name: str


# struct bpf_map_info { __u32 type, id, key_size, value_size, max_entries, map_flags;
# 	char name[BPF_OBJ_NAME_LEN]; __u32 ifindex; __u32 btf_vmlinux_value_type_id;
# 	__u64 netns_dev, netns_ino; __u32 btf_id, btf_key_type_id, btf_value_type_id,
# 	btf_vmlinux_id; __u64 map_extra; }  (88 bytes; we read the first 40)
_MAP_INFO: Final = struct.Struct("<6I16s")
_MAP_INFO_SIZE: Final = 88


def map_info(fd: int) -> MapInfo:
    """``bpf_obj_get_info_by_fd`` of a map fd."""
    lib = libbpf()
    buf = ctypes.create_string_buffer(_MAP_INFO_SIZE)
    size = ctypes.c_uint32(_MAP_INFO_SIZE)
    lib.check(
        "bpf_obj_get_info_by_fd", lib.fn("bpf_obj_get_info_by_fd")(fd, buf, ctypes.byref(size))
    )
    typ, map_id, key_size, value_size, max_entries, flags, name = _MAP_INFO.unpack_from(buf.raw)
    text = name.split(b"\0", 1)[0].decode(errors="replace")
    return MapInfo(typ, map_id, key_size, value_size, max_entries, flags, text)


def map_ids() -> Iterator[int]:
    """The id of every BPF map in the system (BPF_MAP_GET_NEXT_ID; needs CAP_SYS_ADMIN)."""
    lib = libbpf()
    nxt = ctypes.c_uint32(0)
    cur = 0
    while True:
        ret = lib.fn("bpf_map_get_next_id")(cur, ctypes.byref(nxt))
        if ret == -errno_mod.ENOENT:
            return
        lib.check("bpf_map_get_next_id", ret)
        cur = nxt.value
        yield cur


def map_fd_by_id(map_id: int) -> int | None:
    """An fd of map ``map_id`` (the caller closes it), or None if it is gone meanwhile."""
    lib = libbpf()
    ret = lib.fn("bpf_map_get_fd_by_id")(map_id)
    if ret == -errno_mod.ENOENT:
        return None
    return lib.check(f"bpf_map_get_fd_by_id({map_id})", ret)


def obj_get(path: str) -> int:
    """An fd (the caller closes it) of the BPF object pinned at ``path`` in a bpffs
    (``BPF_OBJ_GET``, read and write: the pin's file mode must let this user read and write
    it). BpfError (ENOENT, EACCES, ...) naming the path."""
    lib = libbpf()
    return lib.check(f"bpf_obj_get({path})", lib.fn("bpf_obj_get")(path.encode()))


def obj_pin(fd: int, path: str) -> None:
    """Pin the map, program or link ``fd`` at ``path`` in a bpffs (``BPF_OBJ_PIN``): it lives
    on after every fd closes, until the file is removed."""
    lib = libbpf()
    lib.check(f"bpf_obj_pin({path})", lib.fn("bpf_obj_pin")(fd, path.encode()))


def prog_test_run(prog_fd: int, ctx: ctypes.Array[ctypes.c_char]) -> int:
    """BPF_PROG_RUN a ``SEC("syscall")`` program once with ``ctx`` as its context (the
    kernel copies it back into ``ctx``). Returns the program's return value (signed).
    The kernel refuses (EINVAL) ``repeat``, ``ctx_out`` or data buffers for this type."""
    lib = libbpf()
    opts = _TestRunOpts(sz=ctypes.sizeof(_TestRunOpts))
    opts.ctx_in = ctypes.addressof(ctx)
    opts.ctx_size_in = len(ctx)
    lib.check(
        "bpf_prog_test_run_opts", lib.fn("bpf_prog_test_run_opts")(prog_fd, ctypes.byref(opts))
    )
    return ctypes.c_int32(opts.retval).value


def num_possible_cpus() -> int:
    """How many slots a per-CPU map value has."""
    lib = libbpf()
    return lib.check("libbpf_num_possible_cpus", lib.fn("libbpf_num_possible_cpus")())


# ---------------------------------------------------------------------- ring buffer


class RingBuffer:
    """A consumer of one BPF ring buffer map. ``on_sample(bytes)`` runs inside
    :meth:`consume`/:meth:`poll`, once per record; an exception it raises stops the drain
    and is re-raised from there (records after it stay in the ring)."""

    def __init__(self, map_fd: int, on_sample: Callable[[bytes], None]) -> None:
        self._lib = libbpf()
        self._on_sample = on_sample
        self._error: BaseException | None = None
        self._cb = _SAMPLE_FN(self._sample)  # kept alive as long as the ring
        ptr = self._lib.fn("ring_buffer__new")(map_fd, self._cb, None, None)
        self._ptr: int | None = self._lib.check_ptr("ring_buffer__new", ptr)

    def _sample(self, _ctx: int | None, data: int | None, size: int) -> int:
        try:
            self._on_sample(ctypes.string_at(data or 0, size))
        except BaseException as e:
            self._error = e
            return -errno_mod.ECANCELED
        return 0

    def add(self, map_fd: int) -> None:
        """Consume another ring buffer map too, through the same ``on_sample`` and epoll fd
        (drained after the first map, in the order added)."""
        assert self._ptr is not None, "ring buffer freed"
        ret = self._lib.fn("ring_buffer__add")(self._ptr, map_fd, self._cb, None)
        self._lib.check("ring_buffer__add", ret)

    @property
    def epoll_fd(self) -> int:
        """An fd that becomes readable when records are waiting (for ``add_reader``)."""
        assert self._ptr is not None, "ring buffer freed"
        return self._lib.check(
            "ring_buffer__epoll_fd", self._lib.fn("ring_buffer__epoll_fd")(self._ptr)
        )

    def _finish(self, op: str, ret: int) -> int:
        if self._error is not None:
            err, self._error = self._error, None
            raise err
        return self._lib.check(op, ret)

    def consume(self) -> int:
        """Handle every waiting record now, without blocking; returns how many."""
        assert self._ptr is not None, "ring buffer freed"
        return self._finish("ring_buffer__consume", self._lib.fn("ring_buffer__consume")(self._ptr))

    def poll(self, timeout_ms: int) -> int:
        """Wait up to ``timeout_ms`` for records, then handle them; returns how many."""
        assert self._ptr is not None, "ring buffer freed"
        return self._finish(
            "ring_buffer__poll", self._lib.fn("ring_buffer__poll")(self._ptr, timeout_ms)
        )

    def free(self) -> None:
        """Release the consumer (the map stays); safe to call twice."""
        if self._ptr:
            self._lib.fn("ring_buffer__free")(self._ptr)
            self._ptr = None


# ------------------------------------------------------------------------------ BTF


class Btf:
    """Parsed BTF (``/sys/kernel/btf/vmlinux``, or a module's split on top of it)."""

    def __init__(self, path: str, base: Btf | None = None) -> None:
        self._lib = libbpf()
        self.base = base  # split BTF points into its base: keep it alive
        if base is None:
            ptr = self._lib.fn("btf__parse")(path.encode(), None)
        else:
            ptr = self._lib.fn("btf__parse_split")(path.encode(), base._ptr)
        self._ptr: int | None = self._lib.check_ptr(f"btf__parse({path})", ptr)

    def find(self, name: str, kind: int) -> int:
        """The type id of ``name`` of ``kind`` (BTF_KIND_*), or 0 if absent."""
        ret = self._lib.fn("btf__find_by_name_kind")(self._ptr, name.encode(), kind)
        return ret if ret > 0 else 0

    def _type(self, type_id: int) -> tuple[int, int, int, int]:
        """(address, kind, vlen, size_or_type) of ``struct btf_type`` ``type_id``."""
        ptr = self._lib.check_ptr(
            "btf__type_by_id", self._lib.fn("btf__type_by_id")(self._ptr, type_id)
        )
        # struct btf_type { __u32 name_off; __u32 info; union { __u32 size; __u32 type; }; }
        _name_off, info, size_or_type = struct.unpack("<III", ctypes.string_at(ptr, 12))
        return ptr, (info >> 24) & 0x1F, info & 0xFFFF, size_or_type

    def member_func_arity(self, struct_name: str, member: str) -> int | None:
        """Parameters of function-pointer member ``member`` of ``struct_name``, or None."""
        sid = self.find(struct_name, BTF_KIND_STRUCT)
        if not sid:
            return None
        ptr, _kind, vlen, _size = self._type(sid)
        # struct btf_member { __u32 name_off; __u32 type; __u32 offset; } follows the type
        for i in range(vlen):
            name_off, mtype, _off = struct.unpack("<III", ctypes.string_at(ptr + 12 + 12 * i, 12))
            if _name(self._lib.fn("btf__name_by_offset")(self._ptr, name_off)) != member:
                continue
            _p, kind, _v, target = self._type(mtype)
            if kind != BTF_KIND_PTR:
                return None
            _p, kind, nparams, _r = self._type(target)
            return nparams if kind == BTF_KIND_FUNC_PROTO else None
        return None

    def member_offset(self, struct_name: str, member: str) -> int | None:
        """Byte offset of member ``member`` of ``struct_name``, or None if either is absent."""
        sid = self.find(struct_name, BTF_KIND_STRUCT)
        if not sid:
            return None
        ptr, _kind, vlen, _size = self._type(sid)
        kind_flag = struct.unpack("<I", ctypes.string_at(ptr + 4, 4))[0] >> 31
        for i in range(vlen):
            name_off, _t, off = struct.unpack("<III", ctypes.string_at(ptr + 12 + 12 * i, 12))
            if _name(self._lib.fn("btf__name_by_offset")(self._ptr, name_off)) == member:
                # kind_flag: the top 8 bits are a bitfield's size, the offset the low 24 (bits)
                return int(off & 0xFFFFFF if kind_flag else off) // 8
        return None

    def func_arity(self, name: str) -> int | None:
        """Parameters of kernel function ``name``, or None if BTF does not list it."""
        fid = self.find(name, BTF_KIND_FUNC)
        if not fid:
            return None
        _p, _kind, _vlen, proto = self._type(fid)
        _p, kind, nparams, _r = self._type(proto)
        return nparams if kind == BTF_KIND_FUNC_PROTO else None

    def free(self) -> None:
        """Release the parsed BTF."""
        if self._ptr:
            self._lib.fn("btf__free")(self._ptr)
            self._ptr = None
