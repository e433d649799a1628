"""The implementations of the ``hidbpfd`` subcommands, by family; the parser and the entry
point are :mod:`hidbpfd.cli`.

- :mod:`.files` — check, compile, replay, policies;
- :mod:`.daemon` — run, status, reload, monitor, install-service, uninstall-service;
- :mod:`.machine` — probe, devices, record, demo, bench, vm.
"""
