/* SPDX-License-Identifier: (GPL-2.0-only OR MIT) */
/*
 * hidbpfd/wq_queue.h - part of the in-kernel engine of <hidbpfd/api.h> (api_wq.h): each
 * device's ordered queue run by its bpf_wq, the keyed slots whose bpf_timer feeds it, and the
 * request every API call goes through. Included by api_wq.h only.
 */
#ifndef HIDBPFD_WQ_QUEUE_H
#define HIDBPFD_WQ_QUEUE_H

#ifndef HIDBPFD_API_WQ_H
#error "include <hidbpfd/api.h>, not <hidbpfd/wq_queue.h>"
#endif

/* ------------------------------------------------------------------ the device's queue */

static int hidbpfd__dev_wq_cb(void *map, int *key, void *value);

/* The device's state, created on first use: NULL if the map is full or the wq cannot be
 * initialised (e.g. -EPERM: no process or pin holds the object's maps any more). */
static __always_inline struct hidbpfd__dev *hidbpfd__dev_get(__u32 hid_id)
{
	struct hidbpfd__dev *d;
	__u32 zero = 0;
	void *z;
	int err;

	d = bpf_map_lookup_elem(&hidbpfd_devs, &hid_id);
	if (!d) {
		z = bpf_map_lookup_elem(&hidbpfd_zero, &zero);
		if (!z)
			return NULL;
		bpf_map_update_elem(&hidbpfd_devs, &hid_id, z, BPF_NOEXIST);
		d = bpf_map_lookup_elem(&hidbpfd_devs, &hid_id);
		if (!d)
			return NULL;
	}
	if (!d->init) {
		err = bpf_wq_init(&d->wq, &hidbpfd_devs, 0);
		if (err && err != -HIDBPFD__EBUSY)
			return NULL;
		if (hidbpfd__wq_set_callback(&d->wq, hidbpfd__dev_wq_cb))
			return NULL;
		d->init = 1;
	}
	return d;
}

/* Append `op` to the device's queue and wake its wq if idle: 0, or -ENOSPC (queue full; the
 * op's buffer is then the caller's to free). */
static __always_inline int hidbpfd__push(struct hidbpfd__dev *d, const struct hidbpfd__op *op)
{
	struct hidbpfd__op o = *op;
	__u32 kick = 0, full;

	bpf_spin_lock(&d->lock);
	full = d->tail - d->head >= HIDBPFD_QUEUE_MAX;
	if (!full) {
		d->queue[d->tail & (HIDBPFD_QUEUE_MAX - 1)] = o;
		d->tail++;
		if (!d->running) {
			d->running = 1;
			kick = 1;
		}
	}
	bpf_spin_unlock(&d->lock);
	if (full)
		return -HIDBPFD__ENOSPC;
	if (kick)
		bpf_wq_start(&d->wq, 0);
	return 0;
}

/* Push, and on failure give the op's buffer back and count it. */
static __always_inline int hidbpfd__queue(struct hidbpfd__dev *d, const struct hidbpfd__op *op)
{
	int err = hidbpfd__push(d, op);

	if (err) {
		hidbpfd__buf_free(d, op->buf);
		__sync_fetch_and_add(&d->refused, 1);
	}
	return err;
}

/* The head request is done: drop it, and wake the wq for the next one (else idle). */
static __always_inline void hidbpfd__advance(struct hidbpfd__dev *d, __u32 buf)
{
	__u32 more;

	bpf_spin_lock(&d->lock);
	if (buf < HIDBPFD_POOL_MAX)
		d->used &= ~(1ULL << buf);
	d->head++;
	more = d->head != d->tail;
	if (!more)
		d->running = 0;
	bpf_spin_unlock(&d->lock);
	__sync_fetch_and_add(&d->done, 1);
	if (more)
		bpf_wq_start(&d->wq, 0);
}

