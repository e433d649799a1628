"""The uhid protocol: ``struct uhid_event`` and its constants, packed and parsed.

The kernel side is ``drivers/hid/uhid.c``; every constant and struct here mirrors
``include/uapi/linux/uhid.h`` and is quoted above its Python twin. All fields are in host
byte order (``=`` in the struct formats) and packed. No I/O: :mod:`hidbpfd.devices.uhid` owns
the ``/dev/uhid`` fd and the event flow.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Final

# include/uapi/linux/hid.h: #define HID_MAX_DESCRIPTOR_SIZE 4096
HID_MAX_DESCRIPTOR_SIZE: Final = 4096
# include/uapi/linux/uhid.h: #define UHID_DATA_MAX 4096
UHID_DATA_MAX: Final = 4096

# include/uapi/linux/input.h
BUS_USB: Final = 0x03
BUS_BLUETOOTH: Final = 0x05
BUS_VIRTUAL: Final = 0x06

# enum uhid_event_type {
#     __UHID_LEGACY_CREATE,      /* 0 */
#     UHID_DESTROY,              /* 1 */
#     UHID_START,                /* 2 */
#     UHID_STOP,                 /* 3 */
#     UHID_OPEN,                 /* 4 */
#     UHID_CLOSE,                /* 5 */
#     UHID_OUTPUT,               /* 6 */
#     __UHID_LEGACY_OUTPUT_EV,   /* 7 */
#     __UHID_LEGACY_INPUT,       /* 8 */
#     UHID_GET_REPORT,           /* 9 */
#     UHID_GET_REPORT_REPLY,     /* 10 */
#     UHID_CREATE2,              /* 11 */
#     UHID_INPUT2,               /* 12 */
#     UHID_SET_REPORT,           /* 13 */
#     UHID_SET_REPORT_REPLY,     /* 14 */
# };
UHID_DESTROY: Final = 1
UHID_START: Final = 2
UHID_STOP: Final = 3
UHID_OPEN: Final = 4
UHID_CLOSE: Final = 5
UHID_OUTPUT: Final = 6
UHID_GET_REPORT: Final = 9
UHID_GET_REPORT_REPLY: Final = 10
UHID_CREATE2: Final = 11
UHID_INPUT2: Final = 12
UHID_SET_REPORT: Final = 13
UHID_SET_REPORT_REPLY: Final = 14

EVENT_NAMES: Final[dict[int, str]] = {
    UHID_DESTROY: "DESTROY",
    UHID_START: "START",
    UHID_STOP: "STOP",
    UHID_OPEN: "OPEN",
    UHID_CLOSE: "CLOSE",
    UHID_OUTPUT: "OUTPUT",
    UHID_GET_REPORT: "GET_REPORT",
    UHID_GET_REPORT_REPLY: "GET_REPORT_REPLY",
    UHID_CREATE2: "CREATE2",
    UHID_INPUT2: "INPUT2",
    UHID_SET_REPORT: "SET_REPORT",
    UHID_SET_REPORT_REPLY: "SET_REPORT_REPLY",
}

# enum uhid_dev_flag {
#     UHID_DEV_NUMBERED_FEATURE_REPORTS = (1ULL << 0),
#     UHID_DEV_NUMBERED_OUTPUT_REPORTS  = (1ULL << 1),
#     UHID_DEV_NUMBERED_INPUT_REPORTS   = (1ULL << 2),
# };
UHID_DEV_NUMBERED_FEATURE_REPORTS: Final = 1 << 0
UHID_DEV_NUMBERED_OUTPUT_REPORTS: Final = 1 << 1
UHID_DEV_NUMBERED_INPUT_REPORTS: Final = 1 << 2

# enum uhid_report_type {
#     UHID_FEATURE_REPORT,
#     UHID_OUTPUT_REPORT,
#     UHID_INPUT_REPORT,
# };
UHID_FEATURE_REPORT: Final = 0
UHID_OUTPUT_REPORT: Final = 1
UHID_INPUT_REPORT: Final = 2

# struct uhid_event {
#     __u32 type;
#     union { ... } u;
# } __attribute__((__packed__));
_EVENT_TYPE: Final = struct.Struct("=I")

# struct uhid_create2_req {
#     __u8 name[128];
#     __u8 phys[64];
#     __u8 uniq[64];
#     __u16 rd_size;
#     __u16 bus;
#     __u32 vendor;
#     __u32 product;
#     __u32 version;
#     __u32 country;
#     __u8 rd_data[HID_MAX_DESCRIPTOR_SIZE];
# } __attribute__((__packed__));
_CREATE2: Final = struct.Struct(f"=128s64s64sHHIIII{HID_MAX_DESCRIPTOR_SIZE}s")

# struct uhid_start_req {
#     __u64 dev_flags;
# };
_START: Final = struct.Struct("=Q")

# struct uhid_input2_req {
#     __u16 size;
#     __u8 data[UHID_DATA_MAX];
# } __attribute__((__packed__));
_INPUT2_HEAD: Final = struct.Struct("=H")  # the kernel zero-fills a short write

# struct uhid_output_req {
#     __u8 data[UHID_DATA_MAX];
#     __u16 size;
#     __u8 rtype;
# } __attribute__((__packed__));
_OUTPUT: Final = struct.Struct(f"={UHID_DATA_MAX}sHB")

# struct uhid_get_report_req {
#     __u32 id;
#     __u8 rnum;
#     __u8 rtype;
# } __attribute__((__packed__));
_GET_REPORT: Final = struct.Struct("=IBB")

# struct uhid_get_report_reply_req {
#     __u32 id;
#     __u16 err;
#     __u16 size;
#     __u8 data[UHID_DATA_MAX];
# } __attribute__((__packed__));
_GET_REPORT_REPLY_HEAD: Final = struct.Struct("=IHH")

# struct uhid_set_report_req {
#     __u32 id;
#     __u8 rnum;
#     __u8 rtype;
#     __u16 size;
#     __u8 data[UHID_DATA_MAX];
# } __attribute__((__packed__));
_SET_REPORT_HEAD: Final = struct.Struct("=IBBH")

# struct uhid_set_report_reply_req {
#     __u32 id;
#     __u16 err;
# } __attribute__((__packed__));
_SET_REPORT_REPLY: Final = struct.Struct("=IH")

# sizeof(struct uhid_event): the type plus the union's largest member (create2).
UHID_EVENT_SIZE: Final = _EVENT_TYPE.size + _CREATE2.size


@dataclass(frozen=True, slots=True)
class UhidEvent:
    """One event the kernel sent on ``/dev/uhid``, stamped when we read it.

    ``received_ns`` is ``time.monotonic_ns()`` (or the injected clock) right after the read that
    returned it. ``data`` is the report for OUTPUT and SET_REPORT (report ID first when the
    device numbers its reports); ``request_id`` is what a GET/SET_REPORT reply must quote.
    """

    type: int
    received_ns: int
    data: bytes = b""
    report_number: int = 0
    report_type: int = 0
    request_id: int = 0
    dev_flags: int = 0

    @property
    def name(self) -> str:
        """``OUTPUT``, ``GET_REPORT``, ... (``#7`` for an unknown type)."""
        return EVENT_NAMES.get(self.type, f"#{self.type}")


def _cstr(text: str, size: int, what: str) -> bytes:
    raw = text.encode()
    if len(raw) >= size:
        raise ValueError(f"uhid {what} {text!r} is {len(raw)} bytes; at most {size - 1} fit")
    return raw


def pack_create2(
    name: str,
    descriptor: bytes,
    bus: int,
    vendor: int,
    product: int,
    version: int = 0,
    country: int = 0,
    phys: str = "",
    uniq: str = "",
) -> bytes:
    """A complete UHID_CREATE2 event."""
    if not 0 < len(descriptor) <= HID_MAX_DESCRIPTOR_SIZE:
        raise ValueError(
            f"report descriptor is {len(descriptor)} bytes; need 1..{HID_MAX_DESCRIPTOR_SIZE}"
        )
    return _EVENT_TYPE.pack(UHID_CREATE2) + _CREATE2.pack(
        _cstr(name, 128, "name"),
        _cstr(phys, 64, "phys"),
        _cstr(uniq, 64, "uniq"),
        len(descriptor),
        bus,
        vendor,
        product,
        version,
        country,
        descriptor,
    )


def pack_input2(report: bytes) -> bytes:
    """A UHID_INPUT2 event, cut after the report (the kernel zero-fills the rest)."""
    if not 0 < len(report) <= UHID_DATA_MAX:
        raise ValueError(f"input report is {len(report)} bytes; need 1..{UHID_DATA_MAX}")
    return _EVENT_TYPE.pack(UHID_INPUT2) + _INPUT2_HEAD.pack(len(report)) + report


def pack_get_report_reply(request_id: int, err: int = 0, data: bytes = b"") -> bytes:
    """A UHID_GET_REPORT_REPLY event: ``data`` on success, or a non-zero errno in ``err``."""
    if len(data) > UHID_DATA_MAX:
        raise ValueError(f"report is {len(data)} bytes; at most {UHID_DATA_MAX}")
    head = _GET_REPORT_REPLY_HEAD.pack(request_id, err, len(data))
    return _EVENT_TYPE.pack(UHID_GET_REPORT_REPLY) + head + data


def pack_set_report_reply(request_id: int, err: int = 0) -> bytes:
    """A UHID_SET_REPORT_REPLY event: ``err`` 0 acknowledges, an errno refuses."""
    return _EVENT_TYPE.pack(UHID_SET_REPORT_REPLY) + _SET_REPORT_REPLY.pack(request_id, err)


def pack_destroy() -> bytes:
    """A UHID_DESTROY event."""
    return _EVENT_TYPE.pack(UHID_DESTROY)


def parse_event(buf: bytes, received_ns: int) -> UhidEvent:
    """Decode one ``struct uhid_event`` read from ``/dev/uhid`` (zero-extended if short)."""
    if len(buf) < UHID_EVENT_SIZE:
        buf = buf.ljust(UHID_EVENT_SIZE, b"\0")
    (kind,) = _EVENT_TYPE.unpack_from(buf)
    body = _EVENT_TYPE.size
    if kind == UHID_START:
        (flags,) = _START.unpack_from(buf, body)
        return UhidEvent(kind, received_ns, dev_flags=flags)
    if kind == UHID_OUTPUT:
        data, size, rtype = _OUTPUT.unpack_from(buf, body)
        return UhidEvent(
            kind, received_ns, data=data[: min(size, UHID_DATA_MAX)], report_type=rtype
        )
    if kind == UHID_GET_REPORT:
        req, rnum, rtype = _GET_REPORT.unpack_from(buf, body)
        return UhidEvent(kind, received_ns, report_number=rnum, report_type=rtype, request_id=req)
    if kind == UHID_SET_REPORT:
        req, rnum, rtype, size = _SET_REPORT_HEAD.unpack_from(buf, body)
        start = body + _SET_REPORT_HEAD.size
        data = buf[start : start + min(size, UHID_DATA_MAX)]
        return UhidEvent(
            kind, received_ns, data=data, report_number=rnum, report_type=rtype, request_id=req
        )
    return UhidEvent(kind, received_ns)
