/* SPDX-License-Identifier: (GPL-2.0-only OR MIT) */
/*
 * hidbpfd.h - the one definition of what the kernel side and the daemon share.
 *
 * Part 1 (always): constants and struct layouts. The Python side mirrors them in
 * hidbpfd/model.py, hidbpfd/engine/filter.py and hidbpfd/kernel/source.py, each struct format
 * quoted from here; tests/bpf/test_layout.py compiles this header on the host and checks
 * every size and offset against the Python struct formats.
 *
 * Part 2 (only when compiling for BPF, __bpf__): matching, with no maps of its own:
 * hidbpfd_scan_report(), a report against a rule table, and hidbpfd_event_report(), which
 * reports a hid_device_event struct_ops looks at. The filter below and the in-kernel engine
 * (engine.bpf.c, which has its own table, armed mask and ring) both use them.
 *
 * Part 3 (__bpf__, unless HIDBPFD_NO_FILTER is defined before including this header): the
 * maps and hidbpfd_filter(), the C twin of hidbpfd.engine.filter.Filter.run(). Every program of
 * hidbpfd.bpf.c and hidbpfd_ops.bpf.c that sees a report calls it.
 */
#ifndef __HIDBPFD_H
#define __HIDBPFD_H

/* ---------------------------------------------------------------- Part 1: layout */

#define HIDBPFD_PATTERN_MAX	32	/* model.PATTERN_MAX */
#define HIDBPFD_RULES_MAX	32	/* model.RULES_MAX: bits of the match mask, arm groups */
#define HIDBPFD_RECORD_DATA_MAX	128	/* filter.RECORD_DATA_MAX */
#define HIDBPFD_FEED_DATA_MAX	HIDBPFD_RECORD_DATA_MAX	/* the filter never reads further */
#define HIDBPFD_IO_DATA_MAX	512	/* bytes an injector call carries */

/* struct hidbpfd_rule.flags (model.RuleFlag) */
#define HIDBPFD_RULE_HOLD	(1 << 0)
#define HIDBPFD_RULE_ARM	(1 << 1)
#define HIDBPFD_RULE_WHEN_ARMED	(1 << 2)

/* struct hidbpfd_record.flags */
#define HIDBPFD_REC_HELD	(1 << 0)	/* the report was kept from the device's readers */
#define HIDBPFD_REC_TRUNCATED	(1 << 1)	/* len > HIDBPFD_RECORD_DATA_MAX */

/* what hidbpfd_filter() did with a report (the feeder's return value) */
#define HIDBPFD_VERDICT_QUIET	0	/* no rule fired: report passes, nobody wakes up */
#define HIDBPFD_VERDICT_NOTIFY	1	/* a record went to the daemon, report passes */
#define HIDBPFD_VERDICT_HOLD	2	/* a record went to the daemon, report held */
#define HIDBPFD_VERDICT_DROPPED	3	/* rules fired but the ring was full: passes, counted */

/* The value returned from hid_bpf_ops.hid_device_event to drop a held report. */
#define HIDBPFD_HOLD_ERRNO	125	/* ECANCELED */

/*
 * One rule of a device's table. The report matches if it is at least `len` bytes long and
 * (report[i] & mask[i]) == (pattern[i] & mask[i]) for i < len; mask bytes at and beyond
 * `len` are zero. 72 bytes, 8-aligned, so the filter compares whole __u64 words.
 *
 * An ARM rule's `arm_us` is how long the arm it sets lasts (model.Rule.arm_ns, in µs rounded
 * up): the group's WHEN_ARMED rules stop firing that long after the arming report even if
 * none fired, because the policy's own wait (defer's delay, release-guard's timeout) ended
 * then. 0: the arm lasts until a WHEN_ARMED rule of the group fires.
 */
struct hidbpfd_rule {
	__u8 pattern[HIDBPFD_PATTERN_MAX];
	__u8 mask[HIDBPFD_PATTERN_MAX];
	__u16 len;
	__u8 flags;		/* HIDBPFD_RULE_* */
	__u8 group;		/* arm group, < HIDBPFD_RULES_MAX */
	__u32 arm_us;		/* HIDBPFD_RULE_ARM: the arm expires after this (0: never) */
};

/* Value of the hidbpfd_rules map (key: __u32 hid_id = struct hid_device.id). */
struct hidbpfd_device_rules {
	__u32 count;		/* rules[0 .. count) are live; bit i of `matched` is rules[i] */
	__u32 _pad;
	struct hidbpfd_rule rules[HIDBPFD_RULES_MAX];
};

/*
 * Value of the hidbpfd_armed map (key: hid_id): the armed group bits, and for each group
 * when its arm expires (bpf_ktime_get_ns(); U64_MAX: never). A group is armed while its bit
 * is set and now < until[group]; an expired bit may stay set (it is ignored). 264 bytes.
 */
