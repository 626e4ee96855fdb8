// SPDX-License-Identifier: GPL-2.0-only
/*
 * criusec: page images under the page cipher, found by their descriptor.
 * Dump appends pages (encrypted, and compressed where that pays), sealed
 * and written by the engine's helpers behind CRIU; the engine keeps their
 * tags or region records, sealed into pagetags-N.img when the image is
 * closed.  Restore checks each page read against what was authenticated
 * with the rest of the checkpoint, and hands the restorer, which reads
 * pages itself, a memfd of verified plaintext.  Pages are known by their
 * number (logical offset / 4096), whatever the layout of a compressed
 * image.
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
#include "criusec-layer.h"
#include "cr_options.h"
#include "log.h"
#include "util.h"
#include "common/xmalloc.h"

#undef LOG_PREFIX
#define LOG_PREFIX "criusec: "

static struct page_img *page_imgs;

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

struct page_img *criusec_page_lookup(int fd)
{
	struct page_img *p;

	for (p = page_imgs; p; p = p->next)
		if (p->fd == fd && p->owner == getpid())
			return p;
	return NULL;
}

static void page_free(struct page_img *p)
{
	/* Every page read's reads are read at its sync, before it closes. */
	BUG_ON(p->queued.len && p->owner == getpid());
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
void criusec_page_forget(int fd)
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

struct page_img *criusec_page_new(int fd, const char *path, struct criusec_ctx *ctx)
{
	struct page_img *p;

