// SPDX-License-Identifier: GPL-2.0-only
/*
 * requests_test.bpf.c - the request-writing core of <hidbpfd/api.h>, driven by BPF_PROG_RUN
 * on any kernel (no HID-BPF needed): tests/bpf/test_requests.py compiles it with
 * `hidbpfd compile` and checks what reaches the ring, and how the daemon's decoder, validation
 * and budget take it.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <hidbpfd/api.h>

char LICENSE[] SEC("license") = "GPL";

/* what one BPF_PROG_RUN asks for */
struct test_op {
	__u32 op;		/* TEST_* */
	__u32 hid_id;
	__u32 key;
	__u32 delay_ms;
	__u32 size;
	__u32 count;		/* TEST_FLOOD: how many */
	__u64 arg;
	__u8 data[HIDBPFD_DATA_MAX];
};

#define TEST_DEFER	1
#define TEST_CANCEL	2
#define TEST_INJECT	3
#define TEST_OUTPUT	4
#define TEST_FEATURE	5
#define TEST_CALL	6
#define TEST_CALL_UNKNOWN	7
#define TEST_INJECT_KEY	8
#define TEST_FLOOD	9

__u64 callback_runs;
__u64 callback_last_arg;

/* a callback: counts its runs and asks for one output report (the API works here too) */
HIDBPFD_CALLBACK(test_callback, args)
{
	__u8 report[2] = { 0x05, (__u8)args->arg };

	callback_runs++;
	callback_last_arg = args->arg;
	return hidbpfd__request(args->hid_id, HIDBPFD_REQ_OUTPUT, 0, 0, 0, report, 2, 0);
}

static long flood_one(__u32 i, void *ctx)
{
	__u32 *hid_id = ctx;
	__u8 r[1] = { (__u8)i };

	hidbpfd__request(*hid_id, HIDBPFD_REQ_INJECT, 0, 0, 0, r, 1, 0);
	return 0;
}

SEC("syscall")
int test_request(struct test_op *t)
{
	__u32 size = t->size, hid_id = t->hid_id;

	if (size > HIDBPFD_DATA_MAX)
		size = HIDBPFD_DATA_MAX + 1;	/* keep it too large: the core must refuse it */
	switch (t->op) {
	case TEST_DEFER:
		/* what hidbpfd_defer does once it has the report */
		return hidbpfd__defer(t->hid_id, t->key, t->delay_ms, t->data,
				      size > HIDBPFD_DATA_MAX ? 0 : size);
	case TEST_CANCEL:
		return hidbpfd__cancel(t->hid_id, t->key);
	case TEST_INJECT:
		return hidbpfd__request(t->hid_id, HIDBPFD_REQ_INJECT, 0, 0, t->delay_ms, t->data,
					size, 0);
	case TEST_INJECT_KEY:
		return hidbpfd__request(t->hid_id, HIDBPFD_REQ_INJECT, HIDBPFD_REQ_KEYED, t->key,
					t->delay_ms, t->data, size, 0);
	case TEST_OUTPUT:
		return hidbpfd__request(t->hid_id, HIDBPFD_REQ_OUTPUT, 0, 0, t->delay_ms, t->data,
					size, 0);
	case TEST_FEATURE:
		return hidbpfd__request(t->hid_id, HIDBPFD_REQ_SET_FEATURE, 0, 0, t->delay_ms,
					t->data, size, 0);
	case TEST_CALL:
		return hidbpfd__call(t->hid_id, "test_callback", sizeof("test_callback"), t->key,
				     t->arg, t->delay_ms);
	case TEST_CALL_UNKNOWN:
		return hidbpfd__call(t->hid_id, "no_such_callback", sizeof("no_such_callback"),
				     t->key, t->arg, t->delay_ms);
	case TEST_FLOOD:
		bpf_loop(t->count, flood_one, &hid_id, 0);
		return 0;
	}
	return -EINVAL;
}
