"""The kernel side of the userspace engine's protocol: the maps ``<hidbpfd/api.h>`` declares in
a program object, and the context of its callbacks. Quoted from
``include/hidbpfd/requests.h`` and ``include/hidbpfd/api.h``; the request record itself is
mirrored by the pure :mod:`hidbpfd.engine.requests` (tests/bpf/test_requests.py checks both
against the C compiler's layout)."""

from __future__ import annotations

import struct
from typing import Final, NamedTuple

REQUESTS_MAP: Final = "hidbpfd_requests"  # BPF_MAP_TYPE_RINGBUF of struct hidbpfd_request
STATE_MAP: Final = "hidbpfd_state"  # BPF_MAP_TYPE_ARRAY[1] of struct hidbpfd_state
PASSING_MAP: Final = "hidbpfd_passing"  # BPF_MAP_TYPE_ARRAY[1] of __u32
KEYS_MAP: Final = "hidbpfd_keys"  # BPF_MAP_TYPE_HASH: __u32 key -> __u64 ts_ns

BUDGET_BURST: Final = 64  # HIDBPFD_BUDGET_BURST
BUDGET_INTERVAL_NS: Final = 1_000_000  # HIDBPFD_BUDGET_INTERVAL_NS

# struct hidbpfd_state {
# 	__u32 burst; __u32 _pad; __u64 interval_ns; __u64 tat;
# 	__u64 requests; __u64 over_budget; __u64 ring_full;
# };
STATE_FORMAT: Final = "<I4xQQQQQ"
STATE_SIZE: Final = struct.calcsize(STATE_FORMAT)  # 48
_STATE: Final = struct.Struct(STATE_FORMAT)

# struct hidbpfd_call_args { __u32 hid_id; __u32 key; __u64 arg; };
CALL_ARGS_FORMAT: Final = "<IIQ"
CALL_ARGS_SIZE: Final = struct.calcsize(CALL_ARGS_FORMAT)  # 16


class State(NamedTuple):
    """``struct hidbpfd_state`` as read from the map."""

    burst: int
    interval_ns: int
    tat: int
    requests: int
    over_budget: int
    ring_full: int


def decode_state(raw: bytes) -> State:
    """The state map's value."""
    return State(*_STATE.unpack_from(raw))


def encode_state(st: State) -> bytes:
    """The state map's value, for an update."""
    return _STATE.pack(*st)
