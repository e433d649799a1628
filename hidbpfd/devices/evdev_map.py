"""HID reports to evdev events: the usage tables and the per-device :class:`EventMapper`.

Used by the uinput injection sink (:mod:`hidbpfd.devices.uinput`), for a device whose kernel
has neither the in-kernel injector nor uhid. The kernel's HID drivers cannot see these
reports, so we do their job for the common cases, following ``drivers/hid/hid-input.c``
(``hidinput_configure_usage``), which we quote where we copy a table or a rule:

- **Keyboard/Keypad** (0x07): modifier bitfields and key arrays → ``KEY_*`` through the
  kernel's ``hid_keyboard[]`` table; an array's keys are pressed while their usage is present
  and released when it leaves (the previous report of the same report ID is remembered).
  A report naming ErrorRollOver (0x01) is a phantom state and changes nothing;
- **Consumer** (0x0C): the usual media and application keys (``KEY_VOLUMEUP``…), AC Pan →
  ``REL_HWHEEL`` (+ hi-res), Volume → ``ABS_VOLUME``;
- **Button** (0x09): ``BTN_LEFT``… in mice, ``BTN_JOYSTICK``/``BTN_GAMEPAD`` (then
  ``BTN_TRIGGER_HAPPY``) in joysticks and gamepads, else ``BTN_0``…;
- **Generic Desktop**: X/Y/Z/Rx/Ry/Rz → ``REL_*`` (relative fields) or ``ABS_*``; Wheel →
  ``REL_WHEEL`` + ``REL_WHEEL_HI_RES`` (times 120) or ``ABS_WHEEL``; System Control keys;
- **Digitizer**: tip/touch/eraser → ``BTN_TOUCH``, in range → ``BTN_TOOL_PEN`` (or
  ``_FINGER``/``_MOUSE`` by the physical collection), invert → ``BTN_TOOL_RUBBER``, barrel →
  ``BTN_STYLUS``/``BTN_STYLUS2``, tip pressure → ``ABS_PRESSURE`` (and ``BTN_TOUCH`` from it
  when the pen has no tip switch), tilt → ``ABS_TILT_*``.


Anything else is reported once per usage (at creation for variable fields, at first sight for
array entries) and otherwise ignored. :class:`EventMapper` is pure (descriptor in, events out)
and tested on the host.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

import evdev
from evdev import ecodes as e

from hidbpfd.devices.descriptor import (
    PAGE_BUTTON,
    PAGE_CONSUMER,
    PAGE_DIGITIZER,
    PAGE_GENERIC_DESKTOP,
    PAGE_KEYBOARD,
    Field,
    ReportDescriptor,
    ReportKind,
    usage_name,
)

log = logging.getLogger(__name__)


# drivers/hid/hid-input.c: static const unsigned char hid_keyboard[256]
# (index: Keyboard/Keypad usage; value: KEY_* code; 0 = ignored, unk = KEY_UNKNOWN = 240)
_U: Final = 240
HID_KEYBOARD: Final[tuple[int, ...]] = (
      0,  0,  0,  0, 30, 48, 46, 32, 18, 33, 34, 35, 23, 36, 37, 38,
     50, 49, 24, 25, 16, 19, 31, 20, 22, 47, 17, 45, 21, 44,  2,  3,
      4,  5,  6,  7,  8,  9, 10, 11, 28,  1, 14, 15, 57, 12, 13, 26,
     27, 43, 43, 39, 40, 41, 51, 52, 53, 58, 59, 60, 61, 62, 63, 64,
     65, 66, 67, 68, 87, 88, 99, 70,119,110,102,104,111,107,109,106,
    105,108,103, 69, 98, 55, 74, 78, 96, 79, 80, 81, 75, 76, 77, 71,
     72, 73, 82, 83, 86,127,116,117,183,184,185,186,187,188,189,190,
    191,192,193,194,134,138,130,132,128,129,131,137,133,135,136,113,
    115,114, _U, _U, _U,121, _U, 89, 93,124, 92, 94, 95, _U, _U, _U,
    122,123, 90, 91, 85, _U, _U, _U, _U, _U, _U, _U,111, _U, _U, _U,
     _U, _U, _U, _U, _U, _U, _U, _U, _U, _U, _U, _U, _U, _U, _U, _U,
     _U, _U, _U, _U, _U, _U,179,180, _U, _U, _U, _U, _U, _U, _U, _U,
     _U, _U, _U, _U, _U, _U, _U, _U, _U, _U, _U, _U, _U, _U, _U, _U,
     _U, _U, _U, _U, _U, _U, _U, _U,111, _U, _U, _U, _U, _U, _U, _U,
     29, 42, 56,125, 97, 54,100,126,164,166,165,163,161,115,114,113,
    150,158,159,128,136,177,178,176,142,152,173,140, _U, _U, _U, _U,
)  # fmt: skip

# drivers/hid/hid-input.c, case HID_UP_CONSUMER: the usual keys (map_key_clear)
CONSUMER_KEYS: Final[dict[int, int]] = {
    0x030: e.KEY_POWER, 0x031: e.KEY_RESTART, 0x032: e.KEY_SLEEP, 0x034: e.KEY_SLEEP,
    0x035: e.KEY_KBDILLUMTOGGLE, 0x040: e.KEY_MENU, 0x041: e.KEY_SELECT, 0x042: e.KEY_UP,
    0x043: e.KEY_DOWN, 0x044: e.KEY_LEFT, 0x045: e.KEY_RIGHT, 0x046: e.KEY_ESC,
    0x047: e.KEY_KPPLUS, 0x048: e.KEY_KPMINUS, 0x060: e.KEY_INFO, 0x061: e.KEY_SUBTITLE,
    0x065: e.KEY_CAMERA, 0x06F: e.KEY_BRIGHTNESSUP, 0x070: e.KEY_BRIGHTNESSDOWN,
    0x072: e.KEY_BRIGHTNESS_TOGGLE, 0x079: e.KEY_KBDILLUMUP, 0x07A: e.KEY_KBDILLUMDOWN,
    0x07C: e.KEY_KBDILLUMTOGGLE, 0x083: e.KEY_LAST, 0x088: e.KEY_PC, 0x089: e.KEY_TV,
    0x08A: e.KEY_WWW, 0x08B: e.KEY_DVD, 0x08C: e.KEY_PHONE, 0x08D: e.KEY_PROGRAM,
    0x09C: e.KEY_CHANNELUP, 0x09D: e.KEY_CHANNELDOWN, 0x0B0: e.KEY_PLAY, 0x0B1: e.KEY_PAUSE,
    0x0B2: e.KEY_RECORD, 0x0B3: e.KEY_FASTFORWARD, 0x0B4: e.KEY_REWIND, 0x0B5: e.KEY_NEXTSONG,
    0x0B6: e.KEY_PREVIOUSSONG, 0x0B7: e.KEY_STOPCD, 0x0B8: e.KEY_EJECTCD, 0x0B9: e.KEY_SHUFFLE,
    0x0BC: e.KEY_MEDIA_REPEAT, 0x0CD: e.KEY_PLAYPAUSE, 0x0CF: e.KEY_VOICECOMMAND,
    0x0E2: e.KEY_MUTE, 0x0E5: e.KEY_BASSBOOST, 0x0E9: e.KEY_VOLUMEUP, 0x0EA: e.KEY_VOLUMEDOWN,
    0x183: e.KEY_CONFIG, 0x18A: e.KEY_MAIL, 0x192: e.KEY_CALC, 0x194: e.KEY_FILE,
    0x196: e.KEY_WWW, 0x19C: e.KEY_LOGOFF, 0x19F: e.KEY_CONTROLPANEL, 0x1A2: e.KEY_APPSELECT,
    0x1A6: e.KEY_HELP, 0x1A7: e.KEY_DOCUMENTS, 0x1AE: e.KEY_KEYBOARD, 0x1B1: e.KEY_SCREENSAVER,
    0x1CB: e.KEY_ASSISTANT, 0x201: e.KEY_NEW, 0x202: e.KEY_OPEN, 0x203: e.KEY_CLOSE,
    0x204: e.KEY_EXIT, 0x207: e.KEY_SAVE, 0x208: e.KEY_PRINT, 0x21A: e.KEY_UNDO,
    0x21B: e.KEY_COPY, 0x21C: e.KEY_CUT, 0x21D: e.KEY_PASTE, 0x21F: e.KEY_FIND,
    0x221: e.KEY_SEARCH, 0x223: e.KEY_HOMEPAGE, 0x224: e.KEY_BACK, 0x225: e.KEY_FORWARD,
    0x226: e.KEY_STOP, 0x227: e.KEY_REFRESH, 0x22A: e.KEY_BOOKMARKS, 0x22D: e.KEY_ZOOMIN,
    0x22E: e.KEY_ZOOMOUT, 0x22F: e.KEY_ZOOMRESET, 0x232: e.KEY_FULL_SCREEN,
    0x233: e.KEY_SCROLLUP, 0x234: e.KEY_SCROLLDOWN, 0x23D: e.KEY_EDIT, 0x25F: e.KEY_CANCEL,
    0x269: e.KEY_INSERT, 0x26A: e.KEY_DELETE, 0x279: e.KEY_REDO, 0x289: e.KEY_REPLY,
    0x28B: e.KEY_FORWARDMAIL, 0x28C: e.KEY_SEND,
}  # fmt: skip

# drivers/hid/hid-input.c, case HID_UP_GENDESK, SystemControl (usage & 0xf0) == 0x80
SYSTEM_CONTROL_KEYS: Final[dict[int, int]] = {
    0x81: e.KEY_POWER, 0x82: e.KEY_SLEEP, 0x83: e.KEY_WAKEUP, 0x84: e.KEY_CONTEXT_MENU,
    0x85: e.KEY_MENU, 0x86: e.KEY_PROG1, 0x87: e.KEY_HELP, 0x88: e.KEY_EXIT,
    0x89: e.KEY_SELECT, 0x8A: e.KEY_RIGHT, 0x8B: e.KEY_LEFT, 0x8C: e.KEY_UP, 0x8D: e.KEY_DOWN,
    0x8E: e.KEY_POWER2, 0x8F: e.KEY_RESTART,
}  # fmt: skip

GD_MOUSE: Final = 0x010002
GD_POINTER: Final = 0x010001
GD_JOYSTICK: Final = 0x010004
GD_GAMEPAD: Final = 0x010005
DG_DIGITIZER: Final = 0x0D0001
DG_PEN: Final = 0x0D0002
DG_TOUCHSCREEN: Final = 0x0D0004
DG_PUCK: Final = 0x0D0021
DG_FINGER: Final = 0x0D0022
KB_ERROR_ROLLOVER: Final = 0x070001
HI_RES_PER_DETENT: Final = 120
"""``REL_WHEEL_HI_RES`` units per wheel detent (``include/uapi/linux/input-event-codes.h``)."""


@dataclass(frozen=True, slots=True)
class Target:
    """One evdev event a usage produces: ``(type, code)``, relative values times ``scale``."""

    type: int
    code: int
    scale: int = 1


@dataclass(frozen=True, slots=True)
class Axis:
    """An absolute axis's range, as ``struct input_absinfo`` wants it."""

    code: int
    minimum: int
    maximum: int
    resolution: int = 0


