// SPDX-License-Identifier: GPL-2.0
/*
 * 22. Every CPU's IDT register loaded with a copy of the IDT: the gates of
 * idt_table stay as built and the kernel's page tables untouched, but the
 * CPUs take their interrupts and exceptions through the copy, which a
 * rootkit can then edit at leisure. where=vmalloc puts the copy in vmalloc
 * space, where=direct in a page of the direct map. `fired` counts the CPUs
 * that loaded it.
 */
#include <linux/gfp.h>
#include <linux/module.h>
#include <linux/smp.h>
#include <linux/vmalloc.h>
#include <asm/desc.h>

static char *where = "vmalloc";
module_param(where, charp, 0);
static int fired;
module_param(fired, int, 0444);

static struct desc_ptr orig, shadow;
static void *copy;

static void rk_load(void *dtr)
{
	load_idt((const struct desc_ptr *)dtr);
	if (dtr == &shadow)
		__sync_fetch_and_add(&fired, 1);
}

static int __init rk_init(void)
{
	store_idt(&orig);
	if (!strcmp(where, "direct"))
		copy = (void *)__get_free_page(GFP_KERNEL);
	else if (!strcmp(where, "vmalloc"))
		copy = vmalloc(PAGE_SIZE);
	else
		return -EINVAL;
	if (!copy)
		return -ENOMEM;
	memcpy(copy, (void *)orig.address, orig.size + 1);
	shadow.address = (unsigned long)copy;
	shadow.size = orig.size;
	on_each_cpu(rk_load, &shadow, 1);
	return 0;
}

static void __exit rk_exit(void)
{
	on_each_cpu(rk_load, &orig, 1);
	if (!strcmp(where, "direct"))
		free_page((unsigned long)copy);
	else
		vfree(copy);
}

module_init(rk_init);
module_exit(rk_exit);
MODULE_LICENSE("GPL");
