// SPDX-License-Identifier: GPL-2.0-only
/*
 * api_wq_demo.bpf.c - a HID-BPF program written with <hidbpfd/api.h>, built with
 * -DHIDBPFD_ENGINE_KERNEL by tests/bpf/api_wq_build.py and run on uhid devices by
 * tests/device/test_api_wq.py (the vendor device of tests/device/conftest.py: input report
 * 1 with 4 bytes, output report 0x10 with 5, feature report 5 with 2).
 *
 * Input report 01 S A B C, by its status byte S:
 *   00  a pen "out of proximity", not to be trusted: held A*10 ms under key 1, then
 *       re-injected unless the pen is back in range first
 *   20  in range: cancels the held out-of-proximity report
 *   01  held A*10 ms under key 0x100 + B (many at once: the pool's limit)
 *   0f  the device woke up: an output report (10 a1 a2 a3 a4 a5), the feature report
 *       05 A B set, then after 10 ms the callback `readback` reads feature 5 back and
 *       injects 01 ca X Y M (X Y: what it read, M: 1 if it is A B; it retries twice on a
 *       mismatch, M then carries the retries in its high nibble)
 *   30  a macro: injects 01 31 00 00 00 now and 01 32 00 00 00 20 ms later
 *   40  after A*10 ms, each under its own key (3, 4, 5): the output report 10 b1 b2 b3 b4
 *       b5, the feature report 05 B C, the input report 01 41 B C 00
 *   41  cancels keys 3, 4, 5 and the read-back's key
 *   50  sets the feature report 05 B C now, and reads it back after A*10 ms (`readback`
 *       with B C as its argument; again before then: re-armed with the new argument)
 * Anything else passes untouched.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <hidbpfd/api.h>

char LICENSE[] SEC("license") = "GPL";

#define KEY_PROXIMITY	1
#define KEY_READBACK	2
#define KEY_OUTPUT	3
#define KEY_FEATURE	4
#define KEY_INJECT	5

#define FEATURE_ID	0x05
#define OUTPUT_ID	0x10

/*
 * Read feature 5 back and compare it with what was set (arg: A << 8 | B, the attempt number
 * above that). On a mismatch, set it again and read it back 10 ms later, twice at most; then
 * tell userspace what came, whether it matched, and after how many retries: 01 ca X Y (M | R << 4).
 */
HIDBPFD_CALLBACK(readback, args)
{
	__u64 want = args->arg & 0xffff, attempt = args->arg >> 16;
	struct hid_bpf_ctx *ctx;
	__u8 buf[3] = { FEATURE_ID };
	__u8 rep[5] = { 0x01, 0xca };
	int n, match;

	ctx = hid_bpf_allocate_context(args->hid_id);
	if (!ctx)
		return 0;
	n = hid_bpf_hw_request(ctx, buf, sizeof(buf), HID_FEATURE_REPORT, HID_REQ_GET_REPORT);
	match = n >= 3 && ((__u64)buf[1] << 8 | buf[2]) == want;
	if (!match && attempt < 2) {
		buf[1] = want >> 8;
		buf[2] = want & 0xff;
		hidbpfd_set_feature(ctx, buf, sizeof(buf), 0);
		hidbpfd_call(ctx, readback, args->key, (attempt + 1) << 16 | want, 10);
		hid_bpf_release_context(ctx);
		return 0;
	}
	if (n >= 3) {
		rep[2] = buf[1];
		rep[3] = buf[2];
	} else {
		rep[2] = 0xee;	/* the read-back failed */
	}
	rep[4] = match | attempt << 4;
	hidbpfd_inject(ctx, rep, sizeof(rep), 0);
	hid_bpf_release_context(ctx);
	return 0;
}

SEC("struct_ops/hid_device_event")
int BPF_PROG(demo_event, struct hid_bpf_ctx *hctx, enum hid_report_type type, __u64 source)
{
	__u8 out[6] = { OUTPUT_ID, 0xa1, 0xa2, 0xa3, 0xa4, 0xa5 };
	__u8 feature[3] = { FEATURE_ID };
	__u8 macro[5] = { 0x01, 0x31 };
	__u8 out2[6] = { OUTPUT_ID, 0xb1, 0xb2, 0xb3, 0xb4, 0xb5 };
	__u8 *data = hid_bpf_get_data(hctx, 0, 5);

	if (!data || type != HID_INPUT_REPORT || data[0] != 0x01)
		return 0;
	switch (data[1]) {
	case 0x00:
		return hidbpfd_defer(hctx, KEY_PROXIMITY, data[2] * 10);
	case 0x01:
		return hidbpfd_defer(hctx, 0x100 + data[3], data[2] * 10);
	case 0x20:
		hidbpfd_cancel(hctx, KEY_PROXIMITY);
		return 0;
	case 0x0f:
		feature[1] = data[2];
		feature[2] = data[3];
		hidbpfd_output(hctx, out, sizeof(out), 0);
		hidbpfd_set_feature(hctx, feature, sizeof(feature), 0);
		hidbpfd_call(hctx, readback, KEY_READBACK, (__u64)data[2] << 8 | data[3], 10);
		return 0;
	case 0x30:
		hidbpfd_inject(hctx, macro, sizeof(macro), 0);
		macro[1] = 0x32;
		hidbpfd_inject(hctx, macro, sizeof(macro), 20);
		return 0;
	case 0x40:
		feature[1] = data[3];
		feature[2] = data[4];
		macro[1] = 0x41;
		macro[2] = data[3];
		macro[3] = data[4];
		hidbpfd_output_key(hctx, KEY_OUTPUT, out2, sizeof(out2), data[2] * 10);
		hidbpfd_set_feature_key(hctx, KEY_FEATURE, feature, sizeof(feature), data[2] * 10);
		hidbpfd_inject_key(hctx, KEY_INJECT, macro, sizeof(macro), data[2] * 10);
		return 0;
	case 0x41:
		hidbpfd_cancel(hctx, KEY_OUTPUT);
		hidbpfd_cancel(hctx, KEY_FEATURE);
		hidbpfd_cancel(hctx, KEY_INJECT);
		hidbpfd_cancel(hctx, KEY_READBACK);
		return 0;
	case 0x50:
		feature[1] = data[3];
		feature[2] = data[4];
		hidbpfd_set_feature(hctx, feature, sizeof(feature), 0);
		hidbpfd_call(hctx, readback, KEY_READBACK, (__u64)data[3] << 8 | data[4],
			     data[2] * 10);
		return 0;
	}
	return 0;
}

SEC(".struct_ops")
struct hid_bpf_ops demo_ops = {
	.hid_id = 0,	/* set by the loader before load */
	.hid_device_event = (void *)demo_event,
};