def _key(code: int) -> tuple[Target, ...]:
    return (Target(e.EV_KEY, code),)


def _button(field: Field, n: int) -> tuple[Target, ...]:
    """``case HID_UP_BUTTON``: ``code = usage - 1``, offset by the application (or, failing
    that, the physical collection)."""
    code = n - 1
    kind = field.application
    if kind not in (GD_MOUSE, GD_POINTER, GD_JOYSTICK, GD_GAMEPAD):
        kind = field.physical
    if kind in (GD_MOUSE, GD_POINTER):
        return _key(e.BTN_MOUSE + code) if code <= 0xF else ()
    if kind in (GD_JOYSTICK, GD_GAMEPAD):
        base = e.BTN_JOYSTICK if kind == GD_JOYSTICK else e.BTN_GAMEPAD
        if code <= 0xF:
            return _key(base + code)
        return _key(e.BTN_TRIGGER_HAPPY + code - 0x10) if code < 0x10 + 40 else ()
    return _key(e.BTN_MISC + code) if code <= 0xF else ()


def _generic_desktop(field: Field, uid: int) -> tuple[Target, ...]:
    if 0x30 <= uid <= 0x35:  # X Y Z Rx Ry Rz: "These usage IDs map directly to the codes"
        return (Target(e.EV_REL if field.relative else e.EV_ABS, uid & 0xF),)
    if uid == 0x38:  # Wheel
        if field.relative:
            return (
                Target(e.EV_REL, e.REL_WHEEL),
                Target(e.EV_REL, e.REL_WHEEL_HI_RES, HI_RES_PER_DETENT),
            )
        return (Target(e.EV_ABS, e.ABS_WHEEL),)
    if uid in SYSTEM_CONTROL_KEYS:
        return _key(SYSTEM_CONTROL_KEYS[uid])
    return ()


