// SPDX-License-Identifier: GPL-2.0
/*
 * 15. Not a rootkit: a module that hooks nothing, keeps a parameter and a
 * little code. Loaded, it must cause no finding at all. Its code has what
 * the module loader and the kernel's patching rewrite in every module
 * (calls into the kernel and into itself, its own data, a static branch,
 * alternatives, ftrace's call sites), so that a test that names it a
 * module of the build proves xftrace tells that code from an impostor's.
 */
#include <linux/jiffies.h>
#include <linux/jump_label.h>
#include <linux/module.h>
#include <linux/slab.h>
#include <asm/msr.h>

static int loaded;
module_param(loaded, int, 0444);
static unsigned long stamp;
module_param(stamp, ulong, 0444);

static DEFINE_STATIC_KEY_FALSE(rk_verbose);

static noinline unsigned long rk_work(void)
{
	unsigned long *p = kmalloc(sizeof(*p), GFP_KERNEL);
	unsigned long v = jiffies ^ (unsigned long)rdtsc_ordered();

	if (static_branch_unlikely(&rk_verbose))
		pr_info("rk_benign: %lu\n", v);
	if (p) {
		*p = v;
		v = *p + 1;
		kfree(p);
	}
	return v;
}

static int __init rk_init(void)
{
	stamp = rk_work();
	loaded = 1;
	return 0;
}

static void __exit rk_exit(void)
{
	stamp = rk_work();
}

module_init(rk_init);
module_exit(rk_exit);
MODULE_LICENSE("GPL");
