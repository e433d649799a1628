"""HID reports → evdev events (the uinput sink's mapping), table-driven: the captures' devices
and a few more (mouse, pen with invert/tilt/resolution, pen without tip switch, AC Pan), with
state across reports (array keyboards press and release), capabilities, the HID→evdev key
table against evdev's names, and one log line per unmapped usage."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from evdev import ecodes as e

from hidbpfd.devices.descriptor import parse
from hidbpfd.devices.evdev_map import HID_KEYBOARD, EventMapper
from hidbpfd.devices.uinput import pack_events
from hidbpfd.replay.recording import load
from tests.unit.test_hid_descriptor import MOUSE

CAPTURES = Path(__file__).resolve().parents[1] / "captures"


def h(text: str) -> bytes:
    return bytes.fromhex(text)


# A pen (report ID 7): tip, barrel, invert, eraser, in range, 3 bits padding; X/Y 0..21600 over
# 21.6 inches (unit 0x13, exponent -3: 1000 lines per inch); pressure 0..4095; tilt -60..60
# degrees (unit 0x14). 10 bytes.
PEN = h(
    "05 0d 09 02 a1 01 85 07 09 20 a1 00"
    " 09 42 09 44 09 3c 09 45 09 32 15 00 25 01 75 01 95 05 81 02 95 03 81 03"
    " 05 01 09 30 09 31 26 60 54 35 00 46 60 54 65 13 55 0d 75 10 95 02 81 02"
    " 45 00 65 00 55 00 05 0d 09 30 26 ff 0f 75 10 95 01 81 02"
    " 09 3d 09 3e 15 c4 25 3c 35 c4 45 3c 65 14 75 08 95 02 81 02 c0 c0"
)
# A pen with no tip switch: BTN_TOUCH follows the pressure (the kernel's HID_QUIRK_NOTOUCH).
PEN_NO_TIP = h(
    "05 0d 09 02 a1 01 09 20 a1 00 09 32 15 00 25 01 75 01 95 01 81 02 95 07 81 03"
    " 05 01 09 30 26 ff 00 75 08 95 01 81 02 05 0d 09 30 81 02 c0 c0"
)
# Consumer control with a relative AC Pan byte (horizontal scrolling).
PAN = h("05 0c 09 01 a1 01 0a 38 02 15 81 25 7f 75 08 95 01 81 06 c0")


def capture(name: str) -> bytes:
    return load(CAPTURES / name).devices[0].descriptor


DESCRIPTORS = {
    "keyboard": capture("macro-key.hid"),
    "pen": capture("pen-proximity.hid"),
    "remote": capture("release-guard.hid"),
    "vendor": capture("wakeup-reinit.hid"),
    "mouse": MOUSE,
    "pen2": PEN,
    "pen-no-tip": PEN_NO_TIP,
    "pan": PAN,
}


def code(name: str) -> tuple[int, int]:
    kind = {"KEY": e.EV_KEY, "BTN": e.EV_KEY, "REL": e.EV_REL, "ABS": e.EV_ABS}[name[:3]]
    return kind, e.ecodes[name]


def events(names: str) -> list[tuple[int, int, int]]:
    """``"KEY_A 1, KEY_B 0"`` → the events, with the closing SYN_REPORT ("" → none)."""
    out = []
    for item in filter(None, (s.strip() for s in names.split(","))):
        name, value = item.split()
        out.append((*code(name), int(value)))
    return [*out, (e.EV_SYN, e.SYN_REPORT, 0)] if out else []


# device, then (report, expected events) in order: state carries from one report to the next
CASES: dict[str, tuple[str, list[tuple[str, str]]]] = {
    "macro keyboard: Ctrl+C press and release": (
        "keyboard",
        [("01 01 06 00", "KEY_LEFTCTRL 1, KEY_C 1"), ("01 00 00 00", "KEY_LEFTCTRL 0, KEY_C 0")],
    ),
    "macro keyboard: the capture's F13 and Shift+B": (
        "keyboard",
        [
            ("01 00 68 00", "KEY_F13 1"),
            ("01 00 00 00", "KEY_F13 0"),
            ("01 02 05 00", "KEY_LEFTSHIFT 1, KEY_B 1"),
            ("01 00 00 00", "KEY_LEFTSHIFT 0, KEY_B 0"),
        ],
    ),
    "array keyboard: a key leaving the array is released, the other stays": (
        "keyboard",
        [
            ("01 00 04 05", "KEY_A 1, KEY_B 1"),
            ("01 00 05 00", "KEY_A 0"),
            ("01 00 00 05", ""),  # same key, other slot: no change
            ("01 00 00 00", "KEY_B 0"),
        ],
    ),
    "array keyboard: ErrorRollOver is a phantom state, keys stay as they were": (
        "keyboard",
        [("01 00 04 00", "KEY_A 1"), ("01 00 01 01", ""), ("01 00 00 00", "KEY_A 0")],
    ),
    "array keyboard: modifiers and keys in one report, right-hand modifiers": (
        "keyboard",
        [
            (
                "01 f0 28 00",
                "KEY_RIGHTCTRL 1, KEY_RIGHTSHIFT 1, KEY_RIGHTALT 1, KEY_RIGHTMETA 1, KEY_ENTER 1",
            )
        ],
    ),
    "repeated identical report: nothing": (
        "keyboard",
        [("01 01 06 00", "KEY_LEFTCTRL 1, KEY_C 1"), ("01 01 06 00", "")],
    ),
    "remote: volume up, lost release, then volume down": (
        "remote",
        [
            ("03 e9 00", "KEY_VOLUMEUP 1"),
            ("03 00 00", "KEY_VOLUMEUP 0"),
            ("03 e9 00", "KEY_VOLUMEUP 1"),
            ("03 ea 00", "KEY_VOLUMEUP 0, KEY_VOLUMEDOWN 1"),
            ("03 00 00", "KEY_VOLUMEDOWN 0"),
        ],
    ),
    "remote: play/pause and mute": (
        "remote",
        [("03 cd 00", "KEY_PLAYPAUSE 1"), ("03 e2 00", "KEY_PLAYPAUSE 0, KEY_MUTE 1")],
    ),
    "pen capture: hover, touch, lift, out of proximity": (
        "pen",
        [
            ("02 20 e8 03 d0 07 00 00", "BTN_TOOL_PEN 1, ABS_X 1000, ABS_Y 2000, ABS_PRESSURE 0"),
            ("02 20 10 04 d0 07 00 00", "ABS_X 1040"),
            ("02 21 b0 04 da 07 2c 01", "BTN_TOUCH 1, ABS_X 1200, ABS_Y 2010, ABS_PRESSURE 300"),
            ("02 20 ce 04 e4 07 00 00", "BTN_TOUCH 0, ABS_X 1230, ABS_Y 2020, ABS_PRESSURE 0"),
            ("02 00 00 00 00 00 00 00", "BTN_TOOL_PEN 0, ABS_X 0, ABS_Y 0"),
        ],
    ),
    "pen capture: barrel button, eraser tip touches": (
        "pen",
        [
            (
                "02 22 e8 03 d0 07 00 00",
                "BTN_STYLUS 1, BTN_TOOL_PEN 1, ABS_X 1000, ABS_Y 2000, ABS_PRESSURE 0",
            ),
            ("02 24 e8 03 d0 07 10 00", "BTN_TOUCH 1, BTN_STYLUS 0, ABS_PRESSURE 16"),
        ],
    ),
    "pen: invert makes the eraser tool, tilt is signed": (
        "pen2",
        [
            (
                "07 10 e8 03 d0 07 00 00 00 00",
                "BTN_TOOL_PEN 1, ABS_X 1000, ABS_Y 2000, ABS_PRESSURE 0, ABS_TILT_X 0, ABS_TILT_Y 0",
            ),
            (
                "07 11 e8 03 d0 07 00 08 c4 3c",
                "BTN_TOUCH 1, ABS_PRESSURE 2048, ABS_TILT_X -60, ABS_TILT_Y 60",
            ),
            (
                "07 00 e8 03 d0 07 00 00 00 00",
                "BTN_TOUCH 0, BTN_TOOL_PEN 0, ABS_PRESSURE 0, ABS_TILT_X 0, ABS_TILT_Y 0",
            ),
            ("07 14 e8 03 d0 07 00 00 00 00", "BTN_TOOL_RUBBER 1"),
            ("07 1c e8 03 d0 07 00 04 00 00", "BTN_TOUCH 1, ABS_PRESSURE 1024"),
            ("07 00 e8 03 d0 07 00 00 00 00", "BTN_TOUCH 0, BTN_TOOL_RUBBER 0, ABS_PRESSURE 0"),
        ],
    ),
    "pen without tip switch: BTN_TOUCH from the pressure": (
        "pen-no-tip",
        [
            ("01 10 00", "BTN_TOOL_PEN 1, ABS_X 16, ABS_PRESSURE 0"),
            ("01 10 20", "ABS_PRESSURE 32, BTN_TOUCH 1"),
            ("01 11 00", "ABS_X 17, ABS_PRESSURE 0, BTN_TOUCH 0"),
        ],
    ),
    "mouse: buttons, signed relative motion, wheel with hi-res": (
        "mouse",
        [
            ("01 05 fb 01", "BTN_LEFT 1, REL_X 5, REL_Y -5, REL_WHEEL 1, REL_WHEEL_HI_RES 120"),
            ("06 00 00 00", "BTN_LEFT 0, BTN_RIGHT 1, BTN_MIDDLE 1"),
            ("06 00 00 ff", "REL_WHEEL -1, REL_WHEEL_HI_RES -120"),  # relative: every time
            ("00 00 00 00", "BTN_RIGHT 0, BTN_MIDDLE 0"),
        ],
    ),
    "consumer AC Pan: horizontal wheel": (
        "pan",
        [("ff", "REL_HWHEEL -1, REL_HWHEEL_HI_RES -120"), ("00", "")],
    ),
    "vendor device: nothing maps": ("vendor", [("10 ff 80 00", "")]),
    "unknown report ID: nothing": ("keyboard", [("09 01 06 00", "")]),
}


@pytest.mark.parametrize("name", CASES)
def test_reports_to_events(name: str) -> None:
    device, steps = CASES[name]
    mapper = EventMapper(parse(DESCRIPTORS[device]))
    for report, expected in steps:
        assert mapper.translate(h(report)) == events(expected), report


def test_macro_sequence_of_the_example_policy() -> None:
    """The inject policy's Ctrl+C macro (config/50-1209__a001-macro-key.toml) end to end."""
    mapper = EventMapper(parse(DESCRIPTORS["keyboard"]))
    got = [mapper.translate(h(r)) for r in ("01 01 06 00", "01 00 00 00")]
    assert got == [events("KEY_LEFTCTRL 1, KEY_C 1"), events("KEY_LEFTCTRL 0, KEY_C 0")]


