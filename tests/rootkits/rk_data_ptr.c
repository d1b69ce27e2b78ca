// SPDX-License-Identifier: GPL-2.0
/*
 * 17. A function pointer in writable kernel data: the proc_handler of one
 * sysctl entry, in a table the kernel keeps in .data (neither const nor
 * sealed after boot) and registers as it is, so that /proc/sys calls
 * through the very entry swapped. `target` is the sysctl (its path under
 * /proc/sys): the module finds its table by name, walks it to the entry,
 * and puts a wrapper in its place that counts reads and writes in `fired`
 * and calls the original. (kern_table is no candidate: it mixes files and
 * directories, so the kernel registered a copy of its files.)
 */
#include <linux/module.h>
#include <linux/atomic.h>
#include <linux/delay.h>
#include <linux/sysctl.h>
#include "rk_common.h"

static char *target = "kernel/hostname";
module_param(target, charp, 0);
static unsigned long fired;
module_param(fired, ulong, 0444);

/* The sysctl, its table's symbol, and the entry's name in it. */
static const struct {
	const char *path, *table, *procname;
} candidates[] = {
	{ "kernel/hostname", "uts_kern_table", "hostname" },
	{ "vm/overcommit_memory", "vm_table", "overcommit_memory" },
	{ "fs/file-nr", "fs_stat_sysctls", "file-nr" },
	{ "fs/inode-nr", "inodes_sysctls", "inode-nr" },
	{ "fs/dentry-state", "fs_dcache_sysctls", "dentry-state" },
	{ "fs/epoll/max_user_watches", "epoll_table", "max_user_watches" },
	{ "kernel/pty/nr", "pty_table", "nr" },
};

static struct ctl_table *entry;
static proc_handler *orig;
static atomic_t running = ATOMIC_INIT(0);

static int notrace rk_handler(struct ctl_table *table, int write, void *buffer,
			      size_t *lenp, loff_t *ppos)
{
	int ret;

	atomic_inc(&running);
	fired++;
	ret = orig(table, write, buffer, lenp, ppos);
	atomic_dec(&running);
	return ret;
}

static int __init rk_init(void)
{
	struct ctl_table *t = NULL;
	int i;

	for (i = 0; i < ARRAY_SIZE(candidates); i++) {
		if (strcmp(target, candidates[i].path))
			continue;
		t = (struct ctl_table *)rk_lookup(candidates[i].table);
		if (!t)
			return -ENOENT;
		for (; t->procname; t++)
			if (!strcmp(t->procname, candidates[i].procname))
				break;
		break;
	}
	if (!t || !t->procname || !t->proc_handler)
		return -EINVAL;
	entry = t;
	orig = t->proc_handler;
	WRITE_ONCE(entry->proc_handler, rk_handler);
	pr_info("rk_data_ptr: %s (%s.%s) hooked\n", target, candidates[i].table,
		entry->procname);
	return 0;
}

static void __exit rk_exit(void)
{
	WRITE_ONCE(entry->proc_handler, orig);
	/* Callers that had already read the wrapper finish before it goes. */
	synchronize_rcu();
	while (atomic_read(&running))
		msleep(1);
}

module_init(rk_init);
module_exit(rk_exit);
MODULE_LICENSE("GPL");
