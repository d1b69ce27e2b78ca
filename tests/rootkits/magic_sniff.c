// SPDX-License-Identifier: GPL-2.0
/*
 * A passive backdoor's listener (BPFDoor's kind), from user space: a raw
 * socket (magic_sniff inet: AF_INET/SOCK_RAW for UDP) or a packet socket
 * (magic_sniff packet: AF_PACKET/SOCK_RAW for IPv4) with a classic BPF
 * filter (SO_ATTACH_FILTER) that lets through only UDP packets to port
 * 7777, the "magic packet"; a packet socket also puts loopback in
 * promiscuous mode, as sniffers do. It proves the filter works (a packet to 7778
 * is not seen, one to 7777 is), says so in /tmp/magic_sniff.out, and waits
 * for packets until killed. No module, no port open, no BPF program ID.
 */
#include <arpa/inet.h>
#include <linux/filter.h>
#include <linux/if_ether.h>
#include <linux/if_packet.h>
#include <net/if.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

static void say(const char *what)
{
	FILE *f = fopen("/tmp/magic_sniff.out", "a");

	if (f) {
		fprintf(f, "%s\n", what);
		fclose(f);
	}
}

static int send_to(int port)
{
	struct sockaddr_in to = { .sin_family = AF_INET, .sin_port = htons(port) };
	int s = socket(AF_INET, SOCK_DGRAM, 0);
	int r;

	to.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	r = sendto(s, "magic", 5, 0, (struct sockaddr *)&to, sizeof(to));
	close(s);
	return r;
}

int main(int argc, char **argv)
{
	int packet = argc > 1 && !strcmp(argv[1], "packet");
	/* Where the IP header starts: after loopback's Ethernet header. */
	unsigned int ip = packet ? ETH_HLEN : 0;
	struct sock_filter code[] = {
		BPF_STMT(BPF_LDX | BPF_B | BPF_MSH, ip),
		BPF_STMT(BPF_LD | BPF_H | BPF_IND, ip + 2),
		BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, 7777, 0, 1),
		BPF_STMT(BPF_RET | BPF_K, 0xffff),
		BPF_STMT(BPF_RET | BPF_K, 0),
	};
	struct sock_fprog prog = { .len = sizeof(code) / sizeof(code[0]), .filter = code };
	struct timeval tv = { .tv_sec = 2 };
	unsigned char buf[2048];
	char line[128];
	int s, n;

	s = packet ? socket(AF_PACKET, SOCK_RAW, htons(ETH_P_IP))
		   : socket(AF_INET, SOCK_RAW, IPPROTO_UDP);
	if (s < 0 || setsockopt(s, SOL_SOCKET, SO_ATTACH_FILTER, &prog, sizeof(prog)) ||
	    setsockopt(s, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv))) {
		perror("magic_sniff: socket");
		return 1;
	}
	if (packet) {
		struct packet_mreq mr = { .mr_ifindex = if_nametoindex("lo"),
					  .mr_type = PACKET_MR_PROMISC };

		if (setsockopt(s, SOL_PACKET, PACKET_ADD_MEMBERSHIP, &mr, sizeof(mr))) {
			perror("magic_sniff: promiscuous");
			return 1;
		}
	}
	/* Drain what came before the filter, then prove it. */
	while (recv(s, buf, sizeof(buf), MSG_DONTWAIT) > 0)
		;
	if (send_to(7778) < 0 || send_to(7777) < 0) {
		perror("magic_sniff: sendto");
		return 1;
	}
	n = recv(s, buf, sizeof(buf), 0);
	if (n < (int)ip + 28 || ntohs(*(unsigned short *)(buf + ip + 22)) != 7777) {
		say("the filter let through something else, or nothing");
		return 1;
	}
	snprintf(line, sizeof(line), "filter works: pid %d, %s socket", getpid(),
		 packet ? "packet" : "raw");
	say(line);
	tv.tv_sec = 0;
	setsockopt(s, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	for (;;)
		recv(s, buf, sizeof(buf), 0);
}
