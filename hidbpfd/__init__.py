"""hidbpfd: deferred HID device IO on behalf of BPF events."""

__version__ = "0.1.0"