	p = xzalloc(sizeof(*p));
	if (!p)
		return NULL;
	p->fd = fd;
	p->index = -1;
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
	p = criusec_page_new(fd, path, criusec_dump_ctx);
	if (!p)
		return -1;
	p->in_imgdir = criusec_is_imgdir(dfd);
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

/* The engine takes (copies) the page image's tags and checks the file's size against them (dedup keeps the size). */
int criusec_page_attach(struct page_img *p)
{
	struct stat st;
	int i = p->index;

	if (i < 0)
		return 0;
	if (fstat(p->fd, &st)) {
		pr_perror("%s: fstat", p->name);
		return -1;
	}
	if (criusec_pages_attach(p->pc, p->dir->plain[i].data, p->dir->plain[i].len, st.st_size)) {
		pr_err("%s: %s\n", p->name, criusec_last_error());
		return -1;
	}
	p->index = -1;
	return 0;
}

/* The page image is as long as its index says, as attaching checks (without taking its tags) */
static int page_check_size(struct page_img *p)
{
	const struct plain_img *t = &p->dir->plain[p->index];
	struct stat st;

	if (fstat(p->fd, &st)) {
		pr_perror("%s: fstat", p->name);
		return -1;
	}
	if (criusec_pages_check_size(p->dir->ctx, t->data, t->len, st.st_size)) {
		pr_err("%s: %s\n", p->name, criusec_last_error());
		return -1;
	}
	return 0;
}

static int page_open_read(int dfd, const char *path, int fd)
{
	struct dir_state *d;
	struct page_img *p;
	char *tname;
	int i;

	/* Our own pages, during the dump: never read back (page server not supported). */
	if (criusec_dump_ctx && criusec_is_imgdir(dfd))
		return 0;
	d = criusec_dir_lookup(dfd);
	if (!d)
		return -1;
	if (!d->encrypted)
		return 0;
	tname = tags_name(path);
	if (!tname)
		return -1;
	i = criusec_manifest_index(d, tname);
	if (i < 0 || strcmp(d->manifest->kinds[i], PAGE_TAGS_KIND)) {
		pr_err("%s: its page tags (%s) are not in the checkpoint\n", path, tname);
		free(tname);
		return -1;
	}
	free(tname);
	p = criusec_page_new(fd, path, d->ctx);
	if (!p)
		return -1;
	p->dir = d;
	p->index = i;
	/*
	 * A dump reads its parents' page images only to punch them
	 * (--auto-dedup), and then late: their tags (4 MiB for 1 GiB) are not
	 * taken while the tasks are frozen for nothing, but the size is
	 * checked now, as attaching would.
	 */
	if (criusec_dump_ctx)
		return page_check_size(p);
	return criusec_page_attach(p);
}

int criusec_page_img_open(int dfd, unsigned long flags, const char *path, int fd)
{
	criusec_page_forget(fd);
	if (fd < 0)
		return 0;
	if (flags & O_CREAT)
		return criusec_dump_ctx ? page_open_write(dfd, path, fd) : 0;
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
	    criusec_stream_seal_buf(criusec_dump_ctx, PAGE_TAGS_KIND, tname, index ?: (uint8_t *)"", len, &out, &out_len,
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
		criusec_manifest_add(PAGE_TAGS_KIND, tname, &info, NULL);
	ret = 0;
out:
	if (fd >= 0)
		close(fd);
	free(out);
	free(tname);
	return ret;
}

/* 1: p was a page image (and is gone), 0: not one. */
int criusec_page_img_closed(int fd)
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
		criusec_manifest_fail();
	if (p->pmd) {
		uint8_t entries[CRIUSEC_DIGEST_LEN];

		/* The page server sealed it; the manifest records what it was sent. */
		if (criusec_pagemap_digest_final(p->pmd, entries))
			criusec_manifest_fail();
		else
			criusec_manifest_add(p->pm_kind, p->pm_name, NULL, entries);
		p->pmd = NULL;
	}
	page_free(p);
	return 1;
}

bool criusec_pages_sealed(int fd)
{
	return criusec_page_lookup(fd) != NULL;
}

#define PAGE_BATCH (1 << 20)

/* One staging buffer for checked plaintext pages on their way out (restore, page server). */
static uint8_t *page_batch;

static uint8_t *page_batch_buf(void)
{
	if (!page_batch) {
		page_batch = criusec_secret_map(-1, PAGE_BATCH);
		if (!page_batch) {
			pr_perror("Can't map a page buffer");
			return NULL;
		}
	}
	return page_batch;
}

/* Restore is done: every page image, and the plaintext that passed through. */
void criusec_pages_forget_all(void)
{
	struct page_img *p, *pn;

	for (p = page_imgs; p; p = pn) {
		pn = p->next;
		page_free(p);
	}
	page_imgs = NULL;
	criusec_secret_unmap(page_batch, PAGE_BATCH); /* wiped first */
	page_batch = NULL;
}

/*
 * Sealed pages on their way out, in order: to a page server from the
 * calling thread only, to a file (wfd) from the engine's helpers too, one
 * at a time (the engine gathers what is short).
 */
static int page_sink_write(void *arg, const void *buf, size_t n)
{
	struct page_img *p = arg;
	ssize_t ret;

	ret = p->remote ? criusec_ps_send_all(p->fd, buf, n) : write_all(p->wfd, buf, n);
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
	struct page_img *p = criusec_page_lookup(fd);

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
	if (criusec_page_attach(p))
		return -1;
	if (criusec_pages_read(p->pc, fd, vaddr, off / CRIUSEC_PAGE_SIZE, buf, len)) {
		pr_err("%s: %s\n", p->name, criusec_last_error());
		return -1;
	}
	return 0;
}

int criusec_pages_load(int fd, unsigned long vaddr, off_t off, void *buf, unsigned long len)
{
	struct page_img *p = criusec_page_lookup(fd);

	if (!p)
		return 0;
	return page_load(p, fd, vaddr, off, buf, len) ? -1 : 1;
}

/* What is queued, now. */
static int page_queued_read(struct page_img *p, int fd)
{
	unsigned long len = p->queued.len;

	p->queued.len = 0;
	if (!len)
		return 0;
	pr_info("%s: %lu pages at %#lx read in one call\n", p->name, len / CRIUSEC_PAGE_SIZE, p->queued.vaddr);
	return page_load(p, fd, p->queued.vaddr, p->queued.off, p->queued.buf, len);
}

/*
 * Restore reads a VMA a pagemap entry (up to 1024 pages) at a time: pages
 * that continue the queued ones in the image, in memory and in the
 * address space are read with them in one call, which the engine's
 * workers share once, without a start, a join and an idle tail per entry.
 */
int criusec_pages_queue(int fd, unsigned long vaddr, off_t off, void *buf, unsigned long len)
{
	struct page_img *p = criusec_page_lookup(fd);

	if (!p) {
		pr_err("fd %d: not an encrypted page image\n", fd);
		return -1;
	}
	if (p->queued.len && p->queued.vaddr + p->queued.len == vaddr && p->queued.off + p->queued.len == off &&
	    p->queued.buf + p->queued.len == buf) {
		p->queued.len += len;
		return 0;
	}
	if (page_queued_read(p, fd))
		return -1;
	p->queued.vaddr = vaddr;
	p->queued.off = off;
	p->queued.buf = buf;
	p->queued.len = len;
	return 0;
}

int criusec_pages_queued_read(int fd)
{
	struct page_img *p = criusec_page_lookup(fd);

	return p ? page_queued_read(p, fd) : 0;
}

int criusec_pages_to_pipe(int fd, int pipe, unsigned long vaddr, unsigned long len)
{
	struct page_img *p = criusec_page_lookup(fd);
	uint8_t *buf;
	off_t off;

	if (!p)
		return 0;
	if (!opts.tls && criusec_policy_refuses(CRIUSEC_SERVE_PLAIN))
		return -1;
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
	struct page_img *p = criusec_page_lookup(fd);
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
	struct page_img *p = criusec_page_lookup(fd);
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
	criusec_page_forget(fd);
	if (dup2(memfd, fd) < 0) {
		pr_perror("Can't put verified pages in place");
		ret = -1;
	}
	close(memfd);
	return ret;
}
