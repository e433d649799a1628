/* SPDX-License-Identifier: (GPL-2.0-only OR MIT) */
/*
 * hidbpfd/api_wq.h - the in-kernel engine of <hidbpfd/api.h>: the same calls, run by the
 * kernel on bpf_timer -> bpf_wq, no daemon involved. Included by api.h when the program is
 * compiled with -DHIDBPFD_ENGINE_KERNEL; not meant to be included on its own. Reference:
 * docs/programs-kernel.md.
 *
 * What runs where (per program object; every map below is the object's own):
 *
 *   hid_device_event ─ hidbpfd_defer/inject/output/set_feature/call/cancel
 *        │  delay 0: the request goes to the device's queue at once
 *        │  delay > 0: it waits in a slot (one per key: a bpf_timer, a bpf_wq, the request)
 *        ▼
 *   bpf_timer (softirq) ─ the slot's request goes to the device's queue
 *        ▼
 *   the device's bpf_wq (sleepable) ─ runs the queue in order, one request per run:
 *        inject      hid_bpf_try_input_report (hid_bpf_input_report if the device is busy)
 *        output      hid_bpf_hw_output_report
 *        set_feature hid_bpf_hw_request(HID_FEATURE_REPORT, HID_REQ_SET_REPORT)
 *        call        hands over to the slot's bpf_wq, whose callback (HIDBPFD_CALLBACK)
 *                    runs the body and then hands the queue back: calls keep their place
 *
 * Report bytes live in a per-device pool of HIDBPFD_POOL_MAX buffers of HIDBPFD_DATA_MAX
 * bytes; a buffer belongs to exactly one owner at a time (the caller filling it, a slot
 * holding it, the queue), and ownership moves under a lock, so no report is copied twice
 * and none is overwritten while it waits.
 *
 * A kernel without what this needs (bpf_wq: Linux 6.10; hid_bpf_try_input_report: 6.13;
 * bpf_wq_set_callback: 7.0, or bpf_wq_set_callback_impl with -DHIDBPFD_WQ_CALLBACK_IMPL
 * before it) refuses the object at load: the kfuncs are declared without __weak, so libbpf
 * stops with "extern (func ksym) 'NAME': not found in kernel or module BTFs".
 *
 * Files: this one (limits, kernel interface, the API calls), wq_state.h (the maps and the
 * report pool), wq_queue.h (the device's queue and wq, the keyed slots, the common request).
 */
#ifndef HIDBPFD_API_WQ_H
#define HIDBPFD_API_WQ_H

#ifndef HIDBPFD_DATA_MAX
#error "include <hidbpfd/api.h>, not <hidbpfd/api_wq.h>"
#endif

/* ------------------------------------------------------------------ limits */

#ifndef HIDBPFD_DEVICES_MAX
#define HIDBPFD_DEVICES_MAX	8	/* devices one object serves */
#endif
#ifndef HIDBPFD_KEYS_MAX
#define HIDBPFD_KEYS_MAX	256	/* keys in use (all devices), anonymous slots included */
#endif
#define HIDBPFD_QUEUE_MAX	64	/* requests waiting per device for the wq (power of 2) */
#define HIDBPFD_POOL_MAX	32	/* reports held or queued per device (power of 2, <= 64) */
#define HIDBPFD_ANON_MAX	32	/* delayed requests without a key pending per device (2^n) */

/* ------------------------------------------------------------------ kernel interface */

#ifndef CLOCK_MONOTONIC
#define CLOCK_MONOTONIC 1
#endif

/*
 * Declared without __weak on purpose: a kernel that lacks one refuses the object at load,
 * naming it (see the top of this file). Prototypes as in drivers/hid/bpf/hid_bpf_dispatch.c
 * and kernel/bpf/helpers.c.
 */
extern __u8 *hid_bpf_get_data(struct hid_bpf_ctx *ctx, unsigned int offset,
			      const size_t __sz) __ksym;
extern struct hid_bpf_ctx *hid_bpf_allocate_context(unsigned int hid_id) __ksym;
extern void hid_bpf_release_context(struct hid_bpf_ctx *ctx) __ksym;
extern int hid_bpf_hw_request(struct hid_bpf_ctx *ctx, __u8 *data, size_t buf__sz,
			      enum hid_report_type type, enum hid_class_request reqtype) __ksym;
