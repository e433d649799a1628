// SPDX-License-Identifier: GPL-2.0-only
/*
 * hidbpfd_ops.bpf.c - the HID-BPF struct_ops that can hold reports (Linux 6.11+).
 *
 * One object per device: userspace writes the device's hid_id into hidbpfd_ops in the
 * ELF image before opening it (libbpf 1.1 has no API for struct_ops initial values), makes
 * the maps reuse the fds of the hidbpfd.bpf.o instance, loads and attaches. The section
 * is ".struct_ops" (not ".struct_ops.link", which libbpf 1.1 does not know); userspace sets
 * BPF_F_LINK on the map before load instead, and registers it through a BPF link
 * (libbpf.Map.attach_struct_ops): the kernel unregisters it when the link's last fd closes,
 * so a daemon that dies, however it dies, leaves nothing behind (docs/crash-safety.md).
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include "hid_compat.h"
#include "hidbpfd.h"

char LICENSE[] SEC("license") = "GPL";

/*
 * False where hid_device_event has no `source` argument: the verifier never walks the
 * read of ctx[2] then (the branch on a frozen .rodata constant is dead). Set by userspace
 * from the kernel's BTF before load.
 */
const volatile int hidbpfd_has_source = 1;

/*
 * int (*hid_device_event)(struct hid_bpf_ctx *ctx, enum hid_report_type report_type,
 *			   u64 source);
 *
 * Input reports from the device go through the filter; injected ones (the daemon's own
 * re-injections among them) pass untouched: see hidbpfd_event_report().
 */
SEC("struct_ops/hid_device_event")
int hidbpfd_event(unsigned long long *ctx)
{
	struct hid_bpf_ctx *hctx = (struct hid_bpf_ctx *)ctx[0];
	__u32 len;
	__u8 *data;

	data = hidbpfd_event_report(ctx, hidbpfd_has_source, &len);
	if (!data)
		return 0;
	if (hidbpfd_filter(hctx->hid->id, data, len, 1, bpf_ktime_get_ns()) == HIDBPFD_VERDICT_HOLD)
		return -HIDBPFD_HOLD_ERRNO;
	return 0;
}

SEC(".struct_ops")
struct hid_bpf_ops hidbpfd_ops = {
	.hid_id = 0,
	.hid_device_event = (void *)hidbpfd_event,
};
