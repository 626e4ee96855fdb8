// SPDX-License-Identifier: GPL-2.0-only
/*
 * criusec: dedup of encrypted page images.  criu dedup and dump
 * --auto-dedup punch at once; restore --auto-dedup punches the pages criu
 * read (and checked) only once the whole restore succeeded, so a refused
 * restore changes no byte.  A compressed region goes once all its pages
 * went (the engine knows the layout).
 */
#include <fcntl.h>
#include <stdio.h>
#include <sys/mman.h>
#include <unistd.h>

#include "criusec.h"
#include "criusec-glue.h"
#include "criusec-layer.h"
#include "cr_options.h"
#include "log.h"

#undef LOG_PREFIX
#define LOG_PREFIX "criusec: "

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
struct punch_shm {
	unsigned int used;
	int overflow; /* too many: punch nothing (only a saving is lost) */
	struct punch_rec r[PUNCH_RECS];
};
static struct punch_shm *punches;

void criusec_punches_init(void)
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
	struct page_img *p = criusec_page_lookup(fd);
	bool later;

	if (!p || !p->dir)
		return 0;
	if (criusec_page_attach(p))
		return -1;
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

/* Restore is done: punch what it read only if it succeeded (ok), and forget the list. */
void criusec_punch_deferred(bool ok)
{
	struct dir_state *d;
	unsigned int i;

	if (!punches)
		return;
	if (!ok)
		goto out;
	if (punches->overflow) {
		pr_warn("Too many pages to punch after the restore: --auto-dedup punched nothing\n");
		goto out;
	}
	for (i = 0; i < punches->used; i++) {
		struct punch_rec *r = &punches->r[i];
		int fd;

		d = criusec_dir_find(r->dev, r->ino);
		fd = d ? openat(d->dfd, r->name, O_RDWR | O_NOFOLLOW | O_CLOEXEC) : -1;
		if (fd < 0 || fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, r->off, r->len))
			pr_perror("%s: can't punch the pages read", r->name);
		if (fd >= 0)
			close(fd);
	}
	pr_info("Punched %u runs of restored pages out of their images\n", punches->used);
out:
	munmap(punches, sizeof(*punches));
	punches = NULL;
}
