// SPDX-License-Identifier: GPL-2.0-only
/*
 * criusec: the stream layer under cr_img.  Every image but the page images,
 * cipher.img and the stats goes through one AEAD stream.  On dump an image
 * is written to a memfd and sealed into its file when closed; on restore
 * the file is authenticated as a whole into memory (criusec-restore.c),
 * and only then handed to CRIU as a memfd.  So every way CRIU reads and
 * writes image data (buffered, raw, splice, sendfile, lseek, or a child
 * like tar writing to the descriptor) is covered by one mechanism, and
 * nothing unauthenticated is ever parsed.  Page images go to
 * criusec-pages.c.
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
#include "servicefd.h"
#include "util.h"
#include "common/xmalloc.h"

#undef LOG_PREFIX
#define LOG_PREFIX "criusec: "

/* An image being written: plaintext in memfd until it is closed. */
struct pending_img {
	int fd;	     /* the memfd CRIU writes to */
	int memfd;   /* our own reference to it, read back at close */
	int real_fd; /* the image file */
	pid_t owner; /* only the opener seals; a forked child just drops */
	int type;
	bool in_imgdir;
	char *name;
	uint8_t *grant; /* page server: sealed under the dump's grant, not criusec_dump_ctx */
	size_t grant_len;
	struct pending_img *next;
};
static struct pending_img *pending;

/* Images that stay outside the stream layer, and why. */
bool criusec_stream_covered(int type)
{
	switch (type) {
	case CR_FD_CIPHER:    /* the header itself; MAC-protected */
	case CR_FD_STATS:     /* timings and counters, no process state */
	case CR_FD_PAGES:     /* the page cipher: see struct page_img */
	case CR_FD_PAGES_OLD: /* formats older than CRIU 2.x: never written */
	case CR_FD_SHM_PAGES_OLD:
		return false;
	}
	return true;
}

const char *criusec_kind_of(int type)
{
	return imgset_template[type].fmt;
}

int criusec_same_dir(int dfd, dev_t *dev, ino_t *ino)
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

bool criusec_is_imgdir(int dfd)
{
	dev_t d1, d2;
	ino_t i1, i2;

	if (dfd == get_service_fd(IMG_FD_OFF))
		return true;
	if (criusec_same_dir(dfd, &d1, &i1) || criusec_same_dir(get_service_fd(IMG_FD_OFF), &d2, &i2))
		return false;
	return d1 == d2 && i1 == i2;
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
	p->in_imgdir = criusec_is_imgdir(dfd);
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
void criusec_img_closed(int fd)
{
	struct pending_img **pp, *p;

	if (criusec_page_img_closed(fd))
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
		    criusec_stream_seal_granted_fd(p->grant, p->grant_len, criusec_kind_of(p->type), p->name, p->memfd,
						   p->real_fd))
			pr_err("%s: can't encrypt: %s\n", p->name, criusec_last_error());
	} else if (p->owner == getpid()) {
		struct criusec_stream_info info;

		if (lseek(p->memfd, 0, SEEK_SET) < 0 ||
		    criusec_stream_seal_fd(criusec_dump_ctx, criusec_kind_of(p->type), p->name, p->memfd, p->real_fd, &info)) {
			pr_err("%s: can't encrypt: %s\n", p->name, criusec_last_error());
			criusec_manifest_fail();
		} else if (p->type == CR_FD_CIPHER_MANIFEST) {
			criusec_manifest_sealed(&info);
		} else if (p->in_imgdir && still_linked(p->real_fd)) {
			criusec_manifest_add(criusec_kind_of(p->type), p->name, &info, NULL);
		}
	}
	close(p->memfd);
	close(p->real_fd);
	if (p->grant)
		criusec_grant_free(p->grant, p->grant_len);
	xfree(p->name);
	xfree(p);
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
	 * An irmap cache in the work dir, sealed by an earlier pre-dump (a work
	 * dir has no cipher.img): the parent's key opens the one its pre-dump
	 * left; any other is only a cache, so go on without it.
	 */
	if (type == CR_FD_IRMAP_CACHE && is_stream && !(criusec_dump_ctx && criusec_is_imgdir(dfd))) {
		if (criusec_dump_parent_ctx) {
			memfd = criusec_cache_to_memfd(criusec_dump_parent_ctx, criusec_kind_of(type), path, *fd);
			if (memfd >= 0) {
				pr_info("%s: the parent pre-dump's, read with its key\n", path);
				goto swap;
			}
		}
		pr_warn("Ignoring the encrypted %s of an earlier dump\n", path);
		close(*fd);
		*fd = -1;
		errno = ENOENT;
		return 0;
	}

	/* Reading back what this dump wrote: its own key, no manifest yet. */
	if (criusec_dump_ctx && criusec_is_imgdir(dfd)) {
		if (*fd < 0 || !is_stream)
			return 0;
		memfd = criusec_verify_to_memfd(criusec_dump_ctx, criusec_kind_of(type), path, *fd, NULL);
		goto swap;
	}

	/* Failures of criusec_dir_lookup() were said once, when it failed. */
	d = criusec_dir_lookup(dfd);
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
		memfd = criusec_verify_to_memfd(d->ctx, criusec_kind_of(type), path, *fd, criusec_manifest_of_header(d, &buf));
		goto swap;
	}

	i = criusec_manifest_index(d, path);
	if (i < 0) {
		if (*fd < 0)
			return 0; /* not dumped, as in a plain checkpoint */
		pr_err("%s is not an image of this checkpoint (not in its manifest)\n", path);
		return -1;
	}
	if (strcmp(d->manifest->kinds[i], criusec_kind_of(type))) {
		pr_err("%s was dumped as %s, not read as %s\n", path, d->manifest->kinds[i], criusec_kind_of(type));
		return -1;
	}
	memfd = criusec_plain_copy(&d->plain[i], path);
swap:
	if (memfd < 0)
		return -1;
	if (*fd >= 0)
		close(*fd);
	*fd = memfd;
	return 0;
}

int criusec_img_open(int dfd, int type, unsigned long flags, const char *path, int *fd)
{
	int saved_errno = errno, was_missing = *fd < 0, ret;

	if (type == CR_FD_PAGES) {
		ret = criusec_page_img_open(dfd, flags, path, *fd);
		if (ret && *fd >= 0) {
			close(*fd);
			*fd = -1;
		}
		if (!ret && was_missing)
			errno = saved_errno;
		return ret;
	}
	if (!criusec_stream_covered(type))
		return 0;
	if (flags & (O_WRONLY | O_RDWR)) {
		uint8_t *grant = NULL;
		size_t grant_len = 0;

		if (*fd < 0)
			return 0;
		ret = criusec_dump_ctx ? 1 : criusec_ps_grant_take(type, path, &grant, &grant_len);
		if (ret == 0 && opts.mode == CR_PAGE_SERVER && (type == CR_FD_PAGEMAP || type == CR_FD_SHMEM_PAGEMAP) &&
		    criusec_policy_refuses(CRIUSEC_RECEIVE_PLAIN))
			ret = -1;
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
				criusec_grant_free(grant, grant_len);
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
