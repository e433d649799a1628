/* SPDX-License-Identifier: (GPL-2.0-only OR MIT) */
/*
 * hidbpfd/requests.h - the userspace engine's protocol: what a program using <hidbpfd/api.h>
 * writes for the hidbpfd daemon, and the state the daemon and the program share.
 *
 * Layout only (no code, no maps): included by api.h (BPF) and compiled on the host by
 * tests/bpf/test_requests_layout.py, which checks every size and offset against the Python
 * mirror (hidbpfd/engine/requests.py for the record, hidbpfd/kernel/requests.py for the
 * state). Change one side, change the other and HIDBPFD_REQUEST_VERSION.
 */
#ifndef __HIDBPFD_REQUESTS_H
#define __HIDBPFD_REQUESTS_H

#define HIDBPFD_REQUEST_VERSION	1	/* struct hidbpfd_request.version */
#ifndef HIDBPFD_DATA_MAX	/* also in api.h, for both engines */
#define HIDBPFD_DATA_MAX	512	/* bytes of a report a request carries */
#endif
#define HIDBPFD_CALLBACK_NAME_MAX	64	/* a callback's name, NUL included */

/* struct hidbpfd_request.kind */
#define HIDBPFD_REQ_DEFER	1	/* data: the held report; re-inject after delay_ms */
#define HIDBPFD_REQ_CANCEL	2	/* drop the work pending under key (a held report too) */
#define HIDBPFD_REQ_INJECT	3	/* data: an input report to inject */
#define HIDBPFD_REQ_OUTPUT	4	/* data: an output report to send */
#define HIDBPFD_REQ_SET_FEATURE	5	/* data: a feature report to set (data[0]: its ID) */
#define HIDBPFD_REQ_CALL	6	/* data: the callback's name; arg: its argument */

/* struct hidbpfd_request.flags */
#define HIDBPFD_REQ_KEYED	(1 << 0)	/* `key` names the work: same key re-arms */

/*
 * One request: a record of the program's ring buffer map `hidbpfd_requests`. 552 bytes.
 * Requests of one ring are executed in ring order; a request with a delay runs delay_ms after
 * ts_ns (not after the daemon read it).
 */
struct hidbpfd_request {
	__u16 version;		/* HIDBPFD_REQUEST_VERSION */
	__u16 kind;		/* HIDBPFD_REQ_* */
	__u32 hid_id;		/* the device: struct hid_device.id */
	__u32 key;		/* keyed work (flags & HIDBPFD_REQ_KEYED), and cancel: its key */
	__u32 delay_ms;
	__u64 ts_ns;		/* bpf_ktime_get_ns() when requested: CLOCK_MONOTONIC */
	__u64 arg;		/* HIDBPFD_REQ_CALL: the callback's argument */
	__u32 flags;		/* HIDBPFD_REQ_KEYED */
	__u32 size;		/* bytes of data used */
	__u8 data[HIDBPFD_DATA_MAX];
};

/*
 * Budget against floods, per program object and device (GCRA): a request is accepted when
 * tat <= now + burst * interval_ns, and then tat = max(tat, now) + interval_ns. So `burst`
 * requests at once, then one per interval_ns. 0 in a field: the default below.
 */
#define HIDBPFD_BUDGET_BURST		64
#define HIDBPFD_BUDGET_INTERVAL_NS	1000000ULL	/* 1000 requests/s sustained */

/*
 * The value of the program's one-element array map `hidbpfd_state`: written by the daemon
 * (burst, interval_ns) once before it attaches the object, then by the program. 48 bytes.
 * (The one-element array `hidbpfd_passing` holds a __u32 of its own: the size of the held
 * report the daemon is re-injecting right now, 0 otherwise; the program swaps it to 0.)
 */
struct hidbpfd_state {
	__u32 burst;		/* daemon: budget burst (0: HIDBPFD_BUDGET_BURST) */
	__u32 _pad;
	__u64 interval_ns;	/* daemon: budget interval (0: HIDBPFD_BUDGET_INTERVAL_NS) */
	__u64 tat;		/* program: the budget's theoretical arrival time */
	__u64 requests;		/* program: requests written to the ring */
	__u64 over_budget;	/* program: requests refused by the budget (-EBUSY) */
	__u64 ring_full;	/* program: requests refused with the ring full (-ENOSPC) */
};

#endif /* __HIDBPFD_REQUESTS_H */
