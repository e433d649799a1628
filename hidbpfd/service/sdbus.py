"""A small typed ctypes layer over sd-bus in the system ``libsystemd.so.0`` (systemd 241+ API).

Used by :mod:`hidbpfd.service.sleep` (logind's ``PrepareForSleep``) and by its tests, which own
a bus name and emit the signal. Only what those need is wrapped; every failure raises
:class:`SdBusError` naming the sd-bus call and the errno.

sd-bus conventions: functions return ``-errno`` on failure; objects are reference counted and
``*_unref`` returns NULL. A connection is not thread-safe: one :class:`Bus` is used by one thread
at a time (the daemon's: :meth:`Bus.add_to_loop` drives it from the asyncio loop, never
blocking; the blocking helpers :meth:`Bus.request_name` and :meth:`Bus.close` with ``flush`` are
for the tests' sender thread).
"""

from __future__ import annotations

import asyncio
import ctypes
import errno as errno_mod
import functools
import logging
import select
from collections.abc import Callable
from typing import Final

from hidbpfd.kernel.clib import CallError, CLibrary

log = logging.getLogger(__name__)

LIBSYSTEMD_SONAME: Final = "libsystemd.so.0"

# sd_bus_get_timeout(): "no timeout"
_NO_TIMEOUT: Final = 2**64 - 1


class SdBusError(CallError):
    """An sd-bus operation failed: ``op`` is the call, ``errno`` the reason."""


# typedef int (*sd_bus_message_handler_t)(sd_bus_message *m, void *userdata,
#                                         sd_bus_error *ret_error);
_HANDLER = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p)


# typedef struct sd_bus_error { const char *name; const char *message; int _need_free; }
class _Error(ctypes.Structure):
    _fields_ = (
        ("name", ctypes.c_char_p),
        ("message", ctypes.c_char_p),
        ("_need_free", ctypes.c_int),
    )


_VP = ctypes.c_void_p
_CP = ctypes.c_char_p
_I = ctypes.c_int
_U64 = ctypes.c_uint64
_PP = ctypes.POINTER(ctypes.c_void_p)

# name: (restype, argtypes). Pointer results are c_void_p (never the default int). Variadic
# calls (sd_bus_message_read, sd_bus_emit_signal) are avoided: their *_basic forms have fixed
# argument lists, which ctypes passes correctly on every ABI.
_PROTOS: Final[dict[str, tuple[object, list[object]]]] = {
    "sd_bus_new": (_I, [_PP]),
    "sd_bus_set_address": (_I, [_VP, _CP]),
    "sd_bus_set_bus_client": (_I, [_VP, _I]),
    "sd_bus_start": (_I, [_VP]),
    "sd_bus_open_system": (_I, [_PP]),
    "sd_bus_get_fd": (_I, [_VP]),
    "sd_bus_get_events": (_I, [_VP]),
    "sd_bus_get_timeout": (_I, [_VP, ctypes.POINTER(_U64)]),
    "sd_bus_process": (_I, [_VP, _VP]),
    "sd_bus_flush": (_I, [_VP]),
    "sd_bus_close_unref": (_VP, [_VP]),
    "sd_bus_flush_close_unref": (_VP, [_VP]),
    "sd_bus_match_signal_async": (_I, [_VP, _PP, _CP, _CP, _CP, _CP, _HANDLER, _HANDLER, _VP]),
    "sd_bus_slot_unref": (_VP, [_VP]),
    "sd_bus_request_name": (_I, [_VP, _CP, _U64]),
    "sd_bus_message_new_signal": (_I, [_VP, _PP, _CP, _CP, _CP]),
    "sd_bus_message_append_basic": (_I, [_VP, ctypes.c_char, _VP]),
    "sd_bus_message_read_basic": (_I, [_VP, ctypes.c_char, _VP]),
    "sd_bus_message_get_errno": (_I, [_VP]),
    "sd_bus_message_get_error": (ctypes.POINTER(_Error), [_VP]),
    "sd_bus_message_unref": (_VP, [_VP]),
    "sd_bus_send": (_I, [_VP, _VP, ctypes.POINTER(_U64)]),
}


