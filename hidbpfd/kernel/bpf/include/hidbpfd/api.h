/* SPDX-License-Identifier: (GPL-2.0-only OR MIT) */
/*
 * <hidbpfd/api.h> - deferred HID device IO for HID-BPF programs (docs/programs.md).
 *
 * Include it after vmlinux.h, <bpf/bpf_helpers.h> and <bpf/bpf_tracing.h>. The same calls run
 * on one of two engines, picked by one define:
 *
 *  - default, the userspace engine: each call writes a request to the ring buffer map
 *    `hidbpfd_requests` declared below; the hidbpfd daemon, which loaded the object
 *    ([[program]] in a policy file), executes it with its scheduler and sinks, observably
 *    (`hidbpfd monitor`, `hidbpfd status`);
 *  - -DHIDBPFD_ENGINE_KERNEL: the work runs in the kernel, on bpf_timer -> bpf_wq, with
 *    hid_bpf_try_input_report / hid_bpf_hw_output_report / hid_bpf_hw_request (api_wq.h).
 *
 * Build with `hidbpfd compile SRC.bpf.c [--engine userspace|kernel]`, which also passes the
 * HIDBPFD_HAVE_* defines hid_compat.h needs for this kernel's vmlinux.h.
 *
 * Semantics, both engines: keys are per device and per program object; requests of one
 * device run in the order they were made; a request that cannot be queued never loses input
 * (hidbpfd_defer then returns 0: the report passes).
 */
#ifndef __HIDBPFD_API_H
#define __HIDBPFD_API_H

#ifdef HIDBPFD_ENGINE_KERNEL
/* api_wq.h declares the kfuncs without __weak: a kernel lacking one refuses the object */
#define HIDBPFD_COMPAT_NO_KFUNCS
#endif
#include "hid_compat.h"

/* ------------------------------------------------------------ shared by both engines */

#define HIDBPFD_DATA_MAX	512	/* most bytes an inject/output/set_feature carries */
#define HIDBPFD_CALLBACK_NAME_MAX	64	/* a callback's name, NUL included */

/* What a callback (HIDBPFD_CALLBACK) is called with. */
struct hidbpfd_call_args {
	__u32 hid_id;		/* the device (hid_bpf_allocate_context(args->hid_id)) */
	__u32 key;		/* the key it was scheduled with */
	__u64 arg;		/* the argument given to hidbpfd_call() */
};

#ifdef HIDBPFD_ENGINE_KERNEL
#include "api_wq.h"
#else /* the userspace engine */

#include "requests.h"

#ifndef ENOENT
#define ENOENT	2
#endif
#ifndef E2BIG
#define E2BIG	7
#endif
#ifndef EFAULT
#define EFAULT	14
#endif
#ifndef EBUSY
#define EBUSY	16
#endif
#ifndef EINVAL
#define EINVAL	22
#endif
#ifndef ENOSPC
#define ENOSPC	28
#endif

#ifndef HIDBPFD_RING_BYTES
#define HIDBPFD_RING_BYTES	(256 * 1024)	/* ~470 requests in flight */
#endif
#ifndef HIDBPFD_KEYS_MAX
#define HIDBPFD_KEYS_MAX	1024	/* keys pending at once, per device */
#endif

/* The requests, for the daemon (one ring per object and device: the daemon loads an object
 * once per device it serves). */
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, HIDBPFD_RING_BYTES);
} hidbpfd_requests SEC(".maps");

/* Shared with the daemon: the budget, counters, the re-injection in progress. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct hidbpfd_state);
} hidbpfd_state SEC(".maps");

/* The daemon re-injecting a held report: its size, else 0 (written by the daemon only). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} hidbpfd_passing SEC(".maps");

/* Keys with work pending: key -> ts_ns of the request that armed it. Set here, deleted by
 * the daemon when the work ran (if not re-armed meanwhile) or was cancelled. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, HIDBPFD_KEYS_MAX);
	__type(key, __u32);
	__type(value, __u64);
} hidbpfd_keys SEC(".maps");

/* ---- the core: no hid_bpf_ctx, so a SEC("syscall") program (and the tests) can call it */

