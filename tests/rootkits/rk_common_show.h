/* SPDX-License-Identifier: GPL-2.0 */
/*
 * What rk_inline and rk_kprobe hook: a /proc seq_file show function given
 * as the module parameter `target` (the test draws it at random), which
 * they replace with one that shows nothing.
 */
#include <linux/seq_file.h>

static char *target = "version_proc_show";
module_param(target, charp, 0);

static int __maybe_unused rk_show(struct seq_file *m, void *v)
{
	return 0;
}

/* The first instruction of @fn past its endbr64 and ftrace's 5-byte site. */
static unsigned int __maybe_unused rk_body_offset(const u8 *fn)
{
	unsigned int off = 0;

	if (fn[0] == 0xf3 && fn[1] == 0x0f && fn[2] == 0x1e && fn[3] == 0xfa)
		off += 4;
	return off + 5;
}