# device → (keys that must be there, rel codes, {abs: (min, max, resolution)}, props, repeat)
CAPS: dict[str, tuple[set[str], set[str], dict[str, tuple[int, int, int]], set[str], bool]] = {
    "keyboard": ({"KEY_LEFTCTRL", "KEY_C", "KEY_F13", "KEY_A", "KEY_RIGHTMETA"}, set(), {},
                 set(), True),
    "remote": ({"KEY_VOLUMEUP", "KEY_VOLUMEDOWN", "KEY_MUTE", "KEY_PLAYPAUSE"}, set(), {},
               set(), False),
    "pen": ({"BTN_TOUCH", "BTN_STYLUS", "BTN_TOOL_PEN"}, set(),
            {"ABS_X": (0, 32767, 0), "ABS_Y": (0, 32767, 0), "ABS_PRESSURE": (0, 8191, 0)},
            {"INPUT_PROP_DIRECT"}, False),
    "pen2": ({"BTN_TOUCH", "BTN_STYLUS", "BTN_TOOL_PEN", "BTN_TOOL_RUBBER"}, set(),
             {"ABS_X": (0, 21600, 39), "ABS_Y": (0, 21600, 39), "ABS_PRESSURE": (0, 4095, 0),
              "ABS_TILT_X": (-60, 60, 57), "ABS_TILT_Y": (-60, 60, 57)},
             {"INPUT_PROP_DIRECT"}, False),
    "pen-no-tip": ({"BTN_TOUCH", "BTN_TOOL_PEN"}, set(),
                   {"ABS_X": (0, 255, 0), "ABS_PRESSURE": (0, 255, 0)}, {"INPUT_PROP_DIRECT"},
                   False),
    "mouse": ({"BTN_LEFT", "BTN_RIGHT", "BTN_MIDDLE"},
              {"REL_X", "REL_Y", "REL_WHEEL", "REL_WHEEL_HI_RES"}, {}, set(), False),
    "pan": (set(), {"REL_HWHEEL", "REL_HWHEEL_HI_RES"}, {}, set(), False),
}  # fmt: skip


