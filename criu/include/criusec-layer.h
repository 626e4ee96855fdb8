#ifndef __CR_CRIUSEC_LAYER_H__
#define __CR_CRIUSEC_LAYER_H__
/*
 * What the criusec-*.c files of CRIU's side share, and nothing CRIU's own
 * code calls (that is criusec-glue.h).  The engine (criusec.h) owns the
 * format, the keys and every cryptographic rule; these files move images
 * between CRIU and the engine, and decide host policy in one place
 * (criusec-policy.c).  Documentation/criusec-design.md has the map.
 */
#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include "criusec.h"
#include "images/cipher.pb-c.h"

#define CRIUSEC_DEFAULT_CERT	SYSCONFDIR "/pki/criu/cert.pem"
#define CRIUSEC_DEFAULT_KEY	SYSCONFDIR "/pki/criu/private/key.pem"
#define CRIUSEC_REQUIRED_MARKER GLOBAL_CONFIG_DIR "encryption-required"
#define CRIUSEC_DEFAULT_TRUST	GLOBAL_CONFIG_DIR "trusted-signers.pem"
#define CRIUSEC_DEFAULT_CONF	GLOBAL_CONFIG_DIR "default.conf"
#define CHAIN_KEY_TTL		(7 * 24 * 3600) /* see criusec_chain_key_store() */

/*
 * Restore side: what one directory (the images dir, a parent, the work
 * dir) holds, loaded the first time an image is read from it.  Every image
 * its manifest lists is authenticated then, once, into memory; each open
 * gets a private memfd copy of that.  So nothing is used before everything was
 * checked, and tasks that open images from inside a user namespace never
 * need to read the (owner-only) files themselves.
 */
/*
 * A verified plaintext: a shared mapping of a memfd, not a descriptor: restored tasks close every
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
	struct dir_state *dir;	  /* restore: where it is */
	int index;		  /* its page tags in dir, until attached (-1: attached) */
	/* dump through a page server: the pagemap it writes, and its entries */
	char *pm_kind, *pm_name;
	struct criusec_pagemap_digest *pmd;
	int dfd; /* dump: where the tags go */
	int wfd; /* dump to a file: where the engine writes, behind CRIU (which closes fd first) */
	bool in_imgdir;
	bool remote; /* dump: fd is the page server's socket */
	/* restore: contiguous pages queued, read at the page read's sync */
	struct {
		unsigned long vaddr, len;
		off_t off;
		char *buf;
	} queued;
	struct page_img *next;
};

/* cipher.img's protobuf as the engine's header; the arrays are the caller's to free. */
struct pb_header {
	struct criusec_header h;
	struct criusec_recipient *rs;
	struct criusec_blob *certs;
};

/* criusec-policy.c: host policy, decided there and nowhere else. */
enum criusec_act {
	CRIUSEC_DUMP_PLAIN,	 /* a dump or pre-dump without --encrypt */
	CRIUSEC_DUMP_LAZY_PLAIN, /* --lazy-pages without --tls: those pages leave unencrypted */
	CRIUSEC_DUMP_UNSIGNED,	 /* an encrypted dump without a signing identity */
	CRIUSEC_SERVE_PLAIN,	 /* a page server sending decrypted pages without --tls */
	CRIUSEC_RECEIVE_PLAIN,	 /* a page server taking the pagemaps of a dump without --encrypt */
	CRIUSEC_RESTORE_PLAIN,	 /* restoring (or dumping over) a checkpoint without cipher.img */
};
extern bool criusec_policy_refuses(enum criusec_act act);
extern int criusec_check_header(const struct criusec_header *h);
/* The private keys a restore tries, in order: --tls-key (or 'tls-key' lines), else the host's */
extern char **criusec_restore_keys(int *n);
extern struct criusec_ctx *criusec_restore_import(const struct criusec_header *h);
/* The key unwrapped while criu started, if for this directory and this very cipher.img entry */
extern struct criusec_ctx *criusec_prefetched_ctx(dev_t dev, ino_t ino, CipherEntry *ce);
extern void criusec_prefetch_drop(void);
extern int criusec_load_signer(struct criusec_signer **s, const char **key_out, const char **cert_out);
extern const char *criusec_relative_hint(const char *a, const char *b);
extern void criusec_holding_keys(void);

/* criusec-dump.c: the context of the dump or pre-dump in progress (NULL: none, or not encrypting). */
extern struct criusec_ctx *criusec_dump_ctx;
/* Its parent's, when it is an increment (owned by the parent's directory state). */
extern struct criusec_ctx *criusec_dump_parent_ctx;