/* The device's wq: runs the head request (sleepable), then wakes itself for the next. */
static int hidbpfd__dev_wq_cb(void *map, int *key, void *value)
{
	struct hidbpfd__dev *d = value;
	struct hidbpfd__slot_key sk = {};
	struct hidbpfd__slot *s;
	struct hid_bpf_ctx *ctx;
	struct hidbpfd__op op;
	__u32 hid_id = *(__u32 *)key, have, size, buf;
	__u8 *data;
	int ret = 0;

	bpf_spin_lock(&d->lock);
	have = d->head != d->tail;
	if (have)
		op = d->queue[d->head & (HIDBPFD_QUEUE_MAX - 1)];
	else
		d->running = 0;
	bpf_spin_unlock(&d->lock);
	if (!have)
		return 0;

	if (op.kind == HIDBPFD__OP_CALL) {
		/* hand the queue to the slot's wq (its HIDBPFD_CALLBACK); it hands it back */
		sk.hid_id = hid_id;
		sk.key = op.key;
		s = bpf_map_lookup_elem(&hidbpfd_slots, &sk);
		if (s && !bpf_wq_start(&s->wq, 0))
			return 0;
		__sync_fetch_and_add(&d->failed, 1);
		d->last_error = -HIDBPFD__ENOENT;
		hidbpfd__advance(d, HIDBPFD__NO_BUF);
		return 0;
	}

	buf = op.buf & (HIDBPFD_POOL_MAX - 1);
	data = d->data[buf];
	size = op.size;
	if (size > HIDBPFD_DATA_MAX)
		size = HIDBPFD_DATA_MAX;
	if (size < 1)
		size = 1;
	ctx = hid_bpf_allocate_context(hid_id);
	if (!ctx) {
		ret = -HIDBPFD__ENODEV;
	} else {
		switch (op.kind) {
		case HIDBPFD__OP_INJECT:
			/* hid_device_event sees it with this task: hidbpfd_defer lets it pass */
			d->injecting = bpf_get_current_task();
			ret = hid_bpf_try_input_report(ctx, HID_INPUT_REPORT, data, size);
			if (ret == -HIDBPFD__EBUSY)	/* a report is being processed: wait */
				ret = hid_bpf_input_report(ctx, HID_INPUT_REPORT, data, size);
			d->injecting = 0;
			break;
		case HIDBPFD__OP_OUTPUT:
			ret = hid_bpf_hw_output_report(ctx, data, size);
			break;
		case HIDBPFD__OP_FEATURE:
			ret = hid_bpf_hw_request(ctx, data, size, HID_FEATURE_REPORT,
						 HID_REQ_SET_REPORT);
			break;
		default:
			ret = -HIDBPFD__EINVAL;
			break;
		}
		hid_bpf_release_context(ctx);
	}
	if (ret < 0) {
		__sync_fetch_and_add(&d->failed, 1);
		d->last_error = ret;
	}
	hidbpfd__advance(d, op.buf);
	return 0;
}

/* ------------------------------------------------------------------ slots (delays, keys) */

/* A slot's timer fired: queue its request, unless it was cancelled or re-armed since. */
static int hidbpfd__timer_cb(void *map, struct hidbpfd__slot_key *k, struct hidbpfd__slot *s)
{
	struct hidbpfd__dev *d;
	struct hidbpfd__op op;
	__u32 due = 0, hid_id = k->hid_id;
	__u64 now = bpf_ktime_get_ns();

	bpf_spin_lock(&s->lock);
	if (s->pending && now >= s->due) {
		s->pending = 0;
		op = s->op;
		due = 1;
	}
	bpf_spin_unlock(&s->lock);
	if (!due)
		return 0;
	d = bpf_map_lookup_elem(&hidbpfd_devs, &hid_id);
	if (d)
		hidbpfd__queue(d, &op);
	return 0;
}

/* The slot for (hid_id, key, anon), created and initialised on first use; NULL if the map is
 * full or the timer cannot be initialised. */
static __always_inline struct hidbpfd__slot *hidbpfd__slot_get(__u32 hid_id, __u32 key, __u32 anon)
{
	struct hidbpfd__slot_key sk = { .hid_id = hid_id, .key = key, .anon = anon };
	struct hidbpfd__slot zero = {}, *s;
	int err;

	s = bpf_map_lookup_elem(&hidbpfd_slots, &sk);
	if (!s) {
		bpf_map_update_elem(&hidbpfd_slots, &sk, &zero, BPF_NOEXIST);
		s = bpf_map_lookup_elem(&hidbpfd_slots, &sk);
		if (!s)
			return NULL;
	}
	if (!s->init) {
		err = bpf_timer_init(&s->timer, &hidbpfd_slots, CLOCK_MONOTONIC);
		if (err && err != -HIDBPFD__EBUSY)
			return NULL;
		if (bpf_timer_set_callback(&s->timer, hidbpfd__timer_cb))
			return NULL;
		err = bpf_wq_init(&s->wq, &hidbpfd_slots, 0);
		if (err && err != -HIDBPFD__EBUSY)
			return NULL;
		s->init = 1;
	}
	return s;
}