def _digitizer(field: Field, uid: int) -> tuple[Target, ...]:
    if uid in (0x33, 0x42, 0x43, 0x45):  # Touch, Tip Switch, Tip Switch 2, Eraser
        return _key(e.BTN_TOUCH)
    if uid == 0x32:  # In Range: the tool, by the physical collection
        tool = {DG_PUCK: e.BTN_TOOL_MOUSE, DG_FINGER: e.BTN_TOOL_FINGER}
        return _key(tool.get(field.physical, e.BTN_TOOL_PEN))
    if uid == 0x3C:  # Invert
        return _key(e.BTN_TOOL_RUBBER)
    if uid == 0x44:  # Barrel Switch
        return _key(e.BTN_STYLUS)
    if uid in (0x46, 0x5A):  # Tablet Pick, Secondary Barrel Switch
        return _key(e.BTN_STYLUS2)
    if uid == 0x30:  # Tip Pressure
        return (Target(e.EV_ABS, e.ABS_PRESSURE),)
    if uid in (0x3D, 0x3E):  # X Tilt, Y Tilt
        return (Target(e.EV_ABS, e.ABS_TILT_X if uid == 0x3D else e.ABS_TILT_Y),)
    return ()


def map_usage(field: Field, usage: int) -> tuple[Target, ...]:
    """The evdev events ``usage`` of ``field`` produces; empty when we do not map it."""
    page, uid = usage >> 16, usage & 0xFFFF
    if page == PAGE_KEYBOARD:
        code = HID_KEYBOARD[uid] if uid < len(HID_KEYBOARD) else 0
        return _key(code) if code not in (0, e.KEY_UNKNOWN) else ()
    if page == PAGE_BUTTON:
        return _button(field, uid) if uid else ()
    if page == PAGE_GENERIC_DESKTOP:
        return _generic_desktop(field, uid)
    if page == PAGE_CONSUMER:
        if uid in CONSUMER_KEYS:
            return _key(CONSUMER_KEYS[uid])
        if uid == 0x238 and field.relative:  # AC Pan
            return (
                Target(e.EV_REL, e.REL_HWHEEL),
                Target(e.EV_REL, e.REL_HWHEEL_HI_RES, HI_RES_PER_DETENT),
            )
        if uid == 0x0E0 and not field.relative:  # Volume
            return (Target(e.EV_ABS, e.ABS_VOLUME),)
        return ()
    if page == PAGE_DIGITIZER:
        return _digitizer(field, uid)
    return ()


