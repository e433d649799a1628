"""Setting values in an object image before open (libbpf 1.1 has no API for struct_ops data)."""

from __future__ import annotations

import struct

import pytest

from hidbpfd.kernel import libbpf as lb
from hidbpfd.kernel.bpf import OPS_OBJECT


@pytest.fixture
def image() -> bytes:
    if not OPS_OBJECT.exists():
        pytest.skip(f"{OPS_OBJECT} not built (python -m hidbpfd.kernel.bpf.build)")
    return OPS_OBJECT.read_bytes()


def test_patch_rodata_is_what_libbpf_loads(image: bytes) -> None:
    try:
        lb.libbpf()
    except lb.BpfError as e:
        pytest.skip(str(e))
    for value in (1, 0):
        patched = lb.elf_patch(image, "hidbpfd_has_source", 0, struct.pack("<i", value))
        obj = lb.BpfObject.open_mem(patched)
        try:
            assert obj.map(".rodata").initial_value()[:4] == struct.pack("<i", value)
            assert "hidbpfd_ops" in obj.maps and "hidbpfd_event" in obj.programs
        finally:
            obj.close()


def test_patch_changes_only_the_symbol(image: bytes) -> None:
    marker = struct.pack("<i", 0x5EEDF00D)
    assert marker not in image
    patched = lb.elf_patch(image, "hidbpfd_ops", 0, marker)  # .hid_id, the first member
    pos = patched.index(marker)
    assert image[pos : pos + 4] == bytes(4)  # hid_id = 0 in the source
    assert patched[:pos] == image[:pos] and patched[pos + 4 :] == image[pos + 4 :]


@pytest.mark.parametrize(
    ("symbol", "offset", "data", "error"),
    [
        ("no_such_symbol", 0, b"\0", "no symbol"),
        ("hidbpfd_has_source", 2, b"\0\0\0", "cannot write"),
    ],
)
def test_patch_errors(image: bytes, symbol: str, offset: int, data: bytes, error: str) -> None:
    with pytest.raises(ValueError, match=error):
        lb.elf_patch(image, symbol, offset, data)


def test_not_elf() -> None:
    with pytest.raises(ValueError, match="ELF64"):
        lb.elf_patch(b"nope" * 20, "x", 0, b"\0")