/* The budget (struct hidbpfd_state): 0 if one more request fits, else -EBUSY (counted). */
static __always_inline int hidbpfd__budget(struct hidbpfd_state *st, __u64 now)
{
	__u64 interval = st->interval_ns ? st->interval_ns : HIDBPFD_BUDGET_INTERVAL_NS;
	__u64 burst = st->burst ? st->burst : HIDBPFD_BUDGET_BURST;
	__u64 tat = st->tat;
	__u64 next = (tat > now ? tat : now) + interval;

	if (next > now + burst * interval) {
		__sync_fetch_and_add(&st->over_budget, 1);
		return -EBUSY;
	}
	st->tat = next;
	return 0;
}

/*
 * Write one request for device `hid_id`: `size` bytes at `data` (any kernel pointer: a
 * HID-BPF buffer, the stack, a map value) go with it. Keyed requests (HIDBPFD_REQ_KEYED) mark
 * `key` pending. Returns 0, or -E2BIG (size > HIDBPFD_DATA_MAX), -EBUSY (over budget),
 * -ENOSPC (ring or key table full), -EFAULT (data unreadable), -EINVAL (no state map).
 */
static __always_inline int hidbpfd__request(__u32 hid_id, __u16 kind, __u32 flags, __u32 key,
					    __u32 delay_ms, const void *data, __u32 size,
					    __u64 arg)
{
	struct hidbpfd_request *rec;
	struct hidbpfd_state *st;
	__u32 zero = 0;
	__u64 now = bpf_ktime_get_ns();

	if (size > HIDBPFD_DATA_MAX)
		return -E2BIG;
	st = bpf_map_lookup_elem(&hidbpfd_state, &zero);
	if (!st)
		return -EINVAL;
	if (hidbpfd__budget(st, now))
		return -EBUSY;
	rec = bpf_ringbuf_reserve(&hidbpfd_requests, sizeof(*rec), 0);
	if (!rec) {
		__sync_fetch_and_add(&st->ring_full, 1);
		return -ENOSPC;
	}
	rec->version = HIDBPFD_REQUEST_VERSION;
	rec->kind = kind;
	rec->hid_id = hid_id;
	rec->key = key;
	rec->delay_ms = delay_ms;
	rec->ts_ns = now;
	rec->arg = arg;
	rec->flags = flags;
	rec->size = size;
	barrier_var(size);
	if (size > HIDBPFD_DATA_MAX)
		size = HIDBPFD_DATA_MAX;	/* never: tells the verifier the bound */
	if (size && bpf_probe_read_kernel(rec->data, size, data)) {
		bpf_ringbuf_discard(rec, 0);
		return -EFAULT;
	}
	if ((flags & HIDBPFD_REQ_KEYED) &&
	    bpf_map_update_elem(&hidbpfd_keys, &key, &now, BPF_ANY)) {
		bpf_ringbuf_discard(rec, 0);
		__sync_fetch_and_add(&st->ring_full, 1);
		return -ENOSPC;
	}
	bpf_ringbuf_submit(rec, 0);
	__sync_fetch_and_add(&st->requests, 1);
	return 0;
}

/*
 * Hold the report `data` (`size` bytes, a kernel pointer) of device `hid_id` under `key`.
 * Returns what hid_device_event returns: -1 (drop it now: held) or 0 (the report passes:
 * it is the daemon's own re-injection of a held report, or the request could not be queued).
 */
static __always_inline int hidbpfd__defer(__u32 hid_id, __u32 key, __u32 delay_ms,
					  const void *data, __u32 size)
{
	__u32 zero = 0, *passing;

	if (!size || size > HIDBPFD_DATA_MAX)
		return 0;
	passing = bpf_map_lookup_elem(&hidbpfd_passing, &zero);
	if (!passing)
		return 0;
	/* the daemon re-injecting a held report of this size: let it through, once */
	if (*passing == size && __sync_val_compare_and_swap(passing, size, 0) == size)
		return 0;
	if (hidbpfd__request(hid_id, HIDBPFD_REQ_DEFER, HIDBPFD_REQ_KEYED, key, delay_ms, data,
			     size, 0))
		return 0;
	return -1;
}