class Libsystemd(CLibrary):
    """The loaded ``libsystemd.so.0`` with typed prototypes. Get it with :func:`libsystemd`."""

    def __init__(self, path: str = LIBSYSTEMD_SONAME) -> None:
        super().__init__(
            path,
            _PROTOS,
            SdBusError,
            "apt install libsystemd0",
            "not in this libsystemd (needs systemd 241+)",
        )

    def call(self, name: str, *args: object) -> int:
        """Call ``name``; raise for a negative result (sd-bus returns -errno), else return it."""
        ret = int(self.fn(name)(*args))
        if ret < 0:
            raise SdBusError(name, -ret)
        return ret


@functools.cache
def libsystemd() -> Libsystemd:
    """The process-wide library handle (loaded on first use, never at import)."""
    return Libsystemd()


class Message:
    """A borrowed ``sd_bus_message``: valid only inside the handler it was passed to."""

    def __init__(self, lib: Libsystemd, ptr: int) -> None:
        self._lib = lib
        self._ptr = ptr

    def read_bool(self) -> bool:
        """Read the next argument, which must be a ``b`` (SdBusError ENXIO when there is none)."""
        value = ctypes.c_int()
        if self._lib.call("sd_bus_message_read_basic", self._ptr, b"b", ctypes.byref(value)) == 0:
            raise SdBusError("sd_bus_message_read_basic", errno_mod.ENXIO, "no argument left")
        return bool(value.value)

    def error(self) -> SdBusError | None:
        """The error this (method reply) message carries, if it is an error reply."""
        err = self._lib.fn("sd_bus_message_get_errno")(self._ptr)
        if not err:
            return None
        e = self._lib.fn("sd_bus_message_get_error")(self._ptr)
        detail = ""
        if e and e.contents.name:
            detail = e.contents.name.decode(errors="replace")
            if e.contents.message:
                detail += ": " + e.contents.message.decode(errors="replace")
        return SdBusError("method call", err, detail)


