// SPDX-License-Identifier: GPL-2.0
/*
 * xftrace-dkms: function graph records for a host that reads guest RAM,
 * from a module on the distribution's own kernel.
 *
 * This is the guest side of guest-kernel/patches/0002 (kernel/trace/
 * trace_xftrace.c) for a kernel that was not patched: the same control
 * block, heads, rings, records, keys, commands, capture gate and probe
 * (xftrace's docs/abi.md, version 4), so the host cannot tell which side
 * wrote a record. What differs, because a module cannot change the kernel:
 *
 *  - Where things are (docs/abi.md §1.1). The control block is a
 *    page-aligned variable of this module; the host finds the module in
 *    the kernel's module list and the block by its magic in the module's
 *    memory, at the virtual address the block names. The ring heads are
 *    one physically contiguous allocation.
 *  - Unexported kernel functions. Linux 6.1 exports neither
 *    register_ftrace_graph() nor kallsyms_lookup_name(). As LKRG does, the
 *    module takes kallsyms_lookup_name's address from a kprobe placed on
 *    it, and resolves the rest by name (xftrace_resolve()). It refuses to
 *    load when any is missing, on a kernel release other than the one it
 *    was built for, and on xftrace's own kernel (which has the tracer).
 *  - The filter. The patch matches names with ftrace's own matcher into a
 *    hash; this module walks kallsyms (the kernel's and modules' symbols)
 *    with glob_match() into a sorted array of ftrace call sites.
 *  - Marks. The patch keeps a task's filtered call in task_struct; a
 *    module cannot add fields, so a call is inside a filtered call when a
 *    frame below it on the task's return stack holds a filtered function
 *    that began in this session (at most FTRACE_RETFUNC_DEPTH frames).
 *  - What narrows the capture is read from the kernel's own variables
 *    (ftrace_enabled, ftrace_disabled, global_ops' filter and notrace
 *    hashes, kill_ftrace_graph, ftrace_graph_return).
 *  - The gate (patch 0003's test in ftrace_graph_func). A module cannot
 *    change that function, so while it is the graph client it points
 *    fgraph's own ftrace_ops (graph_ops) at xftrace_gate(), which calls
 *    ftrace_graph_func() only for a call that may be recorded. The
 *    pointer is set and restored under ftrace_lock, and only while no
 *    graph tracer is registered (xftrace_hook_graph()).
 *
 * Unloading turns tracing off, clears the magic and stops the heartbeat:
 * the host reports it as a stopped tracer.
 */
#include <linux/atomic.h>
#include <linux/cpu.h>
#include <linux/ftrace.h>
#include <linux/gfp.h>
#include <linux/io.h>
#include <linux/glob.h>
#include <linux/hash.h>
#include <linux/jump_label.h>
#include <linux/kprobes.h>
#include <linux/kthread.h>
#include <linux/mm.h>
#include <linux/module.h>
#include <linux/mutex.h>
#include <linux/percpu.h>
#include <linux/rcupdate.h>
#include <linux/sched.h>
#include <linux/slab.h>
#include <linux/sort.h>
#include <linux/timer.h>
#include <linux/trace_clock.h>
#include <linux/utsname.h>
#include <linux/vmalloc.h>
#include <linux/workqueue.h>
#include <generated/utsrelease.h>

#define XFTRACE_MAGIC		0x3145434152544658ULL	/* "XFTRACE1" */
#define XFTRACE_CHECK_SEED	0x314b484352544658ULL	/* "XFTRCHK1" */
#define XFTRACE_ABI_VERSION	4
#define XFTRACE_MAX_RINGS	256	/* ring_pa[] and the heads */
#define XFTRACE_KEY_SLOTS	16
#define XFTRACE_FUNCS_SIZE	1024
/* Poll periods: as the patch's (docs/abi.md §2, heartbeat). */
#define XFTRACE_POLL_MS		20
#define XFTRACE_IDLE_POLL_MS	100
#define XFTRACE_IDLE_MAX_MS	1000
#define XFTRACE_AWAKE_MS	2000
#define XFTRACE_DRAIN_MS	200
#define XFTRACE_PROBE_MS	200
/* Functions one filter may select at most. */
#define XFTRACE_MAX_FUNCS	65536

static unsigned int ring_slots = 16384;
module_param(ring_slots, uint, 0444);
MODULE_PARM_DESC(ring_slots, "records per CPU ring, a power of two in [64, 65536] (default 16384: 1 MiB)");

enum xftrace_op {
	XFTRACE_OP_NONE	= 0,
	XFTRACE_OP_ON	= 1,
	XFTRACE_OP_OFF	= 2,
};

#define XFTRACE_FLAG_IRQS	(1ULL << 0)

enum xftrace_state {
	XFTRACE_OFF		= 0,
	XFTRACE_ARMED		= 1,
	XFTRACE_CAPTURING	= 2,
	XFTRACE_DRAINING	= 3,
};

/* `narrowed` bits (docs/abi.md §3) */
#define XFTRACE_NARROW_DISABLED	(1U << 0)
#define XFTRACE_NARROW_FILTER	(1U << 1)
#define XFTRACE_NARROW_NOTRACE	(1U << 2)
#define XFTRACE_NARROW_DEAD	(1U << 3)
#define XFTRACE_NARROW_UNHOOKED	(1U << 8)

