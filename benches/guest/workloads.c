// In-guest half of `cargo bench --bench workloads`: three whole-guest
// workloads, each timed in guest time (CLOCK_MONOTONIC), each printing
// one line:
//
//   workloads http N   ->  "XFWORK http NS"   N HTTP/1.0 requests to the
//                          guest's own nginx on 127.0.0.1:80, one connection
//                          each (connect, send the request, recv to EOF,
//                          close: send and recv, as curl does, so that the
//                          client stands for one outside the guest rather
//                          than adding read(2) calls of its own); NS per
//                          request
//   workloads shell N  ->  "XFWORK shell NS"  /bin/sh runs N iterations of
//                          a loop that forks and execs /bin/echo into a file
//                          and /bin/cat from it; NS per iteration
//   workloads pipe N   ->  "XFWORK pipe NS"   N one-byte round trips between
//                          two processes over two pipes; NS per round trip
//
// Static, so it runs on any guest the bench copies it into.
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static double now_ns(void)
{
	struct timespec t;

	clock_gettime(CLOCK_MONOTONIC, &t);
	return t.tv_sec * 1e9 + t.tv_nsec;
}

static int http(long n)
{
	static const char req[] = "GET / HTTP/1.0\r\nHost: localhost\r\n\r\n";
	struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons(80) };
	char buf[4096], head[12];
	long i;

	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	for (i = 0; i < n; i++) {
		int s = socket(AF_INET, SOCK_STREAM, 0);
		ssize_t r, got = 0;

		if (s < 0 || connect(s, (struct sockaddr *)&a, sizeof(a)) < 0) {
			perror("http: connect to 127.0.0.1:80");
			return 1;
		}
		if (send(s, req, sizeof(req) - 1, 0) != sizeof(req) - 1) {
			perror("http: send");
			return 1;
		}
		while ((r = recv(s, buf, sizeof(buf), 0)) > 0) {
			if (got < (ssize_t)sizeof(head))
				memcpy(head + got, buf,
				       r < (ssize_t)sizeof(head) - got ? r : (ssize_t)sizeof(head) - got);
			got += r;
		}
		close(s);
		if (r < 0 || got < 12 || memcmp(head, "HTTP/1.1 200", 12)) {
			fprintf(stderr, "http: no 200 answer (%zd bytes)\n", got);
			return 1;
		}
	}
	return 0;
}

static int shell(long n)
{
	char loop[256];
	pid_t p;
	int st;

	snprintf(loop, sizeof(loop),
		 "i=0; while [ $i -lt %ld ]; do /bin/echo $i > /tmp/xfwork.txt; "
		 "/bin/cat /tmp/xfwork.txt > /dev/null; i=$((i + 1)); done",
		 n);
	p = fork();
	if (p == 0) {
		execl("/bin/sh", "sh", "-c", loop, (char *)NULL);
		_exit(127);
	}
	if (p < 0 || waitpid(p, &st, 0) != p || !WIFEXITED(st) ||
	    WEXITSTATUS(st)) {
		fprintf(stderr, "shell: the loop failed\n");
		return 1;
	}
	return 0;
}

static int pipe_pingpong(long n)
{
	int ping[2], pong[2], st;
	char c = 'x';
	long i;
	pid_t p;

	if (pipe(ping) || pipe(pong))
		return 1;
	p = fork();
	if (p == 0) {
		/* Without the other ends, read sees EOF once the parent closes. */
		close(ping[1]);
		close(pong[0]);
		while (read(ping[0], &c, 1) == 1)
			if (write(pong[1], &c, 1) != 1)
				_exit(1);
		_exit(0);
	}
	if (p < 0)
		return 1;
	close(ping[0]);
	close(pong[1]);
	for (i = 0; i < n; i++)
		if (write(ping[1], &c, 1) != 1 || read(pong[0], &c, 1) != 1)
			return 1;
	close(ping[1]);
	return waitpid(p, &st, 0) != p || !WIFEXITED(st) || WEXITSTATUS(st);
}

int main(int argc, char **argv)
{
	long n = argc > 2 ? atol(argv[2]) : 0;
	double t0;
	int r;

	if (argc != 3 || n <= 0) {
		fprintf(stderr, "usage: workloads http|shell|pipe N\n");
		return 2;
	}
	t0 = now_ns();
	if (!strcmp(argv[1], "http"))
		r = http(n);
	else if (!strcmp(argv[1], "shell"))
		r = shell(n);
	else if (!strcmp(argv[1], "pipe"))
		r = pipe_pingpong(n);
	else
		return 2;
	if (r)
		return 1;
	printf("XFWORK %s %.1f\n", argv[1], (now_ns() - t0) / n);
	return 0;
}