extern int hid_bpf_hw_output_report(struct hid_bpf_ctx *ctx, __u8 *buf, size_t buf__sz) __ksym;
extern int hid_bpf_input_report(struct hid_bpf_ctx *ctx, enum hid_report_type type, __u8 *data,
				size_t buf__sz) __ksym;
extern int hid_bpf_try_input_report(struct hid_bpf_ctx *ctx, enum hid_report_type type,
				    __u8 *data, size_t buf__sz) __ksym;
extern int bpf_wq_init(struct bpf_wq *wq, void *p__map, unsigned int flags) __ksym;
extern int bpf_wq_start(struct bpf_wq *wq, unsigned int flags) __ksym;
#ifdef HIDBPFD_WQ_CALLBACK_IMPL	/* Linux 6.10 - 6.x */
extern int bpf_wq_set_callback_impl(struct bpf_wq *wq,
				    int (callback_fn)(void *map, int *key, void *value),
				    unsigned int flags__k, void *aux__ign) __ksym;
#define hidbpfd__wq_set_callback(wq, cb) bpf_wq_set_callback_impl(wq, cb, 0, NULL)
#else				/* Linux 7.0+ */
extern int bpf_wq_set_callback(struct bpf_wq *wq,
			       int (callback_fn)(void *map, int *key, void *value),
			       unsigned int flags) __ksym;
#define hidbpfd__wq_set_callback(wq, cb) bpf_wq_set_callback(wq, cb, 0)
#endif

/* errno values (no libc headers in BPF programs) */
#define HIDBPFD__ENOENT		2
#define HIDBPFD__EFAULT		14
#define HIDBPFD__EBUSY		16
#define HIDBPFD__ENODEV		19
#define HIDBPFD__EINVAL		22
#define HIDBPFD__ENOSPC		28
#define HIDBPFD__E2BIG		7
#define HIDBPFD__ENOMEM		12

#include "wq_state.h"
#include "wq_queue.h"

/* ------------------------------------------------------------------ the API */

/*
 * hidbpfd_defer - inside hid_device_event: hold the current report, re-inject it after
 * delay_ms unless hidbpfd_cancel(hctx, key) comes first. The same key again re-arms: the
 * report held before is re-injected at once (first), the new one is held.
 * Returns what hid_device_event returns: -1 (the report is dropped now) when held, 0 (the
 * report passes unchanged) when it cannot be held: longer than HIDBPFD_DATA_MAX, the pool,
 * queue or slots full, the kernel refusing the timer (e.g. -EPERM once no process or pin
 * holds the object's maps). A report this engine re-injects passes (0), never held twice.
 */
static __always_inline int hidbpfd_defer(struct hid_bpf_ctx *hctx, __u32 key, __u32 delay_ms)
{
	struct hidbpfd__dev *d;
	__u32 size;
	__u8 *data;

	if (!hctx)
		return 0;
	d = hidbpfd__dev_get(hidbpfd__hid_id(hctx));
	if (!d || hidbpfd__own_report(d))
		return 0;
	size = hctx->size;
	if (size == 0 || size > HIDBPFD_DATA_MAX)
		return 0;
	data = hid_bpf_get_data(hctx, 0, 1);
	if (!data)
		return 0;
	return hidbpfd__request(hctx, HIDBPFD__OP_INJECT, 1, key, data, size, delay_ms) ? 0 : -1;
}

/*
 * hidbpfd_cancel - drop the work pending under key (a held report with it): its timer is
 * stopped and its data freed. Work whose delay is over is already queued and runs.
 * Returns 0, or -ENOENT when nothing was pending (also for a report this engine is
 * re-injecting: its own injections never cancel anything).
 */
