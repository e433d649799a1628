"""The live session keeps the kernel's own LED-state output reports out of the trace: which
output reports count as LED-only (the K400's report 0x0e; not a vendor output report)."""

from __future__ import annotations

from pathlib import Path

from hidbpfd.replay.live import led_report_ids
from hidbpfd.replay.recording import load

CAPTURES = Path(__file__).resolve().parents[1] / "captures"

# a boot keyboard, unnumbered: 8-byte input, LED output (5 LEDs + 3 bits padding)
BOOT_KBD = bytes.fromhex(
    "05010906a101050719e029e71500250175019508810295017508810395057501"
    "05081901290591029501750391039506750815002565050719002965810 0c0".replace(" ", "")
)


def test_keyboard_led_report_is_recognised() -> None:
    rec = load(CAPTURES / "k400-release-guard.hid")
    assert led_report_ids(rec.devices[0].descriptor) == {0x0E}


def test_unnumbered_boot_keyboard() -> None:
    assert led_report_ids(BOOT_KBD) == {-1}


def test_vendor_output_reports_are_not_leds() -> None:
    for name in ("receiver-dj-mode", "wakeup-reinit", "macro-key"):
        for dev in load(CAPTURES / f"{name}.hid").devices:
            assert led_report_ids(dev.descriptor) == frozenset(), name


def test_broken_descriptor_has_no_leds() -> None:
    assert led_report_ids(b"\x05") == frozenset()