enum xftrace_type {
	XFTRACE_ENTRY	= 1,
	XFTRACE_RETURN	= 2,
};

struct xftrace_key_slot {
	u64	epoch;
	u64	key;
};

/* docs/abi.md §2; the static_asserts pin it as the patch's do. */
struct xftrace_control {
	u64	magic;			/* 0x000 */
	u32	abi_version;		/* 0x008 */
	u32	ctl_size;		/* 0x00c */
	u64	ctl_va;			/* 0x010 */
	u64	heads_va;		/* 0x018 */
	u64	text_va;		/* 0x020 */
	u32	nr_rings;		/* 0x028 */
	u32	ring_slots;		/* 0x02c */
	u32	slot_size;		/* 0x030 */
	u32	nr_cpus;		/* 0x034 */
	u32	funcs_size;		/* 0x038 */
	u32	nr_key_slots;		/* 0x03c */
	u64	heartbeat;		/* 0x040 */
	u64	ack_seq;		/* 0x048 */
	s32	ack_result;		/* 0x050 */
	u32	tracing;		/* 0x054 */
	atomic64_t unringed;		/* 0x058 */
	atomic64_t nested;		/* 0x060 */
	u32	state;			/* 0x068 */
	u32	narrowed;		/* 0x06c */
	u64	session_start;		/* 0x070 */
	u64	session;		/* 0x078 */
	u32	filter_count;		/* 0x080 */
	u8	__pad0[0x100 - 0x084];
	u64	cur_epoch;		/* 0x100 */
	u64	__pad1;			/* 0x108 */
	struct xftrace_key_slot keys[XFTRACE_KEY_SLOTS]; /* 0x110 */
	u8	__pad2[0x300 - 0x210];
	u64	cmd_seq;		/* 0x300 */
	u32	cmd_op;			/* 0x308 */
	u32	funcs_len;		/* 0x30c */
	u64	cmd_flags;		/* 0x310 */
	u8	__pad3[0x400 - 0x318];
	char	funcs[XFTRACE_FUNCS_SIZE]; /* 0x400 */
	u64	ring_pa[XFTRACE_MAX_RINGS];	/* 0x800 */
};

struct xftrace_head {
	u64	head;
	u64	dropped;
	u64	__pad[6];
};

struct xftrace_slot {
	u64	commit;
	u64	epoch;
	u64	func;
	u64	time;
	u64	calltime;
	u64	info;
	u64	aux;
	u64	check;
};

static_assert(sizeof(struct xftrace_control) == 0x1000);
static_assert(offsetof(struct xftrace_control, heartbeat) == 0x040);
static_assert(offsetof(struct xftrace_control, unringed) == 0x058);
static_assert(offsetof(struct xftrace_control, state) == 0x068);
static_assert(offsetof(struct xftrace_control, filter_count) == 0x080);
static_assert(offsetof(struct xftrace_control, cur_epoch) == 0x100);
static_assert(offsetof(struct xftrace_control, keys) == 0x110);
static_assert(offsetof(struct xftrace_control, cmd_seq) == 0x300);
static_assert(offsetof(struct xftrace_control, cmd_flags) == 0x310);
static_assert(offsetof(struct xftrace_control, funcs) == 0x400);
static_assert(offsetof(struct xftrace_control, ring_pa) == 0x800);
static_assert(sizeof(atomic64_t) == 8);
static_assert(sizeof(struct xftrace_head) == 64);
static_assert(sizeof(struct xftrace_slot) == 64);

#define XFTRACE_HEADS_BYTES	(XFTRACE_MAX_RINGS * sizeof(struct xftrace_head))

static struct xftrace_control xftrace_control __aligned(PAGE_SIZE);
/* Physically contiguous (the host reads them by physical address). */
static struct xftrace_head *xftrace_heads;
static struct xftrace_slot *xftrace_ring[XFTRACE_MAX_RINGS];
static DEFINE_PER_CPU(int, xftrace_busy);

static int xftrace_state;
static bool xftrace_irqs;
/* The filter: sorted ftrace call sites; replaced only while the gate is off. */
static unsigned long *xftrace_funcs;
static unsigned int xftrace_nfuncs;
static unsigned int xftrace_session;
static u64 xftrace_session_start;
static atomic_t xftrace_active;
static u64 xftrace_ring_mask;

/* The kernel's, resolved by name (xftrace_resolve()). */
static struct {
	unsigned long (*lookup_name)(const char *name);
	int (*register_graph)(struct fgraph_ops *ops);
	void (*unregister_graph)(struct fgraph_ops *ops);
	unsigned long (*location)(unsigned long ip);
	int (*each_symbol)(int (*fn)(void *, const char *, struct module *,
				     unsigned long), void *data);
	int (*each_module_symbol)(int (*fn)(void *, const char *,
					    struct module *, unsigned long),
				  void *data);
	trace_func_graph_ret_t *graph_return;
	/* The gate's: fgraph's ftrace_ops, its function, the lock that
	 * registration holds, and whether a graph tracer is registered. */
	struct ftrace_ops *graph_ops;
	ftrace_func_t graph_func;
	struct mutex *ftrace_lock;
	int *graph_active;
	int *enabled;
	int *disabled;
	struct ftrace_ops *global_ops;
	struct static_key_false *dead;
	unsigned long text;
} k;

