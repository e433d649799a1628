// SPDX-License-Identifier: GPL-2.0-only
/*
 * engine_seq.h - the sequences of inject and reinit: one step per bpf_loop()
 *   iteration (next_step(), inject_step(), reinit_step()), advance(), reinit_begin().
 *
 * A part of engine.bpf.c, included once from it at this point of the file (it uses what the
 * parts before it define): not a header of its own.
 */
#ifndef __HIDBPFD_ENGINE_SEQ_H
#define __HIDBPFD_ENGINE_SEQ_H

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

#endif /* __HIDBPFD_ENGINE_SEQ_H */
