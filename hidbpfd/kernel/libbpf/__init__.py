"""A small typed ctypes layer over the system ``libbpf.so.1`` (written against the 1.1 API)."""

from hidbpfd.kernel.libbpf.library import *  # noqa: F403