/* kernel/trace/ftrace.h's struct ftrace_hash, as far as it is read here. */
struct xftrace_ftrace_hash {
	unsigned long size_bits;
	struct hlist_head *buckets;
	unsigned long count;
	unsigned long flags;
};

static __always_inline u64 xftrace_mix(u64 h, u64 v)
{
	h ^= v;
	h *= 0x9e3779b97f4a7c15ULL;
	return h ^ (h >> 32);
}

static __always_inline u64 xftrace_check(u64 key, u64 seq, u64 epoch,
					 u64 func, u64 time, u64 calltime,
					 u64 info, u64 aux)
{
	u64 check = xftrace_mix(key ^ XFTRACE_CHECK_SEED, seq);

	check = xftrace_mix(check, epoch);
	check = xftrace_mix(check, func);
	check = xftrace_mix(check, time);
	check = xftrace_mix(check, calltime);
	check = xftrace_mix(check, info);
	return xftrace_mix(check, aux);
}

static __always_inline bool xftrace_get_key(u64 *epoch, u64 *key)
{
	struct xftrace_control *c = &xftrace_control;
	int tries;

	for (tries = 0; tries < 4; tries++) {
		u64 e = READ_ONCE(c->cur_epoch);
		struct xftrace_key_slot *s = &c->keys[e % XFTRACE_KEY_SLOTS];
		u64 e1, e2, kv;

		if (!e)
			return false;
		e1 = READ_ONCE(s->epoch);
		smp_rmb();
		kv = READ_ONCE(s->key);
		smp_rmb();
		e2 = READ_ONCE(s->epoch);
		if (e1 == e && e2 == e) {
			*epoch = e;
			*key = kv;
			return true;
		}
	}
	return false;
}

/* As the patch's xftrace_push() (docs/abi.md §5). */
static void xftrace_push(u64 type, unsigned long func, int depth, u64 time,
			 u64 calltime, u64 aux)
{
	struct xftrace_control *c = &xftrace_control;
	struct xftrace_slot *ring, *slot;
	struct xftrace_head *h;
	u64 seq, epoch, key, info;
	unsigned long flags;
	int cpu;

#ifdef XFTRACE_BENCH_NOWRITE
	/*
	 * A build for `cargo bench --bench guest -- --dkms` only (make
	 * XFTRACE_BENCH_NOWRITE=y): the graph client takes the calls it takes
	 * and writes nothing, so the bench can tell fgraph's own entry and
	 * return machinery from the cost of the records.
	 */
	return;
#endif
	local_irq_save(flags);
	if (unlikely(__this_cpu_inc_return(xftrace_busy) != 1)) {
		atomic64_inc(&c->nested);
		goto out;
	}
	if (unlikely(READ_ONCE(xftrace_state) < XFTRACE_CAPTURING))
		goto out;
	cpu = raw_smp_processor_id();
	ring = cpu < XFTRACE_MAX_RINGS ? READ_ONCE(xftrace_ring[cpu]) : NULL;
	if (unlikely(!ring)) {
		atomic64_inc(&c->unringed);
		goto out;
	}
	h = &xftrace_heads[cpu];
	if (unlikely(!xftrace_get_key(&epoch, &key))) {
		WRITE_ONCE(h->dropped, h->dropped + 1);
		goto out;
	}

	seq = h->head;
	slot = &ring[seq & xftrace_ring_mask];
	info = type | ((u64)(depth & 0xffffff) << 8) |
	       ((u64)(u32)current->pid << 32);

	WRITE_ONCE(slot->commit, ((seq + 1) << 1) | 1);
	smp_wmb();
	WRITE_ONCE(slot->epoch, epoch);
	WRITE_ONCE(slot->func, func ^ key);
	WRITE_ONCE(slot->time, time ^ key);
	WRITE_ONCE(slot->calltime, calltime ^ key);
	WRITE_ONCE(slot->info, info ^ key);
	WRITE_ONCE(slot->aux, aux ^ key);
	WRITE_ONCE(slot->check, xftrace_check(key, seq, epoch, func, time,
					      calltime, info, aux));
	smp_wmb();
	WRITE_ONCE(slot->commit, (seq + 1) << 1);
	WRITE_ONCE(h->head, seq + 1);
out:
	__this_cpu_dec(xftrace_busy);
	local_irq_restore(flags);
}

/*
 * Is @ip in the filter? A binary search of our own: the callbacks call
 * nothing that has an ftrace call site (lib's bsearch() has one).
 */
static __always_inline bool xftrace_filtered(unsigned long ip)
{
	const unsigned long *f = READ_ONCE(xftrace_funcs);
	unsigned int lo = 0, hi = READ_ONCE(xftrace_nfuncs);

	if (!f)
		return false;
	while (lo < hi) {
		unsigned int mid = lo + (hi - lo) / 2;

		if (f[mid] == ip)
			return true;
		if (f[mid] < ip)
			lo = mid + 1;
		else
			hi = mid;
	}
	return false;
}

