// SPDX-License-Identifier: GPL-2.0
/*
 * xftrace's probe: a function with an ftrace call site like any other
 * (the Makefile builds this file, and only this one, with the ftrace
 * flags), which xftrace_main.c calls on every online CPU while a session
 * captures. The host adds it to every filter it sends, so its records in
 * each CPU's ring prove that the whole path from a function's call site to
 * that ring still works there (docs/abi.md §3.1).
 */
#include <linux/compiler.h>

void xftrace_probe(void);

noinline __noclone void xftrace_probe(void)
{
	barrier();
}
