"""The daemon's reload (SIGHUP, ``hidbpfd reload``): re-read the policy files and apply the
difference without disrupting devices; a file with errors keeps its last good version."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from hidbpfd.config import Config, PolicyFile, load
from hidbpfd.daemon.devices import Devices
from hidbpfd.daemon.state import ReloadResult
from hidbpfd.daemon.status import Observability
from hidbpfd.devices.uhid_mirror import is_mirror

log = logging.getLogger("hidbpfd.daemon")  # the daemon's one logger, whichever part logs


class Reloading(Devices, Observability):
    """The reload part of :class:`hidbpfd.daemon.Daemon`."""

    def _sighup(self) -> None:
        res = self.reload()
        (log.warning if res.errors else log.info)("reload: %s", res.summary())

    def _reload_for_client(self) -> dict[str, Any]:
        res = self.reload()
        (log.warning if res.errors else log.info)("reload (control socket): %s", res.summary())
        return {
            "ok": not res.errors,
            "summary": res.summary(),
            "errors": [str(e) for e in res.errors],
            "changed": res.changed,
            "added": res.added,
            "removed": res.removed,
        }

    def reload(self) -> ReloadResult:
        """Re-read the policy files and apply the difference without disrupting devices.

        A file with errors keeps its last good version (or stays out, if it never loaded).
        Unchanged policies keep their state and pending work; the rule tables in the BPF map are
        swapped in place; devices that gain or lose all policies are taken on or let go.
        """
        self.notifier.reloading()
        try:
            return self._reload()
        finally:
            self.reloads += 1
            self.notifier.ready(self.status_line())

    def _reload(self) -> ReloadResult:
        new = load(self.config_paths, inspect=self._object_check)
        for e in new.errors:
            log.error("%s", e)
        old_by_path = {f.path: f for f in self.config.files}
        bad = {e.file for e in new.errors}
        files: dict[str, PolicyFile] = {f.path: f for f in new.files}
        for path in bad:
            if path in old_by_path:
                files[path] = old_by_path[path]
        merged = Config(
            files=sorted(files.values(), key=lambda f: Path(f.path).name), errors=new.errors
        )
        self.config = merged
        res = ReloadResult(new.errors, [], [], [])
        for key, hd in list(self.present.items()):
            if not is_mirror(hd.id) and self._reload_programs(hd, merged):
                res.changed.append(key)
            bindings = self._reload_kernel(hd, merged.bindings_for(hd.id, hd.facts), res)
            m = self.managed.get(key)
            if m is None:
                if bindings:
                    self._manage(hd, bindings)
                    if key in self.managed:
                        res.added.append(key)
                continue
            bindings = self._refuse_too_long(hd, bindings)
            if not bindings:
                self._let_go(key)
                res.removed.append(key)
                continue
            slot = self.dispatch.slots.get(key)
            if slot is not None and slot.bindings == list(bindings):
                continue
            slot = self.dispatch.rebind(hd.id, bindings)
            if slot.table != m.table:
                self.source.set_rules(hd.id.kernel_id, slot.table)
                m.table = slot.table
            m.files = [f.path for f in merged.files_for(hd.id, hd.facts)]
            res.changed.append(key)
        res.changed = list(dict.fromkeys(res.changed))
        return res