/*
 * Is the call at frame @idx of @t's return stack inside a filtered call of
 * this session: does a frame below it hold a filtered function that began
 * at or after the session opened? The frames below are the calls it runs
 * in, pushed by fgraph itself; at most FTRACE_RETFUNC_DEPTH of them.
 */
static __always_inline bool xftrace_inside(struct task_struct *t, int idx,
					   u64 start)
{
	struct ftrace_ret_stack *rs = t->ret_stack;
	int j;

	if (!rs)
		return false;
	for (j = 0; j < idx && j < FTRACE_RETFUNC_DEPTH; j++) {
		if (rs[j].calltime >= start && xftrace_filtered(rs[j].func))
			return true;
	}
	return false;
}

static int xftrace_entry(struct ftrace_graph_ent *trace)
{
	struct task_struct *t = current;
	int state = READ_ONCE(xftrace_state);
	u64 calltime, start, comm[2];
	int idx;

	if (state < XFTRACE_CAPTURING)
		return 0;
	if (!READ_ONCE(xftrace_irqs) && !in_task())
		return 0;
	idx = t->curr_ret_stack;
	if (idx < 0 || idx >= FTRACE_RETFUNC_DEPTH || !t->ret_stack)
		return 0;
	calltime = t->ret_stack[idx].calltime;
	start = READ_ONCE(xftrace_session_start);
	if (calltime < start)
		return 0;
	if (!xftrace_inside(t, idx, start)) {
		if (state != XFTRACE_CAPTURING)
			return 0;
		if (!xftrace_filtered(trace->func))
			return 0;
		atomic_inc(&xftrace_active);
	}
	BUILD_BUG_ON(sizeof(t->comm) != sizeof(comm));
	memcpy(comm, t->comm, sizeof(comm));
	xftrace_push(XFTRACE_ENTRY, trace->func, trace->depth, calltime,
		     comm[0], comm[1]);
	return 1;
}

static void xftrace_return(struct ftrace_graph_ret *trace)
{
	struct task_struct *t = current;
	int idx = t->curr_ret_stack;	/* still this call's frame */
	u64 start = READ_ONCE(xftrace_session_start);

	/* Returns of calls entered before this session are not ours. */
	if (trace->calltime < start)
		return;
	if (idx >= 0 && idx < FTRACE_RETFUNC_DEPTH &&
	    xftrace_filtered(trace->func) && !xftrace_inside(t, idx, start))
		atomic_dec(&xftrace_active);
	xftrace_push(XFTRACE_RETURN, trace->func, trace->depth, trace->rettime,
		     trace->calltime, trace->overrun);
}

/*
 * The gate (patch 0003's xftrace_graph_gate()): fgraph's entry for a call
 * only if xftrace may record it. A task with no frame on its return stack
 * is inside no call xftrace took (fgraph pops the frame of a call the
 * entry refuses, and xftrace is the only graph client while the gate is
 * on), so its call is recorded only if its function is in the filter: one
 * bit of a word first, the search only when that bit is set. A task with
 * a frame goes to the entry, which decides as before. So the gate refuses
 * nothing the entry would take, and the records do not change. While
 * xftrace_gated is false (being switched, or someone else's
 * function_graph that registered with the gate in place), it passes all.
 */
static unsigned long xftrace_bloom;
static bool xftrace_gated;
/* The module stays loaded while someone else's function_graph calls it. */
static bool xftrace_pinned;

static __always_inline unsigned long xftrace_bloom_bit(unsigned long ip)
{
	return 1UL << hash_long(ip, 6);
}

static void notrace xftrace_gate(unsigned long ip, unsigned long parent_ip,
				 struct ftrace_ops *op, struct ftrace_regs *fregs)
{
	if (likely(READ_ONCE(xftrace_gated)) && current->curr_ret_stack < 0 &&
	    (!(READ_ONCE(xftrace_bloom) & xftrace_bloom_bit(ip)) ||
	     !xftrace_filtered(ip)))
		return;
	k.graph_func(ip, parent_ip, op, fregs);
}

/*
 * Point graph_ops at the gate before registering, while no graph tracer is
 * registered (one that is would keep calling what it was given). False if
 * the gate is not in place: someone else's function_graph is registered
 * (register_ftrace_graph() then fails anyway), or graph_ops calls
 * something else than ftrace_graph_func() (then xftrace runs ungated).
 */
static bool xftrace_hook_graph(void)
{
	bool hooked = false;

	mutex_lock(k.ftrace_lock);
	if (!READ_ONCE(*k.graph_active) && k.graph_ops->func == k.graph_func) {
		WRITE_ONCE(k.graph_ops->func, xftrace_gate);
		hooked = true;
	}
	mutex_unlock(k.ftrace_lock);
	return hooked;
}

/*
 * Give graph_ops its function back (after unregistering, or after a
 * failed registration). A function_graph someone registered while the gate
 * was in place (between the hook and xftrace's registration, or between
 * its unregistration and this) has the gate in its trampoline: the gate is
 * off, so it passes everything, and the module stays loaded until that
 * tracer is gone (xftrace_unpin()).
 */