class Bus:
    """One sd-bus connection (``sd_bus``) in bus-client mode. Open with :meth:`open`.

    Opening never blocks: the socket is connected and authentication goes on as the connection
    is processed (:meth:`add_to_loop` does that on the loop, or the blocking helpers do)."""

    def __init__(self, lib: Libsystemd, ptr: int) -> None:
        self._lib = lib
        self._ptr: int | None = ptr
        self._slots: list[int] = []
        # CFUNCTYPE thunks: alive as long as this object, since C may be inside one when
        # close() runs (a handler that closes the bus)
        self._keep: list[object] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._fd = -1
        self._writing = False
        self._timer: asyncio.TimerHandle | None = None
        self._on_error: Callable[[SdBusError], None] | None = None

    @classmethod
    def open(cls, address: str | None = None, lib: Libsystemd | None = None) -> Bus:
        """Connect to ``address`` (a D-Bus address such as ``unix:path=/run/x``), or to the
        system bus (``$DBUS_SYSTEM_BUS_ADDRESS``, else ``/run/dbus/system_bus_socket``)."""
        lib = lib or libsystemd()
        out = ctypes.c_void_p()
        if address is None:
            lib.call("sd_bus_open_system", ctypes.byref(out))
            return cls(lib, int(out.value or 0))
        lib.call("sd_bus_new", ctypes.byref(out))
        bus = cls(lib, int(out.value or 0))
        try:
            lib.call("sd_bus_set_address", out, address.encode())
            lib.call("sd_bus_set_bus_client", out, 1)
            lib.call("sd_bus_start", out)
        except SdBusError:
            bus.close()
            raise
        return bus

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` ran (or opening failed)."""
        return self._ptr is None

    def _bus(self) -> int:
        if self._ptr is None:
            raise SdBusError("sd_bus", errno_mod.ENOTCONN, "connection closed")
        return self._ptr

    def _handler(self, fn: Callable[[Message], None]) -> object:
        lib = self._lib

        def thunk(m: int | None, _userdata: int | None, _err: int | None) -> int:
            try:
                fn(Message(lib, m or 0))
            except Exception:
                log.exception("D-Bus message handler failed")
            return 0  # never an error: sd-bus would end sd_bus_process with it

        cb = _HANDLER(thunk)
        self._keep.append(cb)
        return cb

    def match_signal(
        self,
        sender: str,
        path: str,
        interface: str,
        member: str,
        on_signal: Callable[[Message], None],
        on_installed: Callable[[SdBusError | None], None],
    ) -> None:
        """Subscribe to a signal (``sd_bus_match_signal_async``): the bus daemon filters on
        every field, ``sender`` included. ``on_installed`` gets None once the bus daemon
        accepted the match (AddMatch's reply), else the error; both run inside processing."""

        def installed(m: Message) -> None:
            on_installed(m.error())

        slot = ctypes.c_void_p()
        self._lib.call(
            "sd_bus_match_signal_async",
            self._bus(),
            ctypes.byref(slot),
            sender.encode(),
            path.encode(),
            interface.encode(),
            member.encode(),
            self._handler(on_signal),
            self._handler(installed),
            None,
        )
        self._slots.append(int(slot.value or 0))

    def process(self) -> bool:
        """Process one step (``sd_bus_process``): True if something was done (call again)."""
        if self._ptr is None:
            return False
        return self._lib.call("sd_bus_process", self._ptr, None) > 0

    def add_to_loop(
        self, loop: asyncio.AbstractEventLoop, on_error: Callable[[SdBusError], None]
    ) -> None:
        """Drive this connection from ``loop``: the fd for reading, for writing while sd-bus has
        output queued (authentication, calls), and its next timeout. ``on_error`` gets a failure
        of the connection (it is then off the loop; close it). Called once, after open."""
        self._loop = loop
        self._on_error = on_error
        self._fd = self._lib.call("sd_bus_get_fd", self._bus())
        loop.add_reader(self._fd, self._dispatch)
        self._dispatch()  # the first step: sd_bus_start queued the auth and Hello

    def _dispatch(self) -> None:
        try:
            while self.process():
                pass
            if self._ptr is not None and self._loop is not None:
                self._rearm(self._loop, self._ptr)
        except SdBusError as e:
            self.remove_from_loop()
            if self._on_error is not None:
                self._on_error(e)

    def _rearm(self, loop: asyncio.AbstractEventLoop, bus: int) -> None:
        want_write = bool(self._lib.call("sd_bus_get_events", bus) & select.POLLOUT)
        if want_write != self._writing:
            if want_write:
                loop.add_writer(self._fd, self._dispatch)
            else:
                loop.remove_writer(self._fd)
            self._writing = want_write
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        usec = ctypes.c_uint64()
        self._lib.call("sd_bus_get_timeout", bus, ctypes.byref(usec))
        if usec.value != _NO_TIMEOUT:
            # both CLOCK_MONOTONIC: asyncio's loop.time() is time.monotonic()
            self._timer = loop.call_at(usec.value / 1e6, self._dispatch)

    def remove_from_loop(self) -> None:
        """Stop watching the fd and the timeout (close does it too)."""
        if self._loop is not None and self._fd >= 0:
            self._loop.remove_reader(self._fd)
            if self._writing:
                self._loop.remove_writer(self._fd)
        self._writing = False
        self._fd = -1
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._loop = None

    def request_name(self, name: str) -> None:
        """Own ``name`` (blocks until the bus daemon answers: not for the daemon's loop)."""
        self._lib.call("sd_bus_request_name", self._bus(), name.encode(), 0)

    def emit_bool(self, path: str, interface: str, member: str, value: bool) -> None:
        """Queue the signal ``interface.member(b value)`` from ``path``."""
        m = ctypes.c_void_p()
        self._lib.call(
            "sd_bus_message_new_signal",
            self._bus(),
            ctypes.byref(m),
            path.encode(),
            interface.encode(),
            member.encode(),
        )
        try:
            b = ctypes.c_int(value)
            self._lib.call("sd_bus_message_append_basic", m, b"b", ctypes.byref(b))
            self._lib.call("sd_bus_send", self._bus(), m, None)
        finally:
            self._lib.fn("sd_bus_message_unref")(m)

    def close(self, *, flush: bool = False) -> None:
        """Off the loop, free the subscriptions, close and free the connection; safe twice.

        ``flush`` first writes out everything queued (blocking: for a sender that must get
        its message out). Without it nothing blocks: the bus daemon drops a closed
        connection's matches itself, so no RemoveMatch needs to reach it."""
        self.remove_from_loop()
        for slot in self._slots:
            self._lib.fn("sd_bus_slot_unref")(slot)
        self._slots.clear()
        if self._ptr is not None:
            unref = "sd_bus_flush_close_unref" if flush else "sd_bus_close_unref"
            self._lib.fn(unref)(self._ptr)
            self._ptr = None
