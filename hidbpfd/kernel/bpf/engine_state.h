// SPDX-License-Identifier: GPL-2.0-only
/*
 * engine_state.h - the in-kernel engine's state and maps: per-policy state,
 *   the I/O FIFO, the timers and the wq, counters and the ring of records.
 *
 * A part of engine.bpf.c, included once from it at this point of the file (it uses what the
 * parts before it define): not a header of its own.
 */
#ifndef __HIDBPFD_ENGINE_STATE_H
#define __HIDBPFD_ENGINE_STATE_H

/* ------------------------------------------------------------------ state and maps */

/* engine_pstate.flag bits, by policy type */
#define PS_HELD		(1 << 0)	/* defer: a report is held */
#define PS_PRESSED	(1 << 0)	/* release-guard: a press waits for its release */
#define PS_CUR		(1 << 0)	/* inject: a copy of the sequence is running */
#define PS_WAITING	(1 << 1)	/* inject: a wait step is pending */
#define PS_ADVANCING	(1 << 2)	/* inject: an advance is running (see advance()) */
#define PS_ACTIVE	(1 << 0)	/* reinit: an attempt is running */

/* One policy's mutable state (the Python policy's state object). */
struct engine_pstate {
	__u64 tdue;		/* when the pending timer is due (bpf_ktime_get_ns) */
	__u8 tpending;		/* Schedule()d and not Cancel()led nor run */
	__u8 flag;		/* PS_* */
	__u8 pos;		/* inject / reinit: next step of the current sequence */
	__u8 _pad;
	__u16 held_len;		/* defer: length of data */
	__u16 attempt;		/* reinit: attempt number, from 0 */
	__u32 extra;		/* inject: copies of the sequence queued behind the current one */
	__u32 gen;		/* reinit: the current attempt chain (bumped by each trigger) */
	__u8 data[ENGINE_HELD_MAX];	/* defer: the held report */
};

/* engine_op.kind */
#define OP_DATA		1	/* inject data[0 .. len) (a held report) */
#define OP_STEP		2	/* do step `step` of policy `policy` (input / output / feature) */
#define OP_VERIFY	3	/* reinit verify: get the feature report, then on_reply */

/* One pending I/O operation. */
struct engine_op {
	__u8 kind;
	__u8 policy;
	__u8 step;
	__u8 _pad;
	__u16 len;
	__u16 _pad2;
	__u8 data[ENGINE_HELD_MAX];
};

struct engine_state {
	struct bpf_spin_lock lock;
	__u32 armed;		/* the filter's armed mask (engine_event only) */
	__u32 head;		/* fifo[head % MAX .. tail % MAX) are pending */
	__u32 tail;
	__u64 armed_until[HIDBPFD_RULES_MAX];	/* when each group's arm expires (ditto) */
	struct engine_pstate pol[ENGINE_POLICIES_MAX];
	struct engine_op fifo[ENGINE_FIFO_MAX];
};

/* Timers (slots 0 .. POLICIES_MAX-1, one per policy) and the device's wq (ENGINE_ASYNC_WQ). */
struct engine_async {
	struct bpf_timer timer;
	struct bpf_wq wq;
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct engine_config);
} engine_cfg SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct engine_state);
} engine_state SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, ENGINE_POLICIES_MAX + 1);
	__type(key, int);
	__type(value, struct engine_async);
} engine_async SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct engine_stats);
} engine_stats SEC(".maps");

/* Records for the daemon: the engine's failures only; userspace may resize before load. */
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 20);
} engine_ring SEC(".maps");

/* The step records written while someone listens (engine_observed: `monitor`, an observer):
 * a ring of their own, so a flood of them never takes the place of a failure's record. */
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 20);
} engine_trace SEC(".maps");

#endif /* __HIDBPFD_ENGINE_STATE_H */
