// SPDX-License-Identifier: GPL-2.0-only
/*
 * criusec: the thin layer between CRIU's image I/O and the encryption
 * engine (criu/criusec/, interface in criusec.h).
 *
 * Every image but the page images, cipher.img and the stats goes through
 * one AEAD stream.  Page images get the page cipher instead (each page
 * encrypted in place, so pagemap offsets and random access stay), with
 * the pages' tags in a stream image beside them (pagetags-N.img).  On dump an image is written to a memfd and sealed into
 * its file when closed; on restore the file is authenticated as a whole
 * into memory, and only then handed to CRIU as a memfd.  So every way CRIU
 * reads and writes image data (buffered, raw, splice, sendfile, lseek, or
 * a child like tar writing to the descriptor) is covered by one mechanism,
 * and nothing unauthenticated is ever parsed.
 *
 * cipher.img is written last: it records the digest of the manifest, which
 * records the size and digest of every image, and is signed by the dumping
 * host, so one signature covers the whole checkpoint.  A reader applies
 * the restore policy (trusted signers, the encryption-required marker) to
 * it before any key is used, and opens a parent only under a child whose
 * header binds it.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <linux/keyctl.h>
#include <unistd.h>

#include "criusec.h"
#include "criusec-glue.h"
#include "cr_options.h"
#include "image.h"
#include "image-desc.h"
#include "log.h"
#include "pagemap.h"
#include "protobuf.h"
#include "servicefd.h"
#include "tls.h"
#include "util.h"
#include "common/xmalloc.h"

#include "images/cipher.pb-c.h"
#include "images/pagemap.pb-c.h"
#include "magic.h"

#undef LOG_PREFIX
#define LOG_PREFIX "criusec: "

#define CRIUSEC_DEFAULT_CERT	 SYSCONFDIR "/pki/criu/cert.pem"
#define CRIUSEC_DEFAULT_KEY	 SYSCONFDIR "/pki/criu/private/key.pem"
#define CRIUSEC_REQUIRED_MARKER GLOBAL_CONFIG_DIR "encryption-required"
#define CRIUSEC_DEFAULT_TRUST	 GLOBAL_CONFIG_DIR "trusted-signers.pem"
#define CRIUSEC_DEFAULT_CONF	 GLOBAL_CONFIG_DIR "default.conf"
#define CHAIN_KEY_TTL		 (7 * 24 * 3600) /* see chain_key_store() */

/*
 * Dump side.  The context is made before any image is written, so every
 * process criu forks during the dump shares it.  The manifest (names of the
 * images sealed) lives in shared memory for the same reason: forked
 * children dump namespaces and seal their images themselves.
 */
#define MANIFEST_BYTES (4 << 20)
struct manifest_rec {
	struct criusec_stream_info info; /* has_size 0: not sealed here (page server) */
	bool has_entries;		 /* a page server's pagemap: the digest of its entries */
	uint8_t entries[CRIUSEC_DIGEST_LEN];
	unsigned short klen, nlen; /* with their NULs */
	char names[];		   /* "kind\0name\0" */
};
#define MAX_PS_IMAGES 4096
struct manifest_shm {
	unsigned int used; /* bytes of recs[] in use */
	int failed;	   /* a seal failed somewhere: the dump must fail */
	/* pages image ids the page server answered: none may come twice */
	unsigned int nr_ps_ids;
	uint32_t ps_ids[MAX_PS_IMAGES];
	char recs[]; /* struct manifest_rec, one after another, aligned */
};

static struct criusec_ctx *dump_ctx;
static struct criusec_signer *dump_signer;
static struct manifest_shm *manifest;
/* What sealing cipher-manifest.img gave: its digest goes into the header. */
static struct criusec_stream_info manifest_info;

/* An image being written: plaintext in memfd until it is closed. */
struct pending_img {
	int fd;	     /* the memfd CRIU writes to */
	int memfd;   /* our own reference to it, read back at close */
	int real_fd; /* the image file */
	pid_t owner; /* only the opener seals; a forked child just drops */
	int type;
	bool in_imgdir;
	char *name;
	uint8_t *grant; /* page server: sealed under the dump's grant, not dump_ctx */
	size_t grant_len;
	struct pending_img *next;
};
static struct pending_img *pending;

/*
 * Restore side: what one directory (the images dir, a parent, the work
 * dir) holds, loaded the first time an image is read from it.  Every image
 * its manifest lists is authenticated then, once, into memory; each open
 * gets a private memfd copy of that.  So nothing is used before everything was
 * checked, and tasks that open images from inside a user namespace never
 * need to read the (owner-only) files themselves.
 */
/*
 * A shared mapping of a memfd, not a descriptor: restored tasks close every
 * inherited fd, and the restorer unmaps what criu mapped.  Left out of core
 * dumps, locked where the limit allows, wiped when restore is done.
 */
struct plain_img {
	uint8_t *data;
	size_t len;
};

struct dir_state {
	dev_t dev;
	ino_t ino;
	int dfd; /* to punch its page images when restore is done */
	bool encrypted;
	bool loading; /* reading its own manifest */
	struct criusec_ctx *ctx;
	CipherManifestEntry *manifest;
	struct plain_img *plain; /* per manifest entry */
	struct dir_state *next;
};
static struct dir_state *dirs;

/*
 * Why a directory is read.  An encrypted checkpoint is opened only as the
 * images directory, or as the parent its verified child binds; any other
 * (a parent link under a plaintext child, say) is refused.
 */
enum dir_role {
	DIR_IMAGES,
	DIR_PARENT,
	DIR_OTHER,
};

static void punches_init(void);

/*
 * A page image under the page cipher, found by its descriptor.  Dump
 * appends pages (encrypted, and compressed where that pays, in batches);
 * the engine keeps their tags or region records, sealed into
 * pagetags-N.img when the image is closed.  Restore checks each page read
 * against what was authenticated with the rest of the checkpoint.  Pages
 * are known by their number (logical offset / 4096), whatever the layout
 * of a compressed image.
 */
#define PAGE_TAGS_KIND "pagetags"
struct page_img {
	int fd;
	pid_t owner;
	char *name;
	struct criusec_pages *pc; /* with the tags or region records */
	struct dir_state *dir; /* restore: where it is */
	/* dump through a page server: the pagemap it writes, and its entries */
	char *pm_kind, *pm_name;
	struct criusec_pagemap_digest *pmd;
	int dfd;	/* dump: where the tags go */
	int wfd;	/* dump to a file: where the engine writes, behind CRIU (which closes fd first) */
	bool in_imgdir;
	bool remote; /* dump: fd is the page server's socket */
	struct page_img *next;
};
static struct page_img *page_imgs;

/* Images that stay outside the stream layer, and why. */
static bool stream_covered(int type)
{
	switch (type) {
	case CR_FD_CIPHER: /* the header itself; MAC-protected */
	case CR_FD_STATS:  /* timings and counters, no process state */
	case CR_FD_PAGES:  /* the page cipher: see struct page_img */
	case CR_FD_PAGES_OLD: /* formats older than CRIU 2.x: never written */
	case CR_FD_SHM_PAGES_OLD:
		return false;
	}
	return true;
}

static const char *kind_of(int type)
{
	return imgset_template[type].fmt;
}

/* The marker exists: anything but "no such file" counts, a dangling link too. */
static bool marker_present(void)
{
	struct stat st;

	return lstat(CRIUSEC_REQUIRED_MARKER, &st) == 0 || errno != ENOENT;
}

/* criu works in its work directory (-W, else -D), and so do relative paths. */
static bool relative_path(const char *p)
{
	return p && p[0] != '/' && !criusec_key_is_url(p);
}

static const char *relative_hint(const char *a, const char *b)
{
	if (relative_path(a) || relative_path(b))
		return " (a relative path is taken from the work directory: -W, else -D)";
	return "";
}

/*
 * While criu holds key material or plaintext: no core dump (criu's cwd may
 * be the images directory) and no ptrace by anyone but root.  For the rest
 * of the process: a core written after restore would still hold what the
 * images described.
 */
static void holding_keys(void)
{
	if (prctl(PR_SET_DUMPABLE, 0, 0, 0, 0))
		pr_perror("Can't make criu non-dumpable");
}

/*
 * The signing identity of a dump: --sign-key/--sign-cert (config lines
 * sign-key, sign-cert), else CRIU's host pair when both files are
 * readable.  0 with *s NULL: no identity (the dump is unsigned).
 */
static int load_signer(struct criusec_signer **s, const char **key_out, const char **cert_out)
{
	const char *key = opts.sign_key, *cert = opts.sign_cert;

	*s = NULL;
	if (!key != !cert) {
		pr_err("Signing needs both a key and its certificate: give --sign-key and --sign-cert "
		       "(config lines 'sign-key PATH' and 'sign-cert PATH')\n");
		return -1;
	}
	if (!key) {
		if (access(CRIUSEC_DEFAULT_KEY, R_OK) || access(CRIUSEC_DEFAULT_CERT, R_OK))
			return 0;
		key = CRIUSEC_DEFAULT_KEY;
		cert = CRIUSEC_DEFAULT_CERT;
	}
	*s = criusec_signer_load(key, cert);
	if (!*s) {
		/* The engine's reason names the file; say which setting gave it. */
		if (opts.sign_key)
			pr_err("Signing identity (--sign-key/--sign-cert, or the config lines 'sign-key PATH' and "
			       "'sign-cert PATH' in %s): %s%s\n",
			       CRIUSEC_DEFAULT_CONF, criusec_last_error(), relative_hint(key, cert));
		else
			pr_err("CRIU's default signing identity can't be used: %s (replace it, or set the config "
			       "lines 'sign-key PATH' and 'sign-cert PATH' in %s, or --sign-key/--sign-cert)\n",
			       criusec_last_error(), CRIUSEC_DEFAULT_CONF);
		return -1;
	}
	if (key_out)
		*key_out = key;
	if (cert_out)
		*cert_out = cert;
	return 0;
}

/*
 * The restore policy (Documentation/criusec-format.md, 10.8), made once:
 * trusted signers from --trust (config line 'trust PATH'), else the default
 * trust file if it exists; protection required by any trust or the marker.
 */
static struct criusec_trust *trust;
static const char *trust_origin; /* how trust was configured, for messages */

