"""A small typed ctypes layer over the system ``libbpf.so.1`` (written against the 1.1 API).

Used by :mod:`hidbpfd.kernel.source` (the event source), :mod:`hidbpfd.kernel.probe`, the
in-kernel engine and the program loaders, as ``from hidbpfd.kernel import libbpf as lb``. Only
what those need is wrapped; every failure raises :class:`BpfError` naming the libbpf call and
the errno. In parts, each built on the ones before it:

- :mod:`.library` — the loaded library (prototypes, errors, log routing), the constants;
- :mod:`.syscalls` — maps and programs by fd (``bpf_map_*``, ``bpf_obj_*``, test runs);
- :mod:`.objects` — BPF ELF objects, their programs, maps and links; ``elf_patch``;
- :mod:`.ringbuf` — the ring buffer consumer;
- :mod:`.btf` — kernel BTF.
"""

from hidbpfd.kernel.libbpf.btf import (
    Btf,
)
from hidbpfd.kernel.libbpf.library import (
    BPF_ANY,
    BPF_EXIST,
    BPF_F_LINK,
    BPF_MAP_TYPE_RINGBUF,
    BPF_MAP_TYPE_STRUCT_OPS,
    BPF_NOEXIST,
    BPF_STRUCT_OPS,
    BTF_KIND_ENUM,
    BTF_KIND_FUNC,
    BTF_KIND_FUNC_PROTO,
    BTF_KIND_PTR,
    BTF_KIND_STRUCT,
    LIBBPF_DEBUG,
    LIBBPF_INFO,
    LIBBPF_SONAME,
    LIBBPF_WARN,
    BpfError,
    Libbpf,
    capture_log,
    libbpf,
    release_heap,
)
from hidbpfd.kernel.libbpf.objects import (
    BpfObject,
    Link,
    Map,
    Program,
    StructOpsLink,
    elf_patch,
)
from hidbpfd.kernel.libbpf.ringbuf import (
    RingBuffer,
)
from hidbpfd.kernel.libbpf.syscalls import (
    MapInfo,
    map_create,
    map_delete,
    map_fd_by_id,
    map_ids,
    map_info,
    map_lookup,
    map_update,
    num_possible_cpus,
    obj_get,
    obj_pin,
    prog_test_run,
)

__all__ = [
    "BPF_ANY",
    "BPF_EXIST",
    "BPF_F_LINK",
    "BPF_MAP_TYPE_RINGBUF",
    "BPF_MAP_TYPE_STRUCT_OPS",
    "BPF_NOEXIST",
    "BPF_STRUCT_OPS",
    "BTF_KIND_ENUM",
    "BTF_KIND_FUNC",
    "BTF_KIND_FUNC_PROTO",
    "BTF_KIND_PTR",
    "BTF_KIND_STRUCT",
    "LIBBPF_DEBUG",
    "LIBBPF_INFO",
    "LIBBPF_SONAME",
    "LIBBPF_WARN",
    "BpfError",
    "BpfObject",
    "Btf",
    "Libbpf",
    "Link",
    "Map",
    "MapInfo",
    "Program",
    "RingBuffer",
    "StructOpsLink",
    "capture_log",
    "elf_patch",
    "libbpf",
    "map_create",
    "map_delete",
    "map_fd_by_id",
    "map_ids",
    "map_info",
    "map_lookup",
    "map_update",
    "num_possible_cpus",
    "obj_get",
    "obj_pin",
    "prog_test_run",
    "release_heap",
]