/* Cancel the work pending under `key` of device `hid_id`: 0, -ENOENT (none pending), or the
 * errors of hidbpfd__request (the cancel did not reach the daemon). */
static __always_inline int hidbpfd__cancel(__u32 hid_id, __u32 key)
{
	if (!bpf_map_lookup_elem(&hidbpfd_keys, &key))
		return -ENOENT;
	bpf_map_delete_elem(&hidbpfd_keys, &key);
	return hidbpfd__request(hid_id, HIDBPFD_REQ_CANCEL, 0, key, 0, 0, 0, 0);
}

/* Schedule the callback whose name is the string `name` (`size` bytes, NUL included). */
static __always_inline int hidbpfd__call(__u32 hid_id, const char *name, __u32 size, __u32 key,
					 __u64 arg, __u32 delay_ms)
{
	return hidbpfd__request(hid_id, HIDBPFD_REQ_CALL, HIDBPFD_REQ_KEYED, key, delay_ms, name,
				size, arg);
}

/* The device of a hid_bpf_ctx (CO-RE: hid_compat.h or vmlinux.h's struct hid_device). */
static __always_inline __u32 hidbpfd__hid_id(struct hid_bpf_ctx *hctx)
{
	return hctx->hid->id;
}

/* ------------------------------------------------------------------ the API (api.md) */

/*
 * Inside hid_device_event: hold the current report; the daemon re-injects it after delay_ms
 * unless hidbpfd_cancel(hctx, key) comes first. The same key again re-arms it: the older held
 * report is released (re-injected) at once, the new one held. Returns the value to return
 * from hid_device_event: -1 when held (the report is dropped now), 0 when the request could
 * not be queued (over budget, ring full, report > HIDBPFD_DATA_MAX): the report passes, so
 * a failed request never loses input. The daemon's re-injection of a held report comes
 * through hid_device_event again: hidbpfd_defer recognises it and returns 0 for it.
 */
static __always_inline int hidbpfd_defer(struct hid_bpf_ctx *hctx, __u32 key, __u32 delay_ms)
{
	__s32 size = hctx->size;
	__u8 *data;

	if (size <= 0 || size > HIDBPFD_DATA_MAX || (__u32)size > hctx->allocated_size)
		return 0;
	data = hid_bpf_get_data(hctx, 0, 1);
	if (!data)
		return 0;
	return hidbpfd__defer(hidbpfd__hid_id(hctx), key, delay_ms, data, size);
}

/* Drop the work pending under key (a held report with it: it never reaches readers).
 * 0, or -ENOENT when nothing is pending under key, or -EBUSY/-ENOSPC (the cancel could not
 * be queued: the pending work runs). A cancel racing the work's own start loses, as with
 * bpf_timer_cancel against a running callback. */
static __always_inline int hidbpfd_cancel(struct hid_bpf_ctx *hctx, __u32 key)
{
	return hidbpfd__cancel(hidbpfd__hid_id(hctx), key);
}

/* Inject the input report data[0..size) into the device (it goes through hid_device_event
 * again, with source != 0), now (delay_ms = 0) or after delay_ms. 0, or -E2BIG (size >
 * HIDBPFD_DATA_MAX), -EBUSY (over budget), -ENOSPC (ring full): nothing is sent then. */
static __always_inline int hidbpfd_inject(struct hid_bpf_ctx *hctx, const void *data, __u32 size,
					  __u32 delay_ms)
{
	return hidbpfd__request(hidbpfd__hid_id(hctx), HIDBPFD_REQ_INJECT, 0, 0, delay_ms, data,
				size, 0);
}

/* Send the output report data[0..size) (data[0]: the report ID if the device numbers its
 * reports) now or after delay_ms. Returns as hidbpfd_inject. */
