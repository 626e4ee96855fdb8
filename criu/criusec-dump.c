// SPDX-License-Identifier: GPL-2.0-only
/*
 * criusec: the start and the end of an encrypted dump or pre-dump.  At the
 * start, before any task is frozen: the options, the signing identity, the
 * parent checkpoint, the recipients, and the checkpoint's context (made
 * before any image is written, so every process criu forks during the
 * dump shares it).  At the end: the manifest, then cipher.img, which signs
 * the manifest's digest, so one signature covers the whole checkpoint;
 * cipher.img is written last.
 */
#include <fcntl.h>
#include <unistd.h>

#include "criusec.h"
#include "criusec-glue.h"
#include "criusec-layer.h"
#include "cr_options.h"
#include "log.h"
#include "servicefd.h"

#undef LOG_PREFIX
#define LOG_PREFIX "criusec: "

struct criusec_ctx *criusec_dump_ctx;
struct criusec_ctx *criusec_dump_parent_ctx;
static struct criusec_signer *dump_signer;

static int dump_parent(struct dir_state **pd)
{
	int pfd;

	*pd = NULL;
	if (!opts.img_parent)
		return 0;
	pfd = openat(get_service_fd(IMG_FD_OFF), CR_PARENT_LINK, O_RDONLY | O_DIRECTORY);
	if (pfd < 0)
		return 0; /* CRIU says it, and dumps in full */
	*pd = criusec_dir_load(pfd, DIR_PARENT, NULL);
	close(pfd);
	if (!*pd) {
		pr_err("The incremental dump can't read its parent checkpoint %s (see above): its chain key is not "
		       "in this host's keyring (made elsewhere, or more than %d days ago), so give a key that is a "
		       "recipient of it (--tls-key, or a 'tls-key PATH' line in %s)\n",
		       opts.img_parent, CHAIN_KEY_TTL / 86400, CRIUSEC_DEFAULT_CONF);
		return -1;
	}
	if (!(*pd)->encrypted) {
		pr_err("The parent images (%s) are not encrypted; pre-dump them with --encrypt too\n",
		       opts.img_parent);
		return -1;
	}
	return 0;
}

/* Every --tls-cert (and 'tls-cert' config line), else CRIU's default certificate. */
static int add_recipients(void)
{
	bool default_cert;
	int i;

	default_cert = opts.nr_encrypt_certs == 0;
	if (default_cert && add_encrypt_cert(CRIUSEC_DEFAULT_CERT))
		return -1;
	if (opts.unchecked_recipients)
		pr_warn("--unchecked-recipients: recipient certificates are not checked for validity and key usage\n");
	for (i = 0; i < opts.nr_encrypt_certs; i++) {
		int rc = criusec_ctx_add_recipient(criusec_dump_ctx, opts.encrypt_certs[i],
						   opts.unchecked_recipients ? CRIUSEC_RECIPIENT_UNCHECKED : 0);

		if (rc) {
			/* The engine's reason names the file; say which setting gave it. */
			if (default_cert)
				pr_err("No usable recipient: no --tls-cert or 'tls-cert PATH' line in %s, and CRIU's "
				       "default %s (criusec-keygen --default makes one)\n",
				       CRIUSEC_DEFAULT_CONF, criusec_last_error());
			else
				pr_err("Recipient certificate (--tls-cert, or a 'tls-cert PATH' line in %s): %s%s%s\n",
				       CRIUSEC_DEFAULT_CONF, criusec_last_error(),
				       criusec_relative_hint(opts.encrypt_certs[i], NULL),
				       rc == -EKEYREJECTED ? " (--unchecked-recipients takes it anyway, for test setups)" :
							     "");
			return -1;
		}
		pr_info("Encrypting for %s\n", opts.encrypt_certs[i]);
	}
	return 0;
}

