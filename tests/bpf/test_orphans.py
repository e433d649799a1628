"""Finding what an earlier hidbpfd left in the kernel (kernel/orphans.py) on this host: the map
enumeration and map info it is built on, and the "held by a living process" check that keeps
it from unregistering a running older daemon's filters. (Removing a real orphan needs HID-BPF:
tests/device/test_crash.py does it on uhid devices in the VM.)"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from hidbpfd.kernel import libbpf as lb
from hidbpfd.kernel import orphans
from hidbpfd.kernel.probe import probe
from tests.bpf.conftest import require_bpf

pytestmark = pytest.mark.bpf

BPF_MAP_TYPE_ARRAY = 2


@pytest.fixture
def array_map() -> int:
    require_bpf()
    fd = lb.map_create(BPF_MAP_TYPE_ARRAY, 4, 8, 1)
    yield fd  # type: ignore[misc]
    os.close(fd)


def test_map_info_and_enumeration(array_map: int) -> None:
    info = lb.map_info(array_map)
    assert (info.type, info.key_size, info.value_size, info.max_entries) == (
        BPF_MAP_TYPE_ARRAY,
        4,
        8,
        1,
    )
    assert info.id in set(lb.map_ids())
    fd = lb.map_fd_by_id(info.id)
    assert fd is not None
    try:
        assert lb.map_info(fd).id == info.id
    finally:
        os.close(fd)


def test_holders_are_the_other_processes_with_an_fd(array_map: int) -> None:
    map_id = lb.map_info(array_map).id
    assert orphans.holders(map_id) == []  # this process does not count
    child = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; sys.stdin.read()"],
        stdin=subprocess.PIPE,
        pass_fds=(array_map,),
    )
    try:
        assert orphans.holders(map_id) == [child.pid]
    finally:
        assert child.stdin is not None
        child.stdin.close()
        child.wait(30)
    assert orphans.holders(map_id) == []


def test_every_map_of_the_system_is_looked_at_and_none_is_ours() -> None:
    """Where HID-BPF is missing no hidbpfd struct_ops can exist: find() walks every map of the
    system (whatever their types) and finds none, and clean() removes nothing."""
    require_bpf()
    if probe()["hid_bpf_struct_ops"]["ok"]:
        pytest.skip("HID-BPF here: a running daemon may legitimately have struct_ops")
    # at least one map exists whatever ran before (module fixtures may all be torn down)
    fd = lb.map_create(2, 4, 4, 1)  # BPF_MAP_TYPE_ARRAY
    try:
        assert len(list(lb.map_ids())) > 0
        assert orphans.find() == []
        assert orphans.clean() == []
    finally:
        os.close(fd)
