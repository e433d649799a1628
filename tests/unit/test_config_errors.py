"""Every kind of config error: located (FILE:LINE: key), explained, and the file rejected whole."""

from __future__ import annotations

from pathlib import Path

import pytest

from hidbpfd.cli import main
from hidbpfd.config import load

GOOD_POLICY = '[[policy]]\ntype = "defer"\nmatch = "02 00"\ndelay_ms = 20\n'
DEV = "[device]\nvendor = 0x1234\n"

# name: (file text, [(line, key, fragment of the message)])
CASES: dict[str, tuple[str, list[tuple[int, str, str]]]] = {
    "toml syntax": (DEV + "[[policy]\n", [(3, "(syntax)", "invalid TOML")]),
    "unknown top-level key": (
        "engin = 1\n" + DEV + GOOD_POLICY,
        [(1, "engin", "unknown top-level key")],
    ),
    "unknown engine": ('engine = "ebpf"\n' + DEV + GOOD_POLICY, [(1, "engine", "unknown engine")]),
    "missing device": (GOOD_POLICY, [(1, "device", "missing [device]")]),
    "empty device": ("[device]\n" + GOOD_POLICY, [(1, "device", "empty [device]")]),
    "unknown device key": (
        "[device]\nvendr = 1\n" + GOOD_POLICY,
        [(2, "device.vendr", "did you mean 'vendor'")],
    ),
    "bad bus": ('[device]\nbus = "firewire"\n' + GOOD_POLICY, [(2, "device.bus", "unknown bus")]),
    "vendor too big": (
        "[device]\nvendor = 0x12345\n" + GOOD_POLICY,
        [(2, "device.vendor", "16-bit")],
    ),
    "vendor as string": (
        '[device]\nvendor = "0x1234"\n' + GOOD_POLICY,
        [(2, "device.vendor", "16-bit")],
    ),
    "name not a string": (
        "[device]\nname = 3\n" + GOOD_POLICY,
        [(2, "device.name", "must be a string")],
    ),
    "no policies": (DEV, [(1, "policy", "no [[policy]]")]),
    "policy not an array": (DEV + "[policy]\ntype = 'defer'\n", [(3, "policy", "array of tables")]),
    "missing type": (DEV + "[[policy]]\nmatch = '01'\n", [(3, "policy[0]", "missing type")]),
    "unknown type": (
        DEV + "[[policy]]\ntype = 'defr'\n",
        [(4, "policy[0].type", "did you mean 'defer'")],
    ),
    "unknown policy key": (
        DEV + GOOD_POLICY + "dela_ms = 3\n",
        [(7, "policy[0].dela_ms", "unknown key")],
    ),
    "missing required key": (
        DEV + "[[policy]]\ntype = 'defer'\nmatch = '02'\n",
        [(3, "policy[0]", "missing 'delay_ms'")],
    ),
    "bad hex in pattern": (
        DEV + "[[policy]]\ntype = 'defer'\nmatch = '02 zz'\ndelay_ms = 1\n",
        [(5, "policy[0].match", "bad hex byte 'zz'")],
    ),
    "wildcard in a report to send": (
        DEV + "[[policy]]\ntype = 'inject'\nmatch = '01'\nreports = ['01 ??']\n",
        [(6, "policy[0].reports[0]", "wildcard")],
    ),
    "negative delay": (
        DEV + "[[policy]]\ntype = 'defer'\nmatch = '02'\ndelay_ms = -5\n",
        [(6, "policy[0].delay_ms", "negative delay")],
    ),
    "negative wait": (
        DEV + "[[policy]]\ntype = 'inject'\nmatch = '01'\nreports = ['01', {wait_ms = -1}]\n",
        [(6, "policy[0].reports[1].wait_ms", "negative delay")],
    ),
    "delay not a number": (
        DEV + "[[policy]]\ntype = 'defer'\nmatch = '02'\ndelay_ms = '5'\n",
        [(6, "policy[0].delay_ms", "milliseconds")],
    ),
    "bad choice": (
        DEV + GOOD_POLICY + "on_cancel = 'keep'\n",
        [(7, "policy[0].on_cancel", "not one of")],
    ),
    "bad bool": (
        DEV + "[[policy]]\ntype = 'inject'\nmatch = '01'\nreports = ['01']\npass_trigger = 'no'\n",
        [(7, "policy[0].pass_trigger", "true or false")],
    ),
    "bad send step": (
        DEV + "[[policy]]\ntype = 'reinit'\nmatch = '01'\nsend = [{outpt = '01'}]\n",
        [(6, "policy[0].send[0]", "unknown key 'outpt'")],
    ),
    "only waits": (
        DEV + "[[policy]]\ntype = 'reinit'\nmatch = '01'\nsend = [{wait_ms = 1}]\n",
        [(6, "policy[0].send", "only waits")],
    ),
    "verify without report_id": (
        DEV
        + "[[policy]]\ntype = 'reinit'\nmatch = '01'\nsend = [{feature = '05 01'}]\nverify = {expect = '05'}\n",
        [(7, "policy[0].verify", "needs report_id")],
    ),
    "reinit with nothing to trigger it": (
        DEV + "[[policy]]\ntype = 'reinit'\nsend = [{feature = '05 01'}]\n",
        [(3, "policy[0].on", "nothing triggers")],
    ),
    "retries without verify": (
        DEV
        + "[[policy]]\ntype = 'reinit'\nmatch = '01'\nsend = [{feature = '05 01'}]\nretries = 2\n",
        [(7, "policy[0].retries", "never retry")],
    ),
    "retries out of range": (
        DEV
        + "[[policy]]\ntype = 'reinit'\nmatch = '01'\nsend = [{feature = '05'}]\nverify = {report_id = 5, expect = '05'}\nretries = 1000\n",
        [(8, "policy[0].retries", "integer in 0..100")],
    ),
    "too many rules": (DEV + GOOD_POLICY * 17, [(3, "policy", "32")]),
    # issue 10, item 4: check names the sinks' limits (a 600-byte inject used to pass check
    # and fail at run time with "report must be 1..512 bytes")
    "inject over the injector's limit": (
        DEV + "[[policy]]\ntype = 'inject'\nmatch = '01'\nreports = ['01', '" + "00" * 600 + "']\n",
        [(6, "policy[0].reports[1]", "600 bytes; an injected report can have at most 512")],
    ),
    "release over the injector's limit": (
        DEV
        + "[[policy]]\ntype = 'release-guard'\nmatch = '01 05'\ntimeout_ms = 5\nrelease = '"
        + "00" * 513
        + "'\n",
        [(7, "policy[0].release", "513 bytes; an injected report can have at most 512")],
    ),
    "output over the limit": (
        DEV
        + "[[policy]]\ntype = 'reinit'\nmatch = '01'\nsend = [{output = '"
        + "00" * 4097
        + "'}]\n",
        [
            (
                6,
                "policy[0].send[0].output",
                "4097 bytes; a report sent to the device can have at most 4096",
            )
        ],
    ),
    "feature over the limit": (
        DEV
        + "[[policy]]\ntype = 'reinit'\nmatch = '01'\nsend = [{feature = '"
        + "00" * 4097
        + "'}]\n",
        [(6, "policy[0].send[0].feature", "at most 4096 bytes")],
    ),
    "several errors at once": (
        "[device]\nvendor = 0x12345\n[[policy]]\ntype = 'defer'\nmatch = 'zz'\ndelay_ms = -1\n",
        [
            (2, "device.vendor", "16-bit"),
            (5, "policy[0].match", "bad hex"),
            (6, "policy[0].delay_ms", "negative"),
        ],
    ),
}


