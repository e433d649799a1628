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
 *
 * This file holds the programs' entry points (reports, timers, the daemon's syscalls) and the
 * policies' decisions; the parts it includes hold the rest: engine_state.h (state and maps),
 * engine_act.h (records, counters, Schedule/Cancel, the FIFO push, finish()), engine_seq.h
 * (inject's and reinit's sequences, advance()), engine_wq.h (the wq that runs the FIFO).
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

/* The engine's parts, each building on the ones before it (engine_wq.h comes further down): */
#include "engine_state.h"	/* per-policy state, the FIFO, the maps */
#include "engine_act.h"		/* carrying out a decision: records, counters, timers, the FIFO */
#include "engine_seq.h"		/* inject's and reinit's sequences of steps */

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
	hidbpfd_scan_report(&s, &c.cfg->rules, data, len, c.st->armed);
	if (!s.matched)
		return 0;	/* nobody hears of it, nothing is written */
	c.st->armed = (c.st->armed & ~s.disarm) | s.arm;

	c.now = bpf_ktime_get_ns();
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

/* I/O: the device's bpf_wq runs the FIFO in order */
#include "engine_wq.h"

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
