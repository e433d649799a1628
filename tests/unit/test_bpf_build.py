"""Which builds of a BPF source exist and which one a kernel gets (wq_compat.h)."""

from __future__ import annotations

from pathlib import Path

import pytest

from hidbpfd.kernel.bpf import BPF_DIR
from hidbpfd.kernel.bpf.build import WQ_IMPL_SUFFIX, variants
from hidbpfd.kernel.probe import KernelBtf


def test_sources_using_bpf_wq_get_both_builds() -> None:
    for name in ("engine.bpf.c", "bench.bpf.c"):
        got = variants(BPF_DIR / name)
        assert got == [(".bpf.o", []), (WQ_IMPL_SUFFIX, ["-DHIDBPFD_WQ_CALLBACK_IMPL"])]
    assert variants(BPF_DIR / "hidbpfd_ops.bpf.c") == [(".bpf.o", [])]


@pytest.mark.parametrize(
    ("funcs", "want"),
    [
        ({"bpf_wq_set_callback"}, "engine.bpf.o"),
        ({"bpf_wq_set_callback", "bpf_wq_set_callback_impl"}, "engine.bpf.o"),
        ({"bpf_wq_set_callback_impl"}, "engine.wq_impl.bpf.o"),
        (set(), "engine.bpf.o"),  # no bpf_wq at all: the load fails and says so
    ],
)
def test_kernel_gets_the_build_for_its_wq_kfunc(funcs: set[str], want: str) -> None:
    btf = KernelBtf(True, "test", frozenset(funcs))
    assert btf.wq_build(Path("/x/engine.bpf.o")) == Path("/x") / want
