"""HID devices from udev, in-process, on the asyncio loop (pyudev).

Start-up order, so that no device that appears meanwhile is missed (pyudev #450): start the
monitor, enumerate the existing hidraw devices, then drain what the monitor queued — an ``add``
for a device already known is ignored. After that the monitor's fd is watched with
``loop.add_reader``; add / remove / change events reach the callbacks on the loop.

A device is a hidraw node; its identity comes from the parent ``hid`` device: HID_ID,
HID_NAME, HID_UNIQ, HID_PHYS and its sysfs name (``0003:28BD:0905.000A``).
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from hidbpfd.devices.facts import sysfs_facts
from hidbpfd.model import DeviceFacts, DeviceId

log = logging.getLogger(__name__)

_HID_SYSNAME: Final = re.compile(r"([0-9A-F]{4}):([0-9A-F]{4}):([0-9A-F]{4})\.([0-9A-F]{4,})")


@dataclass(frozen=True, slots=True)
class HidDevice:
    """A HID device as the daemon sees it: who it is, its hidraw node, its sysfs path, and
    what its descriptor and USB interface say (for the ``[device]`` keys that need them)."""

    id: DeviceId
    hidraw: str
    sys_path: str
    facts: DeviceFacts = field(default_factory=DeviceFacts)


def device_id_from(sys_name: str, props: Mapping[str, str]) -> DeviceId:
    """Identity from the hid device's sysfs name and uevent properties.

    ``HID_ID=0003:000028BD:00000905`` gives bus, vendor, product (the sysfs name gives them too,
    and is used when HID_ID is missing); HID_NAME/HID_UNIQ/HID_PHYS give the rest.
    """
    bus = vendor = product = 0
    hid_id = props.get("HID_ID", "")
    parts = hid_id.split(":")
    if len(parts) == 3:
        bus, vendor, product = (int(p, 16) for p in parts)
    else:
        m = _HID_SYSNAME.fullmatch(sys_name)
        if m:
            bus, vendor, product = (int(m.group(i), 16) for i in (1, 2, 3))
    return DeviceId(
        bus=bus,
        vendor=vendor,
        product=product,
        name=props.get("HID_NAME", ""),
        uniq=props.get("HID_UNIQ", ""),
        phys=props.get("HID_PHYS", ""),
        hid_id=sys_name if _HID_SYSNAME.fullmatch(sys_name) else "",
    )


def hid_sysname_in(path: str) -> str | None:
    """The hid device's sysfs name in a hidraw device path (also on remove, when the parent
    can no longer be looked up)."""
    found = _HID_SYSNAME.findall(path)
    if not found:
        return None
    b, v, p, n = found[-1]
    return f"{b}:{v}:{p}.{n}"


class HidWatcher:
    """Watches hidraw devices; owned by the daemon.

    ``on_add(dev)`` / ``on_remove(dev)`` / ``on_change(dev)`` are called on the loop, once per
    device and event; ``known`` maps sys_path to the devices currently present.
    """

    def __init__(
        self,
        on_add: Callable[[HidDevice], None],
        on_remove: Callable[[HidDevice], None],
        on_change: Callable[[HidDevice], None] | None = None,
        *,
        context: Any = None,
    ) -> None:
        import pyudev

        self._pyudev = pyudev
        self.context = context or pyudev.Context()
        self.on_add = on_add
        self.on_remove = on_remove
        self.on_change = on_change
        self.known: dict[str, HidDevice] = {}
        self.monitor: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Monitor, enumerate, drain; then watch the monitor fd on ``loop``."""
        mon = self._pyudev.Monitor.from_netlink(self.context)
        mon.filter_by("hidraw")
        mon.start()
        self.monitor = mon
        for dev in self.context.list_devices(subsystem="hidraw"):
            self._handle("add", dev)
        self._drain()
        self._loop = loop
        loop.add_reader(mon.fileno(), self._drain)

    def _drain(self) -> None:
        while True:
            dev = self.monitor.poll(timeout=0)
            if dev is None:
                return
            self._handle(dev.action or "add", dev)

    def _handle(self, action: str, dev: Any) -> None:
        try:
            if action == "remove":
                gone = self.known.pop(dev.sys_path, None)
                if gone is not None:
                    self.on_remove(gone)
                return
            if action not in ("add", "change", "bind", "online"):
                return
            hd = self._describe(dev)
            if hd is None:
                return
            if dev.sys_path in self.known:
                if action == "change":
                    self.known[dev.sys_path] = hd
                    if self.on_change is not None:
                        self.on_change(hd)
                return  # an add we already saw while enumerating
            self.known[dev.sys_path] = hd
            self.on_add(hd)
        except Exception:
            log.exception(
                "udev %s of %s failed; other devices are not affected",
                action,
                getattr(dev, "sys_path", dev),
            )

    def _describe(self, dev: Any) -> HidDevice | None:
        node = dev.device_node
        parent = dev.find_parent("hid")
        if node is None or parent is None:
            log.debug("ignoring %s: no device node or no hid parent", dev.sys_path)
            return None
        props = {
            k: parent.properties.get(k, "") for k in ("HID_ID", "HID_NAME", "HID_UNIQ", "HID_PHYS")
        }
        facts = sysfs_facts(parent.sys_path)
        return HidDevice(device_id_from(parent.sys_name, props), node, dev.sys_path, facts)

    def stop(self) -> None:
        """Stop watching; called by the daemon on shutdown."""
        if self._loop is not None and self.monitor is not None:
            self._loop.remove_reader(self.monitor.fileno())
        self._loop = None
        self.monitor = None