static int get_policy(struct criusec_policy *pol)
{
	static int loaded; /* 1 done, -1 failed */
	int i;

	if (!loaded) {
		loaded = -1;
		trust = criusec_trust_new();
		if (!trust)
			return -1;
		for (i = 0; i < opts.nr_trust; i++) {
			if (criusec_trust_add_file(trust, opts.trust[i])) {
				pr_err("Trusted signers %s (--trust, or a 'trust PATH' config line): %s\n",
				       opts.trust[i], criusec_last_error());
				return -1;
			}
			trust_origin = "--trust or a 'trust' config line";
		}
		if (!opts.nr_trust && access(CRIUSEC_DEFAULT_TRUST, F_OK) == 0) {
			if (criusec_trust_add_file(trust, CRIUSEC_DEFAULT_TRUST)) {
				pr_err("Trusted signers %s: %s\n", CRIUSEC_DEFAULT_TRUST, criusec_last_error());
				return -1;
			}
			trust_origin = CRIUSEC_DEFAULT_TRUST;
		}
		loaded = 1;
	}
	if (loaded < 0)
		return -1;
	pol->trust = trust;
	pol->required = marker_present();
	pol->max_age = opts.max_age;
	return 0;
}

static bool policy_protects(const struct criusec_policy *pol)
{
	return pol->required || criusec_trust_count(pol->trust) > 0;
}

/* Why this host refuses what is not encrypted and signed, and where that is set. */
static const char *policy_why(const struct criusec_policy *pol)
{
	if (criusec_trust_count(pol->trust))
		return trust_origin;
	return CRIUSEC_REQUIRED_MARKER " exists";
}

/*
 * A policy refusal and the config line (or flag) that fixes it, in one
 * line: RPC callers and syslog get the first error line only.
 */
static void policy_refusal(const char *why, const struct criusec_policy *pol, const struct criusec_verdict *v)
{
	if (v->trusted || (v->is_signed && !policy_protects(pol)))
		/* The signer is fine: the checkpoint's age is not. */
		pr_err("%s (the limit is --max-age, or a 'max-age SECONDS' line in %s)\n", why, CRIUSEC_DEFAULT_CONF);
	else if (!policy_protects(pol))
		pr_err("%s: dump with a signing key ('sign-key'/'sign-cert' in the dumping host's %s, or "
		       "--sign-key/--sign-cert), or restore without --max-age ('max-age' line)\n",
		       why, CRIUSEC_DEFAULT_CONF);
	else if (!criusec_trust_count(pol->trust))
		pr_err("%s: %s exists, but no trusted signer is configured: pass --trust PEM, add a line "
		       "'trust PEM' to %s, or install %s\n",
		       why, CRIUSEC_REQUIRED_MARKER, CRIUSEC_DEFAULT_CONF, CRIUSEC_DEFAULT_TRUST);
	else if (!v->is_signed)
		pr_err("%s (%s): dump with a signing key ('sign-key'/'sign-cert' in the dumping host's %s, or "
		       "--sign-key/--sign-cert)\n",
		       why, policy_why(pol), CRIUSEC_DEFAULT_CONF);
	else
		pr_err("%s (%s): add the signer's CA or certificate to a trust file (--trust PEM, or a line "
		       "'trust PEM' in %s)\n",
		       why, policy_why(pol), CRIUSEC_DEFAULT_CONF);
}

int check_criusec(void)
{
	struct criusec_signer *s;
	struct criusec_policy pol;
	const char *key = NULL, *cert = NULL;
	size_t i, n;

	if (criusec_self_test()) {
		pr_err("engine %s: self-test failed: %s\n", criusec_version(), criusec_last_error());
		return -1;
	}
	pr_msg("criusec engine %s: self-test passed, AEAD %s\n", criusec_version(),
	       criusec_aead_name(criusec_default_aead()));

	if (load_signer(&s, &key, &cert))
		return -1;
	if (s)
		pr_msg("criusec: a dump would be signed by %s (key %s, certificate %s)\n",
		       criusec_signer_subject(s), criusec_key_display(key), cert);
	else
		pr_msg("criusec: a dump would be unsigned (no --sign-key/--sign-cert, and no readable %s and %s)\n",
		       CRIUSEC_DEFAULT_KEY, CRIUSEC_DEFAULT_CERT);
	criusec_signer_free(s);

	if (get_policy(&pol))
		return -1;
	n = criusec_trust_count(pol.trust);
	if (n) {
		pr_msg("criusec: a restore trusts %zu certificate(s) from %s:\n", n, trust_origin);
		for (i = 0; i < n; i++)
			pr_msg("criusec:   %s\n", criusec_trust_subject(pol.trust, i));
	} else {
		pr_msg("criusec: a restore trusts no signer (no --trust, no %s)\n", CRIUSEC_DEFAULT_TRUST);
	}
	if (policy_protects(&pol))
		pr_msg("criusec: a restore refuses checkpoints that are not encrypted and signed by a trusted "
		       "signer (%s)%s\n",
		       policy_why(&pol), pol.required && !n ? ": no signer is trusted, so every restore fails" : "");
	else
		pr_msg("criusec: a restore accepts plaintext and unsigned checkpoints (configure trusted signers "
		       "or create %s to refuse them)\n",
		       CRIUSEC_REQUIRED_MARKER);
	if (pol.max_age)
		pr_msg("criusec: a restore refuses checkpoints older than %llu s\n", (unsigned long long)pol.max_age);
	return 0;
}

static int same_dir(int dfd, dev_t *dev, ino_t *ino)
{
	struct stat st;

	if (fstatat(dfd, "", &st, AT_EMPTY_PATH) < 0) {
		pr_perror("Can't stat an image directory");
		return -1;
	}
	*dev = st.st_dev;
	*ino = st.st_ino;
	return 0;
}

static bool is_imgdir(int dfd)
{
	dev_t d1, d2;
	ino_t i1, i2;

	if (dfd == get_service_fd(IMG_FD_OFF))
		return true;
	if (same_dir(dfd, &d1, &i1) || same_dir(get_service_fd(IMG_FD_OFF), &d2, &i2))
		return false;
	return d1 == d2 && i1 == i2;
}

/* dir's cipher.img, if any: 1 read, 0 absent, -1 error. */
static int read_cipher_entry(int dfd, CipherEntry **ce)
{
	struct cr_img *img;
	int ret;

	img = open_image_at(dfd, CR_FD_CIPHER, O_RSTR);
	if (!img)
		return -1;
	if (empty_image(img)) {
		close_image(img);
		return 0;
	}
	ret = pb_read_one(img, ce, PB_CIPHER);
	close_image(img);
	return ret < 0 ? -1 : 1;
}

static int write_cipher_img(struct criusec_ctx *ctx)
{
	CipherEntry ce = CIPHER_ENTRY__INIT;
	CipherRecipientEntry *re = NULL, **rp = NULL;
	ProtobufCBinaryData *certs = NULL;
	struct criusec_header h;
	struct cr_img *img;
	size_t i;
	int ret = -1;

	if (criusec_ctx_export(ctx, &h)) {
		pr_err("cipher.img: %s\n", criusec_last_error());
		return -1;
	}
	re = xmalloc(h.n_recipients * sizeof(*re));
	rp = xmalloc(h.n_recipients * sizeof(*rp));
	certs = xmalloc((h.n_signer_certs ?: 1) * sizeof(*certs));
	if (!re || !rp || !certs)
		goto out;
	for (i = 0; i < h.n_recipients; i++) {
		cipher_recipient_entry__init(&re[i]);
		re[i].fingerprint.data = (uint8_t *)h.recipients[i].fingerprint;
		re[i].fingerprint.len = CRIUSEC_FPR_LEN;
		re[i].wrap_alg = h.recipients[i].wrap_alg;
		re[i].wrapped_key.data = (uint8_t *)h.recipients[i].wrapped;
		re[i].wrapped_key.len = h.recipients[i].wrapped_len;
		rp[i] = &re[i];
	}
	for (i = 0; i < h.n_signer_certs; i++) {
		certs[i].data = (uint8_t *)h.signer_certs[i].data;
		certs[i].len = h.signer_certs[i].len;
	}
	ce.version = h.version;
	ce.ckpt_id.data = h.ckpt_id;
	ce.ckpt_id.len = CRIUSEC_ID_LEN;
	if (h.has_parent) {
		ce.has_parent_id = true;
		ce.parent_id.data = h.parent_id;
		ce.parent_id.len = CRIUSEC_ID_LEN;
		ce.has_parent_binding = true;
		ce.parent_binding.data = h.parent_binding;
		ce.parent_binding.len = CRIUSEC_MAC_LEN;
	}
	ce.aead = h.aead;
	ce.chunk_size = h.chunk_size;
	ce.n_recipients = h.n_recipients;
	ce.recipients = rp;
	ce.mac.data = h.mac;
	ce.mac.len = CRIUSEC_MAC_LEN;
	ce.has_created = true;
	ce.created = h.created;
	ce.has_manifest_digest = true;
	ce.manifest_digest.data = h.manifest_digest;
	ce.manifest_digest.len = CRIUSEC_DIGEST_LEN;
	ce.has_sig_alg = true;
	ce.sig_alg = h.sig_alg;
	ce.has_compress = true;
	ce.compress = h.compress;
	ce.n_signer_certs = h.n_signer_certs;
	ce.signer_certs = certs;
	if (h.signature.len) {
		ce.has_signature = true;
		ce.signature.data = (uint8_t *)h.signature.data;
		ce.signature.len = h.signature.len;
	}

	img = open_image(CR_FD_CIPHER, O_DUMP);
	if (img) {
		ret = pb_write_one(img, &ce, PB_CIPHER);
		close_image(img);
	}
out:
	xfree(re);
	xfree(rp);
	xfree(certs);
	return ret;
}

/*
 * Load the checkpoint a dump is an increment over (its parent, as restore
 * would: the policy, the key, every image): its pagemaps say which pages
 * need not be written again, and its key makes the binding.
 */
static struct dir_state *dir_load(int dfd, enum dir_role role, struct dir_state *child);

