// SPDX-License-Identifier: GPL-2.0-only
/*
 * hidbpfd_ops.bpf.c - the HID-BPF struct_ops that can hold reports (Linux 6.11+).
 *
 * One object per device: userspace writes the device's hid_id into hidbpfd_ops in the
 * ELF image before opening it (libbpf 1.1 has no API for struct_ops initial values), makes
 * the maps reuse the fds of the hidbpfd.bpf.o instance, loads and attaches. The section
 * is ".struct_ops" (not ".struct_ops.link", which libbpf 1.1 does not know): attaching
 * updates the map, detaching deletes its element, both call hid_bpf_ops.reg/unreg.
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
 * `source` is 0 for reports from the device and the injecting hid_bpf_ctx for reports
 * a BPF program injected (hid_bpf_input_report / hid_bpf_try_input_report). Those are
 * the daemon's own re-injections (or another HID-BPF program's): they pass untouched,
 * so a held report that is re-injected can never be held, or looped, again.
 */
SEC("struct_ops/hid_device_event")
int hidbpfd_event(unsigned long long *ctx)
{
	struct hid_bpf_ctx *hctx = (struct hid_bpf_ctx *)ctx[0];
	enum hid_report_type type = (enum hid_report_type)ctx[1];
	__u64 source = 0;
	__u8 *data;
	__s32 size;

	if (hidbpfd_has_source)
		source = ctx[2];
	if (source || type != HID_INPUT_REPORT)
		return 0;
	size = hctx->size;
	if (size <= 0 || (__u32)size > hctx->allocated_size)
		return 0;
	data = hid_bpf_get_data(hctx, 0, 1);
	if (!data)
		return 0;
	if (hidbpfd_filter(hctx->hid->id, data, size, 1) == HIDBPFD_VERDICT_HOLD)
		return -HIDBPFD_HOLD_ERRNO;
	return 0;
}

SEC(".struct_ops")
struct hid_bpf_ops hidbpfd_ops = {
	.hid_id = 0,
	.hid_device_event = (void *)hidbpfd_event,
};
