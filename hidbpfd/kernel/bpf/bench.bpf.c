// SPDX-License-Identifier: GPL-2.0-only
/*
 * bench.bpf.c - the kernel side of `hidbpfd bench --mechanics`: the deferred-work primitives
 * the in-kernel HID-BPF path uses, timed in their own callbacks. No HID needed.
 *
 *   hidbpfd_bench_init   SEC("syscall")  bpf_timer_init + bpf_wq_init (once; the map fd must
 *                                         stay open in userspace or bpf_wq_init is -EPERM)
 *   hidbpfd_bench_arm    SEC("syscall")  mode 0: bpf_timer, delay_ns
 *                                         mode 1: bpf_timer, then bpf_wq_start in its callback
 *                                                 (HID-BPF's two hops for delayed sleepable work)
 *                                         mode 2: bpf_wq_start now (event -> sleepable context)
 * Each callback writes one struct hidbpfd_bench_sample to bench_ring.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>

char LICENSE[] SEC("license") = "GPL";

#ifndef CLOCK_MONOTONIC
#define CLOCK_MONOTONIC 1
#endif

#include "wq_compat.h"

struct hidbpfd_bench_elem {
	struct bpf_timer timer;
	struct bpf_wq wq;
	__u64 due_ns;  /* when the work should run (armed + delay) */
	__u32 mode;
	__u32 seq;
};

/* struct hidbpfd_bench_sample { __u64 due_ns; __u64 ran_ns; __u32 mode; __u32 seq; }; */
struct hidbpfd_bench_sample {
	__u64 due_ns;
	__u64 ran_ns;
	__u32 mode;
	__u32 seq;
};

/* struct hidbpfd_bench_ctx { __u64 delay_ns; __u32 mode; __u32 seq; }; */
struct hidbpfd_bench_ctx {
	__u64 delay_ns;
	__u32 mode;
	__u32 seq;
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, int);
	__type(value, struct hidbpfd_bench_elem);
} bench_work SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 16);
} bench_ring SEC(".maps");

static void emit(struct hidbpfd_bench_elem *e, __u64 now)
{
	struct hidbpfd_bench_sample *s = bpf_ringbuf_reserve(&bench_ring, sizeof(*s), 0);

	if (!s)
		return;
	s->due_ns = e->due_ns;
	s->ran_ns = now;
	s->mode = e->mode;
	s->seq = e->seq;
	bpf_ringbuf_submit(s, 0);
}

static int wq_cb(void *map, int *key, void *value)
{
	emit((struct hidbpfd_bench_elem *)value, bpf_ktime_get_ns());
	return 0;
}

static int timer_cb(void *map, int *key, struct hidbpfd_bench_elem *e)
{
	__u64 now = bpf_ktime_get_ns();

	if (e->mode == 1)
		bpf_wq_start(&e->wq, 0);
	else
		emit(e, now);
	return 0;
}

SEC("syscall")
int hidbpfd_bench_init(void *ctx)
{
	int key = 0;
	struct hidbpfd_bench_elem *e = bpf_map_lookup_elem(&bench_work, &key);
	int err;

	if (!e)
		return -1;
	err = bpf_timer_init(&e->timer, &bench_work, CLOCK_MONOTONIC);
	if (err && err != -16 /* -EBUSY: already initialised */)
		return err;
	err = bpf_timer_set_callback(&e->timer, timer_cb);
	if (err)
		return err;
	err = bpf_wq_init(&e->wq, &bench_work, 0);
	if (err && err != -16)
		return err;
	return hidbpfd_wq_set_callback(&e->wq, wq_cb, 0);
}

SEC("syscall")
int hidbpfd_bench_arm(struct hidbpfd_bench_ctx *ctx)
{
	int key = 0;
	struct hidbpfd_bench_elem *e = bpf_map_lookup_elem(&bench_work, &key);
	__u64 now = bpf_ktime_get_ns();

	if (!e)
		return -1;
	e->mode = ctx->mode;
	e->seq = ctx->seq;
	if (ctx->mode == 2) {
		e->due_ns = now;
		return bpf_wq_start(&e->wq, 0);
	}
	e->due_ns = now + ctx->delay_ns;
	return bpf_timer_start(&e->timer, ctx->delay_ns, 0);
}
