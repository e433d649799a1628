"""What our two ctypes layers over system C libraries share (``libbpf.so.1``,
``libsystemd.so.0``): the error that names the C call and its errno, and the library handle
with typed prototypes declared once, as data."""

from __future__ import annotations

import ctypes
import errno as errno_mod
import os
from collections.abc import Callable, Mapping
from typing import Any


class CallError(OSError):
    """A C library call failed: ``op`` is the call, ``errno`` the reason."""

    def __init__(self, op: str, err: int, detail: str = "") -> None:
        err = abs(err) or errno_mod.EINVAL
        msg = f"{op}: {os.strerror(err)} (errno {err})"
        if detail:
            msg += f": {detail}"
        super().__init__(err, msg)
        self.op = op

    def __str__(self) -> str:
        return str(self.strerror)


Prototypes = Mapping[str, tuple[object, list[object]]]
"""name: (restype, argtypes); pointer results are ``c_void_p`` (never ctypes' default int)."""


class CLibrary:
    """A system library loaded with ``use_errno``; ``fn(name)`` gives a prototyped function.

    A missing library raises ``error`` (ENOENT) with ``install_hint``; a function this version
    of the library lacks raises ``error`` (ENOSYS) when asked for, not at load."""

    def __init__(
        self,
        path: str,
        protos: Prototypes,
        error: type[CallError],
        install_hint: str,
        missing_hint: str,
    ) -> None:
        self._error = error
        self._missing_hint = missing_hint
        try:
            self.dll = ctypes.CDLL(path, use_errno=True)
        except OSError as e:
            raise error("dlopen " + path, errno_mod.ENOENT, f"{e}. Try: {install_hint}") from e
        self._fns: dict[str, Callable[..., Any]] = {}
        for name, (res, args) in protos.items():
            fn = getattr(self.dll, name, None)
            if fn is None:
                continue
            fn.restype = res
            fn.argtypes = args
            self._fns[name] = fn

    def has(self, name: str) -> bool:
        """Whether this version of the library exports ``name``."""
        return name in self._fns

    def fn(self, name: str) -> Callable[..., Any]:
        """The prototyped function ``name``; the layer's error (ENOSYS) if it is missing."""
        f = self._fns.get(name)
        if f is None:
            raise self._error(name, errno_mod.ENOSYS, self._missing_hint)
        return f
