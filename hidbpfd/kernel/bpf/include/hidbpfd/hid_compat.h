/* SPDX-License-Identifier: (GPL-2.0-only OR MIT) */
/*
 * hid_compat.h - the HID types our programs use, for a vmlinux.h that lacks them.
 *
 * vmlinux.h is generated from the BTF of the build machine, which may have no HID, or HID
 * without HID-BPF. build.py looks for each type in the generated vmlinux.h and defines
 * HIDBPFD_HAVE_<name> for those it found; the others are declared here, with only the
 * members we touch and preserve_access_index, so CO-RE finds them by name in the BTF of
 * the kernel that loads the object (vmlinux or the hid module). Definitions quoted from
 * include/linux/hid.h, include/linux/hid_bpf.h (Linux 6.11+).
 */
#ifndef __HIDBPFD_HID_COMPAT_H
#define __HIDBPFD_HID_COMPAT_H

#ifndef HIDBPFD_HAVE_ENUM_hid_report_type
enum hid_report_type {
	HID_INPUT_REPORT = 0,
	HID_OUTPUT_REPORT = 1,
	HID_FEATURE_REPORT = 2,
	HID_REPORT_TYPES = 3,
};
#endif

#ifndef HIDBPFD_HAVE_ENUM_hid_class_request
enum hid_class_request {
	HID_REQ_GET_REPORT = 1,
	HID_REQ_GET_IDLE = 2,
	HID_REQ_GET_PROTOCOL = 3,
	HID_REQ_SET_REPORT = 9,
	HID_REQ_SET_IDLE = 10,
	HID_REQ_SET_PROTOCOL = 11,
};
#endif

#ifndef HIDBPFD_HAVE_STRUCT_hid_device
struct hid_device {
	unsigned int id;	/* the number after the dot in 0003:046D:C52B.0007 */
} __attribute__((preserve_access_index));
#endif

#ifndef HIDBPFD_HAVE_STRUCT_hid_bpf_ctx
struct hid_bpf_ctx {
	struct hid_device *hid;
	__u32 allocated_size;
	union {
		__s32 retval;
		__s32 size;
	};
} __attribute__((preserve_access_index));
#endif

#ifndef HIDBPFD_HAVE_STRUCT_hid_bpf_ops
/*
 * The struct_ops type. libbpf matches it to the kernel's by name, member by member; the
 * kernel's also has `struct list_head list` and `struct hid_device *hdev`, which userspace
 * never sets, so they are left out here.
 */
struct hid_bpf_ops {
	int hid_id;
	__u32 flags;
	int (*hid_device_event)(struct hid_bpf_ctx *ctx, enum hid_report_type report_type,
				__u64 source);
	int (*hid_rdesc_fixup)(struct hid_bpf_ctx *ctx);
	int (*hid_hw_request)(struct hid_bpf_ctx *ctx, unsigned char reportnum,
			      enum hid_report_type rtype, enum hid_class_request reqtype,
			      __u64 source);
	int (*hid_hw_output_report)(struct hid_bpf_ctx *ctx, __u64 source);
};
#endif

/* HID-BPF kfuncs (drivers/hid/bpf/hid_bpf_dispatch.c); bpftool 7.1 does not emit them.
 * HIDBPFD_COMPAT_NO_KFUNCS: the includer declares them itself (api_wq.h, without __weak, so a
 * kernel lacking one refuses the object by name; a __weak declaration here would stick). */
#ifndef HIDBPFD_COMPAT_NO_KFUNCS
extern __u8 *hid_bpf_get_data(struct hid_bpf_ctx *ctx, unsigned int offset,
			      const size_t __sz) __ksym __weak;
extern struct hid_bpf_ctx *hid_bpf_allocate_context(unsigned int hid_id) __ksym __weak;
extern void hid_bpf_release_context(struct hid_bpf_ctx *ctx) __ksym __weak;
extern int hid_bpf_hw_request(struct hid_bpf_ctx *ctx, __u8 *data, size_t buf__sz,
			      enum hid_report_type type,
			      enum hid_class_request reqtype) __ksym __weak;
extern int hid_bpf_hw_output_report(struct hid_bpf_ctx *ctx, __u8 *buf,
				    size_t buf__sz) __ksym __weak;
extern int hid_bpf_input_report(struct hid_bpf_ctx *ctx, enum hid_report_type type,
				__u8 *data, size_t buf__sz) __ksym __weak;
extern int hid_bpf_try_input_report(struct hid_bpf_ctx *ctx, enum hid_report_type type,
				    __u8 *data, size_t buf__sz) __ksym __weak;
#endif /* HIDBPFD_COMPAT_NO_KFUNCS */

#endif /* __HIDBPFD_HID_COMPAT_H */