static void xftrace_unhook_graph(void)
{
	mutex_lock(k.ftrace_lock);
	if (k.graph_ops->func == xftrace_gate)
		WRITE_ONCE(k.graph_ops->func, k.graph_func);
	if (k.graph_ops->saved_func == xftrace_gate) {
		WRITE_ONCE(k.graph_ops->saved_func, k.graph_func);
		if (READ_ONCE(*k.graph_active) && !xftrace_pinned) {
			__module_get(THIS_MODULE);
			xftrace_pinned = true;
			pr_warn("xftrace: a function_graph tracer registered while xftrace switched; the module stays loaded until it stops\n");
		}
	}
	mutex_unlock(k.ftrace_lock);
}

/* Let the module go once no graph tracer can be calling the gate. */
static void xftrace_unpin(void)
{
	bool gone;

	if (!xftrace_pinned)
		return;
	mutex_lock(k.ftrace_lock);
	gone = !READ_ONCE(*k.graph_active);
	mutex_unlock(k.ftrace_lock);
	if (!gone)
		return;
	/* A CPU may still be in the trampoline that called the gate. */
	synchronize_rcu_tasks_rude();
	xftrace_pinned = false;
	module_put(THIS_MODULE);
}

static struct fgraph_ops xftrace_gops = {
	.entryfunc	= xftrace_entry,
	.retfunc	= xftrace_return,
};

static int xftrace_alloc_rings(void)
{
	struct xftrace_control *c = &xftrace_control;
	u32 r;

	for (r = 0; r < c->nr_rings; r++) {
		void *ring;

		if (xftrace_ring[r])
			continue;
		ring = alloc_pages_exact((size_t)ring_slots *
					 sizeof(struct xftrace_slot),
					 GFP_KERNEL | __GFP_ZERO);
		if (!ring)
			return -ENOMEM;
		smp_wmb();
		WRITE_ONCE(xftrace_ring[r], ring);
		WRITE_ONCE(c->ring_pa[r], virt_to_phys(ring));
	}
	return 0;
}

/* Building a filter: the names of a command, and what they matched. */
struct xftrace_match {
	char *names[XFTRACE_FUNCS_SIZE / 2];
	bool hit[XFTRACE_FUNCS_SIZE / 2];
	unsigned int nnames;
	unsigned long *funcs;
	unsigned int nfuncs;
	int err;
};

static int xftrace_match_symbol(void *data, const char *name,
				struct module *mod, unsigned long addr)
{
	struct xftrace_match *m = data;
	unsigned long ip;
	unsigned int i;
	bool any = false;

	for (i = 0; i < m->nnames; i++) {
		if (glob_match(m->names[i], name)) {
			m->hit[i] = true;
			any = true;
		}
	}
	if (!any)
		return 0;
	/* Only functions with an ftrace call site can be traced. */
	ip = k.location(addr);
	if (!ip)
		return 0;
	if (m->nfuncs >= XFTRACE_MAX_FUNCS) {
		m->err = -E2BIG;
		return 1;
	}
	m->funcs[m->nfuncs++] = ip;
	return 0;
}

static int xftrace_cmp_ulong(const void *a, const void *b)
{
	unsigned long x = *(const unsigned long *)a;
	unsigned long y = *(const unsigned long *)b;

	return x < y ? -1 : x > y;
}

/*
 * The sorted, distinct call sites of every function whose name matches one
 * of @names (globs as glob_match() takes them; plain names match exactly).
 * Every name must match a traceable function, as ftrace_graph_build_hash()
 * of the patch requires. Returns the count, or -errno.
 */
static int xftrace_build_filter(char *names, unsigned long **out)
{
	struct xftrace_match *m;
	char *name;
	unsigned int i, n;
	int ret;

	m = kzalloc(sizeof(*m), GFP_KERNEL);
	if (!m)
		return -ENOMEM;
	while ((name = strsep(&names, " \t\n")) != NULL) {
		if (!*name)
			continue;
		if (m->nnames >= ARRAY_SIZE(m->names)) {
			ret = -E2BIG;
			goto out;
		}
		m->names[m->nnames++] = name;
	}
	ret = -EINVAL;
	if (!m->nnames)
		goto out;
	m->funcs = kvmalloc_array(XFTRACE_MAX_FUNCS, sizeof(*m->funcs),
				  GFP_KERNEL);
	ret = -ENOMEM;
	if (!m->funcs)
		goto out;
	k.each_symbol(xftrace_match_symbol, m);
	if (!m->err)
		k.each_module_symbol(xftrace_match_symbol, m);
	ret = m->err;
	if (ret)
		goto out;
	ret = -EINVAL;
	for (i = 0; i < m->nnames; i++)
		if (!m->hit[i])
			goto out;
	if (!m->nfuncs)
		goto out;
	sort(m->funcs, m->nfuncs, sizeof(*m->funcs), xftrace_cmp_ulong, NULL);
	for (i = 1, n = 1; i < m->nfuncs; i++)
		if (m->funcs[i] != m->funcs[n - 1])
			m->funcs[n++] = m->funcs[i];
	*out = m->funcs;
	m->funcs = NULL;
	ret = n;
out:
	kvfree(m->funcs);
	kfree(m);
	return ret;
}

struct xftrace_cmd {
	u64	seq;
	u32	op;
	u32	len;
	u64	flags;
	char	funcs[XFTRACE_FUNCS_SIZE + 1];
};

static struct xftrace_cmd xftrace_cmd;

