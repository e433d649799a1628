"""What ``[device]`` matching needs to know of a device beyond its identity
(:class:`~hidbpfd.model.DeviceFacts`): from its report descriptor and from sysfs.

- :func:`descriptor_facts`: top-level application collections, report IDs and input report
  lengths of a descriptor;
- :func:`usb_interface`: the USB interface number above a HID device in sysfs — the
  ``bInterfaceNumber`` of the first ancestor that has one (usbhid's device sits right under
  its interface; a receiver's paired devices one level further down). uhid devices
  (Bluetooth through bluez, virtual ones) and I2C ones have none;
- :func:`interface_from_phys`: the same number from a USB ``phys`` string (usbhid writes
  ``usb-<controller>-<port>/input<N>``), for captures, which carry no sysfs;
- :func:`sysfs_facts`: all of it for one HID device's sysfs directory (the udev watcher and
  ``hidbpfd devices`` call it when they meet a device).

No I/O but reading sysfs files; imports only the model and the descriptor parser.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Final

from hidbpfd.devices.descriptor import DescriptorError, ReportKind, parse
from hidbpfd.model import Bus, DeviceFacts

log = logging.getLogger(__name__)

_USB_PHYS_INPUT: Final = re.compile(r"^usb-.*/input(\d+)$")


def descriptor_facts(descriptor: bytes, interface: int | None = None) -> DeviceFacts:
    """Facts from a report descriptor (unknown ones for an empty or unparseable one)."""
    if not descriptor:
        return DeviceFacts(interface=interface)
    try:
        rd = parse(descriptor)
    except DescriptorError as e:
        log.debug("report descriptor not understood (%s): descriptor keys will not match", e)
        return DeviceFacts(interface=interface)
    ids = frozenset(f.report_id for f in rd.fields if f.report_id)
    lengths = tuple((rid, rd.report_length(rid)) for rid in rd.report_ids(ReportKind.INPUT))
    return DeviceFacts(rd.applications, ids, interface, lengths)


def usb_interface(hid_sys_path: str | Path, sys_root: Path = Path("/sys")) -> int | None:
    """``bInterfaceNumber`` of the nearest USB interface above the HID device at
    ``hid_sys_path`` (symlinks resolved), or None if it is not on USB."""
    try:
        path = Path(hid_sys_path).resolve()
    except OSError:
        return None
    devices = (sys_root / "devices").resolve()
    for d in (path, *path.parents):
        if d == devices or devices not in d.parents:
            return None
        try:
            return int((d / "bInterfaceNumber").read_text().strip(), 16)
        except FileNotFoundError:
            continue
        except (OSError, ValueError) as e:
            log.debug("%s/bInterfaceNumber unreadable: %s", d, e)
            return None
    return None


def interface_from_phys(phys: str, bus: int) -> int | None:
    """The interface number in a USB device's ``phys`` (``usb-0000:00:14.0-2/input1`` → 1)."""
    if bus != Bus.USB:
        return None
    m = _USB_PHYS_INPUT.match(phys)
    return int(m.group(1)) if m else None


def read_uevent(path: str | Path) -> dict[str, str]:
    """The ``KEY=VALUE`` lines of a sysfs ``uevent`` file (``HID_ID``, ``HID_NAME``...); raises
    OSError (the device went away)."""
    text = Path(path).read_text(errors="replace")
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)


def sysfs_facts(hid_sys_path: str | Path, sys_root: Path = Path("/sys")) -> DeviceFacts:
    """Facts of the HID device at ``hid_sys_path`` (``/sys/bus/hid/devices/<hid id>``):
    its ``report_descriptor`` and its USB interface."""
    interface = usb_interface(hid_sys_path, sys_root)
    try:
        descriptor = (Path(hid_sys_path) / "report_descriptor").read_bytes()
    except OSError as e:
        log.debug("%s: no report descriptor (%s)", hid_sys_path, e)
        descriptor = b""
    return descriptor_facts(descriptor, interface)


def report_sizes(descriptor: bytes) -> tuple[int, int, int]:
    """The largest input, output and feature report of a descriptor, in bytes with the report
    ID (0: none, or a descriptor not understood). What a BPF program's requests may carry."""
    try:
        rd = parse(descriptor)
    except DescriptorError:
        return 0, 0, 0
    sizes = []
    for kind in (ReportKind.INPUT, ReportKind.OUTPUT, ReportKind.FEATURE):
        lengths = [rd.report_length(i, kind) for i in rd.report_ids(kind)]
        sizes.append(max(lengths, default=0))
    return sizes[0], sizes[1], sizes[2]
