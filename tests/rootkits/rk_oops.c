// SPDX-License-Identifier: GPL-2.0
/*
 * 27. Crash or warn in a work item, as a rootkit that gets something wrong
 * (or an exploit that fails) does: a NULL pointer written through
 * (how=null: an Oops), BUG() (how=bug) or WARN() (how=warn), from a work
 * item on a workqueue of its own, a moment after it loads. An Oops or a
 * BUG kills the kernel thread that ran the work item, which never
 * finishes: this module cannot be unloaded after one (nothing drains its
 * workqueue), and says so.
 */
#include <linux/module.h>
#include <linux/workqueue.h>

static char *how = "null";
module_param(how, charp, 0444);

static struct workqueue_struct *wq;
static struct delayed_work work;
static int *volatile nowhere;

static void rk_work(struct work_struct *w)
{
	pr_info("rk_oops: %s now\n", how);
	if (!strcmp(how, "warn"))
		WARN(1, "rk_oops: warning on purpose\n");
	else if (!strcmp(how, "bug"))
		BUG();
	else
		*nowhere = 1;
}

static int __init rk_init(void)
{
	if (strcmp(how, "null") && strcmp(how, "bug") && strcmp(how, "warn"))
		return -EINVAL;
	wq = alloc_workqueue("rk_oops", WQ_UNBOUND, 1);
	if (!wq)
		return -ENOMEM;
	INIT_DELAYED_WORK(&work, rk_work);
	queue_delayed_work(wq, &work, msecs_to_jiffies(100));
	return 0;
}

static void __exit rk_exit(void)
{
	/* After a warning only: an Oops leaves the work item unfinished. */
	cancel_delayed_work_sync(&work);
	destroy_workqueue(wq);
}

module_init(rk_init);
module_exit(rk_exit);
MODULE_LICENSE("GPL");