struct hidbpfd_armed {
	__u32 mask;
	__u32 _pad;
	__u64 until[HIDBPFD_RULES_MAX];
};

/* One ring-buffer record: a report the daemon must hear about. 152 bytes. */
struct hidbpfd_record {
	__u64 ts_ns;		/* bpf_ktime_get_ns(): CLOCK_MONOTONIC */
	__u64 matched;		/* bit i: rule i of the device's table fired */
	__u32 hid_id;		/* struct hid_device.id */
	__u16 flags;		/* HIDBPFD_REC_* */
	__u16 len;		/* the report's full length; data holds min(len, 128) bytes */
	__u8 data[HIDBPFD_RECORD_DATA_MAX];
};

/* Context of the hidbpfd_feed SEC("syscall") program, passed with BPF_PROG_RUN. */
struct hidbpfd_feed {
	__u32 hid_id;
	__u16 len;		/* the report's full length (may exceed data[]) */
	__u8 can_hold;
	__u8 _pad;
	__u8 data[HIDBPFD_FEED_DATA_MAX];
	__u64 now_ns;		/* the report's time (a replay's virtual clock); 0: now */
};

/*
 * Context of the injector SEC("syscall") programs (hidbpfd_io_*). `len` bytes of `data`
 * go to the device; hidbpfd_io_get_feature returns the reply in `data` (BPF_PROG_RUN
 * copies a syscall program's context back). The return value is the kfunc's: bytes
 * transferred or 0 on success, -errno on failure.
 */
struct hidbpfd_io {
	__u32 hid_id;
	__u32 len;
	__u8 data[HIDBPFD_IO_DATA_MAX];
};

/* ---------------------------------------------------------------- Part 2: matching */
#ifdef __bpf__

#include "hid_compat.h"

/* One scan of a rule table (hidbpfd_scan_report), shared with the bpf_loop() callback. */
struct hidbpfd_scan {
	const struct hidbpfd_device_rules *table;
	const __u64 *until;	/* when each group's arm expires (struct hidbpfd_armed.until) */
	__u64 now;		/* the report's time */
	__u64 head[HIDBPFD_PATTERN_MAX / 8];	/* the report's first bytes, zero-padded */
	__u32 len;		/* the report's full length */
	__u32 armed;		/* the armed mask before this report (expired bits included) */
	__u32 matched;		/* rules that fired */
	__u32 raw;		/* rules whose pattern matches, armed or not */
	__u32 disarm;		/* groups to disarm: WHEN_ARMED rules that fired */
	__u32 arm;		/* groups to arm: ARM rules that fired */
	__u32 hold;		/* a HOLD rule fired */
};

/*
 * Does a report match rule `r`'s pattern (reference: hidbpfd.model.Pattern.matches)? `head`
 * holds its first HIDBPFD_PATTERN_MAX bytes, zero-padded, `len` is its full length: at least
 * r->len bytes, equal to the pattern wherever the mask has bits (whole __u64 words at once).
 */
static __always_inline int hidbpfd_rule_matches(const struct hidbpfd_rule *r,
						const __u64 *head, __u32 len)
{
	__u64 diff = 0;
	int w;

	if (len < r->len)
		return 0;
	for (w = 0; w < HIDBPFD_PATTERN_MAX / 8; w++)
		diff |= (head[w] ^ *(const __u64 *)&r->pattern[8 * w]) &
			*(const __u64 *)&r->mask[8 * w];
	return diff == 0;
}

/*
 * bpf_loop() callback: rule `i` against the report. A callback is verified once, whatever
 * the number of rules; an open-coded 32-rule loop with a branch per flag makes the
 * verifier walk too many paths (E2BIG at 1M instructions on 6.18).
 */
static long hidbpfd_scan_rule(__u32 i, void *ctx)
{
	struct hidbpfd_scan *s = ctx;
	const struct hidbpfd_rule *r;
	__u32 bit, g;

	if (i >= HIDBPFD_RULES_MAX)
		return 1;
	r = &s->table->rules[i];
	if (!hidbpfd_rule_matches(r, s->head, s->len))
		return 0;
	s->raw |= 1U << i;
	g = r->group & (HIDBPFD_RULES_MAX - 1);
	bit = 1U << g;
	/* armed: the bit is set and the arm has not expired (the policy's wait is not over) */
	if ((r->flags & HIDBPFD_RULE_WHEN_ARMED) && (!(s->armed & bit) || s->now >= s->until[g]))
		return 0;
	s->matched |= 1U << i;
	if (r->flags & HIDBPFD_RULE_WHEN_ARMED)
		s->disarm |= bit;
	if (r->flags & HIDBPFD_RULE_ARM)
		s->arm |= bit;
	if (r->flags & HIDBPFD_RULE_HOLD)
		s->hold = 1;
	return 0;
}

