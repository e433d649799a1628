"""Maps and programs by fd: the bpf(2) commands libbpf wraps one to one (``bpf_map_*``,
``bpf_obj_*``, ``bpf_prog_test_run_opts``)."""

from __future__ import annotations

import ctypes
import errno as errno_mod
import struct
from collections.abc import Iterator
from typing import Final, NamedTuple

from hidbpfd.kernel.libbpf.library import BPF_ANY, TestRunOpts, libbpf


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
    opts = TestRunOpts(sz=ctypes.sizeof(TestRunOpts))
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
