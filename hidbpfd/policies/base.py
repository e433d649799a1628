"""What a policy is: frozen parameters, static filter rules, per-device state, pure callbacks.

A policy object is built once from a ``[[policy]]`` table (``from_params``) and shared by every
device the file matches. Mutable state is per device: the dispatch creates it with
``new_state()`` when a device appears and passes it back in every callback, so a policy never
stores anything on itself. Callbacks are synchronous and do no I/O: they return
:class:`~hidbpfd.model.Action` values, and read time only from ``ctx.now_ns``.

Who calls what, and when (all from the dispatch, one at a time, on the daemon's loop):

- ``rules()`` once, when the device's filter table is built: what the kernel must watch for.
- ``on_event(ctx, event, fired)`` for a report that fired at least one of this policy's rules;
  ``fired`` has bit *i* set for rule *i* of ``rules()``.
- ``on_timer(ctx, key)`` when work started with ``Schedule(key, ...)`` is due and not cancelled.
- ``on_device(ctx, what)`` when the device is ``added``, about to be ``removed`` (actions are
  dropped then), or the system resumed (``resume``).
- ``on_reply(ctx, reply)`` with the answer to a ``GetFeature``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Generic, TypeVar

from hidbpfd.model import Action, DeviceEvent, DeviceId, FeatureReply, InputEvent, Rule, RuleFlag
from hidbpfd.policies.params import Param

S = TypeVar("S")


@dataclass(slots=True)
class Context(Generic[S]):
    """What a callback may look at: the device, the time, and its own state for that device."""

    device: DeviceId
    now_ns: int
    state: S
    can_hold: bool = True


class Policy(Generic[S]):
    """Base of every policy. Subclasses are frozen dataclasses of their parameters."""

    TYPE: ClassVar[str]
    """The ``type`` key that selects this policy in TOML."""
    PARAMS: ClassVar[tuple[Param, ...]]
    """Its TOML keys, declared as data; the config layer validates against them."""
    SUMMARY: ClassVar[str]
    """One line for ``hidbpfd policies``."""

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> Policy[Any]:
        """Build from converted parameters (every declared key present, defaults filled in).
        Raise :class:`~hidbpfd.policies.params.ParamError` for errors involving several keys."""
        return cls(**params)

    def rules(self) -> Sequence[Rule]:
        """The patterns the filter must watch for on this policy's behalf."""
        raise NotImplementedError

    def holds(self) -> bool:
        """True if the policy needs the kernel to hold reports (it has a HOLD rule)."""
        return any(r.flags & RuleFlag.HOLD for r in self.rules())

    def new_state(self) -> S:
        """Fresh per-device state, when a device appears or comes back."""
        raise NotImplementedError

    def on_event(self, ctx: Context[S], event: InputEvent, fired: int) -> list[Action]:
        """A report fired some of this policy's rules."""
        return []

    def on_timer(self, ctx: Context[S], key: str) -> list[Action]:
        """Deferred work ``key`` is due."""
        return []

    def on_device(self, ctx: Context[S], what: DeviceEvent) -> list[Action]:
        """The device was added, is being removed, or the system resumed."""
        return []

    def on_reply(self, ctx: Context[S], reply: FeatureReply) -> list[Action]:
        """A GetFeature this policy asked for was answered (or failed)."""
        return []

    def describe(self) -> str:
        """One line for logs and ``status``."""
        return self.TYPE