/*
 * The rules of `table` (its first `count`) against a report, given the armed state before it:
 * the mask `armed` and `until`, when each group's arm expires, both from a struct
 * hidbpfd_armed (reference: the matching half of hidbpfd.engine.filter.Filter.run). `data` is
 * any kernel pointer to the report (read with bpf_probe_read_kernel, so a HID-BPF buffer, a
 * tracing argument and a syscall context all work); `len` its full length, `now` its time.
 * Fills `s`; the caller applies arm/disarm to its own armed state (hidbpfd_arm() for the
 * deadlines). A report that cannot be read matches nothing.
 */
static __always_inline void hidbpfd_scan_report(struct hidbpfd_scan *s,
						const struct hidbpfd_device_rules *table,
						const void *data, __u32 len, __u32 armed,
						const __u64 *until, __u64 now)
{
	__u32 n, count;

	*s = (struct hidbpfd_scan){
		.table = table, .until = until, .now = now, .len = len, .armed = armed,
	};

	/* the first bytes, zero-padded: patterns never look further */
	n = len;
	if (n > HIDBPFD_PATTERN_MAX)
		n = HIDBPFD_PATTERN_MAX;
	barrier_var(n);
	if (n > HIDBPFD_PATTERN_MAX)
		return;		/* never: tells the verifier n's bound */
	if (n && bpf_probe_read_kernel(s->head, n, data))
		return;

	count = table->count;
	if (count > HIDBPFD_RULES_MAX)
		count = HIDBPFD_RULES_MAX;
	bpf_loop(count, hidbpfd_scan_rule, s, 0);
}

/* One hidbpfd_arm(), shared with its bpf_loop() callback. */
struct hidbpfd_arming {
	const struct hidbpfd_device_rules *table;
	__u64 *until;
	__u64 now;
	__u32 matched;
	__u32 seen;		/* groups given a deadline by this report already */
};

/* bpf_loop() callback: rule `i`, if it fired and arms, sets its group's deadline. */
static long hidbpfd_arm_rule(__u32 i, void *ctx)
{
	struct hidbpfd_arming *a = ctx;
	const struct hidbpfd_rule *r;
	__u64 due;
	__u32 g;

	if (i >= HIDBPFD_RULES_MAX)
		return 1;
	r = &a->table->rules[i];
	if (!(a->matched & (1U << i)) || !(r->flags & HIDBPFD_RULE_ARM))
		return 0;
	g = r->group & (HIDBPFD_RULES_MAX - 1);
	due = r->arm_us ? a->now + (__u64)r->arm_us * 1000 : ~0ULL;
	/* a new arm replaces the old deadline; two rules arming one group: the later one */
	if (!(a->seen & (1U << g)) || due > a->until[g])
		a->until[g] = due;
	a->seen |= 1U << g;
	return 0;
}

/*
 * The deadlines of the groups a report armed (the ARM rules among `matched`): until[group] =
 * now + arm_us (U64_MAX when arm_us is 0). Call before setting the groups' bits, so a reader
 * never sees a fresh bit with a stale deadline (reference: Filter.run).
 */
static __always_inline void hidbpfd_arm(const struct hidbpfd_device_rules *table, __u32 matched,
					__u64 *until, __u64 now)
{
	struct hidbpfd_arming a = { .table = table, .until = until, .now = now,
				    .matched = matched };
	__u32 count = table->count;

	if (count > HIDBPFD_RULES_MAX)
		count = HIDBPFD_RULES_MAX;
	bpf_loop(count, hidbpfd_arm_rule, &a, 0);
}

/*
 * The report a HID-BPF struct_ops is called with, if it is one to look at; else NULL (the
 * program returns 0: the report passes untouched).
 *
 * int (*hid_device_event)(struct hid_bpf_ctx *ctx, enum hid_report_type report_type,
 *			   u64 source);
 *
 * `source` is 0 for reports from the device and the injecting hid_bpf_ctx for reports
 * a BPF program injected (hid_bpf_input_report / hid_bpf_try_input_report). Those are
 * the daemon's or the engine's own re-injections (or another HID-BPF program's): they pass
 * untouched, so a held report that is re-injected can never be held, or looped, again.
 * Only input reports with a sane size are looked at; `*len` is then the report's length.
 *
 * `has_source` is false where hid_device_event has no `source` argument: pass a frozen
 * .rodata constant and the verifier never walks the read of ctx[2] (the branch is dead).
 */
