// SPDX-License-Identifier: GPL-2.0
/*
 * 13. A tracepoint probe: a handler on the kernel tracepoint `tp` (the
 * process tracepoints rootkits watch to follow or hide processes),
 * registered as perf and ftrace register theirs. `fired` counts its calls.
 */
#include <linux/module.h>
#include <linux/tracepoint.h>

static char *tp = "sched_process_fork";
module_param(tp, charp, 0);
static int fired;
module_param(fired, int, 0444);

static struct tracepoint *found;

static void rk_probe(void *data)
{
	fired++;
}

static void rk_find(struct tracepoint *t, void *priv)
{
	if (!strcmp(t->name, tp))
		found = t;
}

static int __init rk_init(void)
{
	for_each_kernel_tracepoint(rk_find, NULL);
	if (!found)
		return -ENOENT;
	return tracepoint_probe_register(found, rk_probe, NULL);
}

static void __exit rk_exit(void)
{
	tracepoint_probe_unregister(found, rk_probe, NULL);
	tracepoint_synchronize_unregister();
}

module_init(rk_init);
module_exit(rk_exit);
MODULE_LICENSE("GPL");
