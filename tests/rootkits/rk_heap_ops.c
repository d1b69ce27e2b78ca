// SPDX-License-Identifier: GPL-2.0
/*
 * 18. An operation table swapped in a heap object: the root inode of the
 * file system mounted at `path` gets a copy of its file_operations, kept
 * in the heap (copy=heap) or in the module (copy=module), whose
 * iterate_shared is a wrapper that counts directory listings in `fired`
 * and calls the original. The kernel's own tables are left alone: only
 * the inode's i_fop points elsewhere.
 *
 * The copy names this module its owner, so every directory opened through
 * it holds the module: it cannot be unloaded while one is open.
 */
#include <linux/module.h>
#include <linux/delay.h>
#include <linux/fs.h>
#include <linux/namei.h>
#include <linux/path.h>
#include <linux/slab.h>

static char *path = "/";
module_param(path, charp, 0);
static char *copy = "heap";
module_param(copy, charp, 0);
static unsigned long fired;
module_param(fired, ulong, 0444);

static struct path p;
static struct inode *inode;
static const struct file_operations *orig_fops;
static int (*orig_iterate)(struct file *, struct dir_context *);
static struct file_operations module_copy;
static struct file_operations *fops;

static int notrace rk_iterate(struct file *file, struct dir_context *ctx)
{
	fired++;
	return orig_iterate(file, ctx);
}

static int __init rk_init(void)
{
	int err;

	if (strcmp(copy, "heap") && strcmp(copy, "module"))
		return -EINVAL;
	err = kern_path(path, LOOKUP_FOLLOW | LOOKUP_DIRECTORY, &p);
	if (err)
		return err;
	inode = d_inode(p.dentry);
	orig_fops = inode->i_fop;
	if (!orig_fops || !orig_fops->iterate_shared) {
		path_put(&p);
		return -EINVAL;
	}
	if (!strcmp(copy, "heap")) {
		fops = kmemdup(orig_fops, sizeof(*fops), GFP_KERNEL);
		if (!fops) {
			path_put(&p);
			return -ENOMEM;
		}
	} else {
		module_copy = *orig_fops;
		fops = &module_copy;
	}
	orig_iterate = orig_fops->iterate_shared;
	fops->iterate_shared = rk_iterate;
	fops->owner = THIS_MODULE;
	WRITE_ONCE(inode->i_fop, fops);
	pr_info("rk_heap_ops: i_fop of the root inode of %s (%s) swapped for a %s copy\n",
		p.dentry->d_sb->s_type->name, path, copy);
	return 0;
}

static void __exit rk_exit(void)
{
	WRITE_ONCE(inode->i_fop, orig_fops);
	/* An open that read the copy just before gives up on the dying owner. */
	synchronize_rcu();
	msleep(20);
	if (fops != &module_copy)
		kfree(fops);
	path_put(&p);
}

module_init(rk_init);
module_exit(rk_exit);
MODULE_LICENSE("GPL");
