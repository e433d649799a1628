// SPDX-License-Identifier: GPL-2.0-only
/*
 * pen-proximity.bpf.c - an XP-Pen style tablet whose pen sometimes says "out of proximity"
 * for a few milliseconds while it is still hovering (the XP-Pen Artist 24 case in
 * udev-hid-bpf, which drops such reports and says it should rather hold them).
 *
 * Every out-of-proximity report (report 2, status byte 0) is held for 20 ms. If the pen
 * reports anything else in that time, the held report was spurious: it is cancelled and
 * never reaches readers. Otherwise it is delivered 20 ms late.
 *
 *   hidbpfd compile config/programs/pen-proximity.bpf.c                  (the daemon runs it)
 *   hidbpfd compile config/programs/pen-proximity.bpf.c --engine kernel  (bpf_wq runs it)
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <hidbpfd/api.h>

char LICENSE[] SEC("license") = "GPL";

#define PEN_REPORT	0x02
#define KEY_OUT		1	/* the held out-of-proximity report */
#ifndef TRUST_MS
#define TRUST_MS	20	/* -DTRUST_MS=N to try another wait */
#endif

SEC("struct_ops/hid_device_event")
int BPF_PROG(pen_event, struct hid_bpf_ctx *hctx, enum hid_report_type type, __u64 source)
{
	__u8 *data = hid_bpf_get_data(hctx, 0, 2);

	/* reports injected by a BPF program (the held one, re-injected) pass as they are */
	if (!data || source || type != HID_INPUT_REPORT || data[0] != PEN_REPORT)
		return 0;
	if (data[1] == 0)	/* not in range: hold it */
		return hidbpfd_defer(hctx, KEY_OUT, TRUST_MS);
	/* the pen spoke: an out-of-proximity report still held was spurious */
	hidbpfd_cancel(hctx, KEY_OUT);
	return 0;
}

SEC(".struct_ops")
struct hid_bpf_ops pen_proximity = {
	.hid_device_event = (void *)pen_event,
};
