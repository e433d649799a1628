/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * wq_compat.h - bpf_wq declarations for both calling conventions of its callback kfunc.
 *
 * Linux 6.10-6.x:  int bpf_wq_set_callback_impl(struct bpf_wq *wq, cb, unsigned int flags__k,
 *                                               void *aux__ign);
 * Linux 7.x:       int bpf_wq_set_callback(struct bpf_wq *wq, cb, unsigned int flags);
 *                  (and _impl's last parameter became struct bpf_prog_aux *)
 *
 * libbpf 1.1 checks a kfunc's prototype against the kernel's BTF and has no ___flavour names
 * for kfuncs, so no one declaration loads on both. hidbpfd.kernel.bpf.build compiles every source
 * that includes this header twice: X.bpf.o (the 7.x kfunc) and X.wq_impl.bpf.o (with
 * HIDBPFD_WQ_CALLBACK_IMPL); hidbpfd.kernel.libbpf.object_for_kernel() picks the one the
 * running kernel's BTF names.
 */
#ifndef HIDBPFD_WQ_COMPAT_H
#define HIDBPFD_WQ_COMPAT_H

extern int bpf_wq_init(struct bpf_wq *wq, void *p__map, unsigned int flags) __weak __ksym;
extern int bpf_wq_start(struct bpf_wq *wq, unsigned int flags) __weak __ksym;

#ifdef HIDBPFD_WQ_CALLBACK_IMPL
extern int bpf_wq_set_callback_impl(struct bpf_wq *wq,
				    int (callback_fn)(void *map, int *key, void *value),
				    unsigned int flags__k, void *aux__ign) __weak __ksym;
#define hidbpfd_wq_set_callback(wq, cb, flags) bpf_wq_set_callback_impl(wq, cb, flags, NULL)
#else
extern int bpf_wq_set_callback(struct bpf_wq *wq,
			       int (callback_fn)(void *map, int *key, void *value),
			       unsigned int flags) __weak __ksym;
#define hidbpfd_wq_set_callback(wq, cb, flags) bpf_wq_set_callback(wq, cb, flags)
#endif

#endif /* HIDBPFD_WQ_COMPAT_H */
