// SPDX-License-Identifier: GPL-2.0
/*
 * 23. Blind xftrace without stopping it: its thread keeps beating, its key
 * stays good, its status says it captures, and nothing is recorded. At
 * every "on", right after the guest thread registers its graph callbacks
 * (a kretprobe on register_ftrace_graph), or once for all sessions, by
 * one of (how=):
 *   entry   graph entries go to ftrace's stub: no call is entered
 *   filter  the session's filter is emptied: no call matches
 *   busy    every CPU looks already inside the tracer: every record is
 *           counted as nested (an NMI's) and dropped
 * The empty capture that follows looks like an idle guest's.
 */
#include <linux/module.h>
#include <linux/kprobes.h>
#include <linux/percpu.h>
#include <linux/smp.h>
#include "rk_common.h"

static char *how = "entry";
module_param(how, charp, 0444);
static int fired;
module_param(fired, int, 0444);

static void **graph_entry;	/* ftrace_graph_entry */
static void *entry_stub;	/* ftrace_graph_entry_stub */
static void **session_hash;	/* xftrace_hash */
static int __percpu *busy;	/* xftrace_busy */

static int rk_mute_ret(struct kretprobe_instance *ri, struct pt_regs *regs)
{
	if (regs_return_value(regs))
		return 0;
	if (graph_entry)
		WRITE_ONCE(*graph_entry, entry_stub);
	if (session_hash)
		WRITE_ONCE(*session_hash, NULL);	/* leaked: a test */
	fired++;
	return 0;
}

static struct kretprobe rk_mute_probe = {
	.kp.symbol_name	= "register_ftrace_graph",
	.handler	= rk_mute_ret,
	.maxactive	= 4,
};

static void rk_busy(void *delta)
{
	this_cpu_add(*busy, (int)(long)delta);
}

static int __init rk_init(void)
{
	if (!strcmp(how, "busy")) {
		busy = (int __percpu *)rk_lookup("xftrace_busy");
		if (!busy)
			return -ENOENT;
		on_each_cpu(rk_busy, (void *)1L, 1);
		fired = 1;
		pr_info("rk_mute: every CPU looks busy in the tracer\n");
		return 0;
	}
	if (!strcmp(how, "entry")) {
		graph_entry = (void **)rk_lookup("ftrace_graph_entry");
		entry_stub = (void *)rk_lookup("ftrace_graph_entry_stub");
		if (!graph_entry || !entry_stub)
			return -ENOENT;
	} else if (!strcmp(how, "filter")) {
		session_hash = (void **)rk_lookup("xftrace_hash");
		if (!session_hash)
			return -ENOENT;
	} else {
		return -EINVAL;
	}
	pr_info("rk_mute: muting every session by %s\n", how);
	return register_kretprobe(&rk_mute_probe);
}

static void __exit rk_exit(void)
{
	if (busy)
		on_each_cpu(rk_busy, (void *)-1L, 1);
	else
		unregister_kretprobe(&rk_mute_probe);
}

module_init(rk_init);
module_exit(rk_exit);
MODULE_LICENSE("GPL");
