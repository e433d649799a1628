"""The daemon's ties to the system: control socket, sd_notify, sd-bus and the sleep
watcher, real-time knobs, logging."""
