// SPDX-License-Identifier: GPL-2.0
/*
 * 19. A network protocol handler, where rootkits read magic packets before
 * any socket sees them: `target` is icmp or tcp (the IPv4 protocol table,
 * inet_protos, gets a pointer to a copy of that protocol's net_protocol
 * whose handler is a wrapper calling the original) or ptype (a packet
 * handler for every protocol, ETH_P_ALL, that sees each frame sent or
 * received and drops its reference). `fired` counts the packets seen.
 */
#include <linux/module.h>
#include <linux/in.h>
#include <linux/if_ether.h>
#include <linux/netdevice.h>
#include <linux/skbuff.h>
#include <net/protocol.h>
#include "rk_common.h"

static char *target = "icmp";
module_param(target, charp, 0);
static unsigned long fired;
module_param(fired, ulong, 0444);

static struct net_protocol __rcu **protos;
static int proto;
static const struct net_protocol *orig;
static struct net_protocol copy;

static int notrace rk_handler(struct sk_buff *skb)
{
	fired++;
	return orig->handler(skb);
}

static int notrace rk_packet(struct sk_buff *skb, struct net_device *dev,
			     struct packet_type *pt, struct net_device *orig_dev)
{
	fired++;
	consume_skb(skb);
	return 0;
}

static struct packet_type pt = {
	.type = htons(ETH_P_ALL),
	.func = rk_packet,
};

static int __init rk_init(void)
{
	if (!strcmp(target, "ptype")) {
		dev_add_pack(&pt);
		return 0;
	}
	if (!strcmp(target, "icmp"))
		proto = IPPROTO_ICMP;
	else if (!strcmp(target, "tcp"))
		proto = IPPROTO_TCP;
	else
		return -EINVAL;
	protos = (struct net_protocol __rcu **)rk_lookup("inet_protos");
	if (!protos)
		return -ENOENT;
	orig = rcu_dereference_protected(protos[proto], 1);
	if (!orig || !orig->handler)
		return -ENOENT;
	copy = *orig;
	copy.handler = rk_handler;
	rcu_assign_pointer(protos[proto], &copy);
	pr_info("rk_sock: inet_protos[%d] points to a copy\n", proto);
	return 0;
}

static void __exit rk_exit(void)
{
	if (!strcmp(target, "ptype")) {
		dev_remove_pack(&pt);
		return;
	}
	rcu_assign_pointer(protos[proto], (struct net_protocol *)orig);
	synchronize_net();
}

module_init(rk_init);
module_exit(rk_exit);
MODULE_LICENSE("GPL");
