// SPDX-License-Identifier: GPL-2.0
/*
 * 14. A netfilter hook, as rootkits use for magic packets and port knocking:
 * an IPv4 hook at point `hook` (0 pre-routing, 1 local-in, 3 local-out,
 * 4 post-routing) of the initial namespace that counts packets in `fired`
 * and lets them through.
 */
#include <linux/module.h>
#include <linux/netfilter.h>
#include <linux/netfilter_ipv4.h>
#include <net/net_namespace.h>

static int hook = NF_INET_LOCAL_OUT;
module_param(hook, int, 0);
static int fired;
module_param(fired, int, 0444);

static unsigned int rk_hook(void *priv, struct sk_buff *skb, const struct nf_hook_state *state)
{
	fired++;
	return NF_ACCEPT;
}

static struct nf_hook_ops ops = {
	.hook = rk_hook,
	.pf = NFPROTO_IPV4,
	.priority = NF_IP_PRI_FIRST,
};

static int __init rk_init(void)
{
	if (hook < 0 || hook >= NF_INET_NUMHOOKS || hook == NF_INET_FORWARD)
		return -EINVAL;
	ops.hooknum = hook;
	return nf_register_net_hook(&init_net, &ops);
}

static void __exit rk_exit(void)
{
	nf_unregister_net_hook(&init_net, &ops);
}

module_init(rk_init);
module_exit(rk_exit);
MODULE_LICENSE("GPL");
