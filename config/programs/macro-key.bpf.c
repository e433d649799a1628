// SPDX-License-Identifier: GPL-2.0-only
/*
 * macro-key.bpf.c - a keyboard with a spare F13 key: make it type Ctrl+C instead.
 *
 * On an F13 press (report 1, no modifier, usage 0x68 in the first key slot) the press itself
 * is dropped and two reports are injected: Ctrl+C down now, everything up 5 ms later.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <hidbpfd/api.h>

char LICENSE[] SEC("license") = "GPL";

#define KEYBOARD_REPORT	0x01
#define KEY_F13		0x68
#define KEY_C		0x06
#define MOD_LEFT_CTRL	0x01

static const __u8 ctrl_c[4] = { KEYBOARD_REPORT, MOD_LEFT_CTRL, KEY_C, 0 };
static const __u8 all_up[4] = { KEYBOARD_REPORT, 0, 0, 0 };

SEC("struct_ops/hid_device_event")
int BPF_PROG(macro_event, struct hid_bpf_ctx *hctx, enum hid_report_type type, __u64 source)
{
	__u8 *data = hid_bpf_get_data(hctx, 0, 4);

	if (!data || source || type != HID_INPUT_REPORT)
		return 0;
	if (data[0] != KEYBOARD_REPORT || data[1] != 0 || data[2] != KEY_F13)
		return 0;
	/* if the sequence cannot be queued, let F13 through rather than lose the key press */
	if (hidbpfd_inject(hctx, ctrl_c, sizeof(ctrl_c), 0))
		return 0;
	hidbpfd_inject(hctx, all_up, sizeof(all_up), 5);
	return -1;	/* applications never see F13 */
}

SEC(".struct_ops")
struct hid_bpf_ops macro_key = {
	.hid_device_event = (void *)macro_event,
};