@pytest.mark.parametrize("device", CAPS)
def test_capabilities(device: str) -> None:
    keys, rels, axes, props, repeat = CAPS[device]
    m = EventMapper(parse(DESCRIPTORS[device]))
    assert {e.ecodes[k] for k in keys} <= m.keys
    if device in ("mouse", "pan", "pen", "pen2", "pen-no-tip"):
        assert m.keys == {e.ecodes[k] for k in keys}
    assert m.rels == {e.ecodes[r] for r in rels}
    assert {c: (a.minimum, a.maximum, a.resolution) for c, a in m.axes.items()} == {
        e.ecodes[k]: v for k, v in axes.items()
    }
    assert m.props == {e.ecodes[p] for p in props}
    assert m.repeat is repeat
    assert not m.empty
    caps = m.capabilities()
    assert caps.get(e.EV_KEY, []) == sorted(m.keys)


def test_vendor_device_maps_nothing() -> None:
    m = EventMapper(parse(DESCRIPTORS["vendor"]))
    assert m.empty and m.capabilities() == {}
    assert m.unmapped == {0xFF000002}


def test_remote_array_maps_keys_only() -> None:
    """Volume (0xe0) is an axis only in a variable field; in the remote's array it is ignored."""
    m = EventMapper(parse(DESCRIPTORS["remote"]))
    assert m.axes == {} and m.rels == set()


