// SPDX-License-Identifier: GPL-2.0
/*
 * 16. A BPF program attached to a kernel hook, loaded from user space as
 * BPF rootkits load theirs: no module at all, only the bpf() syscall.
 *
 *   bpf_hook raw_tp TRACEPOINT NAME     a raw tracepoint program
 *   bpf_hook kprobe FUNCTION NAME       a kprobe program (perf kprobe PMU)
 *
 * The program adds one to a map on every hit; the loader writes the
 * count to /tmp/bpf_hook.count every 100 ms and keeps the program
 * attached until it is killed. NAME is the program's name (what a
 * rootkit would make look harmless). A static user-space program, not a
 * kernel module (kbuild ignores this file).
 */
#include <errno.h>
#include <linux/bpf.h>
#include <linux/perf_event.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/syscall.h>
#include <unistd.h>

static long sys_bpf(int cmd, union bpf_attr *attr)
{
	return syscall(__NR_bpf, cmd, attr, sizeof(*attr));
}

static struct bpf_insn insn(uint8_t code, uint8_t dst, uint8_t src, int16_t off, int32_t imm)
{
	struct bpf_insn i = { .code = code, .dst_reg = dst, .src_reg = src, .off = off, .imm = imm };
	return i;
}

static int die(const char *what)
{
	fprintf(stderr, "bpf_hook: %s: %s\n", what, strerror(errno));
	return 1;
}

int main(int argc, char **argv)
{
	union bpf_attr a;
	char log[4096] = "";
	int map, prog, kprobe;

	if (argc != 4)
		return fprintf(stderr, "usage: bpf_hook raw_tp|kprobe TARGET NAME\n"), 2;
	kprobe = !strcmp(argv[1], "kprobe");

	memset(&a, 0, sizeof(a));
	a.map_type = BPF_MAP_TYPE_ARRAY;
	a.key_size = 4;
	a.value_size = 8;
	a.max_entries = 1;
	map = sys_bpf(BPF_MAP_CREATE, &a);
	if (map < 0)
		return die("map");

	/* u32 key = 0; u64 *v = lookup(map, &key); if (v) atomic *v += 1; return 0 */
	struct bpf_insn code[] = {
		insn(BPF_ST | BPF_MEM | BPF_W, BPF_REG_10, 0, -4, 0),
		insn(BPF_ALU64 | BPF_MOV | BPF_X, BPF_REG_2, BPF_REG_10, 0, 0),
		insn(BPF_ALU64 | BPF_ADD | BPF_K, BPF_REG_2, 0, 0, -4),
		insn(BPF_LD | BPF_DW | BPF_IMM, BPF_REG_1, BPF_PSEUDO_MAP_FD, 0, map),
		insn(0, 0, 0, 0, 0),
		insn(BPF_JMP | BPF_CALL, 0, 0, 0, BPF_FUNC_map_lookup_elem),
		insn(BPF_JMP | BPF_JEQ | BPF_K, BPF_REG_0, 0, 2, 0),
		insn(BPF_ALU64 | BPF_MOV | BPF_K, BPF_REG_1, 0, 0, 1),
		insn(BPF_STX | BPF_ATOMIC | BPF_DW, BPF_REG_0, BPF_REG_1, 0, BPF_ADD),
		insn(BPF_ALU64 | BPF_MOV | BPF_K, BPF_REG_0, 0, 0, 0),
		insn(BPF_JMP | BPF_EXIT, 0, 0, 0, 0),
	};
	memset(&a, 0, sizeof(a));
	a.prog_type = kprobe ? BPF_PROG_TYPE_KPROBE : BPF_PROG_TYPE_RAW_TRACEPOINT;
	a.insns = (uintptr_t)code;
	a.insn_cnt = sizeof(code) / sizeof(code[0]);
	a.license = (uintptr_t)"GPL";
	a.log_buf = (uintptr_t)log;
	a.log_size = sizeof(log);
	a.log_level = 1;
	strncpy(a.prog_name, argv[3], sizeof(a.prog_name) - 1);
	prog = sys_bpf(BPF_PROG_LOAD, &a);
	if (prog < 0) {
		fprintf(stderr, "%s\n", log);
		return die("load");
	}

	if (kprobe) {
		struct perf_event_attr pe;
		FILE *f = fopen("/sys/bus/event_source/devices/kprobe/type", "r");
		int type, ev;

		if (!f || fscanf(f, "%d", &type) != 1)
			return die("kprobe PMU type");
		fclose(f);
		memset(&pe, 0, sizeof(pe));
		pe.size = sizeof(pe);
		pe.type = type;
		pe.config1 = (uintptr_t)argv[2];	/* kprobe_func */
		ev = syscall(__NR_perf_event_open, &pe, -1, 0, -1, 0);
		if (ev < 0)
			return die("perf_event_open");
		if (ioctl(ev, PERF_EVENT_IOC_SET_BPF, prog) < 0)
			return die("PERF_EVENT_IOC_SET_BPF");
		if (ioctl(ev, PERF_EVENT_IOC_ENABLE, 0) < 0)
			return die("PERF_EVENT_IOC_ENABLE");
	} else {
		memset(&a, 0, sizeof(a));
		a.raw_tracepoint.name = (uintptr_t)argv[2];
		a.raw_tracepoint.prog_fd = prog;
		if (sys_bpf(BPF_RAW_TRACEPOINT_OPEN, &a) < 0)
			return die("raw tracepoint");
	}
	printf("bpf_hook: attached to %s %s\n", argv[1], argv[2]);
	fflush(stdout);

	for (;;) {
		uint32_t key = 0;
		uint64_t n = 0;
		FILE *out;

		memset(&a, 0, sizeof(a));
		a.map_fd = map;
		a.key = (uintptr_t)&key;
		a.value = (uintptr_t)&n;
		if (sys_bpf(BPF_MAP_LOOKUP_ELEM, &a) == 0) {
			out = fopen("/tmp/bpf_hook.count.tmp", "w");
			if (out) {
				fprintf(out, "%llu\n", (unsigned long long)n);
				fclose(out);
				rename("/tmp/bpf_hook.count.tmp", "/tmp/bpf_hook.count");
			}
		}
		usleep(100000);
	}
}