@pytest.mark.parametrize("name", list(CASES))
def test_error_kind(name: str, tmp_path: Path) -> None:
    text, expected = CASES[name]
    p = tmp_path / "50-1234__5678-test.toml"
    p.write_text(text)
    cfg = load([p])
    assert cfg.files == [], "a file with errors must be rejected whole"
    got = [(e.line, e.key, str(e)) for e in cfg.errors]
    assert len(got) == len(expected), got
    for (line, key, frag), (gline, gkey, text_) in zip(expected, got, strict=True):
        assert (gline, gkey) == (line, key), text_
        assert frag in text_, text_
        assert text_.startswith(f"{p}:{line}: {key}: "), text_
        assert " — " in text_, f"no hint on what to do: {text_}"


def test_engine_key(tmp_path: Path) -> None:
    p = tmp_path / "50-1234__5678-k.toml"
    p.write_text('engine = "kernel"\n' + DEV + GOOD_POLICY)
    (f,) = load([p]).files
    assert f.engine == "kernel"
    p.write_text(DEV + GOOD_POLICY)
    assert load([p]).files[0].engine == "userspace"


def test_duplicate_device_match_across_files(tmp_path: Path) -> None:
    (tmp_path / "10-1234__5678-a.toml").write_text(DEV + GOOD_POLICY)
    (tmp_path / "20-1234__5678-b.toml").write_text("# other\n" + DEV + GOOD_POLICY)
    cfg = load([tmp_path])
    assert [f.path for f in cfg.files] == [str(tmp_path / "10-1234__5678-a.toml")]
    (e,) = cfg.errors
    assert (
        e.file.endswith("20-1234__5678-b.toml") and e.line == 2 and "10-1234__5678-a.toml" in e.what
    )


