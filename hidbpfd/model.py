"""The vocabulary of hidbpfd: devices, input events, match patterns, rules and actions.

Everything here is a frozen value with no I/O. The daemon, the replay and the BPF layer all
speak in these types; policies receive :class:`InputEvent` and return :class:`Action` values.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass, field
from typing import Final, NamedTuple, TypeAlias


class Bus(enum.IntEnum):
    """HID bus types, as in ``include/uapi/linux/input.h`` (``BUS_*``)."""

    PCI = 0x01
    USB = 0x03
    HIL = 0x04
    BLUETOOTH = 0x05
    VIRTUAL = 0x06
    I2C = 0x18
    HOST = 0x19
    SPI = 0x1C


BUS_NAMES: Final[dict[str, int]] = {b.name.lower(): int(b) for b in Bus}

_HID_ID_RE: Final = re.compile(
    r"^([0-9A-Fa-f]{4}):([0-9A-Fa-f]{4}):([0-9A-Fa-f]{4})\.([0-9A-Fa-f]{4,})$"
)


def bus_name(bus: int) -> str:
    """``usb`` for 3, ``0x42`` for an unknown bus."""
    try:
        return Bus(bus).name.lower()
    except ValueError:
        return f"{bus:#x}"


@dataclass(frozen=True, slots=True)
class DeviceId:
    """Who a HID device is: what udev's HID_ID/HID_NAME/HID_UNIQ/HID_PHYS and sysfs say.

    ``hid_id`` is the kernel's sysfs name, e.g. ``0003:28BD:0905.000A``; its last field is
    ``struct hid_device.id``, which is how the BPF side names the device (:attr:`kernel_id`).
    """

    bus: int
    vendor: int
    product: int
    name: str = ""
    uniq: str = ""
    phys: str = ""
    hid_id: str = ""

    @property
    def kernel_id(self) -> int:
        """``struct hid_device.id`` (the hex after the dot of :attr:`hid_id`), or 0 if unknown."""
        m = _HID_ID_RE.match(self.hid_id)
        return int(m.group(4), 16) if m else 0

    @property
    def key(self) -> str:
        """A stable string naming this device in logs, traces and the control socket."""
        if self.hid_id:
            return self.hid_id
        return f"{self.bus:04X}:{self.vendor:04X}:{self.product:04X}"

    @staticmethod
    def sysfs_name(bus: int, vendor: int, product: int, kernel_id: int) -> str:
        """The sysfs name the kernel gives a HID device (``hid_add_device``)."""
        return f"{bus:04X}:{vendor:04X}:{product:04X}.{kernel_id:04X}"

    def describe(self) -> str:
        """``0003:28BD:0905.000A "XP-Pen Deco"`` — for log lines."""
        return f'{self.key} "{self.name}"' if self.name else self.key


@dataclass(frozen=True, slots=True)
class DeviceFacts:
    """What ``[device]`` matching knows of a device beyond its :class:`DeviceId`.

    Read from its report descriptor and sysfs by whoever meets the device (the udev watcher,
    the replay, ``devices``); ``None`` means unknown, and a match key that needs an unknown fact
    does not match.
    """

    applications: tuple[int, ...] | None = None
    """Usages (``page << 16 | usage``) of the descriptor's top-level application collections."""
    report_ids: frozenset[int] | None = None
    """Every report ID the descriptor declares (input, output or feature)."""
    interface: int | None = None
    """The USB interface number (``bInterfaceNumber``); None off USB."""
    input_lengths: tuple[tuple[int, int], ...] | None = None
    """``(report ID, bytes)`` of each input report the descriptor declares, the ID byte
    included (ID 0: the device numbers no reports); what can be held is checked against it."""


class HexError(ValueError):
    """A hex byte string could not be parsed; the message says which token and why."""


def parse_hex(text: str, *, wildcards: bool) -> tuple[bytes, bytes]:
    """Parse ``"02 00 ?? ff"`` into ``(bytes, mask)``; mask byte 0xff = must match, 0 = any.

    Tokens are separated by whitespace; a token of more than two digits is split in pairs
    (``"0200ff"`` is three bytes). ``??`` is only allowed when ``wildcards`` is true.
    """
    data = bytearray()
    mask = bytearray()
    for token in text.split():
        if token == "??":
            if not wildcards:
                raise HexError("wildcard '??' is not allowed in a report to send")
            data.append(0)
            mask.append(0)
            continue
        tok = token.removeprefix("0x").removeprefix("0X")
        if len(tok) % 2 or not re.fullmatch(r"[0-9A-Fa-f]+", tok):
            raise HexError(f"bad hex byte {token!r}")
        for i in range(0, len(tok), 2):
            data.append(int(tok[i : i + 2], 16))
            mask.append(0xFF)
    if not data:
        raise HexError("empty byte string")
    return bytes(data), bytes(mask)


def hexstr(data: bytes) -> str:
    """Spaced lower-case hex, ``"02 00 ff"``."""
    return data.hex(" ")


PATTERN_MAX: Final = 32
"""Longest pattern the BPF filter compares (``HIDBPFD_PATTERN_MAX`` in ``bpf/hidbpfd.h``)."""


