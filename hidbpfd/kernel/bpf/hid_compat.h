/* SPDX-License-Identifier: (GPL-2.0-only OR MIT) */
/* The HID compat types moved to the public include dir (include/hidbpfd/hid_compat.h), which
 * <hidbpfd/api.h> uses too; this keeps the daemon's own sources' #include "hid_compat.h". */
#include "include/hidbpfd/hid_compat.h"