def test_bad_file_does_not_stop_good_ones(tmp_path: Path) -> None:
    (tmp_path / "10-1234__5678-good.toml").write_text(DEV + GOOD_POLICY)
    (tmp_path / "20-9999__0001-bad.toml").write_text(
        "[device]\nvendor = 0x9999\n[[policy]]\ntype = 'nope'\n"
    )
    cfg = load([tmp_path])
    assert len(cfg.files) == 1 and len(cfg.errors) == 1


def test_file_name_convention_is_a_warning(tmp_path: Path) -> None:
    p = tmp_path / "MyPen.toml"
    p.write_text(DEV + GOOD_POLICY)
    cfg = load([p])
    assert cfg.ok and len(cfg.files) == 1
    assert "NN-vendor__product-purpose.toml" in str(cfg.warnings[0])


def test_missing_path(tmp_path: Path) -> None:
    cfg = load([tmp_path / "nope"])
    assert "no such file" in str(cfg.errors[0])


def test_check_cli_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = tmp_path / "10-1234__5678-good.toml"
    good.write_text(DEV + GOOD_POLICY)
    assert main(["check", str(good)]) == 0
    bad = tmp_path / "20-1234__0001-bad.toml"
    bad.write_text("[device]\nproduct = 1\n[[policy]]\ntype = 'defer'\nmatch = '0'\ndelay_ms = 1\n")
    assert main(["check", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert f"{bad}:5: policy[0].match: bad hex byte '0'" in err


def test_shipped_examples_are_valid() -> None:
    root = Path(__file__).resolve().parents[2]
    cfg = load([root / "config"])
    assert cfg.ok, "\n".join(map(str, cfg.errors))
    assert not cfg.warnings, "\n".join(map(str, cfg.warnings))
    assert {b.policy.TYPE for f in cfg.files for b in f.bindings} == {
        "defer",
        "inject",
        "release-guard",
        "reinit",
    }


def test_check_names_what_the_kernel_engine_would_refuse(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    policy = "[[policy]]\ntype = 'inject'\nmatch = '01 68'\nreports = ['01 00 06 00']\n"
    ok = tmp_path / "10-1234__5678-kernel.toml"
    ok.write_text("engine = 'kernel'\n" + DEV + policy)
    assert main(["check", str(ok)]) == 0
    too_many = tmp_path / "20-1234__5679-kernel.toml"
    too_many.write_text("\nengine = 'kernel'\n" + DEV + "product = 0x0001\n" + policy * 9)
    assert main(["check", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert f"{too_many}:2: engine: the kernel cannot run: 9 policies for one device" in err
    assert "1 error(s) in 1 file(s); 1 file(s) valid" in err


def test_report_limits_are_inclusive(tmp_path: Path) -> None:
    """A report of exactly the limit loads (the limits are what the sinks carry)."""
    p = tmp_path / "50-1234__5678-test.toml"
    p.write_text(
        DEV
        + "[[policy]]\ntype = 'inject'\nmatch = '01'\nreports = ['"
        + "00" * 512
        + "']\n[[policy]]\ntype = 'reinit'\nmatch = '02'\nsend = [{output = '"
        + "00" * 4096
        + "'}, {feature = '"
        + "00" * 4096
        + "'}]\n"
    )
    cfg = load([p])
    assert cfg.errors == [] and len(cfg.files) == 1
