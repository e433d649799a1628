"""``hidbpfd bench``: the userspace daemon measured side by side with the in-kernel path."""