static int dump_parent(struct dir_state **pd)
{
	int pfd;

	*pd = NULL;
	if (!opts.img_parent)
		return 0;
	pfd = openat(get_service_fd(IMG_FD_OFF), CR_PARENT_LINK, O_RDONLY | O_DIRECTORY);
	if (pfd < 0)
		return 0; /* CRIU says it, and dumps in full */
	*pd = dir_load(pfd, DIR_PARENT, NULL);
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

int criusec_dump_start(void)
{
	enum criusec_aead aead = CRIUSEC_AEAD_AUTO;
	enum criusec_compress compress = CRIUSEC_COMPRESS_NONE;
	struct dir_state *parent;
	bool default_cert;
	int i;

	if (!opts.encrypt && opts.compress) {
		/* Compression is part of the encrypted format; plain images stay CRIU's own. */
		pr_err("--compress needs --encrypt: criusec compresses images inside its encrypted format "
		       "(compress plain images afterwards, e.g. tar | zstd)\n");
		return -1;
	}
	if (!opts.encrypt) {
		if (marker_present()) {
			pr_err("Encryption is required on this host (%s exists), but --encrypt was not given "
			       "(add a line 'encrypt' to %s, or pass --encrypt)\n",
			       CRIUSEC_REQUIRED_MARKER, CRIUSEC_DEFAULT_CONF);
			return -1;
		}
		return 0;
	}
	if (opts.use_page_server && !opts.tls) {
		/* The page server gets the pagemaps' key (see criusec_ps_grant()). */
		pr_err("--encrypt with --page-server needs --tls\n");
		return -1;
	}
	if (opts.lazy_pages && !opts.tls) {
		/* They are served from memory, never written: nothing to encrypt them into. */
		if (marker_present()) {
			pr_err("Encryption is required on this host (%s exists): --lazy-pages needs --tls, or the lazy "
			       "pages leave it unencrypted\n",
			       CRIUSEC_REQUIRED_MARKER);
			return -1;
		}
		pr_warn("--lazy-pages without --tls: the lazy pages leave this host unencrypted\n");
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
	if (load_signer(&dump_signer, NULL, NULL))
		return -1;
	if (dump_signer) {
		pr_info("Signing as %s\n", criusec_signer_subject(dump_signer));
	} else if (marker_present()) {
		pr_err("This host requires protected checkpoints (%s exists), but has no signing key: set "
		       "'sign-key PATH' and 'sign-cert PATH' in %s (or --sign-key/--sign-cert), or install "
		       "%s and %s\n",
		       CRIUSEC_REQUIRED_MARKER, CRIUSEC_DEFAULT_CONF, CRIUSEC_DEFAULT_KEY, CRIUSEC_DEFAULT_CERT);
		return -1;
	} else {
		pr_warn("The checkpoint is not signed: no --sign-key/--sign-cert, and no readable %s and %s; "
			"hosts that trust signers will refuse it\n",
			CRIUSEC_DEFAULT_KEY, CRIUSEC_DEFAULT_CERT);
	}
	if (dump_parent(&parent))
		goto err;

	holding_keys();
	dump_ctx = criusec_ctx_new(aead);
	if (!dump_ctx) {
		pr_err("Can't make the checkpoint key: %s\n", criusec_last_error());
		goto err;
	}
	if (criusec_ctx_set_compress(dump_ctx, compress)) {
		pr_err("Can't compress: %s\n", criusec_last_error());
		goto err;
	}
	if (parent && criusec_ctx_set_parent(dump_ctx, parent->ctx)) {
		pr_err("Can't bind the checkpoint to its parent: %s\n", criusec_last_error());
		goto err;
	}
	default_cert = opts.nr_encrypt_certs == 0;
	if (default_cert && add_encrypt_cert(CRIUSEC_DEFAULT_CERT))
		goto err;
	if (opts.unchecked_recipients)
		pr_warn("--unchecked-recipients: recipient certificates are not checked for validity and key usage\n");
	for (i = 0; i < opts.nr_encrypt_certs; i++) {
		int rc = criusec_ctx_add_recipient(dump_ctx, opts.encrypt_certs[i],
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
				       relative_hint(opts.encrypt_certs[i], NULL),
				       rc == -EKEYREJECTED ? " (--unchecked-recipients takes it anyway, for test setups)" :
							     "");
			goto err;
		}
		pr_info("Encrypting for %s\n", opts.encrypt_certs[i]);
	}

	manifest = mmap(NULL, MANIFEST_BYTES, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	if (manifest == MAP_FAILED) {
		manifest = NULL;
		pr_perror("Can't map the image manifest");
		goto err;
	}
	/* cipher.img is written last, when the manifest's digest is known. */
	pr_info("Images are encrypted with %s%s%s\n", criusec_aead_name(criusec_ctx_aead(dump_ctx)),
		compress ? ", compressed with " : "", compress ? criusec_compress_name(compress) : "");
	return 0;
err:
	criusec_ctx_free(dump_ctx);
	dump_ctx = NULL;
	criusec_signer_free(dump_signer);
	dump_signer = NULL;
	return -1;
}

/*
 * info NULL: an image this dump did not seal (a page server's pagemap),
 * of which entries (may be NULL) is the digest of what it was sent.
 */
static void manifest_add(const char *kind, const char *name, const struct criusec_stream_info *info,
			 const uint8_t *entries)
{
	size_t klen = strlen(kind) + 1, nlen = strlen(name) + 1;
	size_t len = ALIGN(sizeof(struct manifest_rec) + klen + nlen, 8);
	struct manifest_rec *r;
	unsigned int off;

	off = __atomic_fetch_add(&manifest->used, len, __ATOMIC_SEQ_CST);
	if (off + len > MANIFEST_BYTES - sizeof(*manifest)) {
		pr_err("Too many images for the manifest\n");
		manifest->failed = 1;
		return;
	}
	r = (struct manifest_rec *)(manifest->recs + off);
	if (info)
		r->info = *info;
	else
		memset(&r->info, 0, sizeof(r->info));
	r->has_entries = entries != NULL;
	if (entries)
		memcpy(r->entries, entries, CRIUSEC_DIGEST_LEN);
	r->klen = klen;
	r->nlen = nlen;
	memcpy(r->names, kind, klen);
	memcpy(r->names + klen, name, nlen);
}

static struct manifest_rec *manifest_next(unsigned int *off)
{
	struct manifest_rec *r;

	if (*off >= manifest->used)
		return NULL;
	r = (struct manifest_rec *)(manifest->recs + *off);
	*off += ALIGN(sizeof(*r) + r->klen + r->nlen, 8);
	return r;
}

static int write_manifest(void)
{
	CipherManifestEntry me = CIPHER_MANIFEST_ENTRY__INIT;
	struct manifest_rec *r;
	struct cr_img *img;
	unsigned int off = 0;
	size_t n = 0;
	int ret = -1;

	while (manifest_next(&off))
		n++;
	me.images = xmalloc(sizeof(*me.images) * (n ?: 1));
	me.kinds = xmalloc(sizeof(*me.kinds) * (n ?: 1));
	me.sizes = xmalloc(sizeof(*me.sizes) * (n ?: 1));
	me.digests = xmalloc(sizeof(*me.digests) * (n ?: 1));
	me.entries = xmalloc(sizeof(*me.entries) * (n ?: 1));
	if (!me.images || !me.kinds || !me.sizes || !me.digests || !me.entries)
		goto out;
	for (off = 0; (r = manifest_next(&off)); me.n_images++) {
		me.kinds[me.n_images] = r->names;
		me.images[me.n_images] = r->names + r->klen;
		me.sizes[me.n_images] = r->info.has_size ? r->info.size : 0;
		me.digests[me.n_images].data = r->info.digest;
		me.digests[me.n_images].len = r->info.has_size ? CRIUSEC_DIGEST_LEN : 0;
		me.entries[me.n_images].data = r->entries;
		me.entries[me.n_images].len = r->has_entries ? CRIUSEC_DIGEST_LEN : 0;
	}
	me.n_kinds = me.n_sizes = me.n_digests = me.n_entries = me.n_images;
	img = open_image(CR_FD_CIPHER_MANIFEST, O_DUMP);
	if (img) {
		ret = pb_write_one(img, &me, PB_CIPHER_MANIFEST);
		close_image(img);
	}
out:
	xfree(me.images);
	xfree(me.kinds);
	xfree(me.sizes);
	xfree(me.digests);
	xfree(me.entries);
	return ret;
}

/*
 * The chain keyring: after each encrypted dump, its chain secret waits in
 * root's user keyring (never on disk, readable by root only, gone after
 * CHAIN_KEY_TTL), so that a later incremental dump on this host reads it
 * as its parent even when this host is not a recipient (it dumps for a
 * target host and an escrow key).  --tls-key is the fallback.
 */
#define CHAIN_KEY_PERM 0x3f010000 /* possessor: all; user (root): view */

static void chain_key_desc(const uint8_t id[CRIUSEC_ID_LEN], char *buf, size_t len)
{
	int i;

	snprintf(buf, len, "criusec:");
	for (i = 0; i < CRIUSEC_ID_LEN; i++)
		snprintf(buf + strlen(buf), len - strlen(buf), "%02x", id[i]);
}

static void chain_key_store(struct criusec_ctx *ctx)
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
static struct criusec_ctx *chain_key_import(const struct criusec_header *h, bool *tried)
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

int criusec_dump_finish(int ret)
{
	if (!dump_ctx)
		return 0;
	if (ret == 0 && !manifest->failed) {
		/* The manifest, then the header that signs its digest. */
		manifest_info.has_size = 0;
		if (write_manifest() || !manifest_info.has_size ||
		    criusec_ctx_seal_header(dump_ctx, dump_signer, manifest_info.digest) ||
		    write_cipher_img(dump_ctx)) {
			if (criusec_last_error()[0])
				pr_err("cipher.img: %s\n", criusec_last_error());
			manifest->failed = 1;
		}
		if (!manifest->failed)
			chain_key_store(dump_ctx);
	}
	ret = manifest->failed ? -1 : 0;
	criusec_ctx_free(dump_ctx);
	dump_ctx = NULL;
	criusec_signer_free(dump_signer);
	dump_signer = NULL;
	munmap(manifest, MANIFEST_BYTES);
	manifest = NULL;
	return ret;
}

/*
 * criu page-server: the grant a dump sent for the pagemap it opens next
 * (PS_IOV_CRIUSEC_GRANT), until that image is opened.
 */
static struct {
	uint8_t *grant;
	size_t len;
	int type;
	char name[64];
	bool used; /* the last open took it: the dump waits for the pages image's id */
} ps_grant;

static void grant_free(uint8_t *grant, size_t len)
{
	explicit_bzero(grant, len);
	xfree(grant);
}

static int open_write(int dfd, int type, const char *path, int *fd, uint8_t *grant, size_t grant_len)
{
	struct pending_img *p;
	int memfd;

	/* CLOEXEC: helpers (tar, iptables-save) get it by dup2(), never another image by inheritance. */
	memfd = memfd_create(path, MFD_CLOEXEC);
	if (memfd < 0) {
		pr_perror("%s: can't make a memfd", path);
		return -1;
	}
	p = xzalloc(sizeof(*p));
	if (p)
		p->name = xstrdup(path);
	if (!p || !p->name || (p->memfd = fcntl(memfd, F_DUPFD_CLOEXEC, 0)) < 0) {
		close(memfd);
		if (p)
			xfree(p->name);
		xfree(p);
		return -1;
	}
	p->fd = memfd;
	p->real_fd = *fd;
	p->owner = getpid();
	p->type = type;
	p->in_imgdir = is_imgdir(dfd);
	p->grant = grant;
	p->grant_len = grant_len;
	p->next = pending;
	pending = p;
	*fd = memfd;
	return 0;
}

/* An image CRIU unlinked after all (e.g. an unsupported "ip rule save"). */
static bool still_linked(int fd)
{
	struct stat st;

	return fstat(fd, &st) == 0 && st.st_nlink > 0;
}

static int page_img_closed(int fd);

void criusec_img_closed(int fd)
{
	struct pending_img **pp, *p;

	if (page_img_closed(fd))
		return;
	for (pp = &pending; *pp; pp = &(*pp)->next)
		if ((*pp)->fd == fd)
			break;
	p = *pp;
	if (!p)
		return;
	*pp = p->next;

	if (p->owner == getpid() && p->grant) {
		/* The dump that granted it lists the image in its manifest. */
		if (lseek(p->memfd, 0, SEEK_SET) < 0 ||
		    criusec_stream_seal_granted_fd(p->grant, p->grant_len, kind_of(p->type), p->name, p->memfd,
						   p->real_fd))
			pr_err("%s: can't encrypt: %s\n", p->name, criusec_last_error());
	} else if (p->owner == getpid()) {
		struct criusec_stream_info info;

		if (lseek(p->memfd, 0, SEEK_SET) < 0 ||
		    criusec_stream_seal_fd(dump_ctx, kind_of(p->type), p->name, p->memfd, p->real_fd, &info)) {
			pr_err("%s: can't encrypt: %s\n", p->name, criusec_last_error());
			manifest->failed = 1;
		} else if (p->type == CR_FD_CIPHER_MANIFEST) {
			manifest_info = info;
		} else if (p->in_imgdir && still_linked(p->real_fd)) {
			manifest_add(kind_of(p->type), p->name, &info, NULL);
		}
	}
	close(p->memfd);
	close(p->real_fd);
	if (p->grant)
		grant_free(p->grant, p->grant_len);
	xfree(p->name);
	xfree(p);
}

static int manifest_index(struct dir_state *d, const char *name)
{
	size_t i;

	for (i = 0; i < d->manifest->n_images; i++)
		if (!strcmp(d->manifest->images[i], name))
			return i;
	return -1;
}

/* A private copy (own offset) of a verified plaintext. */
static int plain_copy(const struct plain_img *p, const char *name)
{
	int fd;

	/* CLOEXEC: a helper criu starts gets an image by dup2(), never another's by inheritance. */
	fd = memfd_create(name, MFD_CLOEXEC);
	if (fd < 0) {
		pr_perror("%s: can't make a memfd", name);
		return -1;
	}
	if (p->len && write_all(fd, p->data, p->len) != (ssize_t)p->len) {
		pr_perror("%s: can't copy", name);
		close(fd);
		return -1;
	}
	if (lseek(fd, 0, SEEK_SET)) {
		pr_perror("%s: lseek", name);
		close(fd);
		return -1;
	}
	return fd;
}

/*
 * Authenticate an image file into a new memfd (at offset 0), chunk by
 * chunk: memory holds two chunks and the plaintext, whatever the file
 * claims.  expect (may be NULL) is what the manifest records of it: a file
 * of another size is refused before it is read.
 */
static int verify_to_memfd(struct criusec_ctx *ctx, const char *kind, const char *name, int fd,
			   const struct criusec_stream_info *expect)
{
	struct stat st;
	int memfd;

	if (fstat(fd, &st)) {
		pr_perror("%s: fstat", name);
		return -1;
	}
	if (!S_ISREG(st.st_mode)) {
		pr_err("%s: not a regular file\n", name);
		return -1;
	}
	if (expect && expect->has_size && (uint64_t)st.st_size != expect->size) {
		pr_err("%s: %lld bytes, but the dump wrote %llu: truncated, extended or replaced\n", name,
		       (long long)st.st_size, (unsigned long long)expect->size);
		return -1;
	}
	memfd = memfd_create(name, MFD_CLOEXEC);
	if (memfd < 0) {
		pr_perror("%s: can't make a memfd", name);
		return -1;
	}
	if (criusec_stream_open_fd(ctx, kind, name, fd, memfd, expect)) {
		pr_err("%s: %s\n", name, criusec_last_error());
		close(memfd);
		return -1;
	}
	if (lseek(memfd, 0, SEEK_SET)) {
		pr_perror("%s: lseek", name);
		close(memfd);
		return -1;
	}
	return memfd;
}

/* Plaintext that holds secrets: never in a core dump, out of swap where allowed. */
static void *map_secret(int fd, size_t len)
{
	void *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);

	if (p == MAP_FAILED)
		return NULL;
	madvise(p, len, MADV_DONTDUMP);
	mlock(p, len); /* best effort: RLIMIT_MEMLOCK may not allow it */
	return p;
}

static void plain_free(struct plain_img *p)
{
	if (p->data) {
		explicit_bzero(p->data, p->len);
		munlock(p->data, p->len);
		munmap(p->data, p->len);
	}
	p->data = NULL;
	p->len = 0;
}

/* Authenticate a whole image file into a mapping (see struct plain_img). */
static int load_plain(struct criusec_ctx *ctx, const char *kind, const char *name, int fd, struct plain_img *p,
		      const struct criusec_stream_info *expect)
{
	struct stat st;
	int memfd, ret = 0;

	memfd = verify_to_memfd(ctx, kind, name, fd, expect);
	if (memfd < 0)
		return -1;
	p->data = NULL;
	p->len = 0;
	if (fstat(memfd, &st)) {
		pr_perror("%s: fstat", name);
		ret = -1;
	} else if (st.st_size) {
		p->len = st.st_size;
		p->data = map_secret(memfd, p->len);
		if (!p->data) {
			pr_perror("%s: can't map the verified plaintext", name);
			ret = -1;
		}
	}
	close(memfd);
	return ret;
}

/* Authenticate a whole stream into a new memfd, or say why not. */
static int open_stream(struct criusec_ctx *ctx, const char *kind, const char *name, int fd,
		       const struct criusec_stream_info *expect)
{
	return verify_to_memfd(ctx, kind, name, fd, expect);
}

/* cipher.img's protobuf as the engine's header; the arrays are the caller's to free. */
struct pb_header {
	struct criusec_header h;
	struct criusec_recipient *rs;
	struct criusec_blob *certs;
};

static void pb_header_free(struct pb_header *ph)
{
	xfree(ph->rs);
	xfree(ph->certs);
}

#define PB_LEN_OK(has, f, n) (!(has) || (f).len == (n))

static int header_from_pb(CipherEntry *ce, struct pb_header *ph)
{
	struct criusec_header *h = &ph->h;
	size_t i;

	memset(ph, 0, sizeof(*ph));
	if (ce->ckpt_id.len != CRIUSEC_ID_LEN || ce->mac.len != CRIUSEC_MAC_LEN ||
	    !PB_LEN_OK(ce->has_parent_id, ce->parent_id, CRIUSEC_ID_LEN) ||
	    !PB_LEN_OK(ce->has_parent_binding, ce->parent_binding, CRIUSEC_MAC_LEN) ||
	    !PB_LEN_OK(ce->has_manifest_digest, ce->manifest_digest, CRIUSEC_DIGEST_LEN) ||
	    ce->n_signer_certs > CRIUSEC_MAX_SIGNER_CERTS)
		return -1;
	/* A format-2 header has both or neither; format 1 has no binding. */
	if (ce->version != 1 && ce->has_parent_id != ce->has_parent_binding)
		return -1;
	ph->rs = xzalloc(sizeof(*ph->rs) * (ce->n_recipients ?: 1));
	ph->certs = xzalloc(sizeof(*ph->certs) * (ce->n_signer_certs ?: 1));
	if (!ph->rs || !ph->certs)
		return -1;
	for (i = 0; i < ce->n_recipients; i++) {
		CipherRecipientEntry *re = ce->recipients[i];

		if (re->fingerprint.len != CRIUSEC_FPR_LEN)
			return -1;
		memcpy(ph->rs[i].fingerprint, re->fingerprint.data, CRIUSEC_FPR_LEN);
		ph->rs[i].wrap_alg = re->wrap_alg;
		ph->rs[i].wrapped = re->wrapped_key.data;
		ph->rs[i].wrapped_len = re->wrapped_key.len;
	}
	for (i = 0; i < ce->n_signer_certs; i++) {
		ph->certs[i].data = ce->signer_certs[i].data;
		ph->certs[i].len = ce->signer_certs[i].len;
	}
	h->version = ce->version;
	memcpy(h->ckpt_id, ce->ckpt_id.data, CRIUSEC_ID_LEN);
	h->has_parent = ce->has_parent_id;
	if (ce->has_parent_id)
		memcpy(h->parent_id, ce->parent_id.data, CRIUSEC_ID_LEN);
	if (ce->has_parent_binding)
		memcpy(h->parent_binding, ce->parent_binding.data, CRIUSEC_MAC_LEN);
	h->aead = ce->aead;
	h->chunk_size = ce->chunk_size;
	h->n_recipients = ce->n_recipients;
	h->recipients = ph->rs;
	memcpy(h->mac, ce->mac.data, CRIUSEC_MAC_LEN);
	h->created = ce->has_created ? ce->created : 0;
	if (ce->has_manifest_digest)
		memcpy(h->manifest_digest, ce->manifest_digest.data, CRIUSEC_DIGEST_LEN);
	h->sig_alg = ce->has_sig_alg ? ce->sig_alg : 0;
	h->compress = ce->has_compress ? ce->compress : 0;
	h->n_signer_certs = ce->n_signer_certs;
	h->signer_certs = ph->certs;
	if (ce->has_signature) {
		h->signature.data = ce->signature.data;
		h->signature.len = ce->signature.len;
	}
	return 0;
}

/* What a format-2 manifest records of image i; NULL when nothing (format 1, or a page server's image). */
static const struct criusec_stream_info *manifest_expect(struct dir_state *d, size_t i,
							 struct criusec_stream_info *buf)
{
	CipherManifestEntry *m = d->manifest;

	if (!criusec_ctx_manifest_digest(d->ctx) || m->digests[i].len == 0)
		return NULL;
	buf->size = m->sizes[i];
	buf->has_size = 1;
	memcpy(buf->digest, m->digests[i].data, CRIUSEC_DIGEST_LEN);
	return buf;
}

/* What the header records of its manifest (format 2): the digest; NULL in format 1. */
static const struct criusec_stream_info *manifest_of_header(struct dir_state *d, struct criusec_stream_info *buf)
{
	const uint8_t *digest = criusec_ctx_manifest_digest(d->ctx);

	if (!digest)
		return NULL;
	memset(buf, 0, sizeof(*buf));
	memcpy(buf->digest, digest, CRIUSEC_DIGEST_LEN);
	return buf;
}

/*
 * The pattern a name of this kind must match: an image kind is CRIU's
 * printf-style template of its file names ("core-%u.img"); NULL for a kind
 * CRIU does not write through the stream layer.
 */
static const char *kind_pattern(const char *kind)
{
	int type;

	if (!strcmp(kind, PAGE_TAGS_KIND))
		return "pagetags-%u.img";
	for (type = 0; type < CR_FD_MAX; type++)
		if (imgset_template[type].fmt && !strcmp(kind, imgset_template[type].fmt) && stream_covered(type))
			return kind;
	return NULL;
}

static bool is_pagemap_kind(const char *kind)
{
	return !strcmp(kind, kind_of(CR_FD_PAGEMAP)) || !strcmp(kind, kind_of(CR_FD_SHMEM_PAGEMAP));
}

/* The manifest's entries: well formed, and names that are plain file names of their kinds. */
static int check_manifest(CipherManifestEntry *m, bool v2)
{
	size_t i;

	if (m->n_kinds != m->n_images || (v2 && (m->n_sizes != m->n_images || m->n_digests != m->n_images)) ||
	    (m->n_entries && m->n_entries != m->n_images)) {
		pr_err("cipher-manifest.img: malformed\n");
		return -1;
	}
	for (i = 0; i < m->n_images; i++) {
		const char *pattern = kind_pattern(m->kinds[i]);

		if (!pattern || !criusec_name_matches(pattern, m->images[i])) {
			pr_err("cipher-manifest.img: \"%s\" is not an image name of the kind %s\n", m->images[i],
			       m->kinds[i]);
			return -1;
		}
		if (v2 && m->digests[i].len != CRIUSEC_DIGEST_LEN && (m->digests[i].len || m->sizes[i])) {
			pr_err("cipher-manifest.img: malformed entry for %s\n", m->images[i]);
			return -1;
		}
		if (m->n_entries && m->entries[i].len && (m->entries[i].len != CRIUSEC_DIGEST_LEN ||
							  !is_pagemap_kind(m->kinds[i]))) {
			pr_err("cipher-manifest.img: malformed entry for %s\n", m->images[i]);
			return -1;
		}
	}
	return 0;
}

/*
 * A pagemap's plaintext (CRIU's image: two magics, then u32-sized
 * protobufs, PagemapHead first): its pages image id, how many pages that
 * image holds for it, and the digest of its entries.
 */
static int pagemap_scan(const struct plain_img *p, const char *name, uint32_t *pages_id, uint64_t *present,
			uint8_t digest[CRIUSEC_DIGEST_LEN])
{
	struct criusec_pagemap_digest *pd = NULL;
	size_t off = 2 * sizeof(uint32_t);
	bool head = true;
	uint32_t magic[2];

	*present = 0;
	if (p->len < off)
		goto bad;
	memcpy(magic, p->data, sizeof(magic));
	if (magic[0] != IMG_COMMON_MAGIC || magic[1] != PAGEMAP_MAGIC)
		goto bad;
	while (off < p->len) {
		uint32_t sz;

		if (p->len - off < sizeof(sz))
			goto bad;
		memcpy(&sz, p->data + off, sizeof(sz));
		off += sizeof(sz);
		if (sz > p->len - off)
			goto bad;
		if (head) {
			PagemapHead *h = pagemap_head__unpack(NULL, sz, p->data + off);

			if (!h)
				goto bad;
			*pages_id = h->pages_id;
			pagemap_head__free_unpacked(h, NULL);
			pd = criusec_pagemap_digest_new(*pages_id);
			if (!pd)
				goto bad;
			head = false;
		} else {
			PagemapEntry *e = pagemap_entry__unpack(NULL, sz, p->data + off);
			uint32_t nr, flags;
			int ret;

			if (!e)
				goto bad;
			/* Entries of older CRIUs have no flags (pycriu normalises them the same way). */
			nr = e->has_nr_pages ? e->nr_pages : e->compat_nr_pages;
			flags = e->has_flags ? e->flags : (e->has_in_parent && e->in_parent ? PE_PARENT : PE_PRESENT);
			ret = criusec_pagemap_digest_add(pd, e->vaddr, nr, flags);
			pagemap_entry__free_unpacked(e, NULL);
			if (ret)
				goto bad;
			if (flags & PE_PRESENT)
				*present += nr;
		}
		off += sz;
	}
	if (head)
		goto bad;
	return criusec_pagemap_digest_final(pd, digest) ? -1 : 0;
bad:
	criusec_pagemap_digest_final(pd, NULL);
	pr_err("%s: not a pagemap image\n", name);
	return -1;
}

/*
 * Every pagemap covers exactly the pages its page image has tags (or
 * regions) for, and
 * one a page server wrote holds exactly the entries the dump sent it: a
 * page server that drops, adds or moves an entry is caught here.
 */
static int check_pagemaps(struct dir_state *d)
{
	CipherManifestEntry *m = d->manifest;
	uint8_t digest[CRIUSEC_DIGEST_LEN];
	char tname[64];
	uint32_t id;
	uint64_t present, described;
	size_t i;
	int t;

	for (i = 0; i < m->n_images; i++) {
		if (!is_pagemap_kind(m->kinds[i]))
			continue;
		if (pagemap_scan(&d->plain[i], m->images[i], &id, &present, digest))
			return -1;
		if (m->n_entries && m->entries[i].len && memcmp(digest, m->entries[i].data, CRIUSEC_DIGEST_LEN)) {
			pr_err("%s: its entries are not the ones the dump sent the page server\n", m->images[i]);
			return -1;
		}
		snprintf(tname, sizeof(tname), "pagetags-%u.img", id);
		t = manifest_index(d, tname);
		if (t < 0 && present) {
			pr_err("%s: its %llu pages have no tags (%s)\n", m->images[i], (unsigned long long)present,
			       tname);
			return -1;
		}
		if (t < 0)
			continue;
		if (criusec_pages_index_pages(d->ctx, d->plain[t].data, d->plain[t].len, &described)) {
			pr_err("%s: %s\n", tname, criusec_last_error());
			return -1;
		}
		if (described != present) {
			pr_err("%s: covers %llu pages, but %s describes %llu\n", m->images[i],
			       (unsigned long long)present, tname, (unsigned long long)described);
			return -1;
		}
	}
	return 0;
}

/*
 * Authenticate every image the manifest lists before any is used, so a
 * damaged or missing image stops the restore before it starts, even one
 * that would have been read late, or never.  Names are plain file names
 * of their kinds, and only regular files are read (never through a link,
 * never blocking on a FIFO).
 */
static int verify_all(int dfd, struct dir_state *d)
{
	CipherManifestEntry *m = d->manifest;
	size_t i;
	int fd;

	if (check_manifest(m, criusec_ctx_manifest_digest(d->ctx) != NULL))
		return -1;
	d->plain = xzalloc(sizeof(*d->plain) * (m->n_images ?: 1));
	if (!d->plain)
		return -1;
	for (i = 0; i < m->n_images; i++) {
		struct criusec_stream_info buf;
		int ret;

		fd = openat(dfd, m->images[i], O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
		if (fd < 0) {
			pr_perror("%s: missing from the encrypted checkpoint (its manifest lists it)", m->images[i]);
			return -1;
		}
		ret = load_plain(d->ctx, m->kinds[i], m->images[i], fd, &d->plain[i], manifest_expect(d, i, &buf));
		close(fd);
		if (ret)
			return -1;
	}
	if (check_pagemaps(d))
		return -1;
	pr_info("All %zu images of the checkpoint authenticated\n", m->n_images);
	return 0;
}

/* The policy and the signature, before any key is used. */
static int check_header(const struct criusec_header *h)
{
	struct criusec_verdict v;
	struct criusec_policy pol;
	int ret;

	if (get_policy(&pol))
		return -1;
	ret = criusec_header_check(h, &pol, &v);
	if (ret == -EKEYREJECTED) {
		char why[512]; /* the engine's next call clears its error */

		snprintf(why, sizeof(why), "%s", criusec_last_error());
		policy_refusal(why, &pol, &v);
		return -1;
	}
	if (ret) {
		pr_err("%s\n", criusec_last_error());
		return -1;
	}
	if (v.is_signed)
		pr_info("cipher.img: signed by %s (%s)\n", v.signer, v.trusted ? v.how : "not checked against trust");
	else
		pr_info("cipher.img: unsigned (format %u)\n", h->version);
	return 0;
}

/*
 * The restore's private keys: every --tls-key (and 'tls-key' config line),
 * in order, or CRIU's default.  Several keys let a node restore what was
 * made for its old key while it rotates.  Each is a PEM file or a PKCS#11
 * URL (the key stays in its token).  A key that is not a recipient gives
 * way to the next; any other failure (an unreadable file, a wrong PIN, a
 * missing token) stops the restore there, naming that key.
 */
static struct criusec_ctx *restore_import(const struct criusec_header *h)
{
	static char *dflt[] = { CRIUSEC_DEFAULT_KEY };
	char **keys = opts.nr_tls_keys ? opts.tls_keys : dflt;
	int i, n = opts.nr_tls_keys ?: 1;
	struct criusec_ctx *ctx;

	for (i = 0; i < n; i++) {
		if (!criusec_key_is_url(keys[i]) && access(keys[i], R_OK)) {
			pr_err("The checkpoint is encrypted; pass the private key with --tls-key or a 'tls-key PATH' "
			       "line in %s (%s: %s)\n",
			       CRIUSEC_DEFAULT_CONF, keys[i], strerror(errno));
			return NULL;
		}
		ctx = criusec_ctx_import(h, keys[i]);
		if (ctx) {
			pr_info("cipher.img: unlocked with %s\n", criusec_key_display(keys[i]));
			return ctx;
		}
		if (criusec_last_errno() != -ENOKEY || i == n - 1)
			break;
		pr_info("%s is not a recipient of the checkpoint; trying the next key\n",
			criusec_key_display(keys[i]));
	}
	if (n > 1 && criusec_last_errno() == -ENOKEY)
		pr_err("cipher.img: none of the %d keys (--tls-key, or 'tls-key' lines in %s) is a recipient of "
		       "the checkpoint\n",
		       n, CRIUSEC_DEFAULT_CONF);
	else
		pr_err("cipher.img: %s (key %s, from --tls-key or a 'tls-key' line in %s)\n", criusec_last_error(),
		       criusec_key_display(keys[i]), CRIUSEC_DEFAULT_CONF);
	return NULL;
}

/*
 * An encrypted child's parent: loaded (its header checked against the
 * child's binding before any of its images is read, see load_dir()).
 */
static int load_parent(int dfd, struct dir_state *d)
{
	struct dir_state *pd;
	int pfd;

	pfd = openat(dfd, CR_PARENT_LINK, O_RDONLY | O_DIRECTORY);
	if (pfd < 0)
		return 0; /* no parent images here: CRIU fails if it needs one */
	pd = dir_load(pfd, DIR_PARENT, d);
	close(pfd);
	if (!pd)
		return -1;
	if (!pd->encrypted) {
		pr_err("The parent images are not encrypted, but these images are: not the checkpoint they were "
		       "dumped against\n");
		return -1;
	}
	return 0;
}

static int check_binding(struct dir_state *child, struct dir_state *parent)
{
	if (child && criusec_ctx_check_parent(child->ctx, parent->ctx)) {
		pr_err("parent: %s\n", criusec_last_error());
		return -1;
	}
	return 0;
}

/*
 * child: the verified checkpoint this directory is loaded as the parent of
 * (NULL for the images directory, and for a dump's parent, which the dump
 * binds itself).
 */
static int load_dir(int dfd, struct dir_state *d, enum dir_role role, struct dir_state *child)
{
	struct criusec_policy pol;
	struct pb_header ph;
	struct cr_img *img;
	CipherEntry *ce;
	int ret;

	ret = read_cipher_entry(dfd, &ce);
	if (ret < 0)
		return -1;
	if (ret == 0) {
		if (role == DIR_OTHER)
			return 0;
		if (get_policy(&pol))
			return -1;
		if (policy_protects(&pol)) {
			pr_err("The checkpoint is not encrypted (no cipher.img), and this host restores only encrypted "
			       "checkpoints signed by a trusted signer (%s)\n",
			       policy_why(&pol));
			return -1;
		}
		return 0;
	}
	d->encrypted = true;
	punches_init();
	if (role == DIR_OTHER) {
		pr_err("An encrypted checkpoint is read only as the images directory or as the verified parent "
		       "of one: refusing to open it here (a parent link under a plaintext checkpoint?)\n");
		goto err;
	}
	if (header_from_pb(ce, &ph)) {
		pr_err("cipher.img: malformed header\n");
		goto err;
	}
	if (check_header(&ph.h))
		goto err;
	holding_keys();
	if (role == DIR_PARENT && (opts.mode == CR_DUMP || opts.mode == CR_PRE_DUMP)) {
		/* A dump reads its parent with the chain key it left, else a recipient's key. */
		bool tried = false;

		d->ctx = chain_key_import(&ph.h, &tried);
		if (!d->ctx && tried)
			goto err;
	}
	if (!d->ctx)
		d->ctx = restore_import(&ph.h);
	if (!d->ctx)
		goto err;
	pb_header_free(&ph);
	cipher_entry__free_unpacked(ce, NULL);
	/* A parent is the child's, by key, before any image of it is read. */
	if (check_binding(child, d))
		return -1;

	/* The manifest: open_read() checks it against the header (manifest_of_header()). */
	d->loading = true;
	img = open_image_at(dfd, CR_FD_CIPHER_MANIFEST, O_RSTR);
	d->loading = false;
	if (!img)
		return -1;
	if (empty_image(img)) {
		close_image(img);
		pr_err("cipher-manifest.img is missing: the dump did not finish, or images were removed\n");
		return -1;
	}
	ret = pb_read_one(img, &d->manifest, PB_CIPHER_MANIFEST);
	close_image(img);
	if (ret < 0)
		return -1;
	if (verify_all(dfd, d))
		return -1;
	return load_parent(dfd, d);
err:
	pb_header_free(&ph);
	cipher_entry__free_unpacked(ce, NULL);
	return -1;
}

/* Wipe what a directory's checkpoint revealed: its plaintexts and its key. */
static void dir_forget_secrets(struct dir_state *d)
{
	size_t i;

	if (d->plain)
		for (i = 0; d->manifest && i < d->manifest->n_images; i++)
			plain_free(&d->plain[i]);
	xfree(d->plain);
	d->plain = NULL;
	if (d->manifest)
		cipher_manifest_entry__free_unpacked(d->manifest, NULL);
	d->manifest = NULL;
	criusec_ctx_free(d->ctx);
	d->ctx = NULL;
}

/*
 * The state of the directory dfd, loaded (and every image authenticated)
 * the first time; NULL if it must not be used (said why, once).
 */
static struct dir_state *dir_load(int dfd, enum dir_role role, struct dir_state *child)
{
	struct dir_state *d;
	dev_t dev;
	ino_t ino;

	if (same_dir(dfd, &dev, &ino))
		return NULL;
	for (d = dirs; d; d = d->next) {
		if (d->dev != dev || d->ino != ino)
			continue;
		if (d->encrypted && !d->ctx && !d->loading)
			return NULL;
		/* Loaded before: the binding is still this child's to check. */
		return d->ctx && check_binding(child, d) ? NULL : d;
	}
	d = xzalloc(sizeof(*d));
	if (!d)
		return NULL;
	d->dev = dev;
	d->ino = ino;
	d->dfd = -1;
	d->next = dirs;
	dirs = d;
	if (load_dir(dfd, d, role, child))
		goto fail;
	/*
	 * Only an encrypted checkpoint needs its directory later (deferred
	 * punches).  A plaintext parent is first read inside a restored task,
	 * whose own files then take the lowest fds: keep none of them.  dfd
	 * may be AT_FDCWD (the irmap cache in the work dir): reopen, not dup.
	 */
	if (d->encrypted) {
		d->dfd = openat(dfd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
		if (d->dfd < 0) {
			pr_perror("Can't reopen an image directory");
			goto fail;
		}
	}
	return d;
fail:
	/* Keep the failure: later opens of this directory fail too. */
	dir_forget_secrets(d);
	d->encrypted = true;
	return NULL;
}

static struct dir_state *dir_lookup(int dfd)
{
	return dir_load(dfd, is_imgdir(dfd) ? DIR_IMAGES : DIR_OTHER, NULL);
}

static int open_read(int dfd, int type, const char *path, int *fd)
{
	char head[CRIUSEC_STREAM_MAGIC_LEN];
	struct dir_state *d;
	bool is_stream;
	int i, memfd;
	ssize_t n;

	if (*fd >= 0) {
		n = pread(*fd, head, sizeof(head), 0);
		is_stream = n == sizeof(head) && criusec_is_stream(head, n);
	} else {
		is_stream = false;
	}

	/*
	 * An irmap cache sealed by an earlier pre-dump (each has its own key,
	 * and a work dir has no cipher.img) is only a cache: go on without it.
	 */
	if (type == CR_FD_IRMAP_CACHE && is_stream && !(dump_ctx && is_imgdir(dfd))) {
		pr_warn("Ignoring the encrypted %s of an earlier dump\n", path);
		close(*fd);
		*fd = -1;
		errno = ENOENT;
		return 0;
	}

	/* Reading back what this dump wrote: its own key, no manifest yet. */
	if (dump_ctx && is_imgdir(dfd)) {
		if (*fd < 0 || !is_stream)
			return 0;
		memfd = open_stream(dump_ctx, kind_of(type), path, *fd, NULL);
		goto swap;
	}

	/* Failures of dir_lookup() were said once, when it failed. */
	d = dir_lookup(dfd);
	if (!d) {
		if (type == CR_FD_IRMAP_CACHE) {
			/* Only a cache: go on without it. */
			pr_warn("Ignoring the encrypted %s\n", path);
			if (*fd >= 0)
				close(*fd);
			*fd = -1;
			errno = ENOENT;
			return 0;
		}
		return -1;
	}

	if (!d->encrypted) {
		if (is_stream) {
			pr_err("%s is encrypted, but there is no cipher.img beside it\n", path);
			return -1;
		}
		return 0;
	}
	if (d->loading) {
		struct criusec_stream_info buf;

		/* The manifest itself, read by load_dir(). */
		if (*fd < 0)
			return 0;
		memfd = open_stream(d->ctx, kind_of(type), path, *fd, manifest_of_header(d, &buf));
		goto swap;
	}

	i = manifest_index(d, path);
	if (i < 0) {
		if (*fd < 0)
			return 0; /* not dumped, as in a plain checkpoint */
		pr_err("%s is not an image of this checkpoint (not in its manifest)\n", path);
		return -1;
	}
	if (strcmp(d->manifest->kinds[i], kind_of(type))) {
		pr_err("%s was dumped as %s, not read as %s\n", path, d->manifest->kinds[i], kind_of(type));
		return -1;
	}
	memfd = plain_copy(&d->plain[i], path);
swap:
	if (memfd < 0)
		return -1;
	if (*fd >= 0)
		close(*fd);
	*fd = memfd;
	return 0;
}


/* pages-N.img -> pagetags-N.img */
static char *tags_name(const char *pages)
{
	char *name;

	if (strncmp(pages, "pages-", 6)) {
		pr_err("%s: not a page image name\n", pages);
		return NULL;
	}
	if (asprintf(&name, "pagetags-%s", pages + 6) < 0)
		return NULL;
	return name;
}

static struct page_img *page_lookup(int fd)
{
	struct page_img *p;

	for (p = page_imgs; p; p = p->next)
		if (p->fd == fd && p->owner == getpid())
			return p;
	return NULL;
}

static void page_free(struct page_img *p)
{
	/* Its helpers first: they may still be writing to wfd. */
	criusec_pages_free(p->pc);
	if (p->wfd >= 0)
		close(p->wfd);
	if (p->dfd >= 0)
		close(p->dfd);
	criusec_pagemap_digest_final(p->pmd, NULL);
	xfree(p->pm_kind);
	xfree(p->pm_name);
	xfree(p->name);
	xfree(p);
}

/* The entry of a descriptor number, stale ones too (a fork closed it). */
static void page_forget(int fd)
{
	struct page_img **pp, *p;

	for (pp = &page_imgs; *pp;) {
		p = *pp;
		if (p->fd == fd) {
			*pp = p->next;
			page_free(p);
		} else {
			pp = &p->next;
		}
	}
}

static struct page_img *page_new(int fd, const char *path, struct criusec_ctx *ctx)
{
	struct page_img *p;

	p = xzalloc(sizeof(*p));
	if (!p)
		return NULL;
	p->fd = fd;
	p->dfd = -1;
	p->wfd = -1;
	p->owner = getpid();
	p->name = xstrdup(path);
	p->pc = criusec_pages_new(ctx, path);
	if (!p->name || !p->pc) {
		if (!p->pc)
			pr_err("%s: %s\n", path, criusec_last_error());
		page_free(p);
		return NULL;
	}
	p->next = page_imgs;
	page_imgs = p;
	return p;
}

static int page_open_write(int dfd, const char *path, int fd)
{
	struct page_img *p;

	/*
	 * CRIU's usual mode, not owner-only like the streams: restored tasks
	 * in a user namespace read their pages themselves (as ciphertext).
	 */
	p = page_new(fd, path, dump_ctx);
	if (!p)
		return -1;
	p->in_imgdir = is_imgdir(dfd);
	p->dfd = fcntl(dfd, F_DUPFD_CLOEXEC, 0);
	p->wfd = fcntl(fd, F_DUPFD_CLOEXEC, 0);
	if (p->dfd < 0 || p->wfd < 0) {
		pr_perror("%s: dup", path);
		return -1;
	}
	/* Sealing and writing overlap what CRIU does next; the tags are written once all is out. */
	criusec_pages_write_behind(p->pc);
	return 0;
}

static int page_open_read(int dfd, const char *path, int fd)
{
	struct dir_state *d;
	struct page_img *p;
	struct stat st;
	char *tname;
	int i;

	/* Our own pages, during the dump: never read back (page server not supported). */
	if (dump_ctx && is_imgdir(dfd))
		return 0;
	d = dir_lookup(dfd);
	if (!d)
		return -1;
	if (!d->encrypted)
		return 0;
	tname = tags_name(path);
	if (!tname)
		return -1;
	i = manifest_index(d, tname);
	if (i < 0 || strcmp(d->manifest->kinds[i], PAGE_TAGS_KIND)) {
		pr_err("%s: its page tags (%s) are not in the checkpoint\n", path, tname);
		free(tname);
		return -1;
	}
	free(tname);
	p = page_new(fd, path, d->ctx);
	if (!p)
		return -1;
	p->dir = d;
	if (fstat(fd, &st)) {
		pr_perror("%s: fstat", path);
		return -1;
	}
	/* The engine keeps its own copy, and checks the file's size against it (dedup keeps the size). */
	if (criusec_pages_attach(p->pc, d->plain[i].data, d->plain[i].len, st.st_size)) {
		pr_err("%s: %s\n", path, criusec_last_error());
		return -1;
	}
	return 0;
}

static int page_img_open(int dfd, unsigned long flags, const char *path, int fd)
{
	page_forget(fd);
	if (fd < 0)
		return 0;
	if (flags & O_CREAT)
		return dump_ctx ? page_open_write(dfd, path, fd) : 0;
	return page_open_read(dfd, path, fd);
}

static int page_tags_write(struct page_img *p)
{
	struct criusec_stream_info info;
	char *tname = tags_name(p->name);
	const uint8_t *index;
	uint8_t *out = NULL;
	size_t len, out_len;
	int fd = -1, ret = -1;

	if (!tname)
		return -1;
	if (criusec_pages_index(p->pc, &index, &len) ||
	    criusec_stream_seal_buf(dump_ctx, PAGE_TAGS_KIND, tname, index ?: (uint8_t *)"", len, &out, &out_len,
				    &info)) {
		pr_err("%s: can't seal: %s\n", tname, criusec_last_error());
		goto out;
	}
	fd = openat(p->dfd, tname, O_WRONLY | O_CREAT | O_TRUNC, 0600);
	if (fd < 0 || write_all(fd, out, out_len) != (ssize_t)out_len) {
		pr_perror("%s: can't write", tname);
		goto out;
	}
	if (p->in_imgdir)
		manifest_add(PAGE_TAGS_KIND, tname, &info, NULL);
	ret = 0;
out:
	if (fd >= 0)
		close(fd);
	free(out);
	free(tname);
	return ret;
}

/* 1: p was a page image (and is gone), 0: not one. */
static int page_img_closed(int fd)
{
	struct page_img **pp, *p;

	for (pp = &page_imgs; *pp; pp = &(*pp)->next)
		if ((*pp)->fd == fd && (*pp)->owner == getpid())
			break;
	p = *pp;
	if (!p)
		return 0;
	*pp = p->next;
	if (p->dfd >= 0 && page_tags_write(p))
		manifest->failed = 1;
	if (p->pmd) {
		uint8_t entries[CRIUSEC_DIGEST_LEN];

		/* The page server sealed it; the manifest records what it was sent. */
		if (criusec_pagemap_digest_final(p->pmd, entries))
			manifest->failed = 1;
		else
			manifest_add(p->pm_kind, p->pm_name, NULL, entries);
		p->pmd = NULL;
	}
	page_free(p);
	return 1;
}

bool criusec_pages_sealed(int fd)
{
	return page_lookup(fd) != NULL;
}

#define PAGE_BATCH (1 << 20)

/* One staging buffer for checked plaintext pages on their way out (restore, page server). */
static uint8_t *page_batch;

static uint8_t *page_batch_buf(void)
{
	if (!page_batch) {
		page_batch = mmap(NULL, PAGE_BATCH, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		if (page_batch == MAP_FAILED) {
			pr_perror("Can't map a page buffer");
			page_batch = NULL;
			return NULL;
		}
		madvise(page_batch, PAGE_BATCH, MADV_DONTDUMP);
	}
	return page_batch;
}

/*
 * restore --auto-dedup: the pages criu read (and checked) are punched out
 * of their images only once the whole restore succeeded, so a refused
 * restore changes no byte.  Tasks read their pages in processes of their
 * own, hence shared memory, made before any is forked.
 */
#define PUNCH_RECS 32768
struct punch_rec {
	dev_t dev; /* the directory */
	ino_t ino;
	char name[32]; /* pages-N.img */
	uint64_t off, len;
};
static struct punch_shm {
	unsigned int used;
	int overflow; /* too many: punch nothing (only a saving is lost) */
	struct punch_rec r[PUNCH_RECS];
} *punches;

static void punches_init(void)
{
	if (punches || !opts.auto_dedup || opts.mode != CR_RESTORE)
		return;
	punches = mmap(NULL, sizeof(*punches), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	if (punches == MAP_FAILED) {
		pr_perror("Can't map the auto-dedup list");
		punches = NULL;
	}
}

static int punch_now(void *arg, uint64_t off, uint64_t len)
{
	return fallocate(*(int *)arg, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, off, len);
}

/* A range of the page image p to punch once the restore succeeded. */
static int punch_later(void *arg, uint64_t off, uint64_t len)
{
	struct page_img *p = arg;
	struct punch_rec *r;
	unsigned int i;

	if (!punches)
		return 0; /* no list: punch nothing rather than too early */
	i = __atomic_fetch_add(&punches->used, 1, __ATOMIC_SEQ_CST);
	if (i >= PUNCH_RECS) {
		punches->overflow = 1;
		return 0;
	}
	r = &punches->r[i];
	r->dev = p->dir->dev;
	r->ino = p->dir->ino;
	snprintf(r->name, sizeof(r->name), "%s", p->name);
	r->off = off;
	r->len = len;
	return 0;
}

int criusec_punch(int fd, unsigned long off, unsigned long len)
{
	struct page_img *p = page_lookup(fd);
	bool later;

	if (!p || !p->dir)
		return 0;
	later = opts.mode == CR_RESTORE;
	/* Offsets are page numbers: a compressed image's layout is the engine's. */
	if (off % CRIUSEC_PAGE_SIZE || len % CRIUSEC_PAGE_SIZE ||
	    criusec_pages_punch(p->pc, off / CRIUSEC_PAGE_SIZE, len / CRIUSEC_PAGE_SIZE,
				later ? punch_later : punch_now, later ? (void *)p : (void *)&fd)) {
		pr_err("%s: can't punch pages at %#lx+%lu: %s\n", p->name, off, len, criusec_last_error());
		return -1;
	}
	return 1;
}

static void punch_deferred(void)
{
	struct dir_state *d;
	unsigned int i;

	if (!punches)
		return;
	if (punches->overflow) {
		pr_warn("Too many pages to punch after the restore: --auto-dedup punched nothing\n");
		return;
	}
	for (i = 0; i < punches->used; i++) {
		struct punch_rec *r = &punches->r[i];
		int fd;

		for (d = dirs; d; d = d->next)
			if (d->dev == r->dev && d->ino == r->ino)
				break;
		fd = d ? openat(d->dfd, r->name, O_RDWR | O_NOFOLLOW | O_CLOEXEC) : -1;
		if (fd < 0 || fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, r->off, r->len))
			pr_perror("%s: can't punch the pages read", r->name);
		if (fd >= 0)
			close(fd);
	}
	pr_info("Punched %u runs of restored pages out of their images\n", punches->used);
}

void criusec_restore_finish(bool ok)
{
	struct dir_state *d, *next;
	struct page_img *p, *pn;

	if (ok)
		punch_deferred();
	if (punches)
		munmap(punches, sizeof(*punches));
	punches = NULL;
	for (d = dirs; d; d = next) {
		next = d->next;
		dir_forget_secrets(d);
		if (d->dfd >= 0)
			close(d->dfd);
		xfree(d);
	}
	dirs = NULL;
	for (p = page_imgs; p; p = pn) {
		pn = p->next;
		page_free(p);
	}
	page_imgs = NULL;
	if (page_batch) {
		explicit_bzero(page_batch, PAGE_BATCH);
		munmap(page_batch, PAGE_BATCH);
		page_batch = NULL;
	}
}

/* The page server's connection is TLS when --tls is given. */
static ssize_t ps_send_all(int sk, const void *buf, size_t n)
{
	size_t done = 0;

	if (!opts.tls)
		return write_all(sk, buf, n);
	while (done < n) {
		ssize_t ret = tls_send((const uint8_t *)buf + done, n - done, 0);

		if (ret < 0)
			return -1;
		done += ret;
	}
	return done;
}

/*
 * Sealed pages on their way out, in order: to a page server from the
 * calling thread only, to a file (wfd) from the engine's helpers too.
 */
static int page_sink_write(void *arg, const void *buf, size_t n)
{
	struct page_img *p = arg;
	ssize_t ret = p->remote ? ps_send_all(p->fd, buf, n) : write_all(p->wfd, buf, n);

	if (ret == (ssize_t)n)
		return 0;
	if (ret >= 0)
		errno = EIO;
	return -1;
}

/* Pages from the pipe, encrypted, to fd: the image, or the page server's socket. */
static int page_seal_pipe(struct page_img *p, int pipe, unsigned long len, unsigned long vaddr)
{
	/* The engine reads, seals (compresses) and hands them to the sink, overlapping on the cores it has. */
	if (criusec_pages_append_pipe(p->pc, pipe, vaddr, len, page_sink_write, p)) {
		pr_err("%s: can't encrypt pages: %s\n", p->name, criusec_last_error());
		return -1;
	}
	return 0;
}

int criusec_pages_write(int fd, int pipe, unsigned long len, unsigned long vaddr)
{
	struct page_img *p = page_lookup(fd);

	if (!p)
		return 0;
	return page_seal_pipe(p, pipe, len, vaddr) ? -1 : 1;
}

/* Read, check and decrypt (decompress) len bytes at off (a page number times 4096) of a page image. */
static int page_load(struct page_img *p, int fd, unsigned long vaddr, off_t off, void *buf, unsigned long len)
{
	if (off < 0 || off % CRIUSEC_PAGE_SIZE || len % CRIUSEC_PAGE_SIZE) {
		pr_err("%s: pages %#lx+%lu at %lld are not whole pages\n", p->name, vaddr, len, (long long)off);
		return -1;
	}
	if (criusec_pages_read(p->pc, fd, vaddr, off / CRIUSEC_PAGE_SIZE, buf, len)) {
		pr_err("%s: %s\n", p->name, criusec_last_error());
		return -1;
	}
	return 0;
}

int criusec_pages_load(int fd, unsigned long vaddr, off_t off, void *buf, unsigned long len)
{
	struct page_img *p = page_lookup(fd);

	if (!p)
		return 0;
	return page_load(p, fd, vaddr, off, buf, len) ? -1 : 1;
}

int criusec_pages_to_pipe(int fd, int pipe, unsigned long vaddr, unsigned long len)
{
	struct page_img *p = page_lookup(fd);
	uint8_t *buf;
	off_t off;

	if (!p)
		return 0;
	if (!opts.tls && marker_present()) {
		/* What leaves here is decrypted: only over TLS on such a host. */
		pr_err("Encryption is required on this host (%s exists): serving decrypted pages needs --tls\n",
		       CRIUSEC_REQUIRED_MARKER);
		return -1;
	}
	buf = page_batch_buf();
	if (!buf)
		return -1;
	off = lseek(fd, 0, SEEK_CUR);
	if (off < 0) {
		pr_perror("lseek");
		return -1;
	}
	while (len) {
		size_t n = min_t(size_t, len, PAGE_BATCH);

		if (page_load(p, fd, vaddr, off, buf, n))
			return -1;
		if (write_all(pipe, buf, n) != (ssize_t)n) {
			pr_perror("Can't write pages to a pipe");
			return -1;
		}
		off += n;
		vaddr += n;
		len -= n;
	}
	if (lseek(fd, off, SEEK_SET) < 0) {
		pr_perror("lseek");
		return -1;
	}
	return 1;
}

int criusec_pages_plain_copy(int fd, int memfd, off_t off, unsigned long vaddr, unsigned long len)
{
	struct page_img *p = page_lookup(fd);
	uint8_t *buf;

	if (!p)
		return -1;
	buf = page_batch_buf();
	if (!buf)
		return -1;
	while (len) {
		size_t n = min_t(size_t, len, PAGE_BATCH);

		if (page_load(p, fd, vaddr, off, buf, n))
			return -1;
		if (pwrite(memfd, buf, n, off) != (ssize_t)n) {
			pr_perror("Can't copy verified pages");
			return -1;
		}
		off += n;
		vaddr += n;
		len -= n;
	}
	return 0;
}

int criusec_pages_plain_begin(int fd)
{
	struct page_img *p = page_lookup(fd);
	int memfd;

	memfd = memfd_create(p ? p->name : "pages", MFD_CLOEXEC);
	if (memfd < 0)
		pr_perror("Can't make a memfd for verified pages");
	return memfd;
}

int criusec_pages_plain_end(int fd, int memfd)
{
	int ret = 0;

	/* The restorer reads the same descriptor, now the verified plaintext. */
	page_forget(fd);
	if (dup2(memfd, fd) < 0) {
		pr_perror("Can't put verified pages in place");
		ret = -1;
	}
	close(memfd);
	return ret;
}

/*
 * criu dump --page-server: the page server writes pagemap-N.img and
 * pages-N.img on its side, and never holds the checkpoint key.  The pages
 * leave here encrypted, their tags stay here (pagetags-N.img, in this
 * dump's manifest with the remote pagemap); the page server seals the
 * pagemap under a grant for that image alone.  Needs --tls: the grant is a
 * key, and the pagemap entries travel in the protocol.
 */
static int pagemap_name(int fd_type, unsigned long img_id, char *buf, size_t len)
{
	if (fd_type != CR_FD_PAGEMAP && fd_type != CR_FD_SHMEM_PAGEMAP) {
		pr_err("Unexpected image type %d for the page server\n", fd_type);
		return -1;
	}
	if (snprintf(buf, len, imgset_template[fd_type].fmt, img_id) >= (int)len) {
		pr_err("Pagemap name too long\n");
		return -1;
	}
	return 0;
}

int criusec_ps_grant(int fd_type, unsigned long img_id, uint8_t *grant, size_t *len)
{
	char name[sizeof(ps_grant.name)];

	if (!dump_ctx)
		return 0;
	if (pagemap_name(fd_type, img_id, name, sizeof(name)))
		return -1;
	if (criusec_stream_grant(dump_ctx, kind_of(fd_type), name, grant, len)) {
		pr_err("%s: can't make its grant for the page server: %s\n", name, criusec_last_error());
		return -1;
	}
	return 1;
}

int criusec_ps_opened(int sk, int fd_type, unsigned long img_id, uint32_t pages_id)
{
	char name[sizeof(ps_grant.name)], pages[64];
	struct page_img *p;
	unsigned int i;

	if (pagemap_name(fd_type, img_id, name, sizeof(name)))
		return -1;
	/* Two images under one id would share a page key, tweaks and GMAC nonces. */
	for (i = 0; i < manifest->nr_ps_ids; i++) {
		if (manifest->ps_ids[i] == pages_id) {
			pr_err("The page server answered pages image %u twice in this dump\n", pages_id);
			return -1;
		}
	}
	i = __atomic_fetch_add(&manifest->nr_ps_ids, 1, __ATOMIC_SEQ_CST);
	if (i >= MAX_PS_IMAGES) {
		pr_err("Too many page server images\n");
		return -1;
	}
	manifest->ps_ids[i] = pages_id;
	snprintf(pages, sizeof(pages), imgset_template[CR_FD_PAGES].fmt, pages_id);
	page_forget(sk);
	p = page_new(sk, pages, dump_ctx);
	if (!p)
		return -1;
	p->in_imgdir = true;
	p->remote = true;
	/* The page server counts the pages it receives: they keep their size. */
	criusec_pages_keep_page_size(p->pc);
	p->dfd = fcntl(get_service_fd(IMG_FD_OFF), F_DUPFD_CLOEXEC, 0);
	p->pm_kind = xstrdup(kind_of(fd_type));
	p->pm_name = xstrdup(name);
	p->pmd = criusec_pagemap_digest_new(pages_id);
	if (p->dfd < 0 || !p->pm_kind || !p->pm_name || !p->pmd) {
		pr_perror("%s: can't follow the page server's images", pages);
		page_forget(sk);
		return -1;
	}
	pr_info("Page server writes %s and %s (sealed for it)\n", name, pages);
	return 0;
}

int criusec_ps_entry(int sk, uint64_t vaddr, uint32_t nr_pages, uint32_t flags)
{
	struct page_img *p = page_lookup(sk);

	if (!p || !p->pmd)
		return 0;
	if (criusec_pagemap_digest_add(p->pmd, vaddr, nr_pages, flags)) {
		pr_err("%s: %s\n", p->pm_name, criusec_last_error());
		return -1;
	}
	return 0;
}

void criusec_ps_closed(int sk)
{
	page_img_closed(sk);
}

int criusec_ps_take_grant(int fd_type, unsigned long img_id, const uint8_t *grant, size_t len)
{
	if (ps_grant.grant)
		grant_free(ps_grant.grant, ps_grant.len);
	ps_grant.grant = NULL;
	if (pagemap_name(fd_type, img_id, ps_grant.name, sizeof(ps_grant.name)))
		return -1;
	holding_keys();
	ps_grant.grant = xmalloc(len ?: 1);
	if (!ps_grant.grant)
		return -1;
	memcpy(ps_grant.grant, grant, len);
	ps_grant.len = len;
	ps_grant.type = fd_type;
	pr_info("The dump grants the seal of %s\n", ps_grant.name);
	return 0;
}

bool criusec_ps_parent_opaque(void)
{
	/*
	 * The page server of an encrypted dump holds no key of the parent's
	 * pagemaps (they were sealed under grants): it cannot read them, so it
	 * neither checks the holes against them nor dedups them; restore
	 * checks every hole, as every page.
	 */
	return opts.mode == CR_PAGE_SERVER && ps_grant.used;
}

bool criusec_ps_grant_used(void)
{
	bool used = ps_grant.used;

	ps_grant.used = false;
	return used;
}

/* Page server: 1 and the grant (now the caller's) if path is what it is for. */
static int ps_grant_take(int type, const char *path, uint8_t **grant, size_t *len)
{
	if (!ps_grant.grant || (type != CR_FD_PAGEMAP && type != CR_FD_SHMEM_PAGEMAP))
		return 0;
	if (type != ps_grant.type || strcmp(path, ps_grant.name)) {
		pr_err("The dump granted the seal of %s, not of %s\n", ps_grant.name, path);
		return -1;
	}
	*grant = ps_grant.grant;
	*len = ps_grant.len;
	ps_grant.grant = NULL;
	ps_grant.used = true;
	return 1;
}

int criusec_img_open(int dfd, int type, unsigned long flags, const char *path, int *fd)
{
	int saved_errno = errno, was_missing = *fd < 0, ret;

	if (type == CR_FD_PAGES) {
		ret = page_img_open(dfd, flags, path, *fd);
		if (ret && *fd >= 0) {
			close(*fd);
			*fd = -1;
		}
		if (!ret && was_missing)
			errno = saved_errno;
		return ret;
	}
	if (!stream_covered(type))
		return 0;
	if (flags & (O_WRONLY | O_RDWR)) {
		uint8_t *grant = NULL;
		size_t grant_len = 0;

		if (*fd < 0)
			return 0;
		ret = dump_ctx ? 1 : ps_grant_take(type, path, &grant, &grant_len);
		if (ret == 0 && opts.mode == CR_PAGE_SERVER && marker_present() &&
		    (type == CR_FD_PAGEMAP || type == CR_FD_SHMEM_PAGEMAP)) {
			/* No grant: the dump is not encrypted, and its pages would land here in clear. */
			pr_err("Encryption is required on this host (%s exists): the page server refuses the images of "
			       "a dump without --encrypt\n",
			       CRIUSEC_REQUIRED_MARKER);
			ret = -1;
		}
		if (ret > 0) {
			/*
			 * Owner-only, though ciphertext.  Restore reads these files in
			 * criu's first process only (see struct dir_state), so tasks in
			 * a user namespace need no access to them.
			 */
			if (fchmod(*fd, 0600)) {
				pr_perror("%s: can't chmod", path);
				ret = -1;
			} else {
				ret = open_write(dfd, type, path, fd, grant, grant_len);
			}
			if (ret && grant)
				grant_free(grant, grant_len);
		}
	} else {
		ret = open_read(dfd, type, path, fd);
	}
	if (ret && *fd >= 0) {
		close(*fd);
		*fd = -1;
	}
	/* The caller tells a missing image by errno: keep the open's one. */
	if (!ret && was_missing)
		errno = saved_errno;
	return ret;
}