static bool xftrace_read_command(struct xftrace_cmd *cmd)
{
	struct xftrace_control *c = &xftrace_control;
	u64 seq = READ_ONCE(c->cmd_seq);

	if (seq & 1)
		return false;
	smp_rmb();
	cmd->op = READ_ONCE(c->cmd_op);
	cmd->len = READ_ONCE(c->funcs_len);
	cmd->flags = READ_ONCE(c->cmd_flags);
	memcpy(cmd->funcs, c->funcs, XFTRACE_FUNCS_SIZE);
	smp_rmb();
	if (READ_ONCE(c->cmd_seq) != seq)
		return false;
	cmd->seq = seq;
	return true;
}

static int xftrace_on(struct xftrace_cmd *cmd)
{
	struct xftrace_control *c = &xftrace_control;
	unsigned long *funcs = NULL, bloom;
	bool hooked;
	u64 start;
	int ret, n, i;

	if (xftrace_state != XFTRACE_OFF)
		return -EBUSY;
	if (cmd->len >= XFTRACE_FUNCS_SIZE)
		return -E2BIG;
	cmd->funcs[cmd->len] = '\0';
	if (!cmd->len || strlen(cmd->funcs) != cmd->len)
		return -EINVAL;

	ret = xftrace_alloc_rings();
	if (ret)
		return ret;
	n = xftrace_build_filter(cmd->funcs, &funcs);
	if (n < 0)
		return n;

	WRITE_ONCE(xftrace_nfuncs, n);
	WRITE_ONCE(xftrace_funcs, funcs);
	for (bloom = 0, i = 0; i < n; i++)
		bloom |= xftrace_bloom_bit(funcs[i]);
	WRITE_ONCE(xftrace_bloom, bloom);
	WRITE_ONCE(xftrace_irqs, !!(cmd->flags & XFTRACE_FLAG_IRQS));
	WRITE_ONCE(xftrace_session, xftrace_session + 1);
	atomic_set(&xftrace_active, 0);
	WRITE_ONCE(xftrace_state, XFTRACE_ARMED);
	hooked = xftrace_hook_graph();
	ret = k.register_graph(&xftrace_gops);
	if (ret) {
		/* -EBUSY: a guest user runs function_graph through tracefs. */
		if (hooked)
			xftrace_unhook_graph();
		WRITE_ONCE(xftrace_state, XFTRACE_OFF);
		WRITE_ONCE(xftrace_funcs, NULL);
		WRITE_ONCE(xftrace_nfuncs, 0);
		kvfree(funcs);
		return ret;
	}
	start = trace_clock_local();
	WRITE_ONCE(xftrace_session_start, start);
	WRITE_ONCE(c->session_start, start);
	WRITE_ONCE(c->session, xftrace_session);
	WRITE_ONCE(c->filter_count, n);
	smp_wmb();
	WRITE_ONCE(xftrace_state, XFTRACE_CAPTURING);
	/* From here the gate may refuse: xftrace is the graph client. */
	WRITE_ONCE(xftrace_gated, hooked);
	return 0;
}

static int xftrace_off(void)
{
	unsigned long end = jiffies + msecs_to_jiffies(XFTRACE_DRAIN_MS);
	unsigned long *funcs = xftrace_funcs;

	if (xftrace_state == XFTRACE_OFF)
		return 0;
	WRITE_ONCE(xftrace_state, XFTRACE_DRAINING);
	while (atomic_read(&xftrace_active) > 0 && time_before(jiffies, end))
		schedule_timeout_interruptible(1);
	WRITE_ONCE(xftrace_state, XFTRACE_OFF);
	WRITE_ONCE(xftrace_gated, false);
	synchronize_rcu_tasks_rude();
	k.unregister_graph(&xftrace_gops);
	xftrace_unhook_graph();
	/*
	 * A return callback runs with preemption on until it writes: wait
	 * until no task can be inside one before the filter goes.
	 */
	synchronize_rcu_tasks();
	WRITE_ONCE(xftrace_funcs, NULL);
	WRITE_ONCE(xftrace_nfuncs, 0);
	kvfree(funcs);
	return 0;
}

static bool xftrace_hash_set(struct ftrace_hash *h)
{
	const struct xftrace_ftrace_hash *x = (const void *)h;

	return x && (READ_ONCE(x->count) || (READ_ONCE(x->flags) & 1));
}

/* What narrows the capture, from the kernel's own variables. */
static unsigned int xftrace_narrowed(void)
{
	struct ftrace_ops_hash *fh;
	unsigned int why = 0;

	if (READ_ONCE(*k.disabled) || !READ_ONCE(*k.enabled))
		why |= XFTRACE_NARROW_DISABLED;
	rcu_read_lock_sched();
	fh = READ_ONCE(k.global_ops->func_hash);
	if (fh) {
		if (xftrace_hash_set(rcu_dereference_sched(fh->filter_hash)))
			why |= XFTRACE_NARROW_FILTER;
		if (xftrace_hash_set(rcu_dereference_sched(fh->notrace_hash)))
			why |= XFTRACE_NARROW_NOTRACE;
	}
	rcu_read_unlock_sched();
	if (static_key_enabled(k.dead))
		why |= XFTRACE_NARROW_DEAD;
	return why;
}

