"""A minimal uhid device for the BPF device tests (VM tier): create, send input, answer
output/feature requests, find its hidraw node and kernel id."""

from __future__ import annotations

import contextlib
import os
import select
import struct
import time
from pathlib import Path
from typing import Final

from hidbpfd.backends.uhid import _udev_done, _udev_running

# include/uapi/linux/uhid.h
UHID_DESTROY: Final = 1
UHID_START: Final = 2
UHID_OPEN: Final = 4
UHID_OUTPUT: Final = 6
UHID_GET_REPORT: Final = 9
UHID_GET_REPORT_REPLY: Final = 10
UHID_CREATE2: Final = 11
UHID_INPUT2: Final = 12
UHID_SET_REPORT: Final = 13
UHID_SET_REPORT_REPLY: Final = 14
UHID_DATA_MAX: Final = 4096
HID_MAX_DESCRIPTOR_SIZE: Final = 4096
EVENT_SIZE: Final = 4376  # sizeof(struct uhid_event), __packed

# struct uhid_create2_req { __u8 name[128]; __u8 phys[64]; __u8 uniq[64]; __u16 rd_size;
#   __u16 bus; __u32 vendor; __u32 product; __u32 version; __u32 country;
#   __u8 rd_data[HID_MAX_DESCRIPTOR_SIZE]; } __packed;
CREATE2: Final = f"<I128s64s64sHHIIII{HID_MAX_DESCRIPTOR_SIZE}s"
# struct uhid_input2_req { __u16 size; __u8 data[UHID_DATA_MAX]; } __packed;
INPUT2: Final = f"<IH{UHID_DATA_MAX}s"
# struct uhid_output_req { __u8 data[UHID_DATA_MAX]; __u16 size; __u8 rtype; } __packed;
OUTPUT: Final = f"<{UHID_DATA_MAX}sHB"
# struct uhid_get_report_req { __u32 id; __u8 rnum; __u8 rtype; } __packed;
GET_REPORT: Final = "<IBB"
# struct uhid_get_report_reply_req { __u32 id; __u16 err; __u16 size; __u8 data[4096]; }
GET_REPORT_REPLY: Final = f"<IIHH{UHID_DATA_MAX}s"
# struct uhid_set_report_req { __u32 id; __u8 rnum; __u8 rtype; __u16 size; __u8 data[4096]; }
SET_REPORT: Final = f"<IBBH{UHID_DATA_MAX}s"
# struct uhid_set_report_reply_req { __u32 id; __u16 err; } __packed;
SET_REPORT_REPLY: Final = "<IIH"

BUS_VIRTUAL: Final = 0x06

# Vendor page 0xff00: input report 1, output report 2, feature report 3, 7 bytes each.
RDESC: Final = bytes.fromhex(
    "06 00 ff 09 01 a1 01"
    " 85 01 15 00 26 ff 00 75 08 95 07 09 01 81 02"
    " 85 02 95 07 09 02 91 02"
    " 85 03 95 07 09 03 b1 02"
    " c0"
)


def _pad(data: bytes) -> bytes:
    return data + bytes(EVENT_SIZE - len(data))


class UhidDevice:
    """A virtual HID device through /dev/uhid (closed on exit)."""

    def __init__(
        self, vendor: int = 0x1D6B, product: int = 0xB0F0, name: str = "hidbpfd test"
    ) -> None:
        self.vendor, self.product = vendor, product
        self.fd = os.open("/dev/uhid", os.O_RDWR | os.O_CLOEXEC)
        ev = struct.pack(
            CREATE2,
            UHID_CREATE2,
            name.encode(),
            b"hidbpfd/test",
            b"",
            len(RDESC),
            BUS_VIRTUAL,
            vendor,
            product,
            0,
            0,
            RDESC,
        )
        os.write(self.fd, _pad(ev))
        self.sysfs = self._wait_sysfs()
        self.hid_id = int(self.sysfs.name.rsplit(".", 1)[1], 16)

    def _wait_sysfs(self, timeout: float = 10.0) -> Path:
        pattern = f"{BUS_VIRTUAL:04X}:{self.vendor:04X}:{self.product:04X}.*"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.events(0.05)  # START / OPEN
            for dev in sorted(Path("/sys/bus/hid/devices").glob(pattern)):
                nodes = list((dev / "hidraw").iterdir()) if (dev / "hidraw").is_dir() else []
                # the /dev node must exist, and udev must be done with it: by then the driver's
                # probe is over (the kernel drops input while it runs)
                if (
                    nodes
                    and (Path("/dev") / nodes[0].name).exists()
                    and (not _udev_running() or _udev_done(nodes[0]))
                ):
                    return dev
        raise TimeoutError(f"uhid device {pattern} did not appear")

    def hidraw_path(self) -> Path:
        """``/dev/hidrawN`` of this device."""
        return Path("/dev") / next((self.sysfs / "hidraw").iterdir()).name

    def send(self, report: bytes) -> None:
        """The device sends an input report (UHID_INPUT2)."""
        os.write(self.fd, _pad(struct.pack(INPUT2, UHID_INPUT2, len(report), report)))

    def events(self, timeout: float) -> list[tuple[int, bytes]]:
        """Read the kernel's requests waiting (up to ``timeout`` for the first)."""
        out = []
        while select.select([self.fd], [], [], timeout)[0]:
            raw = os.read(self.fd, EVENT_SIZE)
            out.append((struct.unpack_from("<I", raw)[0], raw[4:]))
            timeout = 0
        return out

    def answer_one(self, timeout: float, get_reply: bytes = b"") -> tuple[int, bytes]:
        """Wait for one OUTPUT / GET_REPORT / SET_REPORT request, answer it, return
        (type, data the host sent)."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            for typ, body in self.events(left):
                if typ == UHID_OUTPUT:
                    data, size, _rtype = struct.unpack_from(OUTPUT, body)
                    return typ, data[:size]
                if typ == UHID_GET_REPORT:
                    rid, rnum, _rtype = struct.unpack_from(GET_REPORT, body)
                    reply = struct.pack(
                        GET_REPORT_REPLY, UHID_GET_REPORT_REPLY, rid, 0, len(get_reply), get_reply
                    )
                    os.write(self.fd, _pad(reply))
                    return typ, bytes([rnum])
                if typ == UHID_SET_REPORT:
                    rid, _rnum, _rtype, size, data = struct.unpack_from(SET_REPORT, body)
                    os.write(
                        self.fd, _pad(struct.pack(SET_REPORT_REPLY, UHID_SET_REPORT_REPLY, rid, 0))
                    )
                    return typ, data[:size]
        raise TimeoutError("no request from the kernel")

    def close(self) -> None:
        """Destroy the device."""
        with contextlib.suppress(OSError):
            os.write(self.fd, _pad(struct.pack("<I", UHID_DESTROY)))
        os.close(self.fd)


def read_hidraw(fd: int, timeout: float) -> list[bytes]:
    """Every report readable from a non-blocking hidraw fd within ``timeout``."""
    out = []
    while select.select([fd], [], [], timeout)[0]:
        try:
            out.append(os.read(fd, 4096))
        except BlockingIOError:
            break
        timeout = 0.02
    return out
