"""A small typed ctypes layer over the system ``libbpf.so.1`` (written against the 1.1 API).

Used by :mod:`hidbpfd.kernel.source` (the event source) and :mod:`hidbpfd.kernel.probe`. Only what
those need is wrapped; every failure raises :class:`BpfError` naming the libbpf call and
the errno. libbpf's own messages go to the ``hidbpfd.libbpf`` logger, and can be captured
around a call with :func:`capture_log` (the loader uses that to learn which program the
verifier refused).

libbpf conventions (1.0+): functions returning an int return ``-errno``; functions
returning a pointer return NULL and set ``errno``. Functions newer than 1.1 are looked up
with :meth:`Libbpf.has` before use.

This part holds the library itself (its prototypes, loading, log routing) and the constants;
the rest of the package builds on it: :mod:`.syscalls` (maps and programs by fd),
:mod:`.objects` (BPF ELF objects, their programs, maps and links), :mod:`.ringbuf` (the ring
buffer consumer) and :mod:`.btf` (kernel BTF). Import the names from the package,
:mod:`hidbpfd.kernel.libbpf`.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import logging
import threading
from collections.abc import Callable, Iterator
from typing import Final, cast

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
SAMPLE_FN = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t)

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
class TestRunOpts(ctypes.Structure):
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
    "bpf_prog_test_run_opts": (_I, [_I, ctypes.POINTER(TestRunOpts)]),
    "ring_buffer__new": (_VP, [_I, SAMPLE_FN, _VP, _VP]),
    "ring_buffer__free": (None, [_VP]),
    "ring_buffer__add": (_I, [_VP, _I, SAMPLE_FN, _VP]),
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


def cstr(p: bytes | None) -> str:
    """A C string result (``const char *``) as text; NULL reads as \"\"."""
    return p.decode() if p else ""


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
