// SPDX-License-Identifier: GPL-2.0
/*
 * 7. An inline hook in the body of an ordinary kernel function: a jump to
 * module code written over the instructions after ftrace's call site, where
 * no patch table says the kernel ever writes.
 */
#include <linux/module.h>
#include "rk_common.h"
#include "rk_common_show.h"

static u8 *site;
static u8 saved[5];

static int __init rk_init(void)
{
	u8 *fn = (u8 *)rk_lookup(target);
	u8 jmp[5] = { 0xe9 };
	s32 rel;

	if (!fn)
		return -ENOENT;
	site = fn + rk_body_offset(fn);
	rel = (s32)((long)rk_show - (long)(site + 5));
	memcpy(jmp + 1, &rel, 4);
	memcpy(saved, site, 5);
	rk_write(site, jmp, 5);
	pr_info("rk_inline: %s+%#lx jumps to rk_show\n", target, (long)(site - fn));
	return 0;
}

static void __exit rk_exit(void)
{
	rk_write(site, saved, 5);
}

module_init(rk_init);
module_exit(rk_exit);
MODULE_LICENSE("GPL");
