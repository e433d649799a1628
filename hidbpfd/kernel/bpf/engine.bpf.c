// SPDX-License-Identifier: GPL-2.0-only
/*
 * engine.bpf.c - the in-kernel engine: a device's policies run in HID-BPF, no daemon involved.
 *
 * The same semantics as the Python policies (hidbpfd.policies, the reference) and the same
 * filter (hidbpfd.engine.filter / hidbpfd_filter()): the device's rule table, its armed mask, then
 * each policy whose rules fired, in order. Where the daemon's dispatch would return
 * actions, the engine does:
 *
 *   Hold                 the struct_ops returns -ECANCELED (the report never reaches readers)
 *   Schedule / Cancel    a per-policy bpf_timer; a pending flag and due time in the locked
 *                        state make a cancelled (or re-armed) timer a no-op when it fires
 *   Inject / Reinject /  an operation appended to the device's FIFO, run in order by the
 *   SendOutput /         device's bpf_wq (the only sleepable context): hid_bpf_input_report,
 *   SetFeature /         hid_bpf_hw_output_report, hid_bpf_hw_request, with a context from
 *   GetFeature           hid_bpf_allocate_context; a verify read-back runs reinit's on_reply
 *
 *   engine_event      struct_ops/hid_device_event  filter + each policy's on_event
 *   engine_timer_cb   bpf_timer callback            a policy's on_timer
 *   engine_wq_cb      bpf_wq callback               one I/O operation per run (re-kicks itself)
 *   engine_init       SEC("syscall")  once after load: bpf_timer_init / bpf_wq_init + callbacks
 *                                     (bpf_wq_init is -EPERM unless userspace holds the map fd)
 *   engine_trigger    SEC("syscall")  the daemon's "added" / "resume" (reinit's on = [...])
 *
 * One object per device (the daemon writes the device's hid_id into engine_ops and the policy
 * parameters into engine_cfg before attaching). Locking: all mutable policy state and the FIFO
 * live in one engine_state value under its bpf_spin_lock; each policy is handled in its own
 * bpf_loop() iteration (lock, decide, unlock, then start timers / the wq / write records, which
 * cannot happen under the lock). The armed mask is only touched by engine_event, which HID
 * serialises per device (driver_input_lock). Reports the engine injects come back to
 * engine_event with a non-zero `source` and pass untouched. Every step leaves a ring-buffer
 * record (struct engine_record) and counters (struct engine_stats) for `hidbpfd status` and
 * `monitor`; unmatched reports leave nothing and never wake the daemon, and only what the
 * engine did (a held report, I/O, an error) wakes it (see emit()) — and, while nobody
 * listens (engine_observed), only its failures do.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include "hid_compat.h"
/* hidbpfd.h without its part 3: the engine has its own rule table, armed mask and ring */
#define HIDBPFD_NO_FILTER
#include "hidbpfd.h"
#include "engine.h"

char LICENSE[] SEC("license") = "GPL";

#ifndef CLOCK_MONOTONIC
#define CLOCK_MONOTONIC 1
#endif
#define EBUSY 16

#include "wq_compat.h"

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

/* Records for the daemon; userspace may resize before load. */
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 20);
} engine_ring SEC(".maps");

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

