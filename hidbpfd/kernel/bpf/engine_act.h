// SPDX-License-Identifier: GPL-2.0-only
/*
 * engine_act.h - how the in-kernel engine carries out a decision: counters,
 *   records for the daemon (emit()), Schedule / Cancel, the FIFO push, and finish() after unlocking.
 *
 * A part of engine.bpf.c, included once from it at this point of the file (it uses what the
 * parts before it define): not a header of its own.
 */
#ifndef __HIDBPFD_ENGINE_ACT_H
#define __HIDBPFD_ENGINE_ACT_H

/* ------------------------------------------------------------------ helpers */

#define STAT_ADD(field, n)						\
	do {								\
		__u32 __k = 0;						\
		struct engine_stats *__s =				\
			bpf_map_lookup_elem(&engine_stats, &__k);	\
		if (__s)						\
			__sync_fetch_and_add(&__s->field, (n));		\
	} while (0)

#define FILL_RECORD(rec, hid_id, kind, policy, value, detail, n)			\
	do {									\
		(rec)->ts_ns = bpf_ktime_get_ns();				\
		(rec)->hid_id = (hid_id);					\
		(rec)->kind = (kind);						\
		(rec)->policy = (policy);					\
		(rec)->value = (value);						\
		(rec)->detail = (detail);					\
		(rec)->len = (n);						\
	} while (0)

/*
 * A record for the daemon; `data` is NULL or ENGINE_HELD_MAX readable bytes. Records are as
 * short as their data allows (header only, ENGINE_RECORD_SHORT bytes, or the whole report), so
 * the ring holds several times more of them than of full-size ones. Only what the engine did
 * (held a report, I/O, errors) wakes the daemon; a matched report that passed and the timer
 * bookkeeping ride along with the next wake-up or the daemon's periodic read of the counters,
 * so a stream of matched reports does not keep the daemon busy.
 */
/*
 * Set by the daemon (this object's .bss) while someone listens to the engine's records
 * (`hidbpfd monitor`, a test's observer). Otherwise only failures are written: what went well
 * is in engine_stats, and the daemon is not woken for every report the engine handles.
 */
__u32 engine_observed = 0;

static __always_inline int emit_to(void *ring, __u32 hid_id, __u8 kind, __u32 policy,
				   __s32 value, __u32 detail, const __u8 *data, __u32 len,
				   __u64 flags)
{
	struct engine_record *rec;

	if (!data) {
		rec = bpf_ringbuf_reserve(ring, ENGINE_RECORD_HEAD, 0);
		if (rec) {
			FILL_RECORD(rec, hid_id, kind, policy, value, detail, 0);
			bpf_ringbuf_submit(rec, flags);
		}
	} else if (len <= ENGINE_RECORD_SHORT) {
		rec = bpf_ringbuf_reserve(ring, ENGINE_RECORD_HEAD + ENGINE_RECORD_SHORT, 0);
		if (rec) {
			FILL_RECORD(rec, hid_id, kind, policy, value, detail, len);
			__builtin_memcpy(rec->data, data, ENGINE_RECORD_SHORT);
			bpf_ringbuf_submit(rec, flags);
		}
	} else {
		rec = bpf_ringbuf_reserve(ring, sizeof(*rec), 0);
		if (rec) {
			FILL_RECORD(rec, hid_id, kind, policy, value, detail, len);
			__builtin_memcpy(rec->data, data, ENGINE_HELD_MAX);
			bpf_ringbuf_submit(rec, flags);
		}
	}
	return rec != 0;
}

/* Failures (a -errno value) go to engine_ring, always; the steps that went well go to
 * engine_trace, only while someone listens: they never compete for the same room. */
static __always_inline void emit(__u32 hid_id, __u8 kind, __u32 policy, __s32 value,
				 __u32 detail, const __u8 *data, __u32 len)
{
	/* forced, not adaptive: the ring's adaptive wake-up assumes every record before this one
	 * already woke the reader, which the quiet records never do */
	__u64 flags = BPF_RB_FORCE_WAKEUP;

	if (!engine_observed && value >= 0)
		return;	/* a success nobody listens to (failures carry a -errno value) */

	if (kind == ENGINE_REC_PASS || kind == ENGINE_REC_SCHEDULE || kind == ENGINE_REC_CANCEL ||
	    kind == ENGINE_REC_TIMER)
		flags = BPF_RB_NO_WAKEUP;

	if (len > ENGINE_HELD_MAX)
		len = ENGINE_HELD_MAX;
	if (value < 0) {
		if (!emit_to(&engine_ring, hid_id, kind, policy, value, detail, data, len, flags))
			STAT_ADD(ring_drops, 1);
	} else if (!emit_to(&engine_trace, hid_id, kind, policy, value, detail, data, len, flags)) {
		STAT_ADD(trace_drops, 1);
	}
}

/* What a policy decided under the lock, to carry out after unlocking. */
struct engine_act {
	__u64 sched_ns;		/* Schedule: start the policy's timer with this delay */
	__u8 sched;
	__u8 cancel;		/* Cancel: a pending timer was cancelled (record only) */
	__u8 kick;		/* operations were queued: start the wq */
	__u8 overflow;		/* operations lost: the FIFO was full */
};

static __always_inline void schedule(struct engine_pstate *ps, struct engine_act *a, __u64 now,
				     __u64 delay_ns)
{
	ps->tpending = 1;
	ps->tdue = now + delay_ns;
	a->sched = 1;
	a->sched_ns = delay_ns;
}

static __always_inline void cancel(struct engine_pstate *ps, struct engine_act *a)
{
	if (ps->tpending) {
		ps->tpending = 0;
		a->cancel = 1;
	}
}

/* Append an operation (under the lock). `src` is NULL or ENGINE_HELD_MAX bytes. */
static __always_inline void fifo_push(struct engine_state *st, struct engine_act *a, __u8 kind,
				      __u32 policy, __u32 step, const __u8 *src, __u32 len)
{
	struct engine_op *op;

	if (st->tail - st->head >= ENGINE_FIFO_MAX) {
		a->overflow++;
		return;
	}
	op = &st->fifo[st->tail & (ENGINE_FIFO_MAX - 1)];
	op->kind = kind;
	op->policy = policy;
	op->step = step;
	op->len = len;
	if (src)
		__builtin_memcpy(op->data, src, ENGINE_HELD_MAX);
	st->tail++;
	a->kick = 1;
}

/* After unlocking: start the policy's timer, the device's wq, and say what happened. */
static __always_inline void finish(__u32 hid_id, __u32 i, struct engine_act *a)
{
	struct engine_async *e;
	int key;

	if (a->cancel)
		emit(hid_id, ENGINE_REC_CANCEL, i, 0, 0, NULL, 0);
	if (a->sched) {
		key = i & (ENGINE_POLICIES_MAX - 1);
		e = bpf_map_lookup_elem(&engine_async, &key);
		if (e)
			bpf_timer_start(&e->timer, a->sched_ns, 0);
		emit(hid_id, ENGINE_REC_SCHEDULE, i, 0, a->sched_ns / 1000, NULL, 0);
	}
	if (a->overflow) {
		STAT_ADD(overflow, a->overflow);
		STAT_ADD(errors, a->overflow);
		emit(hid_id, ENGINE_REC_OVERFLOW, i, -105 /* ENOBUFS */, a->overflow, NULL, 0);
	}
	if (a->kick) {
		key = ENGINE_ASYNC_WQ;
		e = bpf_map_lookup_elem(&engine_async, &key);
		if (e)
			bpf_wq_start(&e->wq, 0);
	}
}

#endif /* __HIDBPFD_ENGINE_ACT_H */