static __always_inline __u8 *hidbpfd_event_report(unsigned long long *ctx, int has_source,
						   __u32 *len)
{
	struct hid_bpf_ctx *hctx = (struct hid_bpf_ctx *)ctx[0];
	enum hid_report_type type = (enum hid_report_type)ctx[1];
	__u64 source = 0;
	__s32 size;

	if (has_source)
		source = ctx[2];
	if (source || type != HID_INPUT_REPORT)
		return NULL;
	size = hctx->size;
	if (size <= 0 || (__u32)size > hctx->allocated_size)
		return NULL;
	*len = size;
	return hid_bpf_get_data(hctx, 0, 1);
}

#endif /* __bpf__ */

/* ---------------------------------------------------------------- Part 3: filter */
#if defined(__bpf__) && !defined(HIDBPFD_NO_FILTER)

/*
 * Rules per device; userspace swaps a value whole (an update links a new element in and
 * frees the old one after RCU, so a filter run sees the old table or the new one intact;
 * a preallocated map could hand the old element to the next update while it is read).
 */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, 256);
	__type(key, __u32);
	__type(value, struct hidbpfd_device_rules);
} hidbpfd_rules SEC(".maps");

/* Armed groups per device; created by userspace with the rules, updated here. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 256);
	__type(key, __u32);
	__type(value, struct hidbpfd_armed);
} hidbpfd_armed SEC(".maps");

/* Records for the daemon; userspace sets the size (bytes, a power of 2) before load. */
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 20);
} hidbpfd_ring SEC(".maps");

/* Reports that fired a rule but found the ring full (summed over CPUs by userspace). */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} hidbpfd_drops SEC(".maps");

/*
 * The filter (reference: hidbpfd.engine.filter.Filter.run). `data` is any kernel pointer to the
 * report (read with bpf_probe_read_kernel, so a HID-BPF buffer, a tracing argument and a
 * syscall context all work); `len` its full length; `now` its time (bpf_ktime_get_ns(), or
 * a replay's clock). Returns HIDBPFD_VERDICT_*; the caller holds the report iff
 * HIDBPFD_VERDICT_HOLD.
 */
static __always_inline int hidbpfd_filter(__u32 hid_id, const void *data, __u32 len,
					  int can_hold, __u64 now)
{
	struct hidbpfd_scan s;
	struct hidbpfd_device_rules *table;
	struct hidbpfd_record *rec;
	struct hidbpfd_armed *armedp;
	__u32 zero = 0, n;
	__u64 *drops;
	int hold, truncated;

	table = bpf_map_lookup_elem(&hidbpfd_rules, &hid_id);
	if (!table)
		return HIDBPFD_VERDICT_QUIET;
	/* created by userspace before the table: none only while a device is torn down */
	armedp = bpf_map_lookup_elem(&hidbpfd_armed, &hid_id);
	if (!armedp)
		return HIDBPFD_VERDICT_QUIET;
	hidbpfd_scan_report(&s, table, data, len, armedp->mask, armedp->until, now);
	if (!s.matched)
		return HIDBPFD_VERDICT_QUIET;

	rec = bpf_ringbuf_reserve(&hidbpfd_ring, sizeof(*rec), 0);
	if (!rec) {
		/* the daemon never hears of it: the report passes, armed stays as it was */
		drops = bpf_map_lookup_elem(&hidbpfd_drops, &zero);
		if (drops)
			*drops += 1;	/* per-CPU slot: no other writer */
		return HIDBPFD_VERDICT_DROPPED;
	}
	if (s.disarm)
		__sync_fetch_and_and(&armedp->mask, ~s.disarm);
	if (s.arm) {
		hidbpfd_arm(table, s.matched, armedp->until, now);
		__sync_fetch_and_or(&armedp->mask, s.arm);
	}

	truncated = len > HIDBPFD_RECORD_DATA_MAX;
	hold = s.hold && can_hold && !truncated;
	rec->ts_ns = now;
	rec->matched = s.matched;
	rec->hid_id = hid_id;
	rec->flags = (hold ? HIDBPFD_REC_HELD : 0) | (truncated ? HIDBPFD_REC_TRUNCATED : 0);
	rec->len = len > 0xffff ? 0xffff : len;
	n = truncated ? HIDBPFD_RECORD_DATA_MAX : len;
	barrier_var(n);
	if (n > HIDBPFD_RECORD_DATA_MAX)
		n = HIDBPFD_RECORD_DATA_MAX;
	if (bpf_probe_read_kernel(rec->data, n, data))
		__builtin_memset(rec->data, 0, sizeof(rec->data));
	bpf_ringbuf_submit(rec, 0);
	return hold ? HIDBPFD_VERDICT_HOLD : HIDBPFD_VERDICT_NOTIFY;
}

#endif /* __bpf__ && !HIDBPFD_NO_FILTER */
#endif /* __HIDBPFD_H */