static void xftrace_publish(void)
{
	struct xftrace_control *c = &xftrace_control;
	int state = READ_ONCE(xftrace_state);
	u32 narrowed = xftrace_narrowed();

	if (state != XFTRACE_OFF && READ_ONCE(*k.graph_return) != xftrace_return)
		narrowed |= XFTRACE_NARROW_UNHOOKED;
	WRITE_ONCE(c->narrowed, narrowed);
	WRITE_ONCE(c->state, state);
	WRITE_ONCE(c->tracing, state >= XFTRACE_CAPTURING &&
			       !(narrowed & XFTRACE_NARROW_UNHOOKED));
}

void xftrace_probe(void);

static DEFINE_PER_CPU(struct work_struct, xftrace_probe_work);

static void xftrace_probe_work_fn(struct work_struct *unused)
{
	xftrace_probe();
}

static void xftrace_probe_cpus(void)
{
	int cpu;

	cpus_read_lock();
	for_each_online_cpu(cpu)
		queue_work_on(cpu, system_highpri_wq,
			      per_cpu_ptr(&xftrace_probe_work, cpu));
	cpus_read_unlock();
}

static struct task_struct *xftrace_task;

static void xftrace_idle_wake(struct timer_list *unused)
{
	wake_up_process(xftrace_task);
}

static struct timer_list xftrace_idle_timer =
	__TIMER_INITIALIZER(xftrace_idle_wake, TIMER_DEFERRABLE);

static void xftrace_idle_sleep(void)
{
	set_current_state(TASK_INTERRUPTIBLE);
	mod_timer(&xftrace_idle_timer,
		  jiffies + msecs_to_jiffies(XFTRACE_IDLE_POLL_MS));
	schedule_timeout(msecs_to_jiffies(XFTRACE_IDLE_MAX_MS));
	del_timer_sync(&xftrace_idle_timer);
}

static int xftrace_thread(void *unused)
{
	struct xftrace_control *c = &xftrace_control;
	struct xftrace_cmd *cmd = &xftrace_cmd;
	unsigned long awake_until = jiffies;
	unsigned long next_probe = jiffies;
	u64 applied = 0;

	while (!kthread_should_stop()) {
		if (READ_ONCE(c->cmd_seq) != applied && xftrace_read_command(cmd) &&
		    cmd->seq != applied) {
			int ret;

			if (cmd->op == XFTRACE_OP_ON)
				ret = xftrace_on(cmd);
			else if (cmd->op == XFTRACE_OP_OFF)
				ret = xftrace_off();
			else
				ret = -EINVAL;
			applied = cmd->seq;
			xftrace_publish();
			WRITE_ONCE(c->ack_result, ret);
			smp_wmb();
			WRITE_ONCE(c->ack_seq, cmd->seq);
			awake_until = jiffies + msecs_to_jiffies(XFTRACE_AWAKE_MS);
			next_probe = jiffies;
		}
		if (READ_ONCE(xftrace_state) == XFTRACE_CAPTURING &&
		    time_after_eq(jiffies, next_probe)) {
			xftrace_probe_cpus();
			next_probe = jiffies + msecs_to_jiffies(XFTRACE_PROBE_MS);
		}
		xftrace_unpin();
		xftrace_publish();
		WRITE_ONCE(c->heartbeat, c->heartbeat + 1);
		if (READ_ONCE(xftrace_state) == XFTRACE_OFF &&
		    time_after(jiffies, awake_until))
			xftrace_idle_sleep();
		else
			schedule_timeout_interruptible(msecs_to_jiffies(XFTRACE_POLL_MS));
	}
	return 0;
}

static bool __init xftrace_selftest(void)
{
	u64 info = XFTRACE_RETURN | (2ULL << 8) | (123ULL << 32);

	return xftrace_check(0x0123456789abcdefULL, 41, 7,
			     0xffffffff81234560ULL, 1000250, 1000000, info,
			     0) == 0x37aa40b53d644298ULL;
}

/* kallsyms_lookup_name()'s address, from a kprobe placed on it (as LKRG). */
static int __init xftrace_find_lookup(void)
{
	struct kprobe kp = { .symbol_name = "kallsyms_lookup_name" };
	int ret = register_kprobe(&kp);

	if (ret < 0)
		return ret;
	k.lookup_name = (void *)kp.addr;
	unregister_kprobe(&kp);
	return k.lookup_name ? 0 : -ENOENT;
}

