// SPDX-License-Identifier: GPL-2.0-only
/*
 * flood.bpf.c - a bad program for tests/device/test_programs_device.py: every input report
 * makes it write 500 requests (cancels of nothing: harmless to the device, each one a ring
 * record for the daemon). The budget must cut it down and count the rest, and the daemon must
 * keep serving other devices on time.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <hidbpfd/api.h>

char LICENSE[] SEC("license") = "GPL";

static long flood_one(__u32 i, void *ctx)
{
	__u32 *hid_id = ctx;

	hidbpfd__request(*hid_id, HIDBPFD_REQ_CANCEL, 0, i, 0, 0, 0, 0);
	return 0;
}

SEC("struct_ops/hid_device_event")
int BPF_PROG(flood_event, struct hid_bpf_ctx *hctx, enum hid_report_type type, __u64 source)
{
	__u32 hid_id = hctx->hid->id;

	if (source || type != HID_INPUT_REPORT)
		return 0;
	bpf_loop(500, flood_one, &hid_id, 0);
	return 0;
}

SEC(".struct_ops")
struct hid_bpf_ops flood = {
	.hid_device_event = (void *)flood_event,
};
