// SPDX-License-Identifier: GPL-2.0-only
/*
 * criusec: the chain keyring. after each encrypted dump, its chain secret waits in
 * root's user keyring (never on disk, readable by root only, gone after
 * CHAIN_KEY_TTL), so that a later incremental dump on this host reads it
 * as its parent even when this host is not a recipient (it dumps for a
 * target host and an escrow key).  --tls-key is the fallback.
 */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/syscall.h>
#include <linux/keyctl.h>
#include <unistd.h>

#include "criusec.h"
#include "criusec-layer.h"
#include "log.h"

#undef LOG_PREFIX
#define LOG_PREFIX "criusec: "

#define CHAIN_KEY_PERM 0x3f010000 /* possessor: all; user (root): view */

static void chain_key_desc(const uint8_t id[CRIUSEC_ID_LEN], char *buf, size_t len)
{
	int i;

	snprintf(buf, len, "criusec:");
	for (i = 0; i < CRIUSEC_ID_LEN; i++)
		snprintf(buf + strlen(buf), len - strlen(buf), "%02x", id[i]);
}

void criusec_chain_key_store(struct criusec_ctx *ctx)
{
	uint8_t secret[CRIUSEC_CHAIN_SECRET_LEN];
	char desc[64];
	long key;

	if (criusec_ctx_chain_secret(ctx, secret))
		return;
	chain_key_desc(criusec_ctx_id(ctx), desc, sizeof(desc));
	key = syscall(SYS_add_key, "user", desc, secret, sizeof(secret), KEY_SPEC_USER_KEYRING);
	explicit_bzero(secret, sizeof(secret));
	if (key < 0) {
		pr_warn("Can't keep the chain key in the keyring (%s): an incremental dump over this checkpoint will "
			"need --tls-key\n",
			strerror(errno));
		return;
	}
	if (syscall(SYS_keyctl, KEYCTL_SETPERM, key, CHAIN_KEY_PERM) ||
	    syscall(SYS_keyctl, KEYCTL_SET_TIMEOUT, key, CHAIN_KEY_TTL))
		pr_warn("Can't restrict the chain key %s: %s\n", desc, strerror(errno));
	pr_info("The chain key %s is in root's keyring for %d days, for incremental dumps over this checkpoint\n",
		desc, CHAIN_KEY_TTL / 86400);
}

/*
 * The parent's context from the keyring, or NULL: *tried says whether a
 * chain key was there (and failed: said why), else none was.
 */
struct criusec_ctx *criusec_chain_key_import(const struct criusec_header *h, bool *tried)
{
	uint8_t secret[CRIUSEC_CHAIN_SECRET_LEN];
	struct criusec_ctx *ctx;
	char desc[64];
	long key, n;

	chain_key_desc(h->ckpt_id, desc, sizeof(desc));
	key = syscall(SYS_keyctl, KEYCTL_SEARCH, KEY_SPEC_USER_KEYRING, "user", desc, 0);
	if (key < 0) {
		pr_info("No chain key %s in the keyring: trying --tls-key\n", desc);
		return NULL;
	}
	n = syscall(SYS_keyctl, KEYCTL_READ, key, secret, sizeof(secret));
	if (n != sizeof(secret)) {
		explicit_bzero(secret, sizeof(secret));
		pr_info("Can't read the chain key %s: trying --tls-key\n", desc);
		return NULL;
	}
	*tried = true;
	ctx = criusec_ctx_import_secret(h, secret);
	explicit_bzero(secret, sizeof(secret));
	if (!ctx)
		pr_err("cipher.img: %s (with the chain key %s)\n", criusec_last_error(), desc);
	else
		pr_info("cipher.img: read with the chain key %s\n", desc);
	return ctx;
}
