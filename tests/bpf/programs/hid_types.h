/* SPDX-License-Identifier: (GPL-2.0-only OR MIT) */
/*
 * hid_types.h - the HID types of <hidbpfd/hid_compat.h> without its kfunc declarations (which
 * are __weak there): for a test that includes api_wq.h without <hidbpfd/api.h>, which gets
 * its kfuncs from api_wq.h (declared without __weak, so a kernel lacking one refuses the
 * object at load; tests/bpf/test_api_wq_build.py checks it).
 */
#ifndef HIDBPFD_TEST_HID_TYPES_H
#define HIDBPFD_TEST_HID_TYPES_H
#define HIDBPFD_COMPAT_NO_KFUNCS
#include <hidbpfd/hid_compat.h>
#endif
