"""The policy registry: built-in policies, one per module, plus third-party ones.

Third-party packages register a policy class through the entry-point group
``hidbpfd.policies`` (``name = "module:Class"``); :func:`load_registry` merges them in. A name
that clashes with a built-in one is refused, not silently shadowed.
"""

from __future__ import annotations

import logging
from importlib.metadata import entry_points
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


def load_registry(*, plugins: bool = True) -> dict[str, type[Policy[Any]]]:
    """Built-in policies plus those of the ``hidbpfd.policies`` entry-point group.

    Called once by the config loader. A plugin that fails to import or is not a Policy
    subclass is logged and skipped; a plugin can never replace a built-in policy.
    """
    reg: dict[str, type[Policy[Any]]] = dict(BUILTIN)
    if not plugins:
        return reg
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