static __always_inline int hidbpfd_output(struct hid_bpf_ctx *hctx, const void *data, __u32 size,
					  __u32 delay_ms)
{
	return hidbpfd__request(hidbpfd__hid_id(hctx), HIDBPFD_REQ_OUTPUT, 0, 0, delay_ms, data,
				size, 0);
}

/* Set the feature report data[0..size) (data[0]: the report ID) now or after delay_ms.
 * Returns as hidbpfd_inject. */
static __always_inline int hidbpfd_set_feature(struct hid_bpf_ctx *hctx, const void *data,
					       __u32 size, __u32 delay_ms)
{
	return hidbpfd__request(hidbpfd__hid_id(hctx), HIDBPFD_REQ_SET_FEATURE, 0, 0, delay_ms,
				data, size, 0);
}

/* hidbpfd_inject under a key: cancellable with hidbpfd_cancel(hctx, key); the same key
 * re-arms (replaces the pending work). Returns as hidbpfd_inject. */
static __always_inline int hidbpfd_inject_key(struct hid_bpf_ctx *hctx, __u32 key,
					      const void *data, __u32 size, __u32 delay_ms)
{
	return hidbpfd__request(hidbpfd__hid_id(hctx), HIDBPFD_REQ_INJECT, HIDBPFD_REQ_KEYED, key,
				delay_ms, data, size, 0);
}

/* hidbpfd_output under a key (see hidbpfd_inject_key). */
static __always_inline int hidbpfd_output_key(struct hid_bpf_ctx *hctx, __u32 key,
					      const void *data, __u32 size, __u32 delay_ms)
{
	return hidbpfd__request(hidbpfd__hid_id(hctx), HIDBPFD_REQ_OUTPUT, HIDBPFD_REQ_KEYED, key,
				delay_ms, data, size, 0);
}

/* hidbpfd_set_feature under a key (see hidbpfd_inject_key). */
static __always_inline int hidbpfd_set_feature_key(struct hid_bpf_ctx *hctx, __u32 key,
						   const void *data, __u32 size, __u32 delay_ms)
{
	return hidbpfd__request(hidbpfd__hid_id(hctx), HIDBPFD_REQ_SET_FEATURE, HIDBPFD_REQ_KEYED,
				key, delay_ms, data, size, 0);
}

/*
 * Define a callback: HIDBPFD_CALLBACK(name, args) { ... return 0; }. Here it is a
 * SEC("syscall") program `int name(struct hidbpfd_call_args *args)`, which the daemon runs
 * with BPF_PROG_RUN when a hidbpfd_call() for it is due (sleepable: hid_bpf_allocate_context
 * (args->hid_id), hid_bpf_hw_request, hid_bpf_hw_output_report, hid_bpf_release_context; the
 * API's calls work on the allocated context too). Its return value is logged if negative.
 */
#define HIDBPFD_CALLBACK(name, args) SEC("syscall") int name(struct hidbpfd_call_args *args)

/*
 * Schedule callback `name` (the token given to HIDBPFD_CALLBACK, defined above the call) for
 * the device of hctx, with key and arg, after delay_ms. The same key re-arms; cancellable
 * with hidbpfd_cancel. 0 or -errno as hidbpfd_inject. The daemon refuses (and counts) a name
 * that is not a SEC("syscall") program of the object.
 */
#define hidbpfd_call(hctx, name, key, arg, delay_ms)                                         \
	({                                                                                    \
		_Static_assert(sizeof(#name) <= HIDBPFD_CALLBACK_NAME_MAX,                     \
			       "hidbpfd_call: callback name longer than 63 characters");       \
		(void)sizeof(&name); /* a callback defined with HIDBPFD_CALLBACK */            \
		hidbpfd__call(hidbpfd__hid_id(hctx), #name, sizeof(#name), (key), (arg),       \
			      (delay_ms));                                                    \
	})

#endif /* HIDBPFD_ENGINE_KERNEL */
#endif /* __HIDBPFD_API_H */
