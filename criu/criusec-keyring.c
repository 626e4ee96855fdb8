// SPDX-License-Identifier: GPL-2.0-only
/*
 * criusec: the chain keyring.  After each encrypted dump, its chain secret
 * waits in root's user keyring (never on disk, readable by root only, gone
 * after CHAIN_KEY_TTL), so that a later incremental dump on this host reads
 * it as its parent even when this host is not a recipient (it dumps for a
 * target host and an escrow key).  --tls-key is the fallback.  The engine
 * keeps and reads the key; this file says what happened in criu's log.
 */
#include <errno.h>

#include "criusec.h"
#include "criusec-layer.h"
#include "log.h"

#undef LOG_PREFIX
#define LOG_PREFIX "criusec: "

void criusec_chain_key_store(struct criusec_ctx *ctx)
{
	char desc[CRIUSEC_KEYRING_DESC_LEN] = "";
	int ret;

	ret = criusec_keyring_store(ctx, CHAIN_KEY_TTL, desc, sizeof(desc));
	if (ret < 0) {
		if (desc[0]) /* else no chain secret: nothing to keep */
			pr_warn("Can't keep the chain key in the keyring (%s): an incremental dump over this checkpoint "
				"will need --tls-key\n",
				criusec_last_error());
		return;
	}
	if (ret == CRIUSEC_KEYRING_UNRESTRICTED)
		pr_warn("Can't restrict the chain key %s: %s\n", desc, criusec_last_error());
	pr_info("The chain key %s is in root's keyring for %d days, for incremental dumps over this checkpoint\n",
		desc, CHAIN_KEY_TTL / 86400);
}

/*
 * The parent's context from the keyring, or NULL: *tried says whether a
 * chain key was there (and failed: said why), else none was.
 */
struct criusec_ctx *criusec_chain_key_import(const struct criusec_header *h, bool *tried)
{
	char desc[CRIUSEC_KEYRING_DESC_LEN] = "";
	struct criusec_ctx *ctx;
	bool found = false;

	ctx = criusec_keyring_import(h, &found, desc, sizeof(desc));
	*tried = found;
	if (ctx)
		pr_info("cipher.img: read with the chain key %s\n", desc);
	else if (found)
		pr_err("cipher.img: %s (with the chain key %s)\n", criusec_last_error(), desc);
	else if (criusec_last_errno() == -ENOKEY)
		pr_info("No chain key %s in the keyring: trying --tls-key\n", desc);
	else
		pr_info("Can't read the chain key %s: trying --tls-key\n", desc);
	return ctx;
}
