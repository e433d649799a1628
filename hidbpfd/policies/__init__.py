"""The policy registry: built-in policies, one per module, plus third-party ones.

Third-party packages register a policy class through the entry-point group
``hidbpfd.policies`` (``name = "module:Class"``); :func:`load_registry` merges them in. A name
that clashes with a built-in one is refused, not silently shadowed. Entry points are read only
when a name is not built in (or the whole registry is listed): ``importlib.metadata`` costs
the daemon ~2.5 MB and ~20 ms of start-up that a configuration of built-in policies never needs.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from typing import Any, Final

from hidbpfd.policies.base import Context, Policy
from hidbpfd.policies.defer import Defer
from hidbpfd.policies.inject import InjectPolicy
from hidbpfd.policies.reinit import Reinit
from hidbpfd.policies.release_guard import ReleaseGuard

__all__ = ["BUILTIN", "ENTRY_POINT_GROUP", "Context", "Policy", "load_registry"]

ENTRY_POINT_GROUP: Final = "hidbpfd.policies"

BUILTIN: Final[dict[str, type[Policy[Any]]]] = {
    cls.TYPE: cls for cls in (Defer, InjectPolicy, ReleaseGuard, Reinit)
}

log = logging.getLogger(__name__)


class Registry(Mapping[str, type[Policy[Any]]]):
    """Policy type name -> class: the built-in ones, then (read on first need) the plugins."""

    def __init__(self, plugins: bool = True) -> None:
        self._reg: dict[str, type[Policy[Any]]] = dict(BUILTIN)
        self._pending = plugins

    def _all(self) -> dict[str, type[Policy[Any]]]:
        if self._pending:
            self._pending = False
            self._reg.update(_plugins())
        return self._reg

    def __getitem__(self, name: str) -> type[Policy[Any]]:
        cls = self._reg.get(name)
        return cls if cls is not None else self._all()[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._all())

    def __len__(self) -> int:
        return len(self._all())


def load_registry(*, plugins: bool = True) -> Registry:
    """Built-in policies plus those of the ``hidbpfd.policies`` entry-point group.

    Called once by the config loader. A plugin that fails to import or is not a Policy
    subclass is logged and skipped; a plugin can never replace a built-in policy.
    """
    return Registry(plugins)


def _plugins() -> dict[str, type[Policy[Any]]]:
    from importlib.metadata import entry_points

    reg: dict[str, type[Policy[Any]]] = {}
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name in BUILTIN:
            log.error(
                "policy plugin %s (%s) clashes with the built-in policy of that name; ignored",
                ep.name,
                ep.value,
            )
            continue
        try:
            cls = ep.load()
        except Exception as e:  # a broken plugin must not stop the daemon
            log.error("policy plugin %s (%s) failed to load: %s", ep.name, ep.value, e)
            continue
        if not (isinstance(cls, type) and issubclass(cls, Policy)):
            log.error(
                "policy plugin %s (%s) is not a hidbpfd Policy subclass; ignored", ep.name, ep.value
            )
            continue
        reg[ep.name] = cls
    return reg