static __always_inline int hidbpfd_cancel(struct hid_bpf_ctx *hctx, __u32 key)
{
	struct hidbpfd__slot_key sk = {};
	struct hidbpfd__slot *s;
	struct hidbpfd__dev *d;
	struct hidbpfd__op old = {};
	__u32 had;

	if (!hctx)
		return -HIDBPFD__EINVAL;
	sk.hid_id = hidbpfd__hid_id(hctx);
	sk.key = key;
	d = bpf_map_lookup_elem(&hidbpfd_devs, &sk.hid_id);
	s = bpf_map_lookup_elem(&hidbpfd_slots, &sk);
	if (!d || !s || hidbpfd__own_report(d))
		return -HIDBPFD__ENOENT;
	bpf_spin_lock(&s->lock);
	had = s->pending;
	if (had)
		old = s->op;
	s->pending = 0;
	bpf_spin_unlock(&s->lock);
	if (!had)
		return -HIDBPFD__ENOENT;
	bpf_timer_cancel(&s->timer);	/* -EDEADLK from its own callback: pending is 0 anyway */
	hidbpfd__buf_free(d, old.buf);
	return 0;
}

/*
 * hidbpfd_inject / _output / _set_feature - an input report to inject, an output report to
 * send (hid_bpf_hw_output_report), a feature report to set (hid_bpf_hw_request SET_REPORT;
 * data[0] is its report ID): `size` bytes of `data`, copied now, done after delay_ms (0: as
 * soon as the wq runs). Requests of one device run in the order they become due.
 * Returns 0, or -E2BIG (size 0 or > HIDBPFD_DATA_MAX), -ENOSPC (pool, queue or slots full),
 * -EBUSY (HIDBPFD_ANON_MAX delayed requests without a key pending), -ENOMEM (device table
 * full or its wq refused). What the kernel says when it runs is counted, not returned.
 */
static __always_inline int hidbpfd_inject(struct hid_bpf_ctx *hctx, const void *data, __u32 size,
					  __u32 delay_ms)
{
	return hidbpfd__request(hctx, HIDBPFD__OP_INJECT, 0, 0, data, size, delay_ms);
}

static __always_inline int hidbpfd_output(struct hid_bpf_ctx *hctx, const void *data, __u32 size,
					  __u32 delay_ms)
{
	return hidbpfd__request(hctx, HIDBPFD__OP_OUTPUT, 0, 0, data, size, delay_ms);
}

static __always_inline int hidbpfd_set_feature(struct hid_bpf_ctx *hctx, const void *data,
					       __u32 size, __u32 delay_ms)
{
	return hidbpfd__request(hctx, HIDBPFD__OP_FEATURE, 0, 0, data, size, delay_ms);
}

/*
 * hidbpfd_inject_key / _output_key / _set_feature_key - the same, pending under `key` until
 * due: hidbpfd_cancel(hctx, key) drops it; the same key again re-arms (the request pending
 * before is queued at once, first: nothing is lost). Same returns.
 */
static __always_inline int hidbpfd_inject_key(struct hid_bpf_ctx *hctx, __u32 key,
					      const void *data, __u32 size, __u32 delay_ms)
{
	return hidbpfd__request(hctx, HIDBPFD__OP_INJECT, 1, key, data, size, delay_ms);
}

static __always_inline int hidbpfd_output_key(struct hid_bpf_ctx *hctx, __u32 key,
					      const void *data, __u32 size, __u32 delay_ms)
{
	return hidbpfd__request(hctx, HIDBPFD__OP_OUTPUT, 1, key, data, size, delay_ms);
}

static __always_inline int hidbpfd_set_feature_key(struct hid_bpf_ctx *hctx, __u32 key,
						   const void *data, __u32 size, __u32 delay_ms)
{
	return hidbpfd__request(hctx, HIDBPFD__OP_FEATURE, 1, key, data, size, delay_ms);
}

/* ------------------------------------------------------------------ deferred calls */

/* A call's slot wq starts: the args of the head request (the call handed the queue), or
 * -ENOENT when the head is not this key's call. */
static __always_inline int hidbpfd__call_begin(struct hidbpfd__slot_key *k,
					       struct hidbpfd_call_args *a)
{
	struct hidbpfd__dev *d;
	struct hidbpfd__op op = {};
	__u32 hid_id = k->hid_id, ok;

