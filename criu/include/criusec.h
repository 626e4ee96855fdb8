/*
 * criusec: the encryption engine's C interface.
 *
 * The engine is C++20 (criu/criusec/) on top of GnuTLS; this header is all
 * that CRIU's C code sees.  No function here throws, logs or prints key
 * material.  Functions that can fail return 0 (or a positive length) on
 * success and a negative errno-style value on failure; the reason is then
 * in criusec_last_error() (a thread-local string, valid until the next call).
 *
 * The formats behind these calls are described in
 * Documentation/criusec-format.md.
 */
#ifndef __CR_CRIUSEC_H__
#define __CR_CRIUSEC_H__

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#ifdef __cplusplus
extern "C" {
#endif

#define CRIUSEC_FORMAT_VERSION	 2  /* written; 1 is still read */
#define CRIUSEC_ID_LEN		 16 /* checkpoint id */
#define CRIUSEC_FPR_LEN		 32 /* SHA-256 of the recipient's SubjectPublicKeyInfo */
#define CRIUSEC_MAC_LEN		 32 /* HMAC-SHA256 over the cipher.img header */
#define CRIUSEC_DIGEST_LEN	 32 /* SHA-256 */
#define CRIUSEC_MAX_SIGNER_CERTS 8
#define CRIUSEC_STREAM_MAGIC	 "CRIUSEC\x01" /* first 8 bytes of every encrypted image */
#define CRIUSEC_STREAM_MAGIC_LEN 8

/* AEAD algorithms of the stream layer (values are part of the format). */
enum criusec_aead {
	CRIUSEC_AEAD_AUTO = 0, /* only as an argument: choose for this CPU */
	CRIUSEC_AEAD_AES_256_GCM = 1,
	CRIUSEC_AEAD_CHACHA20_POLY1305 = 2,
};

/*
 * Compression before encryption (values are part of the format: cipher.img's
 * compress field, byte 11 of a stream header).
 */
enum criusec_compress {
	CRIUSEC_COMPRESS_NONE = 0,
	CRIUSEC_COMPRESS_LZ4 = 1,
	CRIUSEC_COMPRESS_ZSTD = 2,
};

/* Key wrap algorithms of a recipient stanza (values are part of the format). */
enum criusec_wrap {
	CRIUSEC_WRAP_RSA_PKCS1V15 = 1,
};

/* Library */
const char *criusec_version(void);
const char *criusec_last_error(void);
/* The negative errno the last call returned, also for those that return NULL (0: success). */
int criusec_last_errno(void);
/* Known-answer tests of every primitive through the engine's wrappers. */
int criusec_self_test(void);
/* The AEAD this CPU should use: AES-GCM with AES-NI and PCLMUL, else ChaCha20. */
enum criusec_aead criusec_default_aead(void);
const char *criusec_aead_name(enum criusec_aead aead);
/* Threads for pages: the CPUs criu may use (affinity mask, cgroup CPU quota), 1 to 16. */
size_t criusec_page_workers(void);
/* Parse "aes-256-gcm" / "chacha20-poly1305" / "auto"; -EINVAL otherwise. */
int criusec_aead_parse(const char *name, enum criusec_aead *out);
/* "none", "lz4", "zstd" (NULL for an unknown value); parse: -EINVAL otherwise. */
const char *criusec_compress_name(uint32_t alg);
int criusec_compress_parse(const char *name, enum criusec_compress *out);
/* What --compress without --compress-alg uses. */
enum criusec_compress criusec_default_compress(void);

/*
 * A checkpoint's key context: the master key, the checkpoint id and what
 * cipher.img records.  Freed (and wiped) by criusec_ctx_free().
 */
struct criusec_ctx;

/* The cipher.img header as plain data, for the C side to (de)serialize. */
struct criusec_recipient {
	uint8_t fingerprint[CRIUSEC_FPR_LEN];
	uint32_t wrap_alg; /* enum criusec_wrap */
	const uint8_t *wrapped;
	size_t wrapped_len;
};

/* Bytes owned by someone else (the context, or the caller). */
struct criusec_blob {
	const uint8_t *data;
	size_t len;
};

/* Signature algorithms of a format-2 header (values are part of the format). */
enum criusec_sig_alg {
	CRIUSEC_SIG_NONE = 0,
	CRIUSEC_SIG_RSA_PSS_SHA256 = 1,
	CRIUSEC_SIG_RSA_PKCS1_SHA256 = 2,
	CRIUSEC_SIG_ECDSA_P256_SHA256 = 3,
	CRIUSEC_SIG_ECDSA_P384_SHA384 = 4,
	CRIUSEC_SIG_ED25519 = 5,
};

struct criusec_header {
	uint32_t version; /* 1 or 2 */
	uint8_t ckpt_id[CRIUSEC_ID_LEN];
	int has_parent;
	uint8_t parent_id[CRIUSEC_ID_LEN];
	uint32_t aead;	     /* enum criusec_aead */
	uint32_t chunk_size; /* stream chunk size, bytes */
	size_t n_recipients;
	const struct criusec_recipient *recipients;
	uint8_t mac[CRIUSEC_MAC_LEN];
	/* Format 2 (zero in a version-1 header). */
	uint8_t parent_binding[CRIUSEC_MAC_LEN]; /* with has_parent */
	uint64_t created;			 /* seconds since the epoch */
	uint8_t manifest_digest[CRIUSEC_DIGEST_LEN];
	uint32_t sig_alg;  /* enum criusec_sig_alg */
	uint32_t compress; /* enum criusec_compress */
	size_t n_signer_certs;
	const struct criusec_blob *signer_certs; /* DER, the signer's first */
	struct criusec_blob signature;
};

/*
 * Private keys are named by a reference: a PEM file path, or a PKCS#11 URL
 * ("pkcs11:token=...;object=...", RFC 7512) whose key stays in its token
 * (HSM, TPM, SoftHSM), which then unwraps and signs itself.  The token's
 * PIN comes from the URL: pin-source=FILE (the PIN in a file, read when
 * the token asks) or pin-value=PIN.  One attempt only; no prompt.
 * criusec_key_display(): the reference as it may be logged or shown (a
 * pin-value hidden); thread-local, valid until the next call.
 */
int criusec_key_is_url(const char *ref);
const char *criusec_key_display(const char *ref);

/*
 * The dumping host's signing identity: a private key (a reference, above)
 * and its certificate chain (PEM file, the signer's certificate first).
 * Load fails unless the certificate is the key's, valid now and allowed
 * to sign; a key that cannot be used (a wrong PIN, a token that cannot
 * sign) fails here, by a probe signature.
 */
struct criusec_signer;
struct criusec_signer *criusec_signer_load(const char *key, const char *cert_path);
void criusec_signer_free(struct criusec_signer *s);
const char *criusec_signer_subject(const struct criusec_signer *s);

/* Trusted signers: the certificates of PEM files (pinned signers and CAs). */
struct criusec_trust;
struct criusec_trust *criusec_trust_new(void);
void criusec_trust_free(struct criusec_trust *t);
int criusec_trust_add_file(struct criusec_trust *t, const char *pem_path);
size_t criusec_trust_count(const struct criusec_trust *t);
/* The subject of trusted certificate i (valid until t changes), or NULL. */
const char *criusec_trust_subject(const struct criusec_trust *t, size_t i);

/*
 * What a reader requires of a header (Documentation/criusec-format.md,
 * 10.8).  trust: NULL or empty when none is configured; required: the
 * host requires protected checkpoints (a trusted signature); max_age:
 * seconds, 0 for no limit.
 */
struct criusec_policy {
	const struct criusec_trust *trust;
	int required;
	uint64_t max_age;
};

struct criusec_verdict {
	int is_signed;	  /* a signature that verifies over the header */
	int trusted;	  /* ... by a signer the policy's trust accepts */
	uint64_t created; /* format 2 */
	char signer[256]; /* the signer's subject, "" when unsigned */
	char how[320];	  /* "pinned", "CA <subject>", or why it is not trusted */
};

/*
 * Before any key is used: the header's structure, its signature (which
 * must verify whenever there is one) and the policy.  Fails with
 * EKEYREJECTED when the policy refuses the checkpoint, EBADMSG when the
 * header is damaged or the signature false.  v (may be NULL) says what was
 * found, also on failure (who signed a checkpoint the trust refuses).
 */
int criusec_header_check(const struct criusec_header *hdr, const struct criusec_policy *policy,
			 struct criusec_verdict *v);

/* Dump side: a fresh random master key and checkpoint id. */
struct criusec_ctx *criusec_ctx_new(enum criusec_aead aead);
/*
 * Make ctx an incremental checkpoint over parent (a context imported from
 * the parent's header): records its id and the binding only holders of
 * the parent's keys can compute.
 */
int criusec_ctx_set_parent(struct criusec_ctx *ctx, const struct criusec_ctx *parent);
/*
 * Compress images before they are encrypted (format 2): streams and page
 * regions, recorded in the header.  Before any image is written.
 */
int criusec_ctx_set_compress(struct criusec_ctx *ctx, enum criusec_compress alg);
/*
 * Wrap the master key for the public key of the X.509 certificate (PEM
 * file).  The certificate must be valid now and, if it has a keyUsage
 * extension, allow keyEncipherment; CRIUSEC_RECIPIENT_UNCHECKED skips that
 * (for test setups).
 */
#define CRIUSEC_RECIPIENT_UNCHECKED 1u
int criusec_ctx_add_recipient(struct criusec_ctx *ctx, const char *cert_pem_path, unsigned flags);
/*
 * Complete the header once every image is written: the time, the digest
 * of the manifest's plaintext, the signature (signer may be NULL:
 * unsigned) and the MAC.  Fails with no recipient.
 */
int criusec_ctx_seal_header(struct criusec_ctx *ctx, struct criusec_signer *signer,
			    const uint8_t manifest_digest[CRIUSEC_DIGEST_LEN]);
/*
 * Fill *hdr with the sealed header (pointers stay owned by ctx, valid
 * until it is freed or sealed again).
 */
int criusec_ctx_export(struct criusec_ctx *ctx, struct criusec_header *hdr);

/*
 * Restore side: find the stanza matching the private key (an RSA key: a
 * reference as above), unwrap the master key, then check the header MAC
 * before anything else is used.  (criusec_header_check() comes first.)
 * Fails with ENOKEY, and nothing else, when the key is not a recipient:
 * a caller holding several keys tries the next one then.
 */
struct criusec_ctx *criusec_ctx_import(const struct criusec_header *hdr, const char *key);
/*
 * Incremental dumps on a host that is not a recipient of its own
 * checkpoints: criusec_ctx_chain_secret() gives what reads this checkpoint
 * again (as secret as the checkpoint: the caller keeps it where only root
 * reads it, and wipes its copy), criusec_ctx_import_secret() uses it
 * instead of a private key.  The header MAC is checked the same way.
 */
#define CRIUSEC_CHAIN_SECRET_LEN 32
int criusec_ctx_chain_secret(const struct criusec_ctx *ctx, uint8_t out[CRIUSEC_CHAIN_SECRET_LEN]);
struct criusec_ctx *criusec_ctx_import_secret(const struct criusec_header *hdr,
					      const uint8_t secret[CRIUSEC_CHAIN_SECRET_LEN]);
void criusec_ctx_free(struct criusec_ctx *ctx);
/*
 * A dump's context (criusec_ctx_new): claim the page image id about to be
 * written, once per checkpoint and across the processes criu forks after
 * making ctx (two images under one id would share a page key, tweaks and
 * GMAC nonces).  0, -EEXIST if it was claimed before, -ENOSPC past 4096.
 */
int criusec_ctx_claim_pages_id(struct criusec_ctx *ctx, uint32_t id);
const uint8_t *criusec_ctx_id(const struct criusec_ctx *ctx);
enum criusec_aead criusec_ctx_aead(const struct criusec_ctx *ctx);
/* Format 2: the manifest's digest the header records; NULL for format 1. */
const uint8_t *criusec_ctx_manifest_digest(const struct criusec_ctx *ctx);
/*
 * Before any image of parent is read: parent is the checkpoint ctx was
 * dumped over (its id, and the binding in ctx's header).  EBADMSG if not.
 */
int criusec_ctx_check_parent(const struct criusec_ctx *ctx, const struct criusec_ctx *parent);

/*
 * What the manifest records of a stream image (format 2): the size of
 * the file and the SHA-256 of its plaintext.  Sealing reports it; opening
 * checks it when given one (has_size: check the size too, before reading).
 */
struct criusec_stream_info {
	uint64_t size;
	int has_size;
	uint8_t digest[CRIUSEC_DIGEST_LEN];
};

/*
 * The stream layer.  An image is sealed as one AEAD stream: a header
 * (magic, version, AEAD, chunk size, random salt) then fixed-size chunks,
 * each nonce a chunk counter with a last-chunk flag.  The key is derived from
 * the master key, the salt, kind and name; kind, name and the checkpoint id
 * are also associated data.  kind is the image kind ("core", "pipes-data"),
 * name the file name in the image directory.
 *
 * seal: read in_fd from its current offset to EOF, write the stream to out_fd;
 *	 info (may be NULL) gets the stream's size and the plaintext's digest.
 * open: read the stream from in_fd, write the plaintext to out_fd; nothing
 *	 unauthenticated is ever written, and a short, extended, reordered or
 *	 foreign stream fails, as does one that is not what expect (may be
 *	 NULL) records.  The caller must not trust out_fd on failure.
 */
int criusec_stream_seal_fd(struct criusec_ctx *ctx, const char *kind, const char *name, int in_fd, int out_fd,
			   struct criusec_stream_info *info);
int criusec_stream_open_fd(struct criusec_ctx *ctx, const char *kind, const char *name, int in_fd, int out_fd,
			   const struct criusec_stream_info *expect);

/* Seal on memory: *out is malloc()ed, the caller frees it. */
int criusec_stream_seal_buf(struct criusec_ctx *ctx, const char *kind, const char *name, const void *in, size_t in_len,
			    uint8_t **out, size_t *out_len, struct criusec_stream_info *info);

/*
 * Sealing one stream in another process: criu page-server writes the
 * pagemap images of a dump it receives, and never holds the master key.
 * criusec_stream_grant() writes to out (CRIUSEC_GRANT_MAX bytes) a grant
 * for one image, (kind, name), of ctx's checkpoint: a fresh stream header
 * and that stream's key, nothing that opens any other image.  It is as
 * secret as the image; the caller wipes it after use.
 * criusec_stream_seal_granted_fd() seals as criusec_stream_seal_fd() would,
 * and fails unless the grant is for exactly this kind and name.
 */
#define CRIUSEC_GRANT_MAX (84 + 2 * (2 + 4096))
int criusec_stream_grant(struct criusec_ctx *ctx, const char *kind, const char *name, uint8_t *out,
			 size_t *out_len);
int criusec_stream_seal_granted_fd(const uint8_t *grant, size_t grant_len, const char *kind, const char *name,
				   int in_fd, int out_fd);

/*
 * The manifest (Documentation/criusec-format.md, 10.6).  An image name a
 * manifest lists must be a plain file name that its kind's printf-style
 * pattern ("core-%u.img") produces: 1 if so, else 0.
 */
int criusec_name_matches(const char *pattern, const char *name);
/*
 * The manifest's rules, the engine's: kinds is the writer's (CRIU's) table
 * of the image kinds it seals, each with the pattern of its names; every
 * entry's name must be one of its kind's, in format 2 (v2) with a digest
 * (or none and size 0: an image a page server sealed), and an entries
 * digest only on a pagemap.  0, or -EBADMSG naming the entry.
 */
struct criusec_image_kind {
	const char *kind;
	const char *pattern;
	bool pagemap;
};
struct criusec_manifest_entry {
	const char *kind;
	const char *name;
	uint64_t size;
	const uint8_t *digest; /* digest_len bytes */
	size_t digest_len;
	const uint8_t *entries; /* entries_len bytes */
	size_t entries_len;
};
int criusec_manifest_check(const struct criusec_manifest_entry *m, size_t n, bool v2,
			   const struct criusec_image_kind *kinds, size_t n_kinds);
/*
 * The digest of a pagemap image's entries, the same whether the dump sent
 * them to a page server or a restore parses them: new, add each entry in
 * order, then final (which frees it; NULL out only frees).
 */
struct criusec_pagemap_digest;
struct criusec_pagemap_digest *criusec_pagemap_digest_new(uint64_t pages_id);
int criusec_pagemap_digest_add(struct criusec_pagemap_digest *d, uint64_t vaddr, uint32_t nr_pages, uint32_t flags);
int criusec_pagemap_digest_final(struct criusec_pagemap_digest *d, uint8_t out[CRIUSEC_DIGEST_LEN]);

/* 1 if the first bytes of an image file are an encrypted stream's magic. */
int criusec_is_stream(const void *head, size_t len);

/*
 * The page cipher.  Each 4 KiB page of a page image is encrypted in place
 * with AES-256-XTS under a key of that image (derived from the master key
 * and image_name), the tweak being the page's virtual address and its
 * number in the image (file offset / 4096).  Each page also gets a 16-byte
 * tag (GMAC over address, number and ciphertext) that its pagetags image,
 * an authenticated stream, keeps.
 *
 * A page image as a whole: p keeps what its pagetags image holds, the tags
 * of its pages or, in a checkpoint that compresses
 * (criusec_ctx_set_compress), the records of its regions: runs of up to 64
 * pages compressed and sealed as one when that makes them smaller
 * (Documentation/criusec-format.md, 11).  Pages keep their numbers (file
 * offset / 4096 in an image that does not compress) for all that.
 */
#define CRIUSEC_PAGE_SIZE    4096
#define CRIUSEC_PAGE_TAG_LEN 16

struct criusec_pages;

struct criusec_pages *criusec_pages_new(struct criusec_ctx *ctx, const char *image_name);
void criusec_pages_free(struct criusec_pages *p);

/*
 * Dump: append_pipe reads len bytes of pages (len a multiple of 4096, the
 * first at vaddr) from the pipe in, seals them, numbered after those
 * appended before, and hands them in order to sink (the image, a socket),
 * which returns 0 when it took all n bytes, else -1 with errno set.
 * Sealing overlaps the writing: helper threads that live as long as p
 * (signals blocked) read and seal the next pages while the caller's
 * thread writes.  They are idle again when this returns, on failure too
 * (the pipe may then be left part read).  A child forked while p exists
 * must not use p; criusec_pages_free() there joins nothing.
 * criusec_pages_index() then gives the pagetags plaintext (valid until p
 * changes).  keep_page_size: never compress (a page server counts pages).
 */
typedef int (*criusec_pages_sink)(void *arg, const void *buf, size_t n);
int criusec_pages_append_pipe(struct criusec_pages *p, int in, uint64_t vaddr, size_t len, criusec_pages_sink sink,
			      void *sink_arg);
void criusec_pages_keep_page_size(struct criusec_pages *p);
/*
 * write_behind: append_pipe returns once its pages are read from the pipe;
 * they are sealed and handed to sink (from any thread, in order) while
 * CRIU goes on.  criusec_pages_index() waits for the last of them and
 * fails with the first error of any; criusec_pages_free() drops what is
 * not written yet.  For a file, not a socket shared with other messages.
 */
void criusec_pages_write_behind(struct criusec_pages *p);
int criusec_pages_index(struct criusec_pages *p, const uint8_t **index, size_t *len);
/*
 * A dump will seal pages soon: map and fault in the pipeline's memory on a
 * thread of its own meanwhile (the first run waits for it).
 */
void criusec_pages_warm(void);
/*
 * Restore: the authenticated pagetags plaintext and the page image's size,
 * which must be what it describes.  Then read checks, decrypts and
 * decompresses len bytes of pages starting at page number index of fd
 * (every tag of the run is checked before any page is decrypted, large
 * runs on a few threads; on failure the pages are zeroed and the error
 * names the first bad page).  punch (dedup): the pages [index, index +
 * nr_pages) are no longer needed; hole(arg, off, len) is called for each
 * byte range of the image that can go (a compressed region once all of its
 * pages went), to punch it now or later; non-zero from hole fails (errno
 * kept).
 */
int criusec_pages_attach(struct criusec_pages *p, const uint8_t *index, size_t len, uint64_t file_size);
int criusec_pages_read(struct criusec_pages *p, int fd, uint64_t vaddr, uint64_t index, void *pages, size_t len);
typedef int (*criusec_pages_hole)(void *arg, uint64_t off, uint64_t len);
int criusec_pages_punch(struct criusec_pages *p, uint64_t index, uint64_t nr_pages, criusec_pages_hole hole,
			void *hole_arg);
/* The pages the authenticated plaintext of a pagetags image describes, under ctx. */
int criusec_pages_index_pages(const struct criusec_ctx *ctx, const uint8_t *index, size_t len, uint64_t *pages);
/*
 * criusec_pages_attach()'s check of the page image's size (file_size)
 * against that plaintext, without keeping its tags.
 */
int criusec_pages_check_size(const struct criusec_ctx *ctx, const uint8_t *index, size_t len, uint64_t file_size);

/*
 * The chain keyring: after an encrypted dump,
 * its chain secret (criusec_ctx_chain_secret) waits in root's user keyring,
 * never on disk, readable by root only, for ttl_seconds, so that a later
 * incremental dump on this host reads the checkpoint as its parent even
 * when this host is none of its recipients.  The key is named
 * "criusec:<checkpoint id in hex>"; desc gets that name (desc_len
 * CRIUSEC_KEYRING_DESC_LEN is enough) for the caller's log.
 *
 * store: 0 when the key is in the keyring, restricted to root and timed;
 * CRIUSEC_KEYRING_UNRESTRICTED when it is there but its permissions or
 * timeout could not be set; a negative errno when it is not there.  Either
 * way but 0, criusec_last_error() is the system's text for the errno, and
 * desc is "" when the context had no chain secret to store.
 *
 * import: the context of the checkpoint h describes, read with its chain
 * key.  *found: the key was in the keyring and read (a NULL then is a key
 * that does not open h: criusec_last_error() says why).  Not found:
 * criusec_last_errno() is -ENOKEY when the keyring holds no such key, else
 * the key is there but could not be read.
 */
#define CRIUSEC_KEYRING_DESC_LEN     (8 + 2 * CRIUSEC_ID_LEN + 1)
#define CRIUSEC_KEYRING_UNRESTRICTED 1
int criusec_keyring_store(struct criusec_ctx *ctx, unsigned int ttl_seconds, char *desc, size_t desc_len);
struct criusec_ctx *criusec_keyring_import(const struct criusec_header *h, bool *found, char *desc, size_t desc_len);

/*
 * Secret memory for what CRIU's side holds: authenticated plaintext it
 * keeps whole (fd: a memfd of it, mapped MAP_SHARED), or with fd -1 len
 * zeroed bytes of its own (a grant, a staging buffer).  Left out of core
 * dumps and, where RLIMIT_MEMLOCK allows, out of swap.  map: NULL with
 * errno set on failure.  unmap wipes the len bytes, then unmaps them.
 */
void *criusec_secret_map(int fd, size_t len);
void criusec_secret_unmap(void *p, size_t len);

#ifdef __cplusplus
}
#endif

#endif /* __CR_CRIUSEC_H__ */
