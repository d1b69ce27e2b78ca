// SPDX-License-Identifier: GPL-2.0
/*
 * 12. A notifier: a handler of the module loader's chain (chain=module, run
 * at every module load: where rootkits neuter security modules as they
 * load) or of the network device chain (chain=netdevice, run for every
 * device at once). `fired` counts its calls. With alias=NAME it then takes
 * that name, as a rootkit passes for a module of the build (rmmod it by
 * that name).
 */
#include <linux/module.h>
#include <linux/netdevice.h>
#include <linux/notifier.h>

static char *chain = "module";
module_param(chain, charp, 0);
static int fired;
module_param(fired, int, 0444);
static char *alias;
module_param(alias, charp, 0);

static int rk_event(struct notifier_block *nb, unsigned long action, void *data)
{
	fired++;
	return NOTIFY_DONE;
}

static struct notifier_block nb = { .notifier_call = rk_event };

static int __init rk_init(void)
{
	int err = -EINVAL;

	if (!strcmp(chain, "netdevice"))
		err = register_netdevice_notifier(&nb);
	else if (!strcmp(chain, "module"))
		err = register_module_notifier(&nb);
	if (!err && alias)
		strscpy(THIS_MODULE->name, alias, MODULE_NAME_LEN);
	return err;
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