static int __init xftrace_resolve(void)
{
	static const char *const names[] = {
		"register_ftrace_graph", "unregister_ftrace_graph",
		"ftrace_location", "kallsyms_on_each_symbol",
		"module_kallsyms_on_each_symbol", "ftrace_graph_return",
		"ftrace_enabled", "ftrace_disabled", "global_ops",
		"kill_ftrace_graph", "_text", "graph_ops", "ftrace_graph_func",
		"ftrace_lock", "ftrace_graph_active",
	};
	unsigned long a[ARRAY_SIZE(names)];
	unsigned int i;
	int ret = xftrace_find_lookup();

	if (ret) {
		pr_err("xftrace: cannot find kallsyms_lookup_name (kprobe: %d)\n", ret);
		return ret;
	}
	/*
	 * xftrace's own kernel has the tracer already: two would be a decoy.
	 * (kallsyms looks in the kernel's image before the modules', this
	 * one's included; -EINVAL, since modprobe takes -EEXIST for success.)
	 */
	a[0] = k.lookup_name("xftrace_control");
	if (a[0] && a[0] != (unsigned long)&xftrace_control) {
		pr_err("xftrace: this kernel has xftrace's tracer built in; the module is for stock kernels\n");
		return -EINVAL;
	}
	for (i = 0; i < ARRAY_SIZE(names); i++) {
		a[i] = k.lookup_name(names[i]);
		if (!a[i]) {
			pr_err("xftrace: this kernel has no %s; not loading\n", names[i]);
			return -ENOENT;
		}
	}
	k.register_graph = (void *)a[0];
	k.unregister_graph = (void *)a[1];
	k.location = (void *)a[2];
	k.each_symbol = (void *)a[3];
	k.each_module_symbol = (void *)a[4];
	k.graph_return = (void *)a[5];
	k.enabled = (void *)a[6];
	k.disabled = (void *)a[7];
	k.global_ops = (void *)a[8];
	k.dead = (void *)a[9];
	k.text = a[10];
	k.graph_ops = (void *)a[11];
	k.graph_func = (void *)a[12];
	k.ftrace_lock = (void *)a[13];
	k.graph_active = (void *)a[14];
	return 0;
}

static int __init xftrace_init(void)
{
	struct xftrace_control *c = &xftrace_control;
	struct task_struct *t;
	int cpu, ret;

	if (strcmp(init_utsname()->release, UTS_RELEASE)) {
		pr_err("xftrace: built for %s, not for this kernel (%s); rebuild it (dkms)\n",
		       UTS_RELEASE, init_utsname()->release);
		return -ENOEXEC;
	}
	if (ring_slots < 64 || ring_slots > 65536 ||
	    (ring_slots & (ring_slots - 1))) {
		pr_err("xftrace: ring_slots=%u is not a power of two in [64, 65536]\n",
		       ring_slots);
		return -EINVAL;
	}
	if (!xftrace_selftest()) {
		pr_err("xftrace: check value disagrees with docs/abi.md; not loading\n");
		return -EINVAL;
	}
	ret = xftrace_resolve();
	if (ret)
		return ret;
	xftrace_ring_mask = ring_slots - 1;
	xftrace_heads = alloc_pages_exact(XFTRACE_HEADS_BYTES,
					  GFP_KERNEL | __GFP_ZERO);
	if (!xftrace_heads)
		return -ENOMEM;

	c->abi_version = XFTRACE_ABI_VERSION;
	c->ctl_size = sizeof(*c);
	c->ctl_va = (u64)c;
	c->heads_va = (u64)xftrace_heads;
	c->text_va = k.text;
	c->nr_rings = min_t(u32, nr_cpu_ids, XFTRACE_MAX_RINGS);
	c->ring_slots = ring_slots;
	c->slot_size = sizeof(struct xftrace_slot);
	c->nr_cpus = nr_cpu_ids;
	c->funcs_size = XFTRACE_FUNCS_SIZE;
	c->nr_key_slots = XFTRACE_KEY_SLOTS;
	for_each_possible_cpu(cpu)
		INIT_WORK(per_cpu_ptr(&xftrace_probe_work, cpu),
			  xftrace_probe_work_fn);

	t = kthread_create(xftrace_thread, NULL, "xftrace");
	if (IS_ERR(t)) {
		pr_err("xftrace: cannot start kernel thread: %ld\n", PTR_ERR(t));
		free_pages_exact(xftrace_heads, XFTRACE_HEADS_BYTES);
		return PTR_ERR(t);
	}
	xftrace_task = t;
	wake_up_process(t);

	smp_wmb();
	WRITE_ONCE(c->magic, XFTRACE_MAGIC);
	pr_info("xftrace: %u rings of %u records (module)\n", c->nr_rings,
		c->ring_slots);
#ifdef XFTRACE_BENCH_NOWRITE
	pr_warn("xftrace: a benchmark's build: it writes no records\n");
#endif
	return 0;
}

static void __exit xftrace_exit(void)
{
	struct xftrace_control *c = &xftrace_control;
	int cpu;
	u32 r;

	/* The host must not take what follows for a tracer. */
	WRITE_ONCE(c->magic, 0);
	kthread_stop(xftrace_task);
	xftrace_off();
	xftrace_publish();
	for_each_possible_cpu(cpu)
		cancel_work_sync(per_cpu_ptr(&xftrace_probe_work, cpu));
	for (r = 0; r < XFTRACE_MAX_RINGS; r++) {
		if (!xftrace_ring[r])
			continue;
		WRITE_ONCE(c->ring_pa[r], 0);
		free_pages_exact(xftrace_ring[r],
				 (size_t)ring_slots * sizeof(struct xftrace_slot));
	}
	free_pages_exact(xftrace_heads, XFTRACE_HEADS_BYTES);
	pr_info("xftrace: unloaded; the host sees a stopped tracer\n");
}

module_init(xftrace_init);
module_exit(xftrace_exit);
MODULE_LICENSE("GPL");
MODULE_AUTHOR("xftrace developers");
MODULE_DESCRIPTION("xftrace: function graph records for a host that reads guest RAM");