/* criusec-keyring.c: the chain key of the checkpoint just dumped, for the next incremental dump. */
extern void criusec_chain_key_store(struct criusec_ctx *ctx);
extern struct criusec_ctx *criusec_chain_key_import(const struct criusec_header *h, bool *tried);

/* criusec-cipher-img.c: cipher.img, protobuf to and from the engine's header. */
extern int criusec_read_cipher_entry(int dfd, CipherEntry **ce);
extern int criusec_write_cipher_img(struct criusec_ctx *ctx);
extern int criusec_header_from_pb(CipherEntry *ce, struct pb_header *ph);
extern void criusec_pb_header_free(struct pb_header *ph);

/* criusec-manifest.c: the dump's list of sealed images (shared by criu's forked children), and its rules. */
extern int criusec_manifest_begin(void);
extern void criusec_manifest_end(void);
extern void criusec_manifest_add(const char *kind, const char *name, const struct criusec_stream_info *info,
				 const uint8_t *entries);
extern void criusec_manifest_fail(void);
extern bool criusec_manifest_failed(void);
extern void criusec_manifest_sealed(const struct criusec_stream_info *info);
extern int criusec_manifest_write(uint8_t digest[CRIUSEC_DIGEST_LEN]);
extern int criusec_manifest_index(struct dir_state *d, const char *name);
extern const struct criusec_stream_info *criusec_manifest_expect(struct dir_state *d, size_t i,
								 struct criusec_stream_info *buf);
extern const struct criusec_stream_info *criusec_manifest_of_header(struct dir_state *d,
								    struct criusec_stream_info *buf);
extern int criusec_manifest_valid(CipherManifestEntry *m, bool v2);
extern int criusec_manifest_check_pagemaps(struct dir_state *d);

/* criusec-stream.c: the stream layer under cr_img. */
extern bool criusec_stream_covered(int type);
extern const char *criusec_kind_of(int type);
extern int criusec_same_dir(int dfd, dev_t *dev, ino_t *ino);
extern bool criusec_is_imgdir(int dfd);

/* criusec-restore.c: loading and verifying a checkpoint's directory. */
extern struct dir_state *criusec_dir_load(int dfd, enum dir_role role, struct dir_state *child);
extern struct dir_state *criusec_dir_lookup(int dfd);
extern struct dir_state *criusec_dir_find(dev_t dev, ino_t ino);
extern int criusec_verify_to_memfd(struct criusec_ctx *ctx, const char *kind, const char *name, int fd,
				   const struct criusec_stream_info *expect);
extern int criusec_cache_to_memfd(struct criusec_ctx *ctx, const char *kind, const char *name, int fd);
extern int criusec_plain_copy(const struct plain_img *p, const char *name);

/* criusec-pages.c: page images under the page cipher, by descriptor. */
extern struct page_img *criusec_page_lookup(int fd);
extern struct page_img *criusec_page_new(int fd, const char *path, struct criusec_ctx *ctx);
extern int criusec_page_attach(struct page_img *p);
extern void criusec_page_forget(int fd);
extern int criusec_page_img_open(int dfd, unsigned long flags, const char *path, int fd);
extern int criusec_page_img_closed(int fd);
extern void criusec_pages_forget_all(void);

/* criusec-punch.c: restore --auto-dedup, punched only once the restore succeeded. */
extern void criusec_punches_init(void);
extern void criusec_punch_deferred(bool ok);

/* criusec-ps.c: the page server's side, and the dump's side of it. */
extern ssize_t criusec_ps_send_all(int sk, const void *buf, size_t n);
extern void criusec_grant_free(uint8_t *grant, size_t len);
extern int criusec_ps_grant_take(int type, const char *path, uint8_t **grant, size_t *len);

/* criusec-plugin.c: the images directory against the manifest (plugins write there around criusec). */
extern int criusec_imgdir_snapshot(void);
extern int criusec_imgdir_check(void);
extern void criusec_imgdir_forget(void);
/* Restore: an image file of an encrypted checkpoint's directory that its manifest does not list is refused. */
extern int criusec_imgdir_check_restore(int dfd, const char *const *names, size_t n);
/* criusec-manifest.c: the names the manifest lists so far, one per call (off from 0). */
extern const char *criusec_manifest_name(unsigned int *off);
/* name is one of CRIU's own image names (core-%u.img, pagetags-%u.img, ...). */
extern bool criusec_criu_image_name(const char *name);

#endif /* __CR_CRIUSEC_LAYER_H__ */
