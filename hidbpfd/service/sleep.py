"""System sleep: logind's ``PrepareForSleep(false)`` on the system bus means "just resumed".

The daemon then runs every ``reinit`` policy that asks for ``on = ["resume"]`` — the class of bug
where a device loses its settings across suspend. Only signals from the bus name
``org.freedesktop.login1`` count (the match rule names the sender, so the bus daemon filters).
The connection is sd-bus from the system's ``libsystemd.so.0`` (:mod:`hidbpfd.service.sdbus`):
its socket is on the daemon's loop like every other fd, and nothing in it blocks the loop.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Final

from hidbpfd.service.sdbus import Bus, Message, SdBusError

log = logging.getLogger(__name__)

LOGIN1: Final = "org.freedesktop.login1"
LOGIN1_PATH: Final = "/org/freedesktop/login1"
MANAGER: Final = "org.freedesktop.login1.Manager"
# the match rule sd-bus sends with AddMatch: type='signal',sender='org.freedesktop.login1',
# path='/org/freedesktop/login1',interface='org.freedesktop.login1.Manager',member='PrepareForSleep'
# connect + authenticate + AddMatch's reply; READY waits for it, so a hung bus costs this much
SUBSCRIBE_TIMEOUT_S: Final = 10.0


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
        self.bus: Bus | None = None
        self.resumes = 0

    async def start(self) -> bool:
        """Connect and subscribe; False (logged) when there is no usable system bus."""
        loop = asyncio.get_running_loop()
        subscribed: asyncio.Future[None] = loop.create_future()
        bus: Bus | None = None

        def installed(err: SdBusError | None) -> None:
            if not subscribed.done():
                if err is None:
                    subscribed.set_result(None)
                else:
                    subscribed.set_exception(err)

        def failed(err: SdBusError) -> None:
            if not subscribed.done():
                subscribed.set_exception(err)
                return
            log.warning("system bus lost (%s): no re-initialisation after resume", err)
            if bus is not None:
                bus.close()
            self.bus = None

        try:
            bus = Bus.open(self.bus_address)
            bus.match_signal(
                LOGIN1, LOGIN1_PATH, MANAGER, "PrepareForSleep", self._signal, installed
            )
            bus.add_to_loop(loop, failed)
            async with asyncio.timeout(SUBSCRIBE_TIMEOUT_S):
                await subscribed
        except (OSError, TimeoutError) as e:
            why = str(e)
            if isinstance(e, TimeoutError):
                why = f"no answer to AddMatch within {SUBSCRIBE_TIMEOUT_S:g} s"
            log.warning("no system bus (%s): no re-initialisation after resume", why)
            if bus is not None:
                bus.close()
            return False
        if bus.closed:  # lost between AddMatch's answer and here (logged by failed)
            return False
        self.bus = bus
        return True

    def _signal(self, msg: Message) -> None:
        """Called by sd-bus (inside the loop's processing of the bus fd) for each
        PrepareForSleep that the bus daemon let through: from login1 only."""
        if msg.read_bool():
            log.info("system is going to sleep")
            if self.on_suspend is not None:
                self.on_suspend()
        else:
            self.resumes += 1
            log.info("system resumed: running resume re-initialisation")
            self.on_resume()

    def stop(self) -> None:
        """Disconnect and free the connection (shutdown); safe twice."""
        if self.bus is not None:
            self.bus.close()
            self.bus = None
