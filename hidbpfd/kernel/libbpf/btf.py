"""Kernel BTF (``btf__*``): what the running kernel's types and functions look like."""

from __future__ import annotations

import ctypes
import struct

from hidbpfd.kernel.libbpf.library import (
    BTF_KIND_FUNC,
    BTF_KIND_FUNC_PROTO,
    BTF_KIND_PTR,
    BTF_KIND_STRUCT,
    cstr,
    libbpf,
)


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
            if cstr(self._lib.fn("btf__name_by_offset")(self._ptr, name_off)) != member:
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
            if cstr(self._lib.fn("btf__name_by_offset")(self._ptr, name_off)) == member:
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
