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

/* ------------------------------------------------------------------ state */

/* struct hidbpfd__op.kind */
#define HIDBPFD__OP_INJECT	1	/* data: an input report (defer's held report too) */
#define HIDBPFD__OP_OUTPUT	2	/* data: an output report */
#define HIDBPFD__OP_FEATURE	3	/* data: a feature report to set */
#define HIDBPFD__OP_CALL	4	/* the slot's callback, with key and arg */

#define HIDBPFD__NO_BUF		0xff

/* One request waiting for the wq. 16 bytes. */
struct hidbpfd__op {
	__u8 kind;		/* HIDBPFD__OP_* */
	__u8 buf;		/* the pool buffer with its data, or HIDBPFD__NO_BUF */
	__u16 size;		/* bytes of data */
	__u32 key;		/* OP_CALL: the slot's key */
	__u64 arg;		/* OP_CALL: the argument */
};

/* One device, for one program object: its queue, its wq, its report pool. */
struct hidbpfd__dev {
	struct bpf_spin_lock lock;	/* head, tail, running, used, queue[] */
	__u32 head;			/* queue[head % MAX .. tail % MAX) wait */
	__u32 tail;
	__u32 running;			/* the wq (or a call handed the queue) is on the head */
	__u32 init;			/* wq initialised */
	__u32 anon;			/* next anonymous slot (delayed requests without key) */
	__u64 used;			/* bit i: data[i] is owned by someone */
	__u64 injecting;		/* the wq's task while it injects a report, else 0 */
	/* counters (read with bpftool map dump; not a stable interface) */
	__u64 requests;			/* requests accepted */
	__u64 done;			/* requests run by the wq */
	__u64 failed;			/* requests the kernel refused when run (kfunc < 0) */
	__u64 refused;			/* requests refused when asked (pool/queue full ...) */
	__s64 last_error;		/* the last kfunc error, -errno */
	struct hidbpfd__op queue[HIDBPFD_QUEUE_MAX];
	struct bpf_wq wq;
	__u8 data[HIDBPFD_POOL_MAX][HIDBPFD_DATA_MAX];
};

/* A slot's identity: the device, the key, and whether the key is an anonymous one. */
struct hidbpfd__slot_key {
	__u32 hid_id;
	__u32 key;
	__u32 anon;		/* 1: a delayed request without a key (its own slot) */
	__u32 _pad;
};

/* Work pending under a key until its timer fires. */
struct hidbpfd__slot {
	struct bpf_timer timer;
	struct bpf_wq wq;		/* runs the key's HIDBPFD_CALLBACK */
	struct bpf_spin_lock lock;	/* pending, due, op */
	__u32 init;			/* timer and wq initialised */
	__u32 pending;			/* armed, neither fired nor cancelled */
	__u64 due;			/* bpf_ktime_get_ns() when it is due */
	struct hidbpfd__op op;		/* what to queue when due */
};

struct hidbpfd__dev_zero {
	__u8 bytes[sizeof(struct hidbpfd__dev)];
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, HIDBPFD_DEVICES_MAX);
	__type(key, __u32);		/* hid_id */
	__type(value, struct hidbpfd__dev);
} hidbpfd_devs SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, HIDBPFD_KEYS_MAX);
	__type(key, struct hidbpfd__slot_key);
	__type(value, struct hidbpfd__slot);
} hidbpfd_slots SEC(".maps");

/* All zeros: the initial value of a device (too large for the stack). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct hidbpfd__dev_zero);
} hidbpfd_zero SEC(".maps");

/* ------------------------------------------------------------------ the pool */

/* Index of the lowest set bit of a non-zero x (no calls: usable under a spin lock). */
static __always_inline __u32 hidbpfd__lowest_bit(__u64 x)
{
	__u32 n = 0;

	x &= -x;
	if (!(x & 0xffffffffULL)) { n += 32; x >>= 32; }
	if (!(x & 0xffffULL)) { n += 16; x >>= 16; }
	if (!(x & 0xffULL)) { n += 8; x >>= 8; }
	if (!(x & 0xfULL)) { n += 4; x >>= 4; }
	if (!(x & 0x3ULL)) { n += 2; x >>= 2; }
	if (!(x & 0x1ULL)) n += 1;
	return n;
}

#define HIDBPFD__POOL_MASK \
	(HIDBPFD_POOL_MAX >= 64 ? ~0ULL : ((1ULL << HIDBPFD_POOL_MAX) - 1))

/* Give buffer `buf` back to the pool (any context). */
static __always_inline void hidbpfd__buf_free(struct hidbpfd__dev *d, __u32 buf)
{
	if (buf >= HIDBPFD_POOL_MAX)
		return;
	bpf_spin_lock(&d->lock);
	d->used &= ~(1ULL << buf);
	bpf_spin_unlock(&d->lock);
}

/* Take a buffer and copy `size` bytes of `data` into it: its index, or -errno. */
static __always_inline int hidbpfd__buf_fill(struct hidbpfd__dev *d, const void *data, __u32 size)
{
	__u64 free;
	__u32 buf;

	if (size == 0 || size > HIDBPFD_DATA_MAX)
		return -HIDBPFD__E2BIG;
	bpf_spin_lock(&d->lock);
	free = ~d->used & HIDBPFD__POOL_MASK;
	buf = free ? hidbpfd__lowest_bit(free) : HIDBPFD__NO_BUF;
	if (free)
		d->used |= 1ULL << buf;
	bpf_spin_unlock(&d->lock);
	if (buf >= HIDBPFD_POOL_MAX)
		return -HIDBPFD__ENOSPC;
	barrier_var(size);
	if (size > HIDBPFD_DATA_MAX)
		size = HIDBPFD_DATA_MAX;
	if (bpf_probe_read_kernel(d->data[buf & (HIDBPFD_POOL_MAX - 1)], size, data)) {
		hidbpfd__buf_free(d, buf);
		return -HIDBPFD__EFAULT;
	}
	return buf;
}

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