# Keyboard/Keypad usage → evdev name: hid_keyboard[] checked against evdev's own names
KEYBOARD = {
    0x04: "KEY_A", 0x1D: "KEY_Z", 0x1E: "KEY_1", 0x27: "KEY_0", 0x28: "KEY_ENTER",
    0x29: "KEY_ESC", 0x2A: "KEY_BACKSPACE", 0x2B: "KEY_TAB", 0x2C: "KEY_SPACE",
    0x2D: "KEY_MINUS", 0x31: "KEY_BACKSLASH", 0x32: "KEY_BACKSLASH", 0x39: "KEY_CAPSLOCK",
    0x3A: "KEY_F1", 0x45: "KEY_F12", 0x46: "KEY_SYSRQ", 0x49: "KEY_INSERT", 0x4C: "KEY_DELETE",
    0x4F: "KEY_RIGHT", 0x50: "KEY_LEFT", 0x51: "KEY_DOWN", 0x52: "KEY_UP", 0x53: "KEY_NUMLOCK",
    0x58: "KEY_KPENTER", 0x62: "KEY_KP0", 0x64: "KEY_102ND", 0x65: "KEY_COMPOSE",
    0x66: "KEY_POWER", 0x68: "KEY_F13", 0x73: "KEY_F24", 0x7F: "KEY_MUTE", 0x80: "KEY_VOLUMEUP",
    0x81: "KEY_VOLUMEDOWN", 0x87: "KEY_RO", 0x88: "KEY_KATAKANAHIRAGANA", 0x89: "KEY_YEN",
    0x90: "KEY_HANGEUL", 0x91: "KEY_HANJA", 0xE0: "KEY_LEFTCTRL", 0xE1: "KEY_LEFTSHIFT",
    0xE2: "KEY_LEFTALT", 0xE3: "KEY_LEFTMETA", 0xE4: "KEY_RIGHTCTRL", 0xE5: "KEY_RIGHTSHIFT",
    0xE6: "KEY_RIGHTALT", 0xE7: "KEY_RIGHTMETA", 0xE8: "KEY_PLAYPAUSE", 0xF0: "KEY_WWW",
    0xFB: "KEY_CALC",
}  # fmt: skip


@pytest.mark.parametrize("usage", KEYBOARD)
def test_keyboard_table(usage: int) -> None:
    assert HID_KEYBOARD[usage] == e.ecodes[KEYBOARD[usage]]


def test_keyboard_table_shape() -> None:
    assert len(HID_KEYBOARD) == 256
    assert HID_KEYBOARD[:4] == (0, 0, 0, 0)  # no event, ErrorRollOver, POSTFail, undefined


def test_unmapped_usage_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    """One line per unmapped usage, ever: variable fields at creation, array entries at first
    sight; one line per report ID with nothing mapped."""
    caplog.set_level(logging.INFO, logger="hidbpfd.devices.evdev_map")
    vendor = EventMapper(parse(DESCRIPTORS["vendor"]), "dev")
    for _ in range(5):
        vendor.translate(h("10 ff 80 00"))
    keyboard = EventMapper(parse(DESCRIPTORS["keyboard"]), "kbd")
    for _ in range(5):
        keyboard.translate(h("01 00 a5 00"))  # 0xa5: KEY_UNKNOWN in hid_keyboard[]
        keyboard.translate(h("01 00 00 00"))
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [
        "dev: uinput: page 0xff00 0x02 is not mapped to an evdev event; ignored",
        "dev: uinput: report ID 16 has nothing mapped; such reports are ignored",
        "kbd: uinput: Keyboard/Keypad 0xa5 is not mapped to an evdev event; ignored",
    ]
    assert keyboard.unmapped == {0x0700A5}


def test_pack_events_is_struct_input_event() -> None:
    raw = pack_events(events("KEY_C 1"))
    assert len(raw) == 2 * 24  # 64-bit: timeval (16) + type, code (2 + 2) + value (4)
    assert raw[16:24] == bytes.fromhex("01002e0001000000")  # EV_KEY, KEY_C (46), 1