static __always_inline void emit(__u32 hid_id, __u8 kind, __u32 policy, __s32 value,
				 __u32 detail, const __u8 *data, __u32 len)
{
	struct engine_record *rec;
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
	if (!data) {
		rec = bpf_ringbuf_reserve(&engine_ring, ENGINE_RECORD_HEAD, 0);
		if (rec) {
			FILL_RECORD(rec, hid_id, kind, policy, value, detail, 0);
			bpf_ringbuf_submit(rec, flags);
		}
	} else if (len <= ENGINE_RECORD_SHORT) {
		rec = bpf_ringbuf_reserve(&engine_ring, ENGINE_RECORD_HEAD + ENGINE_RECORD_SHORT, 0);
		if (rec) {
			FILL_RECORD(rec, hid_id, kind, policy, value, detail, len);
			__builtin_memcpy(rec->data, data, ENGINE_RECORD_SHORT);
			bpf_ringbuf_submit(rec, flags);
		}
	} else {
		rec = bpf_ringbuf_reserve(&engine_ring, sizeof(*rec), 0);
		if (rec) {
			FILL_RECORD(rec, hid_id, kind, policy, value, detail, len);
			__builtin_memcpy(rec->data, data, ENGINE_HELD_MAX);
			bpf_ringbuf_submit(rec, flags);
		}
	}
	if (!rec)
		STAT_ADD(ring_drops, 1);
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

/* ------------------------------------------------------------------ sequences */
/*
 * inject and reinit run a sequence of steps until a wait (inject.run_steps, Reinit._advance).
 * A step is one bpf_loop() iteration with the lock held only inside it: a loop under the lock
 * would make the verifier walk every path of every step (E2BIG). Nobody else advances the same
 * sequence meanwhile: inject marks it PS_ADVANCING (a trigger then only queues a copy, which
 * the running advance picks up), reinit numbers its attempts (a new trigger bumps `gen` and
 * the older advance stops at its next step).
 */
struct engine_adv {
	struct engine_config *cfg;
	struct engine_state *st;
	__u64 now;		/* the Schedule base: the triggering report's or timer's time */
	__u32 i;
	__u32 gen;
	__u32 done;		/* the sequence stopped (a wait, the end, or superseded) */
	__u32 _pad;
	struct engine_act a;
};

/* Step `pos` of policy i's sequence, under the state's lock (inject and reinit share it): a
 * wait schedules the policy's timer (its flags: `clear` off, `set` on) and stops the loop; a
 * report, output or feature joins the FIFO and the loop goes on. Returns the loop's stop. */
static __always_inline long next_step(struct engine_adv *v, struct engine_policy *p,
				      struct engine_pstate *ps, __u32 i, __u32 pos, __u32 clear,
				      __u32 set)
{
	struct engine_step *step = &p->steps[pos & (ENGINE_STEPS_MAX - 1)];

	ps->pos = pos + 1;
	if (step->kind == ENGINE_STEP_WAIT) {
		ps->flag = (ps->flag & ~clear) | set;
		schedule(ps, &v->a, v->now, step->wait_ns);
		return 1;
	}
	fifo_push(v->st, &v->a, OP_STEP, i, pos, NULL, step->len);
	return 0;
}

/* inject: the queue is the rest of the current copy of the sequence plus `extra` whole copies
 * behind it (a trigger during a running sequence queues one). */
static long inject_step(__u32 k, void *ctx)
{
	struct engine_adv *v = ctx;
	__u32 i = v->i & (ENGINE_POLICIES_MAX - 1), pos;
	struct engine_policy *p = &v->cfg->policies[i];
	struct engine_pstate *ps = &v->st->pol[i];
	long stop = 1;

	bpf_spin_lock(&v->st->lock);
	pos = ps->pos;
	if (!(ps->flag & PS_CUR)) {
		ps->flag &= ~PS_ADVANCING;
	} else if (pos >= p->nsteps) {
		if (ps->extra) {
			ps->extra--;
			ps->pos = 0;
			stop = 0;
		} else {
			ps->flag &= ~(PS_CUR | PS_ADVANCING);
		}
	} else {
		stop = next_step(v, p, ps, i, pos, PS_ADVANCING, PS_WAITING);
	}
	bpf_spin_unlock(&v->st->lock);
	v->done = stop;
	return stop;
}

/* reinit: send steps until a wait; at the end, verify or finish. */
static long reinit_step(__u32 k, void *ctx)
{
	struct engine_adv *v = ctx;
	__u32 i = v->i & (ENGINE_POLICIES_MAX - 1), pos;
	struct engine_policy *p = &v->cfg->policies[i];
	struct engine_pstate *ps = &v->st->pol[i];
	long stop = 1;

	bpf_spin_lock(&v->st->lock);
	pos = ps->pos;
	if (ps->gen != v->gen) {
		/* superseded by a newer trigger: its own advance carries on */
	} else if (pos >= p->nsteps) {
		if (p->flags & ENGINE_F_VERIFY)
			fifo_push(v->st, &v->a, OP_VERIFY, i, 0, NULL, p->verify_len);
		else
			ps->flag &= ~PS_ACTIVE;
	} else {
		stop = next_step(v, p, ps, i, pos, 0, 0);
	}
	bpf_spin_unlock(&v->st->lock);
	v->done = stop;
	return stop;
}

/* Run policy i's sequence (after unlocking); its decisions join `a`. */
static __always_inline void advance(struct engine_config *cfg, struct engine_state *st, __u32 i,
				    __u32 type, __u32 gen, __u64 now, struct engine_act *a)
{
	struct engine_adv v = {};

	v.cfg = cfg;
	v.st = st;
	v.now = now;
	v.i = i & (ENGINE_POLICIES_MAX - 1);
	v.gen = gen;
	if (type == ENGINE_INJECT) {
		bpf_loop(2 * ENGINE_STEPS_MAX + 2, inject_step, &v, 0);
		if (!v.done) {	/* never: the bound covers a copy's end and the next one's start */
			bpf_spin_lock(&st->lock);
			st->pol[v.i].flag &= ~PS_ADVANCING;
			bpf_spin_unlock(&st->lock);
		}
	} else {
		bpf_loop(ENGINE_STEPS_MAX + 1, reinit_step, &v, 0);
	}
	if (v.a.sched) {
		a->sched = 1;
		a->sched_ns = v.a.sched_ns;
	}
	a->kick |= v.a.kick;
	a->overflow += v.a.overflow;
}

/* reinit: a trigger (report, added, resume) restarts from the first step (Reinit._begin);
 * under the lock; returns the new attempt chain's number for advance(). */
static __always_inline __u32 reinit_begin(struct engine_pstate *ps, struct engine_act *a)
{
	ps->gen++;
	ps->pos = 0;
	ps->attempt = 0;
	ps->flag |= PS_ACTIVE;
	cancel(ps, a);
	return ps->gen;
}

/* ------------------------------------------------------------------ reports */

/* One report, shared with the per-policy bpf_loop() callback. */
struct engine_ev {
	struct engine_config *cfg;
	struct engine_state *st;
	__u64 now;
	__u32 matched;
	__u32 raw;
	__u32 held;
	__u32 len;
	__u8 rep[ENGINE_HELD_MAX];
};

/* bpf_loop() callback: policy i's on_event, if its rules fired. */
static long engine_on_event(__u32 i, void *ctx)
{
	struct engine_ev *c = ctx;
	struct engine_state *st = c->st;
	struct engine_act a = {};
	struct engine_policy *p;
	struct engine_pstate *ps;
	__u32 fired, off, cnt, rel, run = 0, gen = 0;

	if (i >= ENGINE_POLICIES_MAX)
		return 1;
	p = &c->cfg->policies[i];
	ps = &st->pol[i];
	off = p->rule_off & (HIDBPFD_RULES_MAX - 1);
	cnt = p->rule_count & 3;
	fired = (c->matched >> off) & ((1U << cnt) - 1);
	if (!fired)
		return 0;
	rel = (c->raw >> off) & 2;	/* release-guard: the release pattern matches */

	bpf_spin_lock(&st->lock);
	switch (p->type) {
	case ENGINE_DEFER: {
		/* hidbpfd.policies.defer.Defer.on_event */
		__u32 match = fired & 1, cancelled = fired & 2;
		__u32 flush = p->flags & ENGINE_F_FLUSH;

		if ((ps->flag & PS_HELD) && (cancelled || (match && c->held))) {
			if (!cancelled || flush)	/* flushed, or superseded: released */
				fifo_push(st, &a, OP_DATA, i, 0, ps->data, ps->held_len);
			ps->flag &= ~PS_HELD;
			cancel(ps, &a);
		}
		if (match && c->held) {
			__builtin_memcpy(ps->data, c->rep, ENGINE_HELD_MAX);
			ps->held_len = c->len;
			ps->flag |= PS_HELD;
			schedule(ps, &a, c->now, p->delay_ns);
		} else if (cancelled && c->held && flush) {
			fifo_push(st, &a, OP_DATA, i, 0, c->rep, c->len);
		}
		break;
	}
	case ENGINE_INJECT:
		/* hidbpfd.policies.inject.InjectPolicy.on_event */
		if (!(ps->flag & PS_CUR)) {
			ps->flag |= PS_CUR;
			ps->pos = 0;
		} else {
			ps->extra++;
		}
		if (!(ps->flag & (PS_WAITING | PS_ADVANCING))) {
			ps->flag |= PS_ADVANCING;
			run = 1;
		}
		break;
	case ENGINE_RELEASE_GUARD:
		/* hidbpfd.policies.release_guard.ReleaseGuard.on_event */
		if (rel) {
			if (ps->flag & PS_PRESSED) {
				ps->flag &= ~PS_PRESSED;
				cancel(ps, &a);
			}
		} else {
			ps->flag |= PS_PRESSED;
			schedule(ps, &a, c->now, p->delay_ns);
		}
		break;
	case ENGINE_REINIT:
		gen = reinit_begin(ps, &a);
		run = 1;
		break;
	}
	bpf_spin_unlock(&st->lock);
	if (run)
		advance(c->cfg, st, i, p->type, gen, c->now, &a);
	finish(c->cfg->hid_id, i, &a);
	return 0;
}

/*
 * int (*hid_device_event)(struct hid_bpf_ctx *ctx, enum hid_report_type report_type,
 *			   u64 source);
 * Injected reports (ours included) pass untouched: hidbpfd_event_report(). The daemon only
 * attaches the engine where the kernel has `source` (it refuses otherwise).
 */
SEC("struct_ops/hid_device_event")
int engine_event(unsigned long long *ctx)
{
	struct hidbpfd_scan s;
	struct engine_ev c = {};
	__u32 zero = 0, len, n, npol;
	__u8 *data;

	data = hidbpfd_event_report(ctx, 1, &len);
	if (!data)
		return 0;
	c.cfg = bpf_map_lookup_elem(&engine_cfg, &zero);
	c.st = bpf_map_lookup_elem(&engine_state, &zero);
	if (!c.cfg || !c.st)
		return 0;
	c.now = bpf_ktime_get_ns();
	hidbpfd_scan_report(&s, &c.cfg->rules, data, len, c.st->armed, c.st->armed_until, c.now);
	if (!s.matched)
		return 0;	/* nobody hears of it, nothing is written */
	if (s.arm)
		hidbpfd_arm(&c.cfg->rules, s.matched, c.st->armed_until, c.now);
	c.st->armed = (c.st->armed & ~s.disarm) | s.arm;

	c.matched = s.matched;
	c.raw = s.raw;
	c.len = len;
	c.held = s.hold && len <= ENGINE_HELD_MAX;
	n = len;
	if (n > ENGINE_HELD_MAX)
		n = ENGINE_HELD_MAX;
	barrier_var(n);
	if (n > ENGINE_HELD_MAX)
		return 0;
	if (bpf_probe_read_kernel(c.rep, n, data))
		c.held = 0;
	STAT_ADD(matched, 1);
	if (c.held)
		STAT_ADD(held, 1);
	emit(c.cfg->hid_id, c.held ? ENGINE_REC_HOLD : ENGINE_REC_PASS, ENGINE_NO_POLICY, 0,
	     s.matched, c.rep, len);

	npol = c.cfg->npolicies;
	if (npol > ENGINE_POLICIES_MAX)
		npol = ENGINE_POLICIES_MAX;
	bpf_loop(npol, engine_on_event, &c, 0);
	return c.held ? -HIDBPFD_HOLD_ERRNO : 0;
}

SEC(".struct_ops")
struct hid_bpf_ops engine_ops = {
	.hid_id = 0,
	.hid_device_event = (void *)engine_event,
};

/* ------------------------------------------------------------------ timers */

/* A policy's timer fired: its on_timer, unless it was cancelled or re-armed since. */
static int engine_timer_cb(void *map, int *key, struct engine_async *e)
{
	struct engine_act a = {};
	struct engine_config *cfg;
	struct engine_state *st;
	struct engine_policy *p;
	struct engine_pstate *ps;
	__u32 zero = 0, i = *key, ran = 0, run = 0, gen = 0;
	__u64 now = bpf_ktime_get_ns();

	cfg = bpf_map_lookup_elem(&engine_cfg, &zero);
	st = bpf_map_lookup_elem(&engine_state, &zero);
	if (!cfg || !st || i >= ENGINE_POLICIES_MAX)
		return 0;
	p = &cfg->policies[i];
	ps = &st->pol[i];

	bpf_spin_lock(&st->lock);
	if (ps->tpending && now >= ps->tdue) {
		ps->tpending = 0;
		ran = 1;
		switch (p->type) {
		case ENGINE_DEFER:	/* the delay expired with nothing cancelling */
			if (ps->flag & PS_HELD) {
				fifo_push(st, &a, OP_DATA, i, 0, ps->data, ps->held_len);
				ps->flag &= ~PS_HELD;
			}
			break;
		case ENGINE_INJECT:	/* a wait is over */
			ps->flag = (ps->flag & ~PS_WAITING) | PS_ADVANCING;
			run = 1;
			break;
		case ENGINE_RELEASE_GUARD:	/* no release in time: inject one */
			ps->flag &= ~PS_PRESSED;
			fifo_push(st, &a, OP_STEP, i, 0, NULL, p->steps[0].len);
			break;
		case ENGINE_REINIT:	/* a wait between steps is over */
			gen = ps->gen;
			run = 1;
			break;
		}
	}
	bpf_spin_unlock(&st->lock);
	if (ran) {
		STAT_ADD(timers, 1);
		emit(cfg->hid_id, ENGINE_REC_TIMER, i, 0, 0, NULL, 0);
		if (run)
			advance(cfg, st, i, p->type, gen, now, &a);
		finish(cfg->hid_id, i, &a);
	}
	return 0;
}

/* ------------------------------------------------------------------ I/O (the wq) */

/* Does the verify read-back `got` (n bytes, or -errno; ENGINE_HELD_MAX readable) match? */
static __always_inline int verify_matches(const struct hidbpfd_rule *r, const __u8 *got, int n)
{
	__u64 head[HIDBPFD_PATTERN_MAX / 8];

	if (n < 0)
		return 0;
	__builtin_memcpy(head, got, sizeof(head));
	return hidbpfd_rule_matches(r, head, n);
}

/* The device's sleepable worker: one queued operation per run, in order; re-kicked while
 * more are queued (a work item never runs twice at once, so the order holds). */
static int engine_wq_cb(void *map, int *key, void *value)
{
	struct engine_act a = {};
	struct engine_op op __attribute__((aligned(8)));	/* data in whole words */
	struct engine_config *cfg;
	struct engine_state *st;
	struct engine_policy *p;
	struct engine_step *step;
	struct hid_bpf_ctx *hctx;
	struct engine_async *self;
	__u32 zero = 0, i, kind, len, run = 0, gen = 0;
	int have, more, ret = 0, wq = ENGINE_ASYNC_WQ;
	__u8 rec;

	cfg = bpf_map_lookup_elem(&engine_cfg, &zero);
	st = bpf_map_lookup_elem(&engine_state, &zero);
	if (!cfg || !st)
		return 0;
	bpf_spin_lock(&st->lock);
	have = st->head != st->tail;
	if (have) {
		__builtin_memcpy(&op, &st->fifo[st->head & (ENGINE_FIFO_MAX - 1)], sizeof(op));
		st->head++;
	}
	more = st->head != st->tail;
	bpf_spin_unlock(&st->lock);
	if (!have)
		return 0;
	STAT_ADD(wq_runs, 1);

	i = op.policy & (ENGINE_POLICIES_MAX - 1);
	p = &cfg->policies[i];
	kind = ENGINE_STEP_INPUT;
	len = op.len;
	if (op.kind == OP_STEP) {
		step = &p->steps[op.step & (ENGINE_STEPS_MAX - 1)];
		kind = step->kind;
		len = step->len;
		__builtin_memcpy(op.data, step->data, ENGINE_SEND_MAX);
	} else if (op.kind == OP_VERIFY) {
		kind = 0;
		len = p->verify_len;
		__builtin_memset(op.data, 0, sizeof(op.data));
		op.data[0] = p->verify_id;
	}
	if (len > ENGINE_HELD_MAX)
		len = ENGINE_HELD_MAX;
	if (len < 1)
		len = 1;

	hctx = hid_bpf_allocate_context(cfg->hid_id);
	if (!hctx) {
		STAT_ADD(errors, 1);
		emit(cfg->hid_id, ENGINE_REC_NO_CONTEXT, i, -19 /* ENODEV */, op.kind, NULL, 0);
		goto out;
	}
	switch (kind) {
	case ENGINE_STEP_INPUT:
		ret = hid_bpf_input_report(hctx, HID_INPUT_REPORT, op.data, len);
		rec = ENGINE_REC_INJECT;
		break;
	case ENGINE_STEP_OUTPUT:
		ret = hid_bpf_hw_output_report(hctx, op.data, len);
		rec = ENGINE_REC_OUTPUT;
		break;
	case ENGINE_STEP_FEATURE:
		ret = hid_bpf_hw_request(hctx, op.data, len, HID_FEATURE_REPORT,
					 HID_REQ_SET_REPORT);
		rec = ENGINE_REC_FEATURE;
		break;
	default:
		ret = hid_bpf_hw_request(hctx, op.data, len, HID_FEATURE_REPORT,
					 HID_REQ_GET_REPORT);
		rec = ENGINE_REC_REPLY;
		break;
	}
	hid_bpf_release_context(hctx);

	if (rec == ENGINE_REC_REPLY) {
		struct engine_pstate *ps = &st->pol[i];
		int ok = verify_matches(&p->verify, op.data, ret);

		STAT_ADD(get_feature, 1);
		if (ret < 0)
			STAT_ADD(errors, 1);
		emit(cfg->hid_id, ENGINE_REC_REPLY, i, ret, ok, op.data, ret > 0 ? ret : 0);
		/* Reinit.on_reply: done, or try the whole sequence again, or give up */
		bpf_spin_lock(&st->lock);
		if (ps->flag & PS_ACTIVE) {
			if (!ok && ps->attempt < p->retries) {
				ps->attempt++;
				ps->pos = 0;
				gen = ps->gen;
				run = 1;
			} else {
				ps->flag &= ~PS_ACTIVE;
			}
		}
		bpf_spin_unlock(&st->lock);
		if (run)
			advance(cfg, st, i, ENGINE_REINIT, gen, bpf_ktime_get_ns(), &a);
		finish(cfg->hid_id, i, &a);
	} else {
		if (ret < 0)
			STAT_ADD(errors, 1);
		else if (rec == ENGINE_REC_INJECT)
			STAT_ADD(injected, 1);
		else if (rec == ENGINE_REC_OUTPUT)
			STAT_ADD(output, 1);
		else
			STAT_ADD(feature, 1);
		emit(cfg->hid_id, rec, i, ret, 0, op.data, len);
	}
out:
	if (more) {
		self = bpf_map_lookup_elem(&engine_async, &wq);
		if (self)
			bpf_wq_start(&self->wq, 0);
	}
	return 0;
}

/* ------------------------------------------------------------------ from the daemon */

static __always_inline int init_timer(int key)
{
	struct engine_async *e = bpf_map_lookup_elem(&engine_async, &key);
	int err;

	if (!e)
		return -2;	/* ENOENT */
	err = bpf_timer_init(&e->timer, &engine_async, CLOCK_MONOTONIC);
	if (err && err != -EBUSY)
		return err;
	return bpf_timer_set_callback(&e->timer, engine_timer_cb);
}

SEC("syscall")
int engine_init(void *ctx)
{
	struct engine_async *e;
	int key, err, i;

	/* unrolled: a counted loop around a stack key confuses the verifier's loop check */
#pragma clang loop unroll(full)
	for (i = 0; i < ENGINE_POLICIES_MAX; i++) {
		err = init_timer(i);
		if (err)
			return err;
	}
	key = ENGINE_ASYNC_WQ;
	e = bpf_map_lookup_elem(&engine_async, &key);
	if (!e)
		return -2;
	err = bpf_wq_init(&e->wq, &engine_async, 0);
	if (err && err != -EBUSY)
		return err;
	return hidbpfd_wq_set_callback(&e->wq, engine_wq_cb, 0);
}

struct engine_trig {
	struct engine_config *cfg;
	struct engine_state *st;
	__u64 now;
	__u32 flag;
};

static long engine_on_trigger(__u32 i, void *ctx)
{
	struct engine_trig *t = ctx;
	struct engine_act a = {};
	struct engine_policy *p;
	__u32 gen;

	if (i >= ENGINE_POLICIES_MAX)
		return 1;
	p = &t->cfg->policies[i];
	if (p->type != ENGINE_REINIT || !(p->flags & t->flag))
		return 0;
	bpf_spin_lock(&t->st->lock);
	gen = reinit_begin(&t->st->pol[i], &a);
	bpf_spin_unlock(&t->st->lock);
	advance(t->cfg, t->st, i, ENGINE_REINIT, gen, t->now, &a);
	finish(t->cfg->hid_id, i, &a);
	return 0;
}

/* The device was added / the system resumed: Policy.on_device for every policy. */
SEC("syscall")
int engine_trigger(struct engine_trigger *ctx)
{
	struct engine_trig t = {};
	__u32 zero = 0, npol;

	t.cfg = bpf_map_lookup_elem(&engine_cfg, &zero);
	t.st = bpf_map_lookup_elem(&engine_state, &zero);
	if (!t.cfg || !t.st)
		return -2;
	if (ctx->what == ENGINE_TRIGGER_ADDED)
		t.flag = ENGINE_F_ON_ADDED;
	else if (ctx->what == ENGINE_TRIGGER_RESUME)
		t.flag = ENGINE_F_ON_RESUME;
	else
		return -22;	/* EINVAL */
	t.now = bpf_ktime_get_ns();
	npol = t.cfg->npolicies;
	if (npol > ENGINE_POLICIES_MAX)
		npol = ENGINE_POLICIES_MAX;
	bpf_loop(npol, engine_on_trigger, &t, 0);
	return 0;
}
