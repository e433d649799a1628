// SPDX-License-Identifier: GPL-2.0-only
/*
 * wakeup-reinit.bpf.c - a vendor device that forgets its configuration when it wakes up, and
 * says so with the input report 10 ff 80 00 (the XP-Pen ACK05 / Surface Dial pattern in
 * udev-hid-bpf, written there as a bpf_timer -> bpf_wq state machine).
 *
 * On the wake-up report: send the mode again (output report 10 ff 80 11 01), re-enable
 * reporting 10 ms later (feature report 05 01), and 10 ms after that read feature 05 back in
 * a sleepable callback; if it did not stick, set it again and check again, up to two retries.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <hidbpfd/api.h>

char LICENSE[] SEC("license") = "GPL";

#define KEY_VERIFY	1
#define RETRIES		2

static const __u8 wake_up[4] = { 0x10, 0xff, 0x80, 0x00 };
static const __u8 set_mode[5] = { 0x10, 0xff, 0x80, 0x11, 0x01 };
static const __u8 enable[2] = { 0x05, 0x01 };

/* Read feature 5 back; args->arg counts the retries done. */
HIDBPFD_CALLBACK(verify_enabled, args)
{
	struct hid_bpf_ctx *ctx = hid_bpf_allocate_context(args->hid_id);
	__u8 buf[2] = { 0x05, 0 };
	int ret;

	if (!ctx)
		return 0;	/* the device is gone */
	ret = hid_bpf_hw_request(ctx, buf, sizeof(buf), HID_FEATURE_REPORT, HID_REQ_GET_REPORT);
	if ((ret < 2 || buf[1] != enable[1]) && args->arg < RETRIES) {
		hidbpfd_set_feature(ctx, enable, sizeof(enable), 0);
		hidbpfd_call(ctx, verify_enabled, KEY_VERIFY, args->arg + 1, 10);
	}
	hid_bpf_release_context(ctx);
	return 0;
}

SEC("struct_ops/hid_device_event")
int BPF_PROG(wakeup_event, struct hid_bpf_ctx *hctx, enum hid_report_type type, __u64 source)
{
	__u8 *data = hid_bpf_get_data(hctx, 0, 4);

	if (!data || source || type != HID_INPUT_REPORT)
		return 0;
	if (data[0] != wake_up[0] || data[1] != wake_up[1] || data[2] != wake_up[2] ||
	    data[3] != wake_up[3])
		return 0;
	hidbpfd_output(hctx, set_mode, sizeof(set_mode), 0);
	hidbpfd_set_feature(hctx, enable, sizeof(enable), 10);
	hidbpfd_call(hctx, verify_enabled, KEY_VERIFY, 0, 20);
	return 0;	/* the wake-up report itself passes */
}

SEC(".struct_ops")
struct hid_bpf_ops wakeup_reinit = {
	.hid_device_event = (void *)wakeup_event,
};
