/* SPDX-License-Identifier: (GPL-2.0-only OR MIT) */
/*
 * hid_types.h - the HID types of hidbpfd/kernel/bpf/hid_compat.h without its kfunc
 * declarations (which are __weak there): the test programs get their kfuncs from
 * <hidbpfd/api.h> (api_wq.h declares them without __weak, so a kernel lacking one refuses
 * the object at load, which tests/bpf/test_api_wq_build.py checks). For a vmlinux.h without
 * HID-BPF (the build defines HIDBPFD_HAVE_<kind>_<name> for the types it has).
 */
#ifndef HIDBPFD_TEST_HID_TYPES_H
#define HIDBPFD_TEST_HID_TYPES_H

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

#endif /* HIDBPFD_TEST_HID_TYPES_H */
