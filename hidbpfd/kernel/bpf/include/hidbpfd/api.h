/* SPDX-License-Identifier: (GPL-2.0-only OR MIT) */
/*
 * hidbpfd/api.h - STAND-IN (branch i13k) holding only the part shared by both engines, so
 * that the in-kernel engine (api_wq.h) builds and is tested on its own. The real api.h
 * (shared part + the userspace engine) comes from branch i13u; the lead merges the two.
 */
#ifndef HIDBPFD_API_H
#define HIDBPFD_API_H

#define HIDBPFD_DATA_MAX	512	/* bytes of a report a request carries */

/* What a deferred call (HIDBPFD_CALLBACK) gets. */
struct hidbpfd_call_args {
	__u32 hid_id;		/* the device: struct hid_device.id */
	__u32 key;		/* the key given to hidbpfd_call */
	__u64 arg;		/* the argument given to hidbpfd_call */
};

#ifdef HIDBPFD_ENGINE_KERNEL
#include "api_wq.h"
#else
#error "stand-in api.h: only the in-kernel engine (-DHIDBPFD_ENGINE_KERNEL) is here"
#endif

#endif /* HIDBPFD_API_H */
