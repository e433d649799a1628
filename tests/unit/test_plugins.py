"""Third-party policies through the ``hidbpfd.policies`` entry-point group: found when a file
names them, never read for built-in types, refused when they clash, are broken, or are not
policies — and a broken plugin never stops the others."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from hidbpfd.policies import BUILTIN, load_registry

PLUGIN = """
from dataclasses import dataclass
from hidbpfd.model import Pattern, Rule, RuleFlag
from hidbpfd.policies.base import Policy
from hidbpfd.policies.params import Kind, Param


@dataclass(frozen=True, slots=True)
class Nop(Policy[None]):
    TYPE = "nop"
    SUMMARY = "does nothing"
    PARAMS = (Param("match", Kind.PATTERN, "trigger", required=True),)
    match: Pattern

    def rules(self):
        return (Rule(self.match, RuleFlag.NONE),)

    def new_state(self):
        return None


NotAPolicy = object()
"""


@pytest.fixture
def plugins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / "hbd_nop_plugin.py").write_text(PLUGIN)
    dist = tmp_path / "hbd_nop_plugin-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: hbd-nop-plugin\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(
        "[hidbpfd.policies]\n"
        "nop = hbd_nop_plugin:Nop\n"
        "defer = hbd_nop_plugin:Nop\n"
        "broken = hbd_nop_plugin_missing:Nop\n"
        "notpolicy = hbd_nop_plugin:NotAPolicy\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


def test_builtin_lookups_never_read_entry_points(plugins: Path) -> None:
    reg = load_registry()
    assert reg["defer"] is BUILTIN["defer"] and reg.get("inject") is BUILTIN["inject"]
    assert reg._pending, "entry points were read for a built-in type"


def test_plugins_found_and_refused(plugins: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR)
    reg = load_registry()
    assert reg["nop"].TYPE == "nop" and not reg._pending
    assert reg["defer"] is BUILTIN["defer"], "a plugin replaced a built-in policy"
    assert "broken" not in reg and "notpolicy" not in reg
    text = caplog.text
    assert "policy plugin defer (hbd_nop_plugin:Nop) clashes with the built-in" in text
    assert "policy plugin broken (hbd_nop_plugin_missing:Nop) failed to load" in text
    assert "notpolicy (hbd_nop_plugin:NotAPolicy) is not a hidbpfd Policy subclass" in text
    assert set(reg) == {*BUILTIN, "nop"}


def test_no_plugins_when_asked(plugins: Path) -> None:
    reg = load_registry(plugins=False)
    assert reg.get("nop") is None and set(reg) == set(BUILTIN)


def test_a_policy_file_can_use_a_plugin(plugins: Path, tmp_path: Path) -> None:
    from hidbpfd.config import load

    f = tmp_path / "50-1209__a001-nop.toml"
    f.write_text(
        '[device]\nvendor = 0x1209\nproduct = 0xA001\n\n[[policy]]\ntype = "nop"\nmatch = "01"\n'
    )
    cfg = load([f])
    assert not cfg.errors, cfg.errors
    assert [b.policy.TYPE for b in cfg.files[0].bindings] == ["nop"]