def _keys_only(field: Field, usage: int) -> tuple[Target, ...]:
    return tuple(t for t in map_usage(field, usage) if t.type == e.EV_KEY)


def _silent(usage: int) -> bool:
    """Usages that mean "nothing" (usage 0 of any page; a keyboard's error codes 1..3)."""
    return usage & 0xFFFF == 0 or (usage >> 16 == PAGE_KEYBOARD and usage & 0xFFFF <= 3)


def abs_resolution(field: Field, code: int) -> int:
    """Units per mm (lengths) or per radian (angles), as ``hidinput_calc_abs_res``; 0 when
    the descriptor does not say."""
    logical = field.logical_max - field.logical_min
    physical = field.physical_max - field.physical_min
    exponent = field.unit_exponent
    if logical <= 0 or physical <= 0:
        return 0
    if code in (e.ABS_X, e.ABS_Y, e.ABS_Z):
        if field.unit == 0x11:  # centimetres
            exponent += 1
        elif field.unit == 0x13:  # inches
            physical *= 254
            exponent -= 1
        else:
            return 0
    elif code in (e.ABS_RX, e.ABS_RY, e.ABS_RZ, e.ABS_WHEEL, e.ABS_TILT_X, e.ABS_TILT_Y):
        if field.unit == 0x14:  # degrees
            logical *= 573
            exponent += 1
        elif field.unit != 0x12:  # radians
            return 0
    else:
        return 0
    if exponent < 0:
        logical *= 10**-exponent
    else:
        physical *= 10**exponent
    return (logical + physical // 2) // physical  # DIV_ROUND_CLOSEST


@dataclass(frozen=True, slots=True)
class _Variable:
    field: Field
    targets: tuple[tuple[Target, ...], ...]  # per element


@dataclass(frozen=True, slots=True)
class _Array:
    field: Field
    targets: dict[int, tuple[Target, ...]]  # usage -> events, mapped usages only


Event = tuple[int, int, int]
"""``(type, code, value)``."""


class EventMapper:
    """One device's reports → evdev events, with the state that needs (previous report per ID).

    Built once per device from its parsed descriptor; :meth:`translate` is called for every
    injected report, on the loop. ``label`` names the device in the log lines about unmapped
    usages (one line per usage, ever).
    """

    def __init__(self, descriptor: ReportDescriptor, label: str = "") -> None:
        self.descriptor = descriptor
        self.label = label
        self.keys: set[int] = set()
        self.rels: set[int] = set()
        self.axes: dict[int, Axis] = {}
        self.props: set[int] = set()
        self.repeat = False
        self.unmapped: set[int] = set()
        """Usages seen not to map (variable fields: all, at creation; arrays: as they come)."""
        self._reports: dict[int, list[_Variable | _Array]] = {}
        self._last: dict[int, dict[tuple[int, int], int]] = {}
        self._unknown_ids: set[int] = set()
        for f in descriptor.fields:
            if f.kind is ReportKind.INPUT and not f.constant and 0 < f.size <= 32:
                self._add(f)
        self.touch_from_pressure = e.ABS_PRESSURE in self.axes and e.BTN_TOUCH not in self.keys
        if self.touch_from_pressure:  # HID_QUIRK_NOTOUCH: BTN_TOUCH follows the pressure
            self.keys.add(e.BTN_TOUCH)
        for usage in sorted(self.unmapped):
            self._report_unmapped(usage)

    # --- building -----------------------------------------------------------------------------

    def _add(self, f: Field) -> None:
        if f.application in (DG_PEN, DG_TOUCHSCREEN):
            self.props.add(e.INPUT_PROP_DIRECT)
        elif f.application == DG_DIGITIZER:
            self.props.add(e.INPUT_PROP_POINTER)
        entry: _Variable | _Array
        if f.variable:
            per = []
            for i in range(f.count):
                usage = f.usage(i)
                targets = map_usage(f, usage)
                if not targets and not _silent(usage):
                    self.unmapped.add(usage)
                per.append(targets)
                self._declare(f, usage, targets)
            if not any(per):
                return
            entry = _Variable(f, tuple(per))
        else:
            # unmapped array entries are reported when they first appear: a keyboard's
            # 0..255 range alone holds ~100 usages nobody presses
            # arrays name pressed usages: only keys make sense there
            mapped = {u: t for u in dict.fromkeys(f.usages) if (t := _keys_only(f, u))}
            for usage, targets in mapped.items():
                self._declare(f, usage, targets)
            entry = _Array(f, mapped)
        self._reports.setdefault(f.report_id, []).append(entry)

    def _declare(self, f: Field, usage: int, targets: Iterable[Target]) -> None:
        for t in targets:
            if t.type == e.EV_KEY:
                self.keys.add(t.code)
                self.repeat = self.repeat or usage >> 16 == PAGE_KEYBOARD
            elif t.type == e.EV_REL:
                self.rels.add(t.code)
            elif t.type == e.EV_ABS and t.code not in self.axes:
                self.axes[t.code] = Axis(
                    t.code, f.logical_min, f.logical_max, abs_resolution(f, t.code)
                )

    def _report_unmapped(self, usage: int) -> None:
        log.info(
            "%suinput: %s is not mapped to an evdev event; ignored",
            f"{self.label}: " if self.label else "",
            usage_name(usage),
        )

    @property
    def empty(self) -> bool:
        """Nothing in the descriptor maps to an evdev event."""
        return not (self.keys or self.rels or self.axes)

    def capabilities(self) -> dict[int, list[int] | list[tuple[int, evdev.AbsInfo]]]:
        """The ``events`` argument of :class:`evdev.UInput` for this device."""
        caps: dict[int, list[int] | list[tuple[int, evdev.AbsInfo]]] = {}
        if self.keys:
            caps[e.EV_KEY] = sorted(self.keys)
        if self.rels:
            caps[e.EV_REL] = sorted(self.rels)
        if self.axes:
            caps[e.EV_ABS] = [
                (a.code, evdev.AbsInfo(0, a.minimum, a.maximum, 0, 0, a.resolution))
                for a in sorted(self.axes.values(), key=lambda a: a.code)
            ]
        return caps

    # --- translating --------------------------------------------------------------------------

    def translate(self, report: bytes) -> list[Event]:
        """The events for one report, ending with ``SYN_REPORT``; empty if nothing changed.

        Keys and absolute axes are sent when they differ from the previous report with the same
        ID (keys start released); relative axes whenever non-zero.
        """
        rid = self.descriptor.report_id_of(report)
        entries = self._reports.get(rid)
        if entries is None:
            if rid not in self._unknown_ids:
                self._unknown_ids.add(rid)
                log.info(
                    "%suinput: report ID %d has nothing mapped; such reports are ignored",
                    f"{self.label}: " if self.label else "",
                    rid,
                )
            return []
        prev = self._last.get(rid, {})
        state: dict[tuple[int, int], int] = {}
        rel: dict[tuple[int, int], int] = {}
        for entry in entries:
            if isinstance(entry, _Variable):
                for value, targets in zip(entry.field.values(report), entry.targets, strict=False):
                    for t in targets:
                        _apply(t, value, state, rel)
            else:
                self._array(entry, report, prev, state)
        self._tools(state)
        out: list[Event] = []
        for (etype, code), value in state.items():
            if prev.get((etype, code), 0 if etype == e.EV_KEY else None) != value:
                out.append((etype, code, value))
        out.extend((etype, code, value) for (etype, code), value in rel.items() if value)
        self._last[rid] = state
        if out:
            out.append((e.EV_SYN, e.SYN_REPORT, 0))
        return out

    def _array(
        self,
        entry: _Array,
        report: bytes,
        prev: dict[tuple[int, int], int],
        state: dict[tuple[int, int], int],
    ) -> None:
        present = entry.field.array_usages(report)
        if KB_ERROR_ROLLOVER in present:  # phantom state: keep the keys as they were
            for targets in entry.targets.values():
                for t in targets:
                    key = (t.type, t.code)
                    state[key] = max(state.get(key, 0), prev.get(key, 0))
            return
        for usage in present:
            if usage not in entry.targets and usage not in self.unmapped and not _silent(usage):
                self.unmapped.add(usage)
                self._report_unmapped(usage)
        for usage, targets in entry.targets.items():
            for t in targets:
                key = (t.type, t.code)
                state[key] = max(state.get(key, 0), int(usage in present))

    def _tools(self, state: dict[tuple[int, int], int]) -> None:
        pen, rubber = (e.EV_KEY, e.BTN_TOOL_PEN), (e.EV_KEY, e.BTN_TOOL_RUBBER)
        if state.get(rubber):  # one tool at a time: the inverted pen is the eraser
            if pen in state and not state[pen]:
                state[rubber] = 0  # inverted but out of range
            state[pen] = 0
        if self.touch_from_pressure and (e.EV_ABS, e.ABS_PRESSURE) in state:
            state[(e.EV_KEY, e.BTN_TOUCH)] = int(state[(e.EV_ABS, e.ABS_PRESSURE)] > 0)


def _apply(
    t: Target, value: int, state: dict[tuple[int, int], int], rel: dict[tuple[int, int], int]
) -> None:
    key = (t.type, t.code)
    if t.type == e.EV_REL:
        rel[key] = rel.get(key, 0) + value * t.scale
    elif t.type == e.EV_KEY:
        state[key] = max(state.get(key, 0), int(value != 0))
    else:
        state[key] = value
