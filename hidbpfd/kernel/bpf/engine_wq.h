// SPDX-License-Identifier: GPL-2.0-only
/*
 * engine_wq.h - the in-kernel engine's I/O: the device's bpf_wq runs the FIFO
 *   in order (input reports, output reports, feature requests, reinit's verify read-back).
 *
 * A part of engine.bpf.c, included once from it at this point of the file (it uses what the
 * parts before it define): not a header of its own.
 */
#ifndef __HIDBPFD_ENGINE_WQ_H
#define __HIDBPFD_ENGINE_WQ_H

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

#endif /* __HIDBPFD_ENGINE_WQ_H */
