// In-guest half of `cargo bench --bench guest`: time N rounds of a traced
// system call path (openat + read + close of a small file) and of an
// untraced one (getppid), and print nanoseconds per round.
//
//   syscalls N    ->  "XFBENCH open_read_close NS getppid NS"
//   syscalls -g N ->  N getppid calls and nothing else (to count what one
//                     of them runs under the function tracer)
//
// Static, no libc caching (getppid goes through syscall(2)).
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

static double now_ns(void)
{
	struct timespec t;

	clock_gettime(CLOCK_MONOTONIC, &t);
	return t.tv_sec * 1e9 + t.tv_nsec;
}

int main(int argc, char **argv)
{
	long n = argc > 1 ? atol(argv[1]) : 1000;
	char buf[64];
	double t0, t1, t2;
	long i;

	if (argc > 2 && argv[1][0] == '-' && argv[1][1] == 'g') {
		n = atol(argv[2]);
		for (i = 0; i < n; i++)
			syscall(SYS_getppid);
		return 0;
	}

	if (n <= 0)
		return 2;
	t0 = now_ns();
	for (i = 0; i < n; i++) {
		int fd = open("/tmp/hello.txt", O_RDONLY);

		if (fd < 0 || read(fd, buf, sizeof(buf)) < 0)
			return 1;
		close(fd);
	}
	t1 = now_ns();
	for (i = 0; i < 10 * n; i++)
		syscall(SYS_getppid);
	t2 = now_ns();
	printf("XFBENCH open_read_close %.1f getppid %.3f\n", (t1 - t0) / n,
	       (t2 - t1) / (10 * n));
	return 0;
}
