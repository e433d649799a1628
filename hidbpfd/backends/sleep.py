"""System sleep: logind's ``PrepareForSleep(false)`` on the system bus means "just resumed".

The daemon then runs every ``reinit`` policy that asks for ``on = ["resume"]`` — the class of bug
where a device loses its settings across suspend. Only signals from the bus name
``org.freedesktop.login1`` count (the match rule names the sender, so the bus daemon filters).
dbus-fast's asyncio bus: its socket is on the daemon's loop like every other fd.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Final

log = logging.getLogger(__name__)

LOGIN1: Final = "org.freedesktop.login1"
MANAGER: Final = "org.freedesktop.login1.Manager"
MATCH: Final = f"type='signal',sender='{LOGIN1}',interface='{MANAGER}',member='PrepareForSleep'"


class SleepWatcher:
    """Calls ``on_resume()`` after each resume, ``on_suspend()`` before each suspend.

    Started by the daemon after READY; a missing or unreachable system bus is logged once and
    resume re-initialisation is then unavailable (everything else works).
    """

    def __init__(
        self,
        on_resume: Callable[[], None],
        on_suspend: Callable[[], None] | None = None,
        *,
        bus_address: str | None = None,
    ) -> None:
        self.on_resume = on_resume
        self.on_suspend = on_suspend
        self.bus_address = bus_address
        self.bus: Any = None
        self.resumes = 0

    async def start(self) -> bool:
        """Connect and subscribe; False (logged) when there is no usable system bus."""
        try:
            from dbus_fast import BusType, Message
            from dbus_fast.aio import MessageBus
        except ImportError:
            log.warning("dbus-fast is not installed: no re-initialisation after resume")
            return False
        try:
            if self.bus_address:
                bus = MessageBus(bus_address=self.bus_address)
            else:
                bus = MessageBus(bus_type=BusType.SYSTEM)
            await bus.connect()
            reply = await bus.call(
                Message(
                    destination="org.freedesktop.DBus",
                    path="/org/freedesktop/DBus",
                    interface="org.freedesktop.DBus",
                    member="AddMatch",
                    signature="s",
                    body=[MATCH],
                )
            )
            if reply is None or reply.message_type.name == "ERROR":
                raise OSError(f"AddMatch refused: {reply.body if reply else 'no reply'}")
        except (OSError, ValueError, Exception) as e:  # dbus-fast raises its own error types
            log.warning("no system bus (%s): no re-initialisation after resume", e)
            return False
        bus.add_message_handler(self._message)
        self.bus = bus
        return True

    def _message(self, msg: Any) -> None:
        if msg.member != "PrepareForSleep" or msg.interface != MANAGER or not msg.body:
            return
        if msg.body[0]:
            log.info("system is going to sleep")
            if self.on_suspend is not None:
                self.on_suspend()
        else:
            self.resumes += 1
            log.info("system resumed: running resume re-initialisation")
            self.on_resume()

    def stop(self) -> None:
        """Disconnect (shutdown)."""
        if self.bus is not None:
            self.bus.disconnect()
            self.bus = None
