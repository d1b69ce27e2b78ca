// SPDX-License-Identifier: GPL-2.0
/*
 * 12. A notifier: a handler of the module loader's chain (chain=module, run
 * at every module load: where rootkits neuter security modules as they
 * load) or of the network device chain (chain=netdevice, run for every
 * device at once). `fired` counts its calls.
 */
#include <linux/module.h>
#include <linux/netdevice.h>
#include <linux/notifier.h>

static char *chain = "module";
module_param(chain, charp, 0);
static int fired;
module_param(fired, int, 0444);

static int rk_event(struct notifier_block *nb, unsigned long action, void *data)
{
	fired++;
	return NOTIFY_DONE;
}

static struct notifier_block nb = { .notifier_call = rk_event };

static int __init rk_init(void)
{
	if (!strcmp(chain, "netdevice"))
		return register_netdevice_notifier(&nb);
	if (!strcmp(chain, "module"))
		return register_module_notifier(&nb);
	return -EINVAL;
}

static void __exit rk_exit(void)
{
	if (!strcmp(chain, "netdevice"))
		unregister_netdevice_notifier(&nb);
	else
		unregister_module_notifier(&nb);
}

module_init(rk_init);
module_exit(rk_exit);
MODULE_LICENSE("GPL");
