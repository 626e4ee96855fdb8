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
#include <sys/stat.h>
#include <unistd.h>

#include "criusec.h"
#include "criusec-glue.h"
#include "cr_options.h"
#include "image.h"
#include "image-desc.h"
#include "log.h"
#include "protobuf.h"
#include "servicefd.h"
#include "tls.h"
#include "util.h"
#include "common/xmalloc.h"

#include "images/cipher.pb-c.h"

#undef LOG_PREFIX
#define LOG_PREFIX "criusec: "

#define CRIUSEC_DEFAULT_CERT	 SYSCONFDIR "/pki/criu/cert.pem"
#define CRIUSEC_DEFAULT_KEY	 SYSCONFDIR "/pki/criu/private/key.pem"
#define CRIUSEC_REQUIRED_MARKER GLOBAL_CONFIG_DIR "encryption-required"
#define CRIUSEC_DEFAULT_TRUST	 GLOBAL_CONFIG_DIR "trusted-signers.pem"
#define CRIUSEC_DEFAULT_CONF	 GLOBAL_CONFIG_DIR "default.conf"

/*
 * Dump side.  The context is made before any image is written, so every
 * process criu forks during the dump shares it.  The manifest (names of the
 * images sealed) lives in shared memory for the same reason: forked
 * children dump namespaces and seal their images themselves.
 */
