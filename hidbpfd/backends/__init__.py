"""Where hidbpfd meets the kernel: BPF, udev, hidraw, uhid and the sinks built on them."""
