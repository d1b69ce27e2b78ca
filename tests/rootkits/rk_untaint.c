// SPDX-License-Identifier: GPL-2.0
/*
 * 24. Clear the kernel's taint flags, so that /proc/sys/kernel/tainted and
 * any Oops report read clean although an out-of-tree module (this one) is
 * loaded: the whole mask (how=all) or only the flags modules set
 * (how=modules: out of tree, unsigned, forced). Put back on unload.
 */
#include <linux/module.h>
#include <linux/panic.h>
#include "rk_common.h"

static char *how = "all";
module_param(how, charp, 0444);
static unsigned long before;
module_param(before, ulong, 0444);

static unsigned long *mask;

static int __init rk_init(void)
{
	unsigned long clear = ~0UL;

	mask = (unsigned long *)rk_lookup("tainted_mask");
	if (!mask)
		return -ENOENT;
	if (!strcmp(how, "modules"))
		clear = BIT(TAINT_OOT_MODULE) | BIT(TAINT_UNSIGNED_MODULE) |
			BIT(TAINT_FORCED_MODULE);
	else if (strcmp(how, "all"))
		return -EINVAL;
	before = READ_ONCE(*mask);
	WRITE_ONCE(*mask, before & ~clear);
	pr_info("rk_untaint: tainted_mask %#lx -> %#lx\n", before, READ_ONCE(*mask));
	return 0;
}

static void __exit rk_exit(void)
{
	WRITE_ONCE(*mask, READ_ONCE(*mask) | before);
}

module_init(rk_init);
module_exit(rk_exit);
MODULE_LICENSE("GPL");
