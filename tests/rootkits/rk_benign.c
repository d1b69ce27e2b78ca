// SPDX-License-Identifier: GPL-2.0
/*
 * 15. Not a rootkit: a module that hooks nothing, keeps a parameter and a
 * little code. Loaded, it must cause no finding at all.
 */
#include <linux/module.h>

static int loaded;
module_param(loaded, int, 0444);

static int __init rk_init(void)
{
	loaded = 1;
	return 0;
}

static void __exit rk_exit(void)
{
}

module_init(rk_init);
module_exit(rk_exit);
MODULE_LICENSE("GPL");
