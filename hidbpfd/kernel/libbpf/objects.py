"""BPF ELF objects: open, set up, load; their programs, maps and links, and the ELF patch
that sets a struct_ops member before open."""

from __future__ import annotations

import ctypes
import errno as errno_mod
import os
import struct

from hidbpfd.kernel.libbpf.library import (
    BPF_F_LINK,
    BPF_STRUCT_OPS,
    BpfError,
    Libbpf,
    capture_log,
    cstr,
    libbpf,
    release_heap,
)
from hidbpfd.kernel.libbpf.syscalls import map_info


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
        self.name = cstr(lib.fn("bpf_program__name")(ptr))
        self.section = cstr(lib.fn("bpf_program__section_name")(ptr))

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
        self.name = cstr(lib.fn("bpf_map__name")(ptr))

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
