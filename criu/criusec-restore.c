// SPDX-License-Identifier: GPL-2.0-only
/*
 * criusec: loading a checkpoint's directory to restore it (or to dump an
 * increment over it).  What one directory (the images dir, a parent, the
 * work dir) holds is loaded the first time an image is read from it:
 * cipher.img through the host's policy and a key, then every image its
 * manifest lists, authenticated once, into memory; each open gets a
 * private memfd copy of that.  So nothing is used before everything was
 * checked, a damaged or missing image stops the restore before it starts,
 * and tasks that open images from inside a user namespace never need to
 * read the (owner-only) files themselves.  A parent is opened only under a
 * child whose header binds it.
 */
#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "criusec.h"
#include "criusec-glue.h"
#include "criusec-layer.h"
#include "cr_options.h"
#include "image.h"
#include "image-desc.h"
#include "log.h"
#include "protobuf.h"
#include "util.h"
#include "common/xmalloc.h"

#undef LOG_PREFIX
#define LOG_PREFIX "criusec: "

static struct dir_state *dirs;

/* A private copy (own offset) of a verified plaintext. */
int criusec_plain_copy(const struct plain_img *p, const char *name)
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

/* An error, or for a cache that is only skipped, a warning. */
#define say(cache, fmt, ...)                         \
	do {                                         \
		if (cache)                           \
			pr_warn(fmt, ##__VA_ARGS__); \
		else                                 \
			pr_err(fmt, ##__VA_ARGS__);  \
	} while (0)

static int to_memfd(struct criusec_ctx *ctx, const char *kind, const char *name, int fd,
		    const struct criusec_stream_info *expect, bool cache)
{
	struct stat st;
	int memfd;

	if (fstat(fd, &st)) {
		say(cache, "%s: fstat: %s\n", name, strerror(errno));
		return -1;
	}
	if (!S_ISREG(st.st_mode)) {
		say(cache, "%s: not a regular file\n", name);
		return -1;
	}
	if (expect && expect->has_size && (uint64_t)st.st_size != expect->size) {
		say(cache, "%s: %lld bytes, but the dump wrote %llu: truncated, extended or replaced\n", name,
		    (long long)st.st_size, (unsigned long long)expect->size);
		return -1;
	}
	memfd = memfd_create(name, MFD_CLOEXEC);
	if (memfd < 0) {
		say(cache, "%s: can't make a memfd: %s\n", name, strerror(errno));
		return -1;
	}
	if (criusec_stream_open_fd(ctx, kind, name, fd, memfd, expect)) {
		say(cache, "%s: %s\n", name, criusec_last_error());
		close(memfd);
		return -1;
	}
	if (lseek(memfd, 0, SEEK_SET)) {
		say(cache, "%s: lseek: %s\n", name, strerror(errno));
		close(memfd);
		return -1;
	}
	return memfd;
}

/*
 * Authenticate an image file into a new memfd (at offset 0), chunk by
 * chunk: memory holds two chunks and the plaintext, whatever the file
 * claims.  expect (may be NULL) is what the manifest records of it: a file
 * of another size is refused before it is read.
 */
int criusec_verify_to_memfd(struct criusec_ctx *ctx, const char *kind, const char *name, int fd,
			    const struct criusec_stream_info *expect)
{
	return to_memfd(ctx, kind, name, fd, expect, false);
}

/* The same for a cache (the parent pre-dump's irmap cache): a failure is a warning, and the dump goes on. */
int criusec_cache_to_memfd(struct criusec_ctx *ctx, const char *kind, const char *name, int fd)
{
	return to_memfd(ctx, kind, name, fd, NULL, true);
}

static void plain_free(struct plain_img *p)
{
	if (p->data)
		criusec_secret_unmap(p->data, p->len); /* wiped first */
	p->data = NULL;
	p->len = 0;
}

/* Authenticate a whole image file into a mapping (see struct plain_img). */
static int load_plain(struct criusec_ctx *ctx, const char *kind, const char *name, int fd, struct plain_img *p,
		      const struct criusec_stream_info *expect)
{
	struct stat st;
	int memfd, ret = 0;

	memfd = criusec_verify_to_memfd(ctx, kind, name, fd, expect);
	if (memfd < 0)
		return -1;
	p->data = NULL;
	p->len = 0;
	if (fstat(memfd, &st)) {
		pr_perror("%s: fstat", name);
		ret = -1;
	} else if (st.st_size) {
		p->len = st.st_size;
		/* Never in a core dump, out of swap where allowed. */
		p->data = criusec_secret_map(memfd, p->len);
		if (!p->data) {
			pr_perror("%s: can't map the verified plaintext", name);
			ret = -1;
		}
	}
	close(memfd);
	return ret;
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

	if (criusec_manifest_valid(m, criusec_ctx_manifest_digest(d->ctx) != NULL))
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
		ret = load_plain(d->ctx, m->kinds[i], m->images[i], fd, &d->plain[i], criusec_manifest_expect(d, i, &buf));
		close(fd);
		if (ret)
			return -1;
	}
	if (criusec_manifest_check_pagemaps(d))
		return -1;
	pr_info("All %zu images of the checkpoint authenticated\n", m->n_images);
	return 0;
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
	pd = criusec_dir_load(pfd, DIR_PARENT, d);
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
	struct pb_header ph;
	struct cr_img *img;
	CipherEntry *ce;
	int ret;

	ret = criusec_read_cipher_entry(dfd, &ce);
	if (ret < 0)
		return -1;
	if (ret == 0) {
		if (role == DIR_OTHER)
			return 0;
		return criusec_policy_refuses(CRIUSEC_RESTORE_PLAIN) ? -1 : 0;
	}
	d->encrypted = true;
	criusec_punches_init();
	if (role == DIR_OTHER) {
		pr_err("An encrypted checkpoint is read only as the images directory or as the verified parent "
		       "of one: refusing to open it here (a parent link under a plaintext checkpoint?)\n");
		goto err;
	}
	if (criusec_header_from_pb(ce, &ph)) {
		pr_err("cipher.img: malformed header\n");
		goto err;
	}
	if (criusec_check_header(&ph.h))
		goto err;
	criusec_holding_keys();
	if (role == DIR_PARENT && (opts.mode == CR_DUMP || opts.mode == CR_PRE_DUMP)) {
		/* A dump reads its parent with the chain key it left, else a recipient's key. */
		bool tried = false;

		d->ctx = criusec_chain_key_import(&ph.h, &tried);
		if (!d->ctx && tried)
			goto err;
	}
	if (!d->ctx && role == DIR_IMAGES)
		d->ctx = criusec_prefetched_ctx(d->dev, d->ino, ce);
	if (!d->ctx)
		d->ctx = criusec_restore_import(&ph.h);
	if (!d->ctx)
		goto err;
	criusec_pb_header_free(&ph);
	cipher_entry__free_unpacked(ce, NULL);
	/* A parent is the child's, by key, before any image of it is read. */
	if (check_binding(child, d))
		return -1;

	/* The manifest: open_read() checks it against the header (criusec_manifest_of_header()). */
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
	/* No image file beside the checkpoint's own (a plugin's, written in clear). */
	if (role == DIR_IMAGES && criusec_imgdir_check_restore(dfd, (const char *const *)d->manifest->images,
							       d->manifest->n_images))
		return -1;
	if (verify_all(dfd, d))
		return -1;
	return load_parent(dfd, d);
err:
	criusec_pb_header_free(&ph);
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
struct dir_state *criusec_dir_load(int dfd, enum dir_role role, struct dir_state *child)
{
	struct dir_state *d;
	dev_t dev;
	ino_t ino;

	if (criusec_same_dir(dfd, &dev, &ino))
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

/* A directory loaded before, by its identity; NULL if none. */
struct dir_state *criusec_dir_find(dev_t dev, ino_t ino)
{
	struct dir_state *d;

	for (d = dirs; d; d = d->next)
		if (d->dev == dev && d->ino == ino)
			return d;
	return NULL;
}

struct dir_state *criusec_dir_lookup(int dfd)
{
	return criusec_dir_load(dfd, criusec_is_imgdir(dfd) ? DIR_IMAGES : DIR_OTHER, NULL);
}

void criusec_restore_finish(bool ok)
{
	struct dir_state *d, *next;

	criusec_punch_deferred(ok);
	criusec_prefetch_drop();
	for (d = dirs; d; d = next) {
		next = d->next;
		dir_forget_secrets(d);
		if (d->dfd >= 0)
			close(d->dfd);
		xfree(d);
	}
	dirs = NULL;
	criusec_pages_forget_all();
}
