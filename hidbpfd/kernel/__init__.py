"""Everything BPF: the ctypes libbpf layer, the BPF event source, the in-kernel engine,
the probe, and the C sources under ``kernel/bpf/``."""