/*
 * Arm slot `s` with `op`, due in delay_ms (0: queued now). A request already pending there
 * is replaced: one with data (a held report, an inject/output/feature) is queued first, so
 * nothing is lost; a call is dropped (bpf_timer semantics). 0 or -errno; on failure `op`'s
 * buffer is still the caller's.
 */
static __always_inline int hidbpfd__arm(struct hidbpfd__dev *d, struct hidbpfd__slot *s,
					const struct hidbpfd__op *op, __u32 delay_ms)
{
	struct hidbpfd__op o = *op, old = {};
	__u64 delay = (__u64)delay_ms * 1000000ULL, due = bpf_ktime_get_ns() + delay;
	__u32 had;
	int err = 0;

	bpf_spin_lock(&s->lock);
	had = s->pending;
	if (had)
		old = s->op;
	s->pending = delay ? 1 : 0;
	if (delay) {
		s->op = o;
		s->due = due;
	}
	bpf_spin_unlock(&s->lock);
	if (had) {
		if (old.kind == HIDBPFD__OP_CALL)
			hidbpfd__buf_free(d, old.buf);
		else
			hidbpfd__queue(d, &old);
	}
	if (!delay)
		return hidbpfd__push(d, &o);
	err = bpf_timer_start(&s->timer, delay, 0);
	if (err) {
		bpf_spin_lock(&s->lock);
		s->pending = 0;
		bpf_spin_unlock(&s->lock);
	}
	return err;
}

/* The device a context belongs to. */
static __always_inline __u32 hidbpfd__hid_id(struct hid_bpf_ctx *hctx)
{
	return hctx->hid->id;
}

/* Is this report one our wq is injecting right now (it comes back through hid_device_event
 * in the wq's own task)? */
static __always_inline int hidbpfd__own_report(struct hidbpfd__dev *d)
{
	__u64 t = d->injecting;

	return t && t == bpf_get_current_task();
}

/*
 * One request: `kind` with `size` bytes of `data` (copied now), under `key` (keyed) or an
 * anonymous slot (delay > 0, no key) or none (delay 0, no key). 0 or -errno.
 */
static __always_inline int hidbpfd__request(struct hid_bpf_ctx *hctx, __u32 kind, __u32 keyed,
					    __u32 key, const void *data, __u32 size,
					    __u32 delay_ms)
{
	struct hidbpfd__op op = { .kind = kind, .buf = HIDBPFD__NO_BUF, .size = size };
	struct hidbpfd__slot *s;
	struct hidbpfd__dev *d;
	__u32 hid_id, anon = 0, n;
	int err;

	if (!hctx || !data)
		return -HIDBPFD__EINVAL;
	if (size == 0 || size > HIDBPFD_DATA_MAX)
		return -HIDBPFD__E2BIG;
	hid_id = hidbpfd__hid_id(hctx);
	d = hidbpfd__dev_get(hid_id);
	if (!d)
		return -HIDBPFD__ENOMEM;
	err = hidbpfd__buf_fill(d, data, size);
	if (err < 0)
		goto refused;
	op.buf = err;
	if (!keyed && !delay_ms) {
		err = hidbpfd__push(d, &op);
	} else {
		if (!keyed) {
			/* a slot of its own, from a small ring: refused while that one waits */
			n = __sync_fetch_and_add(&d->anon, 1);
			key = n & (HIDBPFD_ANON_MAX - 1);
			anon = 1;
		}
		s = hidbpfd__slot_get(hid_id, key, anon);
		if (!s) {
			err = -HIDBPFD__ENOSPC;
		} else if (anon && s->pending) {
			err = -HIDBPFD__EBUSY;
		} else {
			err = hidbpfd__arm(d, s, &op, delay_ms);
		}
	}
	if (err) {
		hidbpfd__buf_free(d, op.buf);
		goto refused;
	}
	__sync_fetch_and_add(&d->requests, 1);
	return 0;
refused:
	__sync_fetch_and_add(&d->refused, 1);
	return err;
}

#endif /* HIDBPFD_WQ_QUEUE_H */