#define MANIFEST_BYTES (4 << 20)
struct manifest_rec {
	struct criusec_stream_info info; /* has_size 0: not sealed here (page server) */
	unsigned short klen, nlen;	 /* with their NULs */
	char names[];			 /* "kind\0name\0" */
};
struct manifest_shm {
	unsigned int used; /* bytes of recs[] in use */
	int failed;	   /* a seal failed somewhere: the dump must fail */
	char recs[];	   /* struct manifest_rec, one after another, aligned */
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
/* Memory, not a descriptor: restored tasks close every inherited fd. */
struct plain_img {
	uint8_t *data;
	size_t len;
};

struct dir_state {
	dev_t dev;
	ino_t ino;
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
	int dfd;	/* dump: where the tags go */
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
		pr_err("Can't sign with %s and %s: %s (set --sign-key/--sign-cert, or the config lines "
		       "'sign-key PATH' and 'sign-cert PATH' in %s)\n",
		       key, cert, criusec_last_error(), CRIUSEC_DEFAULT_CONF);
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

/* After a policy refusal: the config line (or flag) that fixes it. */
static void policy_hint(const struct criusec_policy *pol, const struct criusec_verdict *v)
{
	if (!criusec_trust_count(pol->trust))
		pr_err("This host requires checkpoints signed by a trusted signer (%s exists), but no trusted "
		       "signer is configured: pass --trust PEM, add a line 'trust PEM' to %s, or install %s\n",
		       CRIUSEC_REQUIRED_MARKER, CRIUSEC_DEFAULT_CONF, CRIUSEC_DEFAULT_TRUST);
	else if (!v->is_signed)
		pr_err("Only checkpoints signed by a trusted signer are restored here (%s): dump with a signing "
		       "key ('sign-key'/'sign-cert' in the dumping host's %s, or --sign-key/--sign-cert)\n",
		       policy_why(pol), CRIUSEC_DEFAULT_CONF);
	else
		pr_err("Only checkpoints signed by a trusted signer are restored here (%s): add the signer's "
		       "CA or certificate to a trust file (--trust PEM, or a line 'trust PEM' in %s)\n",
		       policy_why(pol), CRIUSEC_DEFAULT_CONF);
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
		       criusec_signer_subject(s), key, cert);
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
		pr_err("The incremental dump can't read its parent checkpoint %s (see above); give a key that is "
		       "a recipient of it (--tls-key, or a 'tls-key PATH' line in %s)\n",
		       opts.img_parent, CRIUSEC_DEFAULT_CONF);
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
	if (opts.lazy_pages && !opts.tls)
		/* They are served from memory, never written: nothing to encrypt them into. */
		pr_warn("--lazy-pages without --tls: the lazy pages leave this host unencrypted\n");
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
	if (opts.nr_encrypt_certs == 0 && add_encrypt_cert(CRIUSEC_DEFAULT_CERT))
		goto err;
	for (i = 0; i < opts.nr_encrypt_certs; i++) {
		if (criusec_ctx_add_recipient(dump_ctx, opts.encrypt_certs[i])) {
			pr_err("Recipient %s (--tls-cert, or a 'tls-cert PATH' line in %s): %s\n",
			       opts.encrypt_certs[i], CRIUSEC_DEFAULT_CONF, criusec_last_error());
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

/* info NULL: an image this dump did not seal (a page server's pagemap). */
static void manifest_add(const char *kind, const char *name, const struct criusec_stream_info *info)
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
	if (!me.images || !me.kinds || !me.sizes || !me.digests)
		goto out;
	for (off = 0; (r = manifest_next(&off)); me.n_images++) {
		me.kinds[me.n_images] = r->names;
		me.images[me.n_images] = r->names + r->klen;
		me.sizes[me.n_images] = r->info.has_size ? r->info.size : 0;
		me.digests[me.n_images].data = r->info.digest;
		me.digests[me.n_images].len = r->info.has_size ? CRIUSEC_DIGEST_LEN : 0;
	}
	me.n_kinds = me.n_sizes = me.n_digests = me.n_images;
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
	return ret;
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

	memfd = memfd_create(path, 0);
	if (memfd < 0) {
		pr_perror("%s: can't make a memfd", path);
		return -1;
	}
	p = xzalloc(sizeof(*p));
	if (p)
		p->name = xstrdup(path);
	if (!p || !p->name || (p->memfd = dup(memfd)) < 0) {
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
			manifest_add(kind_of(p->type), p->name, &info);
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

	fd = memfd_create(name, 0);
	if (fd < 0) {
		pr_perror("%s: can't make a memfd", name);
		return -1;
	}
	if (write_all(fd, p->data, p->len) != (ssize_t)p->len) {
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
 * Authenticate a whole image file into memory; expect (may be NULL) is
 * what the manifest records of it.
 */
static int load_plain(struct criusec_ctx *ctx, const char *kind, const char *name, int fd, struct plain_img *p,
		      const struct criusec_stream_info *expect)
{
	struct stat st;
	uint8_t *raw;
	int ret;

	if (fstat(fd, &st)) {
		pr_perror("%s: fstat", name);
		return -1;
	}
	if (expect && expect->has_size && (uint64_t)st.st_size != expect->size) {
		/* Refused unread: it is not the file the dump wrote. */
		pr_err("%s: %lld bytes, but the dump wrote %llu: truncated, extended or replaced\n", name,
		       (long long)st.st_size, (unsigned long long)expect->size);
		return -1;
	}
	raw = xmalloc(st.st_size ?: 1);
	if (!raw)
		return -1;
	if (read_all(fd, raw, st.st_size) != st.st_size) {
		pr_perror("%s: read", name);
		xfree(raw);
		return -1;
	}
	ret = criusec_stream_open_buf(ctx, kind, name, raw, st.st_size, &p->data, &p->len, expect);
	xfree(raw);
	if (ret) {
		pr_err("%s: %s\n", name, criusec_last_error());
		return -1;
	}
	return 0;
}

/* Authenticate a whole stream into a new memfd, or say why not. */
static int open_stream(struct criusec_ctx *ctx, const char *kind, const char *name, int fd,
		       const struct criusec_stream_info *expect)
{
	struct plain_img p;
	int memfd;

	if (load_plain(ctx, kind, name, fd, &p, expect))
		return -1;
	memfd = plain_copy(&p, name);
	free(p.data);
	return memfd;
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
 * Authenticate every image the manifest lists before any is used, so a
 * damaged or missing image stops the restore before it starts, even one
 * that would have been read late, or never.
 */
static int verify_all(int dfd, struct dir_state *d)
{
	CipherManifestEntry *m = d->manifest;
	bool v2 = criusec_ctx_manifest_digest(d->ctx) != NULL;
	size_t i;
	int fd;

	if (m->n_kinds != m->n_images ||
	    (v2 && (m->n_sizes != m->n_images || m->n_digests != m->n_images))) {
		pr_err("cipher-manifest.img: malformed\n");
		return -1;
	}
	for (i = 0; v2 && i < m->n_images; i++) {
		if (m->digests[i].len != CRIUSEC_DIGEST_LEN && (m->digests[i].len || m->sizes[i])) {
			pr_err("cipher-manifest.img: malformed entry for %s\n", m->images[i]);
			return -1;
		}
	}
	d->plain = xzalloc(sizeof(*d->plain) * (m->n_images ?: 1));
	if (!d->plain)
		return -1;
	for (i = 0; i < m->n_images; i++) {
		struct criusec_stream_info buf;
		int ret;

		fd = openat(dfd, m->images[i], O_RDONLY);
		if (fd < 0) {
			pr_perror("%s: missing from the encrypted checkpoint (its manifest lists it)", m->images[i]);
			return -1;
		}
		ret = load_plain(d->ctx, m->kinds[i], m->images[i], fd, &d->plain[i], manifest_expect(d, i, &buf));
		close(fd);
		if (ret)
			return -1;
	}
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
	if (ret) {
		pr_err("%s\n", criusec_last_error());
		if (ret == -EKEYREJECTED)
			policy_hint(&pol, &v);
		return -1;
	}
	if (v.is_signed)
		pr_info("cipher.img: signed by %s (%s)\n", v.signer, v.trusted ? v.how : "not checked against trust");
	else
		pr_info("cipher.img: unsigned (format %u)\n", h->version);
	return 0;
}

/* The restore's private key: --tls-key, or CRIU's default. */
static const char *restore_key(void)
{
	return opts.tls_key ?: CRIUSEC_DEFAULT_KEY;
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
	const char *key = restore_key();
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
	if (access(key, R_OK)) {
		pr_err("The checkpoint is encrypted; pass the private key with --tls-key or a 'tls-key PATH' line in "
		       "%s (%s: %s)\n",
		       CRIUSEC_DEFAULT_CONF, key, strerror(errno));
		goto err;
	}
	d->ctx = criusec_ctx_import(&ph.h, key);
	if (!d->ctx) {
		pr_err("cipher.img: %s (key %s, from --tls-key or a 'tls-key' line in %s)\n", criusec_last_error(),
		       key, CRIUSEC_DEFAULT_CONF);
		goto err;
	}
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
	d->next = dirs;
	dirs = d;
	if (load_dir(dfd, d, role, child)) {
		/* Keep the failure: later opens of this directory fail too. */
		d->encrypted = true;
		criusec_ctx_free(d->ctx);
		d->ctx = NULL;
		d->manifest = NULL;
		return NULL;
	}
	return d;
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
	criusec_pages_free(p->pc);
	if (p->dfd >= 0)
		close(p->dfd);
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
	if (p->dfd < 0) {
		pr_perror("%s: dup", path);
		return -1;
	}
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
		manifest_add(PAGE_TAGS_KIND, tname, &info);
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
	page_free(p);
	return 1;
}

bool criusec_pages_sealed(int fd)
{
	return page_lookup(fd) != NULL;
}

#define PAGE_BATCH (1 << 20)

/* One staging buffer for checked plaintext pages on their way out (restore, page server). */
static uint8_t *page_batch_buf(void)
{
	static uint8_t *buf;

	if (!buf)
		buf = xmalloc(PAGE_BATCH);
	return buf;
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

struct page_sink {
	struct page_img *p;
	int fd;
};

/* Sealed pages on their way out, in order, from the calling thread only. */
static int page_sink_write(void *arg, const void *buf, size_t n)
{
	struct page_sink *s = arg;
	ssize_t ret = s->p->remote ? ps_send_all(s->fd, buf, n) : write_all(s->fd, buf, n);

	if (ret == (ssize_t)n)
		return 0;
	if (ret >= 0)
		errno = EIO;
	return -1;
}

/* Pages from the pipe, encrypted, to fd: the image, or the page server's socket. */
static int page_seal_pipe(struct page_img *p, int fd, int pipe, unsigned long len, unsigned long vaddr)
{
	struct page_sink sink = { .p = p, .fd = fd };

	/* The engine reads, seals (compresses) and hands them to the sink, overlapping on the cores it has. */
	if (criusec_pages_append_pipe(p->pc, pipe, vaddr, len, page_sink_write, &sink)) {
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
	return page_seal_pipe(p, fd, pipe, len, vaddr) ? -1 : 1;
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

int criusec_pages_dedup(int fd, unsigned long off, unsigned long len)
{
	struct page_img *p = page_lookup(fd);

	if (!p)
		return 0;
	if (off % CRIUSEC_PAGE_SIZE || len % CRIUSEC_PAGE_SIZE ||
	    criusec_pages_punch(p->pc, fd, off / CRIUSEC_PAGE_SIZE, len / CRIUSEC_PAGE_SIZE)) {
		pr_err("%s: can't punch pages at %#lx+%lu: %s\n", p->name, off, len, criusec_last_error());
		return -1;
	}
	return 1;
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

	if (pagemap_name(fd_type, img_id, name, sizeof(name)))
		return -1;
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
	if (p->dfd < 0) {
		pr_perror("%s: dup", pages);
		page_forget(sk);
		return -1;
	}
	manifest_add(kind_of(fd_type), name, NULL); /* sealed by the page server: no size or digest here */
	pr_info("Page server writes %s and %s (sealed for it)\n", name, pages);
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
	ps_grant.grant = xmalloc(len ?: 1);
	if (!ps_grant.grant)
		return -1;
	memcpy(ps_grant.grant, grant, len);
	ps_grant.len = len;
	ps_grant.type = fd_type;
	pr_info("The dump grants the seal of %s\n", ps_grant.name);
	return 0;
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
