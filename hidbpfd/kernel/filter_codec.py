"""The filter's tables and records (``bpf/hidbpfd.h``): the layouts quoted from the C header,
ring-buffer records in (:class:`Record`), rule tables out (:func:`encode_rules`).

Pure: no BPF call here; :mod:`hidbpfd.kernel.source` moves these bytes in and out of the kernel,
the replays and the bench build and read them too.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import Final, NamedTuple

from hidbpfd.engine.filter import RECORD_DATA_MAX, arm_us, check_table
from hidbpfd.model import PATTERN_MAX, RULES_MAX, DeviceRule
from hidbpfd.policies.params import INJECT_MAX

# #define HIDBPFD_REC_HELD (1 << 0) / HIDBPFD_REC_TRUNCATED (1 << 1)
REC_HELD: Final = 1 << 0
REC_TRUNCATED: Final = 1 << 1

# #define HIDBPFD_VERDICT_QUIET 0 / NOTIFY 1 / HOLD 2 / DROPPED 3: what feed() returns
VERDICT_QUIET: Final = 0
VERDICT_NOTIFY: Final = 1
VERDICT_HOLD: Final = 2
VERDICT_DROPPED: Final = 3

IO_DATA_MAX: Final = 512  # HIDBPFD_IO_DATA_MAX
assert IO_DATA_MAX == INJECT_MAX  # check refuses an inject the injector cannot carry

# struct hidbpfd_record {
# 	__u64 ts_ns; __u64 matched; __u32 hid_id; __u16 flags; __u16 len;
# 	__u8 data[HIDBPFD_RECORD_DATA_MAX];
# };
RECORD_FORMAT: Final = f"<QQIHH{RECORD_DATA_MAX}s"
RECORD_SIZE: Final = struct.calcsize(RECORD_FORMAT)  # 152

# struct hidbpfd_rule {
# 	__u8 pattern[HIDBPFD_PATTERN_MAX]; __u8 mask[HIDBPFD_PATTERN_MAX];
# 	__u16 len; __u8 flags; __u8 group; __u32 arm_us;
# };
RULE_FORMAT: Final = f"<{PATTERN_MAX}s{PATTERN_MAX}sHBBI"
RULE_SIZE: Final = struct.calcsize(RULE_FORMAT)  # 72

# struct hidbpfd_device_rules { __u32 count; __u32 _pad; struct hidbpfd_rule rules[32]; };
DEVICE_RULES_HEADER: Final = "<I4x"
DEVICE_RULES_SIZE: Final = struct.calcsize(DEVICE_RULES_HEADER) + RULES_MAX * RULE_SIZE  # 2312

# struct hidbpfd_armed { __u32 mask; __u32 _pad; __u64 until[HIDBPFD_RULES_MAX]; };
ARMED_FORMAT: Final = f"<I4x{RULES_MAX}Q"
ARMED_SIZE: Final = struct.calcsize(ARMED_FORMAT)  # 264

# struct hidbpfd_feed {
# 	__u32 hid_id; __u16 len; __u8 can_hold; __u8 _pad; __u8 data[HIDBPFD_FEED_DATA_MAX];
# 	__u64 now_ns;
# };
FEED_FORMAT: Final = f"<IHBx{RECORD_DATA_MAX}sQ"
FEED_SIZE: Final = struct.calcsize(FEED_FORMAT)  # 144

# struct hidbpfd_io { __u32 hid_id; __u32 len; __u8 data[HIDBPFD_IO_DATA_MAX]; };
IO_FORMAT: Final = f"<II{IO_DATA_MAX}s"
IO_SIZE: Final = struct.calcsize(IO_FORMAT)  # 520


class Record(NamedTuple):
    """One ring-buffer record (``struct hidbpfd_record``): a report the daemon must hear of.
    (A NamedTuple: built once per record on the drain's hot path.)"""

    hid_id: int
    ts_ns: int
    matched: int
    flags: int
    length: int
    """The report's full length; ``data`` holds at most RECORD_DATA_MAX bytes of it."""
    data: bytes

    @property
    def held(self) -> bool:
        """The kernel kept the report from the device's readers."""
        return bool(self.flags & REC_HELD)

    @property
    def truncated(self) -> bool:
        """The report was longer than RECORD_DATA_MAX (so it was never held)."""
        return bool(self.flags & REC_TRUNCATED)


RECORD: Final = struct.Struct(RECORD_FORMAT)


def decode_record(buf: bytes) -> Record:
    """Decode one ring-buffer sample (called from the drain for every record)."""
    ts_ns, matched, hid_id, flags, length, data = RECORD.unpack_from(buf)
    return Record(hid_id, ts_ns, matched, flags, length, data[: min(length, RECORD_DATA_MAX)])


def encode_record(rec: Record) -> bytes:
    """The inverse of :func:`decode_record` (for tests and replays)."""
    return struct.pack(
        RECORD_FORMAT, rec.ts_ns, rec.matched, rec.hid_id, rec.flags, rec.length, rec.data
    )


def encode_rules(rules: Sequence[DeviceRule]) -> bytes:
    """``struct hidbpfd_device_rules`` for a device's table; raises RuleTableError/ValueError."""
    check_table(rules)
    out = bytearray(struct.pack(DEVICE_RULES_HEADER, len(rules)))
    for dr in rules:
        pat = dr.rule.pattern
        if len(pat.data) > PATTERN_MAX:
            raise ValueError(
                f"pattern {pat} is {len(pat.data)} bytes; the kernel compares {PATTERN_MAX}"
            )
        # Pattern.matches compares zip(report, data, mask): bytes without a mask byte are free
        mask = pat.mask[: len(pat.data)]
        out += struct.pack(
            RULE_FORMAT,
            pat.data,
            mask,
            len(pat.data),
            int(dr.rule.flags),
            dr.group,
            arm_us(dr.rule),
        )
    out += bytes(DEVICE_RULES_SIZE - len(out))
    return bytes(out)


def decode_rules(buf: bytes) -> list[tuple[bytes, bytes, int, int, int, int]]:
    """``(pattern, mask, len, flags, group, arm_us)`` per live rule of a table (for tests and
    dumps)."""
    (count,) = struct.unpack_from(DEVICE_RULES_HEADER, buf)
    hdr = struct.calcsize(DEVICE_RULES_HEADER)
    return [struct.unpack_from(RULE_FORMAT, buf, hdr + i * RULE_SIZE) for i in range(count)]
