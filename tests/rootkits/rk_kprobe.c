// SPDX-License-Identifier: GPL-2.0
/*
 * 8. A kprobe whose handler redirects execution: an int3 in the body of an
 * ordinary kernel function, and a pre-handler that moves the instruction
 * pointer to module code. (A post-handler keeps kprobes from optimizing the
 * breakpoint into a jump, as a handler that changes ip requires.) With
 * at_entry=1 the kprobe sits on the function's ftrace site instead, where
 * the kernel arms it through ftrace, with no breakpoint in the code. With
 * on_return=1 it is a kretprobe, whose return handler makes the function
 * fail (-EIO): the file reads nothing.
 */
#include <linux/module.h>
#include <linux/kprobes.h>
#include "rk_common.h"
#include "rk_common_show.h"

static bool at_entry;
module_param(at_entry, bool, 0);
static bool on_return;
module_param(on_return, bool, 0);

static int rk_pre(struct kprobe *p, struct pt_regs *regs)
{
	regs->ip = (unsigned long)rk_show;
	return 1;
}

static void rk_post(struct kprobe *p, struct pt_regs *regs, unsigned long flags)
{
}

static struct kprobe kp = {
	.pre_handler = rk_pre,
	.post_handler = rk_post,
};

static int rk_ret(struct kretprobe_instance *ri, struct pt_regs *regs)
{
	regs_set_return_value(regs, -EIO);
	return 0;
}

static struct kretprobe krp = {
	.handler = rk_ret,
};

static int __init rk_init(void)
{
	u8 *fn = (u8 *)rk_lookup(target);
	int ret;

	if (!fn)
		return -ENOENT;
	if (on_return) {
		krp.kp.symbol_name = target;
		return register_kretprobe(&krp);
	}
	kp.symbol_name = target;
	kp.offset = at_entry ? 0 : rk_body_offset(fn);
	ret = register_kprobe(&kp);
	if (ret)
		return ret;
	pr_info("rk_kprobe: %s+%#x redirected\n", target, kp.offset);
	return 0;
}

static void __exit rk_exit(void)
{
	if (on_return)
		unregister_kretprobe(&krp);
	else
		unregister_kprobe(&kp);
}

module_init(rk_init);
module_exit(rk_exit);
MODULE_LICENSE("GPL");
