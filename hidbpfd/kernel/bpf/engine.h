/* SPDX-License-Identifier: (GPL-2.0-only OR MIT) */
/*
 * engine.h - what the in-kernel engine (engine.bpf.c) and the daemon share.
 *
 * The in-kernel engine runs a device's policies (defer, inject, release-guard, reinit) in
 * HID-BPF instead of the daemon. hidbpfd/kernel/engine_codec.py mirrors every constant and
 * struct here (the struct formats are quoted above their Python twins) and
 * tests/unit/test_kernel_engine_params.py compiles this header on the host to check every
 * size and offset. The rule table is the filter's (struct hidbpfd_device_rules, hidbpfd.h):
 * policy i's rules are in arm group i, exactly as hidbpfd.engine.dispatch.build_table lays them out.
 *
 * Limits (the daemon refuses a policy file that does not fit, saying which limit):
 *   ENGINE_POLICIES_MAX policies per device, ENGINE_STEPS_MAX steps per policy (inject
 *   reports/waits, reinit send steps), ENGINE_SEND_MAX bytes per report the engine sends
 *   (and per verify read-back), ENGINE_HELD_MAX bytes per report it can hold and re-inject
 *   (longer reports pass, exactly like the userspace filter's record limit).
 */
#ifndef __HIDBPFD_ENGINE_H
#define __HIDBPFD_ENGINE_H

#define ENGINE_POLICIES_MAX	8
#define ENGINE_STEPS_MAX	16
#define ENGINE_SEND_MAX		64
#define ENGINE_HELD_MAX		128	/* = HIDBPFD_RECORD_DATA_MAX */
#define ENGINE_FIFO_MAX		32	/* pending I/O operations per device (a power of 2) */
#define ENGINE_ASYNC_WQ		ENGINE_POLICIES_MAX	/* engine_async slot of the device's wq */

/* struct engine_policy.type */
#define ENGINE_DEFER		1
#define ENGINE_INJECT		2
#define ENGINE_RELEASE_GUARD	3
#define ENGINE_REINIT		4

/* struct engine_policy.flags */
#define ENGINE_F_FLUSH		(1 << 0)	/* defer: on_cancel = "flush" */
#define ENGINE_F_ON_REPORT	(1 << 1)	/* reinit: on = ["report", ...] */
#define ENGINE_F_ON_ADDED	(1 << 2)	/* reinit: on = ["added", ...] */
#define ENGINE_F_ON_RESUME	(1 << 3)	/* reinit: on = ["resume", ...] */
#define ENGINE_F_VERIFY		(1 << 4)	/* reinit: verify = {...} */

/* struct engine_step.kind */
#define ENGINE_STEP_INPUT	1	/* inject data (inject reports, release-guard's release) */
#define ENGINE_STEP_OUTPUT	2	/* hid_bpf_hw_output_report */
#define ENGINE_STEP_FEATURE	3	/* hid_bpf_hw_request(SET_REPORT, FEATURE) */
#define ENGINE_STEP_WAIT	4	/* wait wait_ns */

/* struct engine_trigger.what (engine_trigger SEC("syscall")) */
#define ENGINE_TRIGGER_ADDED	1
#define ENGINE_TRIGGER_RESUME	2

/* struct engine_record.kind: what the engine did, for status / monitor */
#define ENGINE_REC_PASS		1	/* a report fired a rule and passed; detail = matched */
#define ENGINE_REC_HOLD		2	/* a report fired a rule and was held; detail = matched */
#define ENGINE_REC_INJECT	3	/* value = 0 or -errno */
#define ENGINE_REC_OUTPUT	4	/* value = bytes sent or -errno */
#define ENGINE_REC_FEATURE	5	/* value = bytes sent or -errno */
#define ENGINE_REC_REPLY	6	/* verify read-back: data, value = bytes or -errno */
#define ENGINE_REC_SCHEDULE	7	/* detail = delay in us */
#define ENGINE_REC_CANCEL	8
#define ENGINE_REC_TIMER	9
#define ENGINE_REC_OVERFLOW	10	/* an I/O operation found the queue full and was lost */
#define ENGINE_REC_NO_CONTEXT	11	/* hid_bpf_allocate_context failed: value = -errno */

#define ENGINE_NO_POLICY	0xff	/* engine_record.policy when no policy is involved */

/* One step of a sequence to send. 80 bytes. */
struct engine_step {
	__u64 wait_ns;		/* ENGINE_STEP_WAIT */
	__u8 kind;		/* ENGINE_STEP_* */
	__u8 _pad;
	__u16 len;		/* bytes of data, 1..ENGINE_SEND_MAX */
	__u32 _pad2;
	__u8 data[ENGINE_SEND_MAX];
};

/* One policy's parameters. 1376 bytes. */
struct engine_policy {
	__u32 type;		/* ENGINE_DEFER ... */
	__u32 flags;		/* ENGINE_F_* */
	__u8 rule_off;		/* its first rule in the device's table */
	__u8 rule_count;	/* defer 2, inject 1, release-guard 2, reinit 0 or 1 */
	__u8 nsteps;		/* steps[0 .. nsteps) */
	__u8 verify_id;		/* reinit verify.report_id */
	__u16 verify_len;	/* reinit verify.length, 1..ENGINE_SEND_MAX */
	__u16 retries;		/* reinit retries */
	__u64 delay_ns;		/* defer delay_ms, release-guard timeout_ms */
	struct hidbpfd_rule verify;	/* reinit verify.expect (group unused) */
	struct engine_step steps[ENGINE_STEPS_MAX];
};

/* Value of engine_cfg (one element): the device and its policies. 13328 bytes. */
struct engine_config {
	__u32 hid_id;
	__u32 npolicies;
	struct hidbpfd_device_rules rules;
	struct engine_policy policies[ENGINE_POLICIES_MAX];
};

/* Value of engine_stats (one element), summed by the daemon for `hidbpfd status`. */
struct engine_stats {
	__u64 matched;		/* reports that fired a rule */
	__u64 held;		/* ... and were held */
	__u64 injected;
	__u64 output;
	__u64 feature;
	__u64 get_feature;
	__u64 errors;		/* failed I/O, lost I/O (queue full), no context */
	__u64 overflow;		/* I/O operations lost because the queue was full */
	__u64 ring_drops;	/* failure records lost because engine_ring was full */
	__u64 timers;		/* timer callbacks that ran a policy */
	__u64 wq_runs;		/* work-queue callbacks */
	__u64 trace_drops;	/* step records (monitor) lost because engine_trace was full */
};

/*
 * One ring-buffer record: ENGINE_RECORD_HEAD bytes of header, then no data, the first
 * ENGINE_RECORD_SHORT bytes (len <= ENGINE_RECORD_SHORT) or all ENGINE_HELD_MAX (the record's
 * size says which). 152 bytes at most.
 */
#define ENGINE_RECORD_HEAD	24	/* offsetof(struct engine_record, data) */
#define ENGINE_RECORD_SHORT	32
struct engine_record {
	__u64 ts_ns;		/* bpf_ktime_get_ns() */
	__u32 hid_id;
	__u8 kind;		/* ENGINE_REC_* */
	__u8 policy;		/* policy index, or ENGINE_NO_POLICY */
	__u16 len;		/* bytes of data */
	__s32 value;
	__u32 detail;
	__u8 data[ENGINE_HELD_MAX];
};

/* Context of engine_trigger, passed with BPF_PROG_RUN. */
struct engine_trigger {
	__u32 what;		/* ENGINE_TRIGGER_* */
	__u32 _pad;
};

#endif /* __HIDBPFD_ENGINE_H */
