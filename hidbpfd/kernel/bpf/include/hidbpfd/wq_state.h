/* SPDX-License-Identifier: (GPL-2.0-only OR MIT) */
/*
 * hidbpfd/wq_state.h - part of the in-kernel engine of <hidbpfd/api.h> (api_wq.h): the state
 * it keeps per program object (devices, keyed slots, their maps) and the per-device report
 * pool. Included by api_wq.h only.
 */
#ifndef HIDBPFD_WQ_STATE_H
#define HIDBPFD_WQ_STATE_H

#ifndef HIDBPFD_API_WQ_H
#error "include <hidbpfd/api.h>, not <hidbpfd/wq_state.h>"
#endif

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

#endif /* HIDBPFD_WQ_STATE_H */