	d = bpf_map_lookup_elem(&hidbpfd_devs, &hid_id);
	if (!d)
		return -HIDBPFD__ENOENT;
	bpf_spin_lock(&d->lock);
	ok = d->running && d->head != d->tail;
	if (ok)
		op = d->queue[d->head & (HIDBPFD_QUEUE_MAX - 1)];
	bpf_spin_unlock(&d->lock);
	if (!ok || op.kind != HIDBPFD__OP_CALL || op.key != k->key || k->anon)
		return -HIDBPFD__ENOENT;
	a->hid_id = hid_id;
	a->key = op.key;
	a->arg = op.arg;
	return 0;
}

/* The call ran: hand the queue back to the device's wq. */
static __always_inline void hidbpfd__call_end(__u32 hid_id)
{
	struct hidbpfd__dev *d = bpf_map_lookup_elem(&hidbpfd_devs, &hid_id);

	if (d)
		hidbpfd__advance(d, HIDBPFD__NO_BUF);
}

/*
 * HIDBPFD_CALLBACK(name, args) { ... return 0; } - defines callback `name`: a static
 * function `int name(struct hidbpfd_call_args *args)` run from a bpf_wq (sleepable: it may
 * call hid_bpf_allocate_context(args->hid_id), the hid_bpf_* kfuncs and
 * hid_bpf_release_context), plus the wq callback `hidbpfd__wq_<name>` that calls it in its
 * turn in the device's queue. Its return value is ignored.
 */
#define HIDBPFD_CALLBACK(name, args)							\
	static __always_inline int name(struct hidbpfd_call_args *args);		\
	static int hidbpfd__wq_##name(void *map, int *key, void *value)			\
	{										\
		struct hidbpfd_call_args __hidbpfd_a = {};				\
		struct hidbpfd__slot_key *__hidbpfd_k = (void *)key;			\
											\
		if (hidbpfd__call_begin(__hidbpfd_k, &__hidbpfd_a))			\
			return 0;							\
		name(&__hidbpfd_a);							\
		hidbpfd__call_end(__hidbpfd_a.hid_id);					\
		return 0;								\
	}										\
	static __always_inline int name(struct hidbpfd_call_args *args)

/* Schedule the call (the callback's wq function `cb`) under key. */
static __always_inline int hidbpfd__call(struct hid_bpf_ctx *hctx, __u32 key, __u64 arg,
					 __u32 delay_ms,
					 int (*cb)(void *map, int *key, void *value))
{
	struct hidbpfd__op op = { .kind = HIDBPFD__OP_CALL, .buf = HIDBPFD__NO_BUF, .key = key,
				  .arg = arg };
	struct hidbpfd__slot *s;
	struct hidbpfd__dev *d;
	__u32 hid_id;
	int err;

	if (!hctx)
		return -HIDBPFD__EINVAL;
	hid_id = hidbpfd__hid_id(hctx);
	d = hidbpfd__dev_get(hid_id);
	if (!d)
		return -HIDBPFD__ENOMEM;
	s = hidbpfd__slot_get(hid_id, key, 0);
	if (!s) {
		err = -HIDBPFD__ENOSPC;
		goto refused;
	}
	err = hidbpfd__wq_set_callback(&s->wq, cb);
	if (!err)
		err = hidbpfd__arm(d, s, &op, delay_ms);
	if (err)
		goto refused;
	__sync_fetch_and_add(&d->requests, 1);
	return 0;
refused:
	__sync_fetch_and_add(&d->refused, 1);
	return err;
}

/*
 * hidbpfd_call(hctx, name, key, arg, delay_ms) - run callback `name` (a HIDBPFD_CALLBACK of
 * this file) with {hid_id, key, arg} after delay_ms, in its turn in the device's queue. The
 * same key again re-arms (the call pending before is dropped); hidbpfd_cancel(hctx, key)
 * drops it. A key holds one callback: re-arming it with another name switches it.
 * Returns 0 or -errno (-ENOSPC slots or queue full, -ENOMEM device table full).
 */
#define hidbpfd_call(hctx, name, key, arg, delay_ms) \
	hidbpfd__call(hctx, key, arg, delay_ms, hidbpfd__wq_##name)

#endif /* HIDBPFD_API_WQ_H */
