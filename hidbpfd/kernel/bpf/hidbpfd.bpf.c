// SPDX-License-Identifier: GPL-2.0-only
/*
 * hidbpfd.bpf.c - the shared maps and every program but the HID-BPF struct_ops.
 *
 *   hidbpfd_feed            SEC("syscall")  the filter on a report from BPF_PROG_RUN
 *   hidbpfd_trace_fentry    fentry          observe-only fallback without HID-BPF
 *   hidbpfd_trace_kprobe    kprobe          the same where fentry is refused
 *   hidbpfd_io_*            SEC("syscall")  inject / output / feature reports (HID-BPF)
 *
 * Userspace switches each but the feeder on or off with bpf_program__set_autoload()
 * before load, from what the kernel's BTF offers (and retries without any program the
 * verifier refuses, so one unsupported program never fails the object); the struct_ops
 * lives in hidbpfd_ops.bpf.c (one object per device, sharing these maps by fd).
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>
#include "hid_compat.h"
#include "hidbpfd.h"

char LICENSE[] SEC("license") = "GPL";

/* Devices whose reports the tracing fallback filters (key hid_id, value unused). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 256);
	__type(key, __u32);
	__type(value, __u8);
} hidbpfd_traced SEC(".maps");

/* ------------------------------------------------------------------ feeder */

SEC("syscall")
int hidbpfd_feed(struct hidbpfd_feed *ctx)
{
	__u64 now = ctx->now_ns;

	return hidbpfd_filter(ctx->hid_id, ctx->data, ctx->len, ctx->can_hold,
			      now ? now : bpf_ktime_get_ns());
}

/* ------------------------------------------------------- tracing fallback */

static __always_inline int hidbpfd_trace(__u32 hid_id, int type, const void *data, __u32 size)
{
	if (type != HID_INPUT_REPORT)
		return 0;
	if (!bpf_map_lookup_elem(&hidbpfd_traced, &hid_id))
		return 0;
	hidbpfd_filter(hid_id, data, size, 0, bpf_ktime_get_ns());
	return 0;
}

/*
 * Where every report passes on its way to hidraw and the drivers, whatever the transport
 * (usbhid, i2c-hid, uhid... all reach it through __hid_input_report):
 *
 *   int hid_report_raw_event(struct hid_device *hid, enum hid_report_type type, u8 *data,
 *			      u32 size, int interrupt);			up to 6.x
 *   int hid_report_raw_event(struct hid_device *hid, enum hid_report_type type, u8 *data,
 *			      size_t bufsize, u32 size, int interrupt);	7.0+ and stable
 *
 * (hid_input_report is no longer on the path: 7.0 transports call hid_safe_input_report.)
 * fentry asks the trampoline for the argument count; kprobe cannot, so userspace sets
 * hidbpfd_raw_event_nargs from the kernel's BTF before load.
 */
const volatile int hidbpfd_raw_event_nargs = 5;

SEC("fentry/hid_report_raw_event")
int hidbpfd_trace_fentry(unsigned long long *ctx)
{
	struct hid_device *hid = (struct hid_device *)ctx[0];
	__u64 size = 0;

	if (bpf_get_func_arg(ctx, bpf_get_func_arg_cnt(ctx) >= 6 ? 4 : 3, &size))
		return 0;
	return hidbpfd_trace(BPF_CORE_READ(hid, id), (int)ctx[1], (const void *)ctx[2], size);
}

SEC("kprobe/hid_report_raw_event")
int BPF_KPROBE(hidbpfd_trace_kprobe, struct hid_device *hid, enum hid_report_type type,
	       __u8 *data, __u64 arg3, __u64 arg4)
{
	__u32 size = hidbpfd_raw_event_nargs >= 6 ? arg4 : arg3;

	return hidbpfd_trace(BPF_CORE_READ(hid, id), type, data, size);
}

/* --------------------------------------------------------------- injectors */

static __always_inline int hidbpfd_io_ctx_len(struct hidbpfd_io *io)
{
	__u32 len = io->len;

	if (len < 1 || len > HIDBPFD_IO_DATA_MAX)
		return -22; /* EINVAL */
	return len;
}

SEC("syscall")
int hidbpfd_io_input(struct hidbpfd_io *io)
{
	struct hid_bpf_ctx *hctx;
	int len = hidbpfd_io_ctx_len(io), ret;

	if (len < 0)
		return len;
	hctx = hid_bpf_allocate_context(io->hid_id);
	if (!hctx)
		return -19; /* ENODEV */
	ret = hid_bpf_input_report(hctx, HID_INPUT_REPORT, io->data, len);
	hid_bpf_release_context(hctx);
	return ret;
}

SEC("syscall")
int hidbpfd_io_output(struct hidbpfd_io *io)
{
	struct hid_bpf_ctx *hctx;
	int len = hidbpfd_io_ctx_len(io), ret;

	if (len < 0)
		return len;
	hctx = hid_bpf_allocate_context(io->hid_id);
	if (!hctx)
		return -19;
	ret = hid_bpf_hw_output_report(hctx, io->data, len);
	hid_bpf_release_context(hctx);
	return ret;
}

static __always_inline int hidbpfd_io_feature(struct hidbpfd_io *io,
					      enum hid_class_request req)
{
	struct hid_bpf_ctx *hctx;
	int len = hidbpfd_io_ctx_len(io), ret;

	if (len < 0)
		return len;
	hctx = hid_bpf_allocate_context(io->hid_id);
	if (!hctx)
		return -19;
	ret = hid_bpf_hw_request(hctx, io->data, len, HID_FEATURE_REPORT, req);
	hid_bpf_release_context(hctx);
	return ret;
}

SEC("syscall")
int hidbpfd_io_set_feature(struct hidbpfd_io *io)
{
	return hidbpfd_io_feature(io, HID_REQ_SET_REPORT);
}

SEC("syscall")
int hidbpfd_io_get_feature(struct hidbpfd_io *io)
{
	return hidbpfd_io_feature(io, HID_REQ_GET_REPORT);
}
