// SPDX-License-Identifier: GPL-2.0
/*
 * 20. Module code the kernel runs later, on its own, as rootkits keep a
 * backdoor or re-hide themselves: `how` is timer (a timer re-armed every
 * 100 ms from its callback), hrtimer (a high-resolution timer restarting
 * every 100 ms), work (a delayed work item re-queued every 100 ms) or
 * kthread (a kernel thread waking every 100 ms). `fired` counts the runs.
 */
#include <linux/module.h>
#include <linux/delay.h>
#include <linux/err.h>
#include <linux/hrtimer.h>
#include <linux/jiffies.h>
#include <linux/kthread.h>
#include <linux/sched.h>
#include <linux/timer.h>
#include <linux/workqueue.h>

static char *how = "timer";
module_param(how, charp, 0);
static unsigned long fired;
module_param(fired, ulong, 0444);

#define PERIOD_MS 100

static bool stopping;
static struct timer_list timer;
static struct hrtimer hrtimer;
static struct delayed_work work;
static struct task_struct *thread;

static void notrace rk_timer(struct timer_list *t)
{
	fired++;
	if (!READ_ONCE(stopping))
		mod_timer(t, jiffies + msecs_to_jiffies(PERIOD_MS));
}

static enum hrtimer_restart notrace rk_hrtimer(struct hrtimer *t)
{
	fired++;
	hrtimer_forward_now(t, ms_to_ktime(PERIOD_MS));
	return HRTIMER_RESTART;
}

static void notrace rk_work(struct work_struct *w)
{
	fired++;
	schedule_delayed_work(to_delayed_work(w), msecs_to_jiffies(PERIOD_MS));
}

static int notrace rk_thread(void *data)
{
	while (!kthread_should_stop()) {
		fired++;
		msleep_interruptible(PERIOD_MS);
	}
	return 0;
}

static int __init rk_init(void)
{
	if (!strcmp(how, "timer")) {
		timer_setup(&timer, rk_timer, 0);
		mod_timer(&timer, jiffies + msecs_to_jiffies(PERIOD_MS));
	} else if (!strcmp(how, "hrtimer")) {
		hrtimer_init(&hrtimer, CLOCK_MONOTONIC, HRTIMER_MODE_REL);
		hrtimer.function = rk_hrtimer;
		hrtimer_start(&hrtimer, ms_to_ktime(PERIOD_MS), HRTIMER_MODE_REL);
	} else if (!strcmp(how, "work")) {
		INIT_DELAYED_WORK(&work, rk_work);
		schedule_delayed_work(&work, msecs_to_jiffies(PERIOD_MS));
	} else if (!strcmp(how, "kthread")) {
		thread = kthread_run(rk_thread, NULL, "rk_deferred");
		if (IS_ERR(thread))
			return PTR_ERR(thread);
	} else {
		return -EINVAL;
	}
	return 0;
}

static void __exit rk_exit(void)
{
	if (!strcmp(how, "timer")) {
		WRITE_ONCE(stopping, true);
		del_timer_sync(&timer);
	} else if (!strcmp(how, "hrtimer")) {
		hrtimer_cancel(&hrtimer);
	} else if (!strcmp(how, "work")) {
		cancel_delayed_work_sync(&work);
	} else {
		kthread_stop(thread);
	}
}

module_init(rk_init);
module_exit(rk_exit);
MODULE_LICENSE("GPL");
