"""The consumer of a BPF ring buffer map (``ring_buffer__*``)."""

from __future__ import annotations

import ctypes
import errno as errno_mod
from collections.abc import Callable

from hidbpfd.kernel.libbpf.library import SAMPLE_FN, libbpf


class RingBuffer:
    """A consumer of one BPF ring buffer map. ``on_sample(bytes)`` runs inside
    :meth:`consume`/:meth:`poll`, once per record; an exception it raises stops the drain
    and is re-raised from there (records after it stay in the ring)."""

    def __init__(self, map_fd: int, on_sample: Callable[[bytes], None]) -> None:
        self._lib = libbpf()
        self._on_sample = on_sample
        self._error: BaseException | None = None
        self._cb = SAMPLE_FN(self._sample)  # kept alive as long as the ring
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