int criusec_dump_start(void)
{
	enum criusec_aead aead = CRIUSEC_AEAD_AUTO;
	enum criusec_compress compress = CRIUSEC_COMPRESS_NONE;
	struct dir_state *parent;

	if (!opts.encrypt && opts.compress) {
		/* Compression is part of the encrypted format; plain images stay CRIU's own. */
		pr_err("--compress needs --encrypt: criusec compresses images inside its encrypted format "
		       "(compress plain images afterwards, e.g. tar | zstd)\n");
		return -1;
	}
	if (!opts.encrypt)
		return criusec_policy_refuses(CRIUSEC_DUMP_PLAIN) ? -1 : 0;
	if (opts.use_page_server && !opts.tls) {
		/* The page server gets the pagemaps' key (see criusec_ps_grant()). */
		pr_err("--encrypt with --page-server needs --tls\n");
		return -1;
	}
	if (opts.lazy_pages && !opts.tls) {
		/* They are served from memory, never written: nothing to encrypt them into. */
		if (criusec_policy_refuses(CRIUSEC_DUMP_LAZY_PLAIN))
			return -1;
	}
	if (opts.encrypt_aead && criusec_aead_parse(opts.encrypt_aead, &aead)) {
		pr_err("--encrypt-aead %s: %s\n", opts.encrypt_aead, criusec_last_error());
		return -1;
	}
	if (opts.compress) {
		compress = criusec_default_compress();
		if (opts.compress_alg && criusec_compress_parse(opts.compress_alg, &compress)) {
			pr_err("--compress-alg %s: %s\n", opts.compress_alg, criusec_last_error());
			return -1;
		}
	}
	/* Before any task is frozen: the identity, the parent, the recipients. */
	if (criusec_load_signer(&dump_signer, NULL, NULL))
		return -1;
	if (dump_signer)
		pr_info("Signing as %s\n", criusec_signer_subject(dump_signer));
	else if (criusec_policy_refuses(CRIUSEC_DUMP_UNSIGNED))
		return -1;
	if (dump_parent(&parent))
		goto err;

	criusec_holding_keys();
	criusec_dump_ctx = criusec_ctx_new(aead);
	if (!criusec_dump_ctx) {
		pr_err("Can't make the checkpoint key: %s\n", criusec_last_error());
		goto err;
	}
	if (criusec_ctx_set_compress(criusec_dump_ctx, compress)) {
		pr_err("Can't compress: %s\n", criusec_last_error());
		goto err;
	}
	criusec_dump_parent_ctx = parent ? parent->ctx : NULL; /* the parent's directory keeps it */
	if (parent && criusec_ctx_set_parent(criusec_dump_ctx, parent->ctx)) {
		pr_err("Can't bind the checkpoint to its parent: %s\n", criusec_last_error());
		goto err;
	}
	if (add_recipients())
		goto err;
	if (criusec_manifest_begin())
		goto err;
	/* What the images directory holds before this dump: see criusec-plugin.c. */
	if (criusec_imgdir_snapshot())
		goto err;
	/* The pipeline's memory faults in while the tasks are seized, not once they are frozen. */
	criusec_pages_warm();
	/* cipher.img is written last, when the manifest's digest is known. */
	pr_info("Images are encrypted with %s%s%s\n", criusec_aead_name(criusec_ctx_aead(criusec_dump_ctx)),
		compress ? ", compressed with " : "", compress ? criusec_compress_name(compress) : "");
	return 0;
err:
	criusec_manifest_end();
	criusec_ctx_free(criusec_dump_ctx);
	criusec_dump_ctx = NULL;
	criusec_dump_parent_ctx = NULL;
	criusec_signer_free(dump_signer);
	dump_signer = NULL;
	return -1;
}

int criusec_dump_finish(int ret)
{
	if (!criusec_dump_ctx)
		return 0;
	/* Nothing may be in the images directory that the manifest will not list. */
	if (ret == 0 && !criusec_manifest_failed() && criusec_imgdir_check())
		criusec_manifest_fail();
	if (ret == 0 && !criusec_manifest_failed()) {
		uint8_t digest[CRIUSEC_DIGEST_LEN];

		/* The manifest, then the header that signs its digest. */
		if (criusec_manifest_write(digest) ||
		    criusec_ctx_seal_header(criusec_dump_ctx, dump_signer, digest) ||
		    criusec_write_cipher_img(criusec_dump_ctx)) {
			if (criusec_last_error()[0])
				pr_err("cipher.img: %s\n", criusec_last_error());
			criusec_manifest_fail();
		}
		if (!criusec_manifest_failed())
			criusec_chain_key_store(criusec_dump_ctx);
	}
	ret = criusec_manifest_failed() ? -1 : 0;
	if (ret || opts.mode == CR_PRE_DUMP)
		criusec_imgdir_forget(); /* else criusec_dump_check_late() checks the plugins' exit */
	criusec_ctx_free(criusec_dump_ctx);
	criusec_dump_ctx = NULL;
	criusec_dump_parent_ctx = NULL;
	criusec_signer_free(dump_signer);
	dump_signer = NULL;
	criusec_manifest_end();
	return ret;
}
