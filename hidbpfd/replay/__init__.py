"""Captures (hid-recorder format) and replaying them: on virtual time, through the real
BPF filter, and on uhid devices with the real daemon."""