@dataclass(frozen=True, slots=True)
class Pattern:
    """A report pattern: matches reports at least ``len(data)`` long whose bytes agree with
    ``data`` wherever ``mask`` is 0xff. An empty pattern matches every report."""

    data: bytes = b""
    mask: bytes = b""

    @classmethod
    def parse(cls, text: str) -> Pattern:
        """From TOML syntax, ``"02 00 ?? ??"``; raises :class:`HexError`."""
        data, mask = parse_hex(text, wildcards=True)
        if len(data) > PATTERN_MAX:
            raise HexError(f"pattern is {len(data)} bytes long; at most {PATTERN_MAX} are matched")
        return cls(data, mask)

    def matches(self, report: bytes) -> bool:
        """True if ``report`` is at least as long as the pattern and agrees on masked bytes."""
        if len(report) < len(self.data):
            return False
        return all(
            (r & m) == (d & m) for r, d, m in zip(report, self.data, self.mask, strict=False)
        )

    def __str__(self) -> str:
        if not self.data:
            return "*"
        return " ".join(
            f"{d:02x}" if m else "??" for d, m in zip(self.data, self.mask, strict=True)
        )


ANY_REPORT: Final = Pattern()


class RuleFlag(enum.IntFlag):
    """What the filter does on a match (``HIDBPFD_RULE_*`` in ``bpf/hidbpfd.h``).

    Every rule notifies the daemon when it fires. ``HOLD`` keeps the report from the device's
    readers (only where the kernel can: HID-BPF). ``ARM`` sets the rule's group bit in the
    device's armed mask; a ``WHEN_ARMED`` rule only fires while its group bit is set, and clears
    it when it does. An ARM rule's :attr:`Rule.arm_ns` ends the arm by itself when the policy's
    own wait ends (defer's delay, release-guard's timeout), so a report after an expiry is not
    taken for a cancel. Groups let a policy listen to "any report" only while it has something
    pending, so that unmatched traffic never wakes the daemon.
    """

    NONE = 0
    HOLD = 1 << 0
    ARM = 1 << 1
    WHEN_ARMED = 1 << 2


@dataclass(frozen=True, slots=True)
class Rule:
    """One pattern a policy wants the filter to watch for, with what to do on a match."""

    pattern: Pattern
    flags: RuleFlag = RuleFlag.NONE
    arm_ns: int | None = None
    """For an ``ARM`` rule: the arm expires this long after the arming report (the policy's
    timer is due then: no ``WHEN_ARMED`` rule of the group may fire after it). None: it lasts
    until a ``WHEN_ARMED`` rule of the group fires."""


RULES_MAX: Final = 32
"""Rules per device (``HIDBPFD_RULES_MAX``): the bits of the match mask, and arm groups."""


@dataclass(frozen=True, slots=True)
class DeviceRule:
    """A :class:`Rule` placed in a device's table: ``group`` is the owning policy's index."""

    rule: Rule
    group: int


class InputEvent(NamedTuple):
    """An input report the filter told the daemon about.

    ``data`` starts with the report-ID byte when the device numbers its reports, as hidraw
    gives it. ``matched`` has bit *i* set when rule *i* of the device's table fired. ``held``
    is true when the report was kept from the device's readers. ``ts_ns`` is CLOCK_MONOTONIC.
    A NamedTuple, not a frozen dataclass: as immutable, and built four times faster (one per
    report on the drain's hot path).
    """

    device: DeviceId
    ts_ns: int
    data: bytes
    matched: int = 0
    held: bool = False
    truncated: bool = False


# --- Actions: what a policy asks for. Policies return them; the dispatch carries them out. ---


@dataclass(frozen=True, slots=True)
class Pass:
    """The original report was delivered to the device's readers (the filter's verdict)."""

    data: bytes


@dataclass(frozen=True, slots=True)
class Hold:
    """The original report was kept from the device's readers (the filter's verdict)."""

    data: bytes


@dataclass(frozen=True, slots=True)
class Reinject:
    """Deliver a report that was held earlier, now."""

    data: bytes


@dataclass(frozen=True, slots=True)
class Inject:
    """Deliver a new report into the device's input stream."""

    data: bytes


@dataclass(frozen=True, slots=True)
class SendOutput:
    """Send an output report to the device (hidraw ``write``)."""

    data: bytes


@dataclass(frozen=True, slots=True)
class SetFeature:
    """Set a feature report on the device (``HIDIOCSFEATURE``)."""

    data: bytes


@dataclass(frozen=True, slots=True)
class GetFeature:
    """Get a feature report (``HIDIOCGFEATURE``); the reply reaches ``Policy.on_reply(key)``."""

    report_id: int
    length: int
    key: str


@dataclass(frozen=True, slots=True)
class Schedule:
    """Start or re-arm the policy's deferred work ``key`` to run ``delay_ns`` from now.

    Like ``bpf_timer_start`` on an existing timer: a pending item with the same key is
    replaced, never doubled. When due, the dispatch calls ``Policy.on_timer(key)``.
    """

    key: str
    delay_ns: int


@dataclass(frozen=True, slots=True)
class Cancel:
    """Cancel the policy's pending work ``key``; a cancelled item never runs."""

    key: str


Action: TypeAlias = (
    Pass | Hold | Reinject | Inject | SendOutput | SetFeature | GetFeature | Schedule | Cancel
)

DeviceEvent: TypeAlias = str
"""``"added"``, ``"removed"``, ``"resume"``: what happened to a device, for ``Policy.on_device``."""

DEVICE_EVENTS: Final = ("added", "removed", "resume")


@dataclass(frozen=True, slots=True)
class FeatureReply:
    """The answer to a :class:`GetFeature`: the bytes, or an error text."""

    key: str
    data: bytes | None
    error: str = ""


@dataclass(slots=True)
class Counters:
    """Per-device counters shown by ``hidbpfd status``."""

    seen: int = 0
    matched: int = 0
    held: int = 0
    injected: int = 0
    output: int = 0
    feature: int = 0
    errors: int = 0
    extra: dict[str, int] = field(default_factory=dict)
