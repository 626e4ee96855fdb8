/*
 * Copy-on-write dump (--cow-dump, the default of dump --leave-running
 * where the kernel can): the tasks run while their pages are written.
 *
 * While a task is frozen, its pagemap is collected as always, but its
 * pages are not taken: its private VMAs are registered with a userfaultfd
 * of its mm in synchronous write-protect mode (made in the task by the
 * parasite, PARASITE_CMD_GET_UFFD, and held by criu alone) and
 * write-protected.  A thread of criu's (the armer) does that as soon as it
 * has the userfaultfd, while criu collects the pagemap; the main thread
 * then protects from the other end until they meet, so the two CPUs share
 * the work.  The armer also serves the write faults that come meanwhile
 * (the kernel writes the task's rseq area while the parasite runs in it),
 * saving the page first.  Once everything else is dumped, the tree
 * runs again and criu writes the pages, each chunk read with
 * process_vm_readv and unprotected after.  A task that writes to a page
 * not yet saved waits in the kernel; between two chunks criu reads the
 * faults, copies those pages (still as they were at the freeze) and
 * unprotects them, which wakes the writers.  The pagemap is written in
 * address order: a copied page waits in memory until its chunk comes.
 *
 * Only criu holds the userfaultfd: if criu dies, its release drops the
 * registration and wakes every blocked writer.
 *
 * What the mechanism can't protect is copied while the task is frozen:
 * pages of VMAs the kernel won't register (private file mappings, special
 * mappings, VMAs the task registered with a userfaultfd of its own),
 * unreadable ones (process_vm_readv can't read them once their protection
 * is back) and executable ones (criu writes its syscall code into one at
 * the parasite's cure: it must never wait for a fault only criu serves).
 * Shared memory is dumped by shmem.c while the tree is frozen, as always.
 *
 * What changes the mapping of a page not yet saved (munmap, mremap,
 * MADV_DONTNEED and friends, seen as userfaultfd events), exec and exit
 * lose that page: the copy-on-write dump, done by a child of criu, fails,
 * and criu dumps the tree again, frozen (mem_snap_try_dump()).  fork is
 * safe: the parent's pages stay protected and the child is not dumped.
 *
 * In a chain (--track-mem, userfaultfd tracking: mem-track.c), tracking's
 * userfaultfd holds the VMAs it tracks.  Once this pass has read their
 * marks, tracking lends the snapshot those with a third or more to dump
 * (lend_tracked()); the others' pages to dump are copied while frozen.
 * Once a task's pages are written, tracking takes back its VMAs, those it
 * lent and those new in this pass, the task stopped a moment (hand_back()):
 * criu leaves a page of them protected once written, so the pages the task
 * wrote since the freeze are those a write fault unprotected.
 *
 * A pre-dump needs no snapshot (what the tasks write is tracked for the
 * next pass): it reads its pages once they run (mem_snap_pre_dump_mode()).
 */

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/ptrace.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <sys/wait.h>

#include "common/list.h"
#include "compel/infect.h"
#include "cr_options.h"
#include "image.h"
#include "kerndat.h"
#include "linux/userfaultfd.h"
#include "log.h"
#include "mem.h"
#include "mem-snap.h"
#include "mem-track.h"
#include "page-pipe.h"
#include "page-xfer.h"
#include "pagemap_scan.h"
#include "parasite-syscall.h"
#include "pstree.h"
#include "servicefd.h"
#include "stats.h"
#include "util.h"
#include "vma.h"
#include "xmalloc.h"

#include "images/pagemap.pb-c.h"

#undef LOG_PREFIX
#define LOG_PREFIX "cow-dump: "

#ifndef UFFDIO_WRITEPROTECT
struct uffdio_writeprotect {
	struct uffdio_range range;
#define UFFDIO_WRITEPROTECT_MODE_WP	  ((__u64)1 << 0)
#define UFFDIO_WRITEPROTECT_MODE_DONTWAKE ((__u64)1 << 1)
	__u64 mode;
};
#define UFFDIO_WRITEPROTECT _IOWR(UFFDIO, 0x06, struct uffdio_writeprotect)
#endif

#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23
#endif

#define SNAP_FEATURES \
	(UFFD_FEATURE_PAGEFAULT_FLAG_WP | UFFD_FEATURE_EVENT_REMAP | UFFD_FEATURE_EVENT_REMOVE | UFFD_FEATURE_EVENT_UNMAP)

/* Pages read, unprotected and written at once: a writer waits at most that */
#define SNAP_CHUNK	   64
#define SNAP_READ_BATCH	   256	/* pages read at once while frozen (IOV_MAX: 1024) */
#define SNAP_COPY_SPLIT	   4096 /* pages copied while frozen from which two threads do it */
#define SNAP_LEND_SHARE	   3	/* a tracked VMA is lent if 1/3 of it or more is to dump */
#define SNAP_GIVE_UP_SHARE 8	/* ... and given up by tracking if at most 1/8 of it is not */

enum {
	PG_PROTECTED, /* as at the freeze, write-protected */
	PG_COPIED,    /* its content at the freeze in copy[] */
	PG_TAKEN,     /* in the image (or its chunk being written) */
};

/* Pages to dump, in address order, each range within one VMA */
struct snap_range {
	unsigned long start;
	unsigned long end;
	unsigned long first; /* index of its first page */
	unsigned long vma_start, vma_end;
	bool wp;     /* write-protected; else copied at the freeze */
	bool frozen; /* copied at collection (unprotectable VMA) */
	bool keep;   /* left protected once written: memory tracking takes the VMA back */
};

/* A VMA the armer registers and protects whole */
struct snap_vma {
	unsigned long start;
	unsigned long end;
	unsigned long lo, hi; /* not protected yet, under snap_lock once registered */
	const char *why;      /* why its pages are copied at the freeze */
	bool hand_back;	      /* to memory tracking once written (hand_back()) */
};

/* A mapping the pages copied while frozen are in */
struct snap_pool {
	char *base;
	size_t len;
};

/* A page saved at a fault before the task's pagemap was known */
struct snap_early {
	struct snap_early *next;
	unsigned long addr;
	void *page;
};

struct snap_task {
	struct list_head l;
	pid_t pid;
	int uffd;
	struct snap_vma *vmas;
	unsigned int nr_vmas;
	bool registered; /* vmas[] registered: the main thread may protect them too */
	bool armed;	 /* the armer is done with vmas[] */
	struct snap_early *early;
	unsigned int nr;
	struct snap_range *r;
	unsigned long nr_pages;
	unsigned char *state; /* NULL until the pagemap is known */
	void **copy;
	struct snap_pool *pools; /* what copy[] points to while frozen (pool_get()) */
	unsigned int nr_pools;
	struct iovec *holes; /* pages in the parent images, in address order */
	unsigned int nr_holes;
	/*
	 * Opened while frozen, as a dump does: the ids of page images are in
	 * order.  To a page server, opened to write (it has one open at a time).
	 */
	struct page_xfer xfer;
	bool xfer_open;
	int vpid;
};

/*
 * Tasks being dumped copy-on-write.  Until mem_snap_arm() the armer thread
 * protects and serves them: snap_lock then guards the list and each task's
 * pages (state, copy, early); the rest of a task is the armer's until
 * t->armed, and then the main thread's again once the armer is joined.
 */
static LIST_HEAD(snap_tasks);
static struct snap_task *cur;
static pthread_mutex_t snap_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t snap_armed = PTHREAD_COND_INITIALIZER; /* a task registered or armed */
static struct {
	pthread_t th;
	bool running;
	bool stop;
	int evfd;
} armer = { .evfd = -1 };
static int usable = -1;
static char failed[256];
static bool lost;	/* failed[] says the tasks lost a page criu had not saved */
static bool snap_child; /* this criu is mem_snap_try_dump()'s child */
static unsigned long nr_fault_copies, nr_frozen_copies, nr_written;
static const char why_busy[] = "registered with another userfaultfd (memory tracking's, or the task's own)";

/*
 * What is unprotected at once, at least: a page, or where soft-dirty
 * tracks memory a whole transparent huge page.  The kernel splits a huge
 * page unprotected in part, and a split marks every pte of a dirty pmd
 * soft-dirty (x86's pte_mkdirty() sets both bits): in a test, 16 pages
 * unprotected made 512 soft-dirty, and a copy-on-write dump between two
 * passes of a chain made the next pass dump all of it again.  Unprotected
 * whole, a huge page stays whole, and only the written ones are dirty.
 */
static unsigned long snap_block = PAGE_SIZE;

static void snap_block_init(void)
{
	unsigned long pmd = 0;
	FILE *f;

	if (mem_track_method() != MEM_TRACK_SOFT_DIRTY)
		return;
	f = fopen("/sys/kernel/mm/transparent_hugepage/hpage_pmd_size", "r");
	if (!f)
		return; /* no THP: nothing is split */
	if (fscanf(f, "%lu", &pmd) == 1 && pmd > PAGE_SIZE && !(pmd & (pmd - 1)))
		snap_block = pmd;
	fclose(f);
	pr_info("soft-dirty tracks memory: pages are unprotected %lu KiB at a time, huge pages whole\n",
		snap_block >> 10);
}

static bool snap_usable(void)
{
	const char *why = NULL;

	if (usable >= 0)
		return usable;
	usable = 0;
	/* A pre-dump reads its pages as mem_snap_pre_dump_mode() said */
	if (!opts.cow_dump || opts.mode == CR_PRE_DUMP)
		return false;

	if (opts.final_state != TASK_ALIVE)
		why = "the tasks are not left running (--leave-running)";
	else if (opts.lazy_pages)
		why = "lazy pages are served from the frozen tasks";
	else if (!kdat.has_uffd || (kdat.uffd_features & SNAP_FEATURES) != SNAP_FEATURES)
		why = "the kernel has no userfaultfd write-protect with its events";
	/*
	 * Soft-dirty tracking: the attempt resets the bits while frozen, and a
	 * retry after a lost page could no longer trust them.
	 */
	else if (opts.track_mem && mem_track_method() == MEM_TRACK_SOFT_DIRTY)
		why = "memory is tracked with soft-dirty (--track-mem), whose bits a retry after a failed "
		      "copy-on-write dump could no longer trust";

	if (why) {
		/* A warning only to whoever asked for it: by default it is used where it can be */
		if (opts.cow_dump > 0)
			pr_warn("the tasks stay frozen until their pages are written: %s\n", why);
		else
			pr_info("the tasks stay frozen until their pages are written: %s\n", why);
		return false;
	}
	usable = 1;
	snap_block_init();
	return true;
}

/* Only the first failure counts: the dump fails with its reason */
static void snap_failv(bool lose, const char *fmt, va_list args)
{
	if (failed[0])
		return;
	vsnprintf(failed, sizeof(failed), fmt, args);
	lost = lose;
}

static void snap_fail(const char *fmt, ...)
{
	va_list args;

	va_start(args, fmt);
	snap_failv(false, fmt, args);
	va_end(args);
}

/* A failure that lost a page the tasks changed: the dump is done again, frozen */
static void snap_lose(const char *fmt, ...)
{
	va_list args;

	va_start(args, fmt);
	snap_failv(true, fmt, args);
	va_end(args);
}

static void copy_drop(struct snap_task *t, unsigned long i);

static void snap_free(struct snap_task *t)
{
	unsigned long i;

	if (!t)
		return;
	while (t->early) {
		struct snap_early *e = t->early;

		t->early = e->next;
		xfree(e->page);
		xfree(e);
	}
	xfree(t->vmas);
	close_safe(&t->uffd);
	if (t->xfer_open)
		t->xfer.close(&t->xfer);
	if (t->copy)
		for (i = 0; i < t->nr_pages; i++)
			copy_drop(t, i);
	xfree(t->copy);
	for (i = 0; i < t->nr_pools; i++)
		munmap(t->pools[i].base, t->pools[i].len);
	xfree(t->pools);
	xfree(t->state);
	xfree(t->holes);
	xfree(t->r);
	xfree(t);
}

static void *armer_main(void *arg);
static long page_index(struct snap_task *t, unsigned long addr);
static int serve_task(struct snap_task *t, int depth);
static bool arm_step(struct snap_task *t, struct snap_vma *v, bool top);

/*
 * Once a second thread shares criu's fd table, each time the table grows
 * the kernel waits for an RCU grace period (expand_fdtable()), 15 ms here,
 * and the page pipes of a large task open hundreds of pipes while the tree
 * is frozen.  So the table is grown once, before the thread exists.
 */
#define SNAP_FD_TABLE 65536

static void grow_fd_table(void)
{
	struct rlimit rl;
	int fd;

	if (getrlimit(RLIMIT_NOFILE, &rl))
		return;
	fd = fcntl(armer.evfd, F_DUPFD_CLOEXEC, (int)min_t(rlim_t, rl.rlim_cur, SNAP_FD_TABLE) - 1);
	if (fd >= 0)
		close(fd);
}

/* Start the armer, or wake it: a task to protect, or time to stop */
static int armer_kick(void)
{
	int ret;

	if (!armer.running) {
		armer.evfd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
		if (armer.evfd < 0) {
			pr_perror("Can't make an eventfd");
			return -1;
		}
		grow_fd_table();
		ret = pthread_create_nosig(&armer.th, armer_main, NULL);
		if (ret) {
			pr_err("Can't start the thread that protects memory: %s\n", strerror(ret));
			close_safe(&armer.evfd);
			return -1;
		}
		armer.running = true;
		return 0;
	}
	if (eventfd_write(armer.evfd, 1)) {
		pr_perror("Can't wake the thread that protects memory");
		return -1;
	}
	return 0;
}

/* Stop the armer: from now on the main thread alone touches the tasks */
static void armer_join(void)
{
	if (!armer.running)
		return;
	pthread_mutex_lock(&snap_lock);
	armer.stop = true;
	pthread_mutex_unlock(&snap_lock);
	if (eventfd_write(armer.evfd, 1))
		pr_perror("Can't wake the thread that protects memory");
	pthread_join(armer.th, NULL);
	armer.running = false;
	armer.stop = false;
	close_safe(&armer.evfd);
}

/* Why a VMA's pages are copied at the freeze, or NULL: they may be protected */
static const char *vma_unprotectable(struct vma_area *vma)
{
	if (!(vma->e->prot & PROT_READ))
		return "not readable once the tree runs";
	if (vma->e->prot & PROT_EXEC)
		return "executable (criu writes code into it)";
	if (vma->e->flags & MAP_HUGETLB)
		return "hugetlb";
	return NULL;
}

/* The VMAs whose pages the armer protects: private ones (shmem.c dumps the rest) */
static int collect_vmas(struct snap_task *t, struct vm_area_list *vmas)
{
	struct vma_area *vma;

	t->vmas = xmalloc(sizeof(*t->vmas) * (vmas->nr ?: 1));
	if (!t->vmas)
		return -1;
	list_for_each_entry(vma, &vmas->h, list) {
		if (!vma_area_is_private(vma, kdat.task_size) || vma_area_is(vma, VMA_AREA_GUARD) ||
		    vma_entry_is(vma->e, VMA_AREA_VVAR) || vma_unprotectable(vma))
			continue;
		t->vmas[t->nr_vmas++] = (struct snap_vma){
			.start = vma->e->start,
			.end = vma->e->end,
			.lo = vma->e->start,
			.hi = vma->e->end,
		};
	}
	return 0;
}

int mem_snap_task_start(struct pstree_item *item, struct vm_area_list *vmas, struct parasite_ctl *ctl)
{
	struct snap_task *t;
	int uffd;

	if (!snap_usable())
		return 0;

	uffd = parasite_get_uffd_seized(ctl, SNAP_FEATURES);
	if (uffd < 0) {
		pr_warn("%d: no userfaultfd for its memory: it stays frozen until its pages are written\n",
			item->pid->real);
		return 0;
	}
	/* criu alone holds it: no child of criu may outlive it with a copy */
	if (fcntl(uffd, F_SETFD, FD_CLOEXEC)) {
		pr_perror("Can't set FD_CLOEXEC on the userfaultfd");
		close(uffd);
		return -1;
	}

	t = xzalloc(sizeof(*t));
	if (!t) {
		close(uffd);
		return -1;
	}
	t->pid = item->pid->real;
	t->uffd = uffd;
	if (collect_vmas(t, vmas)) {
		snap_free(t);
		return -1;
	}
	/* Protected from now on, while criu collects the pagemap and the rest */
	pthread_mutex_lock(&snap_lock);
	list_add_tail(&t->l, &snap_tasks);
	pthread_mutex_unlock(&snap_lock);
	cur = t;
	if (armer_kick())
		return -1;
	return 1;
}

static int add_range(struct snap_task *t, struct vma_area *vma, unsigned long start, unsigned long end)
{
	struct snap_range *r;

	if (t->nr % 64 == 0 && xrealloc_safe(&t->r, (t->nr + 64) * sizeof(*t->r)))
		return -1;
	r = &t->r[t->nr++];
	r->start = start;
	r->end = end;
	r->first = t->nr_pages;
	r->vma_start = vma->e->start;
	r->vma_end = vma->e->end;
	r->wp = false;
	r->frozen = false;
	t->nr_pages += (end - start) / PAGE_SIZE;
	return 0;
}

/* The pagemap's iovs cut at VMA bounds (adjacent VMAs share iovs) */
static int collect_ranges(struct snap_task *t, struct vm_area_list *vmas, struct page_pipe *pp)
{
	struct vma_area *vma = list_first_entry(&vmas->h, struct vma_area, list);
	struct page_pipe_buf *ppb;
	unsigned int i;

	list_for_each_entry(ppb, &pp->bufs, l) {
		for (i = 0; i < ppb->nr_segs; i++) {
			unsigned long start = (unsigned long)ppb->iov[i].iov_base;
			unsigned long end = start + ppb->iov[i].iov_len;

			while (start < end) {
				unsigned long e;

				while (&vma->list != &vmas->h && vma->e->end <= start)
					vma = list_entry(vma->list.next, struct vma_area, list);
				if (&vma->list == &vmas->h || vma->e->start > start) {
					pr_err("%d: page %lx of the pagemap in no VMA\n", t->pid, start);
					return -1;
				}
				e = min(end, (unsigned long)vma->e->end);
				if (add_range(t, vma, start, e))
					return -1;
				start = e;
			}
		}
	}
	return 0;
}

static struct vma_area *range_vma(struct vm_area_list *vmas, struct vma_area *from, struct snap_range *r)
{
	struct vma_area *vma = from;

	while (&vma->list != &vmas->h && vma->e->end <= r->start)
		vma = list_entry(vma->list.next, struct vma_area, list);
	return vma;
}

static int read_page(pid_t pid, unsigned long addr, void *buf, unsigned long len)
{
	struct iovec local = { .iov_base = buf, .iov_len = len };
	struct iovec remote = { .iov_base = (void *)addr, .iov_len = len };
	ssize_t n;

	n = process_vm_readv(pid, &local, 1, &remote, 1, 0);
	if (n == (ssize_t)len)
		return 0;
	if (n < 0)
		return -errno;
	return -EFAULT;
}

/* Pages [from, to) of a range, to copy while frozen; what came of it */
struct snap_copy {
	struct snap_task *t;
	struct snap_range *r;
	unsigned long from, to;
	unsigned long copied;
	int err; /* errno of the read at err_addr */
	unsigned long err_addr;
};

/*
 * Memory for the pages copied while frozen: one mapping per copy, unmapped
 * with the task.  A malloc() per page made the copy mostly first touches of
 * fresh memory (faults, clearing, memcg charges, the second thread's arena
 * growing), 3-4 us a page; a mapping is populated in one call.
 */
/* Pages at base become t's pool: unmapped with t */
static char *pool_add(struct snap_task *t, char *base, unsigned long pages)
{
	if (xrealloc_safe(&t->pools, (t->nr_pools + 1) * sizeof(*t->pools)))
		return NULL;
	t->pools[t->nr_pools++] = (struct snap_pool){ .base = base, .len = pages * PAGE_SIZE };
	return base;
}

static char *pool_get(struct snap_task *t, unsigned long pages)
{
	void *m;

	m = mmap(NULL, pages * PAGE_SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (m == MAP_FAILED) {
		pr_perror("%d: can't map %lu pages to copy into while frozen", t->pid, pages);
		return NULL;
	}
	if (!pool_add(t, m, pages)) {
		munmap(m, pages * PAGE_SIZE);
		return NULL;
	}
	return m;
}

/* A copy goes: a pool's page stays until the task is freed */
static void copy_drop(struct snap_task *t, unsigned long i)
{
	char *page = t->copy[i];
	unsigned int k;

	if (!page)
		return;
	t->copy[i] = NULL;
	for (k = 0; k < t->nr_pools; k++)
		if (page >= t->pools[k].base && page < t->pools[k].base + t->pools[k].len)
			return;
	xfree(page);
}

/*
 * A pool populated before the freeze (mem_snap_prepare()), for the copy
 * while frozen of the task it was counted for (pool_reserved())
 */
static struct {
	pid_t pid;
	char *base;
	unsigned long pages;
} reserve;

static void reserve_drop(void)
{
	if (reserve.base)
		munmap(reserve.base, reserve.pages * PAGE_SIZE);
	reserve.base = NULL;
}

/* The reserve as t's pool, if it was counted for t and has room for pages */
static char *pool_reserved(struct snap_task *t, unsigned long pages)
{
	char *base = reserve.base;

	if (!base || reserve.pid != t->pid)
		return NULL;
	if (reserve.pages < pages) {
		pr_info("%d: %lu pages to copy while frozen, %lu populated before the freeze: a pool of their own\n",
			t->pid, pages, reserve.pages);
		reserve_drop();
		return NULL;
	}
	if (!pool_add(t, base, reserve.pages))
		return NULL;
	pr_info("%d: %lu pages to copy while frozen, into %lu populated before the freeze\n", t->pid, pages,
		reserve.pages);
	reserve.base = NULL;
	return base;
}

void mem_snap_prepare(pid_t pid)
{
	unsigned long len;
	long pages;
	void *m;

	reserve_drop();
	if (opts.mode != CR_DUMP)
		return;
	if (!snap_usable()) {
		/*
		 * Frozen until the pages are written: in a userfaultfd chain
		 * they are those written since the last pass, and the page
		 * cache they go to is written now, with a quarter more for
		 * what is written until the freeze (image.c says why).
		 */
		pages = mem_track_written(pid, 0);
		if (pages >= 1024)
			img_prewarm_pages((pages + pages / 4) * PAGE_SIZE);
		return;
	}
	/* Nearly all to dump: neither lent nor copied, dumped in full */
	mem_track_give_up(SNAP_GIVE_UP_SHARE);
	/* lend_tracked() lends the others: nothing of them is copied */
	pages = mem_track_written(pid, SNAP_LEND_SHARE);
	if (pages < 1024)
		return; /* populated at the copy, it costs a ms or two */
	/* What is written until the pagemap is read, frozen: a few ms of it */
	pages += pages / 4;
	len = pages * PAGE_SIZE;
	m = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (m == MAP_FAILED)
		return;
	madvise(m, len, MADV_POPULATE_WRITE);
	reserve.pid = pid;
	reserve.base = m;
	reserve.pages = pages;
	pr_info("%d: %lu pages populated before the freeze, to copy into while frozen\n", pid, pages);
}

/* A thread's share of a copy while frozen: segments, and the pool pages for them */
struct snap_half {
	struct snap_copy *c; /* up to one with no range, all of one task */
	char *slot, *end;
};

/* Pages to read at once: SNAP_READ_BATCH pool pages, from runs of the task */
struct snap_batch {
	struct iovec remote[SNAP_READ_BATCH];
	unsigned long idx[SNAP_READ_BATCH];
	struct snap_copy *owner[SNAP_READ_BATCH];
	unsigned int n, nr; /* pages, runs */
};

static int read_batch(struct snap_task *t, struct snap_batch *b, struct snap_half *h)
{
	struct iovec local = { .iov_base = h->slot, .iov_len = b->n * PAGE_SIZE };
	ssize_t got;
	unsigned int k;

	if (!b->n)
		return 0;
	got = process_vm_readv(t->pid, &local, 1, b->remote, b->nr, 0);
	if (got != (ssize_t)local.iov_len) {
		b->owner[0]->err = got < 0 ? errno : EFAULT;
		b->owner[0]->err_addr = (unsigned long)b->remote[0].iov_base;
		return -1;
	}
	for (k = 0; k < b->n; k++) {
		t->copy[b->idx[k]] = h->slot + k * PAGE_SIZE;
		t->state[b->idx[k]] = PG_COPIED;
		b->owner[k]->copied++;
	}
	h->slot += b->n * PAGE_SIZE;
	b->n = b->nr = 0;
	return 0;
}

/*
 * Copy pages now (the task frozen): what can't be protected.  Pages are
 * read SNAP_READ_BATCH at a time in one process_vm_readv(), a remote iovec
 * a run: the pages a pass finds written are mostly runs of one, and a call
 * per run cost twice as much.  Nothing logged here: it may run in a thread
 * of its own (copy_ranges()).
 */
static void *copy_main(void *arg)
{
	struct snap_half *h = arg;
	struct snap_batch batch, *b = &batch; /* 8 KiB: a thread's stack has room */
	struct snap_copy *c;

	if (!h->c->r)
		return NULL;
	b->n = b->nr = 0;
	/*
	 * Populated in one call (Linux 5.14; older kernels fault the pages in
	 * the reads): faulting them one by one in the reads cost more, 100
	 * against 86 ms for 20,000 pages in a test.
	 */
	madvise(h->slot, h->end - h->slot, MADV_POPULATE_WRITE);
	for (c = h->c; c->r; c++) {
		struct snap_task *t = c->t;
		unsigned long addr = c->r->start + c->from * PAGE_SIZE, end = c->r->start + c->to * PAGE_SIZE;
		unsigned long i = c->r->first + c->from;

		for (; addr < end; addr += PAGE_SIZE, i++) {
			struct iovec *last = b->nr ? &b->remote[b->nr - 1] : NULL;

			if (t->state[i] != PG_PROTECTED) /* saved at a fault, before anything wrote it */
				continue;
			b->idx[b->n] = i;
			b->owner[b->n++] = c;
			if (last && last->iov_base + last->iov_len == (void *)addr)
				last->iov_len += PAGE_SIZE;
			else
				b->remote[b->nr++] = (struct iovec){ .iov_base = (void *)addr, .iov_len = PAGE_SIZE };
			if (b->n == SNAP_READ_BATCH && read_batch(t, b, h))
				return NULL;
		}
		if (!c[1].r && read_batch(t, b, h))
			return NULL;
	}
	return NULL;
}

static int copy_done(struct snap_copy *c)
{
	nr_frozen_copies += c->copied;
	if (!c->err)
		return 0;
	pr_err("%d: can't copy page %lx while frozen: %s\n", c->t->pid, c->err_addr, strerror(c->err));
	return -1;
}

/* Pages of r not saved at a fault yet */
static unsigned long range_to_copy(struct snap_task *t, struct snap_range *r, unsigned long from, unsigned long to)
{
	unsigned long i, n = 0;

	for (i = r->first + from; i < r->first + to; i++)
		n += t->state[i] == PG_PROTECTED;
	return n;
}

static int copy_frozen(struct snap_task *t, struct snap_range *r)
{
	struct snap_copy c[2] = { { .t = t, .r = r, .to = (r->end - r->start) / PAGE_SIZE } };
	unsigned long n = range_to_copy(t, r, 0, c[0].to);
	struct snap_half h = { .c = c };

	if (!n)
		return 0;
	h.slot = pool_get(t, n);
	if (!h.slot)
		return -1;
	h.end = h.slot + n * PAGE_SIZE;
	copy_main(&h);
	return copy_done(&c[0]);
}

/* A range arm_task() left to copy while frozen: neither protected nor copied at collection */
static bool copied_frozen(const struct snap_range *r)
{
	return !r->wp && !r->frozen;
}

/*
 * The ranges copied while frozen, in two halves: the second by a thread of
 * its own.  Reading another task's pages goes faster on two cores (1 GiB
 * rewritten since the last pass, here: frozen 0.60-0.71 s, against
 * 0.81-0.88 s on one).
 */
static int copy_ranges(struct snap_task *t)
{
	struct snap_half h[2] = {};
	struct snap_copy *c;
	unsigned long total = 0, half, seen = 0, got[2] = {};
	unsigned int i, nr = 0, n = 0, split = 0;
	char *pool;
	pthread_t th;
	bool threaded;
	int ret = 0;

	for (i = 0; i < t->nr; i++) {
		if (!copied_frozen(&t->r[i]))
			continue;
		total += (t->r[i].end - t->r[i].start) / PAGE_SIZE;
		nr++;
	}
	if (!nr)
		return 0;
	/* One more entry for a range cut in two, and an end for each half */
	c = xzalloc(sizeof(*c) * (nr + 3));
	if (!c)
		return -1;
	half = total >= SNAP_COPY_SPLIT ? total / 2 : total;
	for (i = 0; i < t->nr; i++) {
		struct snap_range *r = &t->r[i];
		unsigned long pages = (r->end - r->start) / PAGE_SIZE, cut = 0;

		if (!copied_frozen(r))
			continue;
		if (!split && seen + pages > half) {
			cut = half - seen;
			if (cut) {
				c[n++] = (struct snap_copy){ .t = t, .r = r, .to = cut };
				got[0] += range_to_copy(t, r, 0, cut);
			}
			split = ++n; /* the first half's end */
		}
		if (cut < pages) {
			c[n++] = (struct snap_copy){ .t = t, .r = r, .from = cut, .to = pages };
			got[!!split] += range_to_copy(t, r, cut, pages);
		}
		seen += pages;
	}
	if (!got[0] && !got[1])
		goto out;
	/* The tree is frozen: no fault saves a page before the copy, so each half uses its got[] pages at most */
	pool = pool_reserved(t, got[0] + got[1]) ?: pool_get(t, got[0] + got[1]);
	if (!pool) {
		ret = -1;
		goto out;
	}
	h[0] = (struct snap_half){ .c = c, .slot = pool, .end = pool + got[0] * PAGE_SIZE };
	h[1] = (struct snap_half){ .c = &c[split], .slot = h[0].end, .end = h[0].end + got[1] * PAGE_SIZE };

	threaded = split && pthread_create_nosig(&th, copy_main, &h[1]) == 0;
	copy_main(&h[0]);
	if (!threaded && split)
		copy_main(&h[1]);
	if (threaded)
		pthread_join(th, NULL);
	for (i = 0; i < n; i++)
		if (c[i].r && copy_done(&c[i]))
			ret = -1;
out:
	xfree(c);
	return ret;
}

/* Pages saved at a fault before the pagemap was known go to their place */
static void merge_early(struct snap_task *t)
{
	while (t->early) {
		struct snap_early *e = t->early;
		long i = page_index(t, e->addr);

		t->early = e->next;
		if (i >= 0 && t->state[i] == PG_PROTECTED) {
			t->copy[i] = e->page;
			t->state[i] = PG_COPIED;
			nr_fault_copies++;
		} else {
			xfree(e->page); /* not a page to dump */
		}
		xfree(e);
	}
}

/* Pages of [start, end) to dump */
static unsigned long vma_pages_to_dump(struct snap_task *t, unsigned long start, unsigned long end)
{
	unsigned long n = 0;
	unsigned int i;

	for (i = 0; i < t->nr; i++)
		if (t->r[i].start >= start && t->r[i].end <= end)
			n += (t->r[i].end - t->r[i].start) / PAGE_SIZE;
	return n;
}

/*
 * In a chain, memory tracking's userfaultfd (asynchronous) has the VMAs it
 * tracks, so the armer could not register them.  Their marks of this pass
 * read (the pagemap is collected), tracking lends them: they are
 * protected as any other, and tracking takes them back once written
 * (hand_back()).  That costs the tasks three walks of the VMA's page
 * tables while stopped (the two unregistrations clear every mark, and
 * the protection), about 0.35 us a page here, and a second stop, where
 * copying a page while frozen costs about 1 us (copy_ranges(), into
 * memory populated before the freeze): so a VMA is lent only if a third
 * of it or more is to dump (written since the last pass), and else its
 * pages to dump are copied while frozen.  For 1 GiB at 24-27 % to dump,
 * the copy froze the task 98-114 ms (one 174), the lend 144-196.  A VMA
 * with at most an eighth of it left unwritten is not lent either: tracking
 * gave it up before the freeze (mem_snap_prepare()), it is not busy.
 */
static void lend_tracked(struct snap_task *t)
{
	unsigned int i;

	for (i = 0; i < t->nr_vmas; i++) {
		struct snap_vma *v = &t->vmas[i];
		unsigned long dump;

		if (v->why != why_busy)
			continue;
		dump = vma_pages_to_dump(t, v->start, v->end);
		if (dump * SNAP_LEND_SHARE < (v->end - v->start) / PAGE_SIZE) {
			pr_info("%d: VMA %lx-%lx: %lu pages written since the last pass: copied while frozen\n", t->pid,
				v->start, v->end, dump);
			continue;
		}
		if (mem_track_lend(t->pid, v->start, v->end))
			continue;
		if (uffd_register_wp(t->uffd, v->start, v->end)) {
			/* Registered with none: tracking registers it again in this pass */
			pr_info("%d: VMA %lx-%lx lent by memory tracking can't be registered: %d\n", t->pid, v->start,
				v->end, errno);
			continue;
		}
		pthread_mutex_lock(&snap_lock);
		v->why = NULL;
		pthread_mutex_unlock(&snap_lock);
		pr_debug("%d: VMA %lx-%lx lent by memory tracking\n", t->pid, v->start, v->end);
	}
}

/*
 * The main thread, its pagemap collected: it protects the task's VMAs from
 * the bottom up while the armer does from the top, and waits for the armer
 * to be done with the task before the parasite's cure: the cure's munmap
 * waits for the mm, which the armer's protections would hold for
 * milliseconds (rwsem readers steal the lock from a waiting writer).
 */
static void arm_help(struct snap_task *t)
{
	unsigned int i;

	pthread_mutex_lock(&snap_lock);
	while (!t->registered)
		pthread_cond_wait(&snap_armed, &snap_lock);
	pthread_mutex_unlock(&snap_lock);
	lend_tracked(t);
	for (i = 0; i < t->nr_vmas; i++)
		while (arm_step(t, &t->vmas[i], false))
			;
	pthread_mutex_lock(&snap_lock);
	while (!t->armed)
		pthread_cond_wait(&snap_armed, &snap_lock);
	pthread_mutex_unlock(&snap_lock);
}

int mem_snap_task_protect(struct pstree_item *item, struct vm_area_list *vmas, struct page_pipe *pp,
			  struct page_xfer *xfer)
{
	struct snap_task *t = cur;
	struct vma_area *vma;
	unsigned char *state;
	void **copy;
	unsigned int i;

	BUG_ON(!t || t->pid != item->pid->real);
	cur = NULL;

	/* On failure t stays listed (the armer may be at it) until mem_snap_fini() */
	if (pp->free_hole) {
		/* Only parent holes: written with the pages, in address order */
		t->holes = xmemdup(pp->holes, sizeof(*pp->holes) * pp->free_hole);
		if (!t->holes)
			return -1;
		t->nr_holes = pp->free_hole;
	}
	/* The armer reads the ranges only once state is set */
	if (collect_ranges(t, vmas, pp))
		return -1;
	state = xzalloc(t->nr_pages ?: 1);
	copy = xzalloc(sizeof(void *) * (t->nr_pages ?: 1));
	if (!state || !copy) {
		xfree(state);
		xfree(copy);
		return -1;
	}
	pthread_mutex_lock(&snap_lock);
	t->state = state;
	t->copy = copy;
	merge_early(t);
	pthread_mutex_unlock(&snap_lock);

	/*
	 * Copied now what won't be readable once the parasite has put the
	 * VMAs' protections back (the armer never registers those VMAs, so
	 * their pages are the main thread's alone).
	 */
	vma = list_first_entry(&vmas->h, struct vma_area, list);
	for (i = 0; i < t->nr; i++) {
		struct snap_range *r = &t->r[i];
		const char *why;

		vma = range_vma(vmas, vma, r);
		why = vma_unprotectable(vma);
		if (!why)
			continue;
		if (!i || r->vma_start != r[-1].vma_start)
			pr_info("%d: VMA %lx-%lx copied while frozen: %s\n", t->pid, r->vma_start, r->vma_end, why);
		r->frozen = true;
		if (copy_frozen(t, r))
			return -1;
	}

	/* Written through other mappings too: shmem.c and memfd.c dump it, frozen */
	list_for_each_entry(vma, &vmas->h, list) {
		const char *kind = NULL;

		if (!(vma->e->flags & MAP_SHARED))
			continue;
		if (vma_area_is(vma, VMA_AREA_SYSVIPC))
			kind = "SysV shared memory";
		else if (vma_area_is(vma, VMA_AREA_MEMFD))
			kind = "memfd (or anonymous) shared memory";
		else if (vma_area_is(vma, VMA_ANON_SHARED))
			kind = "anonymous shared memory";
		if (kind)
			pr_info("%d: VMA %lx-%lx is %s: dumped while the tree is frozen\n", t->pid,
				(unsigned long)vma->e->start, (unsigned long)vma->e->end, kind);
	}

	arm_help(t);
	pr_info("%d: %lu pages to write once the tree runs\n", t->pid, t->nr_pages);
	t->vpid = vpid(item);
	t->xfer = *xfer;
	t->xfer_open = xfer->close != NULL;
	return 0;
}

/* The armer's: protect, reading the events that make the kernel refuse (EAGAIN) */
static int wp_range(struct snap_task *t, unsigned long start, unsigned long end)
{
	struct uffdio_writeprotect wp = {
		.range = { .start = start, .len = end - start },
		.mode = UFFDIO_WRITEPROTECT_MODE_WP,
	};
	int tries = 0;

	while (ioctl(t->uffd, UFFDIO_WRITEPROTECT, &wp)) {
		if (errno != EAGAIN || ++tries > 8)
			return -1;
		pthread_mutex_lock(&snap_lock);
		serve_task(t, 0);
		pthread_mutex_unlock(&snap_lock);
	}
	return 0;
}

/* Protected at once: the walks of criu's main thread go between two */
#define SNAP_ARM_STEP (8UL << 20)

/*
 * Protect the next step of a registered VMA: the armer's from the top, the
 * main thread's (once it has nothing else to do) from the bottom; false
 * when none is left.  Their page table walks meet once instead of going in
 * step over the same page tables.
 */
static bool arm_step(struct snap_task *t, struct snap_vma *v, bool top)
{
	unsigned long start, end;
	int ret;

	pthread_mutex_lock(&snap_lock);
	if (v->why || v->lo >= v->hi) {
		pthread_mutex_unlock(&snap_lock);
		return false;
	}
	/* Steps end on block bounds: a huge page is protected whole (snap_block) */
	if (top) {
		end = v->hi;
		start = end - v->lo > SNAP_ARM_STEP ? max((end - SNAP_ARM_STEP) & ~(snap_block - 1), v->lo) : v->lo;
		v->hi = start;
	} else {
		start = v->lo;
		end = v->hi - start > SNAP_ARM_STEP ? min((start + SNAP_ARM_STEP) & ~(snap_block - 1), v->hi) : v->hi;
		v->lo = end;
	}
	pthread_mutex_unlock(&snap_lock);

	ret = wp_range(t, start, end);
	pthread_mutex_lock(&snap_lock);
	if (ret)
		v->why = "the kernel won't write-protect it";
	/* A writer (the parasite's rseq) waits a step at most */
	serve_task(t, 0);
	pthread_mutex_unlock(&snap_lock);
	return true;
}

/*
 * The armer's: register and protect a task's VMAs; it can't log, so it
 * notes why not.  It protects from the top down, while the main thread
 * reads the pagemap from the bottom up.
 */
static void arm_vmas(struct snap_task *t)
{
	unsigned int i;

	for (i = 0; i < t->nr_vmas; i++) {
		struct snap_vma *v = &t->vmas[i];

		if (uffd_register_wp(t->uffd, v->start, v->end))
			v->why = errno == EBUSY ? why_busy : "the kernel won't register it";
	}
	pthread_mutex_lock(&snap_lock);
	t->registered = true;
	pthread_cond_broadcast(&snap_armed);
	pthread_mutex_unlock(&snap_lock);
	for (i = t->nr_vmas; i-- > 0;)
		while (arm_step(t, &t->vmas[i], true))
			;
}

/*
 * The armer: protects each task as it comes, then serves its faults until
 * mem_snap_arm(), while the main thread goes on with the frozen tree.
 */
static void *armer_main(void *arg)
{
	struct pollfd *pfd = NULL;
	struct snap_task **pt = NULL;
	unsigned int cap = 0;

	pthread_mutex_lock(&snap_lock);
	for (;;) {
		struct snap_task *t, *todo = NULL;
		unsigned int n = 0, i;

		list_for_each_entry(t, &snap_tasks, l) {
			if (!t->armed) {
				todo = t;
				break;
			}
			n++;
		}
		if (todo) {
			pthread_mutex_unlock(&snap_lock);
			arm_vmas(todo);
			pthread_mutex_lock(&snap_lock);
			todo->armed = true;
			pthread_cond_broadcast(&snap_armed);
			continue;
		}
		if (armer.stop)
			break;

		if (n + 1 > cap) {
			void *p1 = realloc(pfd, sizeof(*pfd) * (n + 1));
			void *p2 = p1 ? realloc(pt, sizeof(*pt) * (n + 1)) : NULL;

			if (p1)
				pfd = p1;
			if (p2)
				pt = p2;
			if (!p1 || !p2) {
				/* Never leave a writer waiting: read every task now and then */
				snap_fail("out of memory while serving write faults");
				pthread_mutex_unlock(&snap_lock);
				poll(NULL, 0, 1);
				pthread_mutex_lock(&snap_lock);
				list_for_each_entry(t, &snap_tasks, l)
					serve_task(t, 0);
				continue;
			}
			cap = n + 1;
		}
		pfd[0].fd = armer.evfd;
		pfd[0].events = POLLIN;
		n = 0;
		list_for_each_entry(t, &snap_tasks, l) {
			pt[n] = t;
			pfd[n + 1].fd = t->uffd;
			pfd[n + 1].events = POLLIN;
			n++;
		}
		pthread_mutex_unlock(&snap_lock);

		if (poll(pfd, n + 1, -1) < 0 && errno != EINTR)
			snap_fail("can't wait for write faults: %s", strerror(errno));

		pthread_mutex_lock(&snap_lock);
		if (pfd[0].revents) {
			eventfd_t v;

			eventfd_read(armer.evfd, &v);
		}
		for (i = 0; i < n; i++)
			if (pfd[i + 1].revents)
				serve_task(pt[i], 0);
	}
	pthread_mutex_unlock(&snap_lock);
	free(pfd);
	free(pt);
	return NULL;
}

/* The tree still frozen, the parasites gone: what the armer couldn't protect is copied */
static int arm_task(struct snap_task *t)
{
	const char *why = NULL;
	bool keep = false;
	unsigned int i, v = 0;

	for (i = 0; i < t->nr; i++) {
		struct snap_range *r = &t->r[i];
		bool first = !i || r->vma_start != r[-1].vma_start;

		if (r->frozen)
			continue; /* copied at collection */
		if (first) {
			while (v < t->nr_vmas && t->vmas[v].end <= r->start)
				v++;
			if (v == t->nr_vmas || t->vmas[v].start > r->start)
				why = "not a private mapping criu protects";
			else
				why = t->vmas[v].why;
			keep = !why && t->vmas[v].hand_back;
			if (why)
				pr_info("%d: VMA %lx-%lx copied while frozen: %s\n", t->pid, r->vma_start, r->vma_end,
					why);
		}
		if (!why) {
			r->wp = true;
			r->keep = keep;
		}
	}
	return copy_ranges(t);
}

void mem_snap_tasks_dumped(void)
{
	armer_join();
}

int mem_snap_arm(void)
{
	struct snap_task *t;

	armer_join();
	/* A page the armer could not save before it was written */
	if (failed[0]) {
		pr_err("The copy-on-write dump failed: %s\n", failed);
		return -1;
	}
	list_for_each_entry(t, &snap_tasks, l) {
		unsigned int i;

		for (i = 0; i < t->nr_vmas; i++)
			pr_debug("%d: VMA %lx-%lx: %s\n", t->pid, t->vmas[i].start, t->vmas[i].end,
				 t->vmas[i].why ?: "protected while the tree was frozen");
		if (arm_task(t))
			return -1;
	}
	return 0;
}

bool mem_snap_pending(void)
{
	return !list_empty(&snap_tasks);
}

static long page_index(struct snap_task *t, unsigned long addr)
{
	unsigned int lo = 0, hi = t->nr;

	while (lo < hi) {
		unsigned int mid = (lo + hi) / 2;
		struct snap_range *r = &t->r[mid];

		if (addr < r->start)
			hi = mid;
		else if (addr >= r->end)
			lo = mid + 1;
		else
			return r->first + (addr - r->start) / PAGE_SIZE;
	}
	return -1;
}

static bool any_protected(struct snap_task *t, unsigned long start, unsigned long end)
{
	unsigned int lo = 0, hi = t->nr, i;

	/* The first range that ends above start: the writer asks for each chunk */
	while (lo < hi) {
		unsigned int mid = (lo + hi) / 2;

		if (t->r[mid].end <= start)
			lo = mid + 1;
		else
			hi = mid;
	}
	for (i = lo; i < t->nr && t->r[i].start < end; i++) {
		struct snap_range *r = &t->r[i];
		unsigned long s, e, p;

		s = max(start, r->start);
		e = min(end, r->end);
		for (p = s; p < e; p += PAGE_SIZE)
			if (t->state[r->first + (p - r->start) / PAGE_SIZE] == PG_PROTECTED)
				return true;
	}
	return false;
}

/* Unprotect and wake; events not yet read make the kernel refuse (EAGAIN) */
static void unprotect(struct snap_task *t, unsigned long addr, unsigned long len, int depth)
{
	struct uffdio_writeprotect wp = { .range = { .start = addr, .len = len }, .mode = 0 };

	while (ioctl(t->uffd, UFFDIO_WRITEPROTECT, &wp)) {
		if (errno == EAGAIN && depth < 8) {
			if (serve_task(t, depth + 1))
				return;
			continue;
		}
		if (errno == ESRCH)
			snap_lose("task %d exited or called exec before its pages were saved", t->pid);
		else if (errno != ENOENT)
			snap_fail("can't unprotect %lx-%lx of task %d: %s", addr, addr + len, t->pid, strerror(errno));
		return;
	}
}

/*
 * The armer's, at a fault before the task's pagemap is known: the page is
 * kept until it is.  Only the first copy counts: the armer may protect a
 * page again after a fault (a retried protection of its VMA).
 */
static void save_early(struct snap_task *t, unsigned long addr)
{
	struct snap_early *e;

	for (e = t->early; e; e = e->next)
		if (e->addr == addr)
			return;
	e = xzalloc(sizeof(*e));
	if (e)
		e->page = xmalloc(PAGE_SIZE);
	if (!e || !e->page || read_page(t->pid, addr, e->page, PAGE_SIZE)) {
		snap_fail("can't save page %lx of task %d before it is written", addr, t->pid);
		if (e)
			xfree(e->page);
		xfree(e);
		return;
	}
	e->addr = addr;
	e->next = t->early;
	t->early = e;
}

/* Where addr's page is unprotected: its snap_block, within its VMA */
static void block_of(struct snap_task *t, unsigned long addr, unsigned long *start, unsigned long *end)
{
	unsigned int i;

	*start = addr;
	*end = addr + PAGE_SIZE;
	if (snap_block == PAGE_SIZE)
		return;
	for (i = 0; i < t->nr_vmas; i++) {
		struct snap_vma *v = &t->vmas[i];

		if (addr >= v->start && addr < v->end) {
			*start = max(addr & ~(snap_block - 1), v->start);
			*end = min((addr & ~(snap_block - 1)) + snap_block, v->end);
			return;
		}
	}
}

/* Still as at the freeze: the writer waits until we unprotect it */
static bool save_page(struct snap_task *t, unsigned long addr)
{
	long i = page_index(t, addr);

	if (i < 0 || t->state[i] != PG_PROTECTED)
		return true;
	t->copy[i] = xmalloc(PAGE_SIZE);
	if (!t->copy[i] || read_page(t->pid, addr, t->copy[i], PAGE_SIZE)) {
		snap_fail("can't save page %lx of task %d before it is written", addr, t->pid);
		return false;
	}
	t->state[i] = PG_COPIED;
	nr_fault_copies++;
	return true;
}

static void on_fault(struct snap_task *t, unsigned long addr, int depth)
{
	unsigned long start, end, a;

	block_of(t, addr & ~(PAGE_SIZE - 1), &start, &end);
	for (a = start; a < end && !failed[0]; a += PAGE_SIZE) {
		if (!t->state)
			save_early(t, a);
		else if (!save_page(t, a))
			break; /* the dump fails; the writer goes on */
	}
	unprotect(t, start, end - start, depth);
}

/* Read what the task's userfaultfd has: write faults, and mapping changes */
static int serve_task(struct snap_task *t, int depth)
{
	struct uffd_msg msg[16];
	ssize_t n;
	int i;

	if (t->uffd < 0)
		return 0;
	for (;;) {
		n = read(t->uffd, msg, sizeof(msg));
		if (n < 0) {
			if (errno == EAGAIN)
				return 0;
			if (errno == EINTR)
				continue;
			snap_fail("can't read the userfaultfd of task %d: %s", t->pid, strerror(errno));
			return -1;
		}
		for (i = 0; i < n / (ssize_t)sizeof(msg[0]); i++) {
			struct uffd_msg *m = &msg[i];

			switch (m->event) {
			case UFFD_EVENT_PAGEFAULT:
				on_fault(t, m->arg.pagefault.address, depth);
				break;
			case UFFD_EVENT_REMOVE:
			case UFFD_EVENT_UNMAP:
				if (any_protected(t, m->arg.remove.start, m->arg.remove.end))
					snap_lose("task %d unmapped or dropped memory at %llx-%llx before it was saved",
						  t->pid, (unsigned long long)m->arg.remove.start,
						  (unsigned long long)m->arg.remove.end);
				break;
			case UFFD_EVENT_REMAP:
				if (any_protected(t, m->arg.remap.from, m->arg.remap.from + m->arg.remap.len))
					snap_lose("task %d moved memory at %llx (mremap) before it was saved", t->pid,
						  (unsigned long long)m->arg.remap.from);
				break;
			}
		}
	}
}

static void serve_all(void)
{
	struct snap_task *t;

	list_for_each_entry(t, &snap_tasks, l)
		serve_task(t, 0);
}

static int write_chunk(struct page_xfer *xfer, int p[2], unsigned long addr, void *buf, unsigned long len)
{
	struct iovec iov = { .iov_base = (void *)addr, .iov_len = len };
	unsigned long off = 0;

	if (xfer->write_pagemap(xfer, &iov, PE_PRESENT))
		return -1;
	while (off < len) {
		ssize_t n = write(p[1], buf + off, len - off);

		if (n < 0) {
			pr_perror("Can't fill the page pipe");
			return -1;
		}
		off += n;
	}
	return xfer->write_pages(xfer, p[0], len);
}

/* The parent holes below limit (all with 0), as page_xfer_dump_pages() writes them */
static int write_holes(struct snap_task *t, unsigned int *h, unsigned long limit)
{
	for (; *h < t->nr_holes; (*h)++) {
		struct iovec hole = t->holes[*h];

		if (limit && (unsigned long)hole.iov_base >= limit)
			break;
		if (t->xfer.write_pagemap(&t->xfer, &hole, PE_PARENT))
			return -1;
	}
	return 0;
}

bool mem_snap_hand_back(pid_t pid, unsigned long start, unsigned long end)
{
	struct snap_task *t;
	bool ret = false;
	unsigned int i;

	pthread_mutex_lock(&snap_lock);
	list_for_each_entry(t, &snap_tasks, l) {
		if (t->pid != pid)
			continue;
		for (i = 0; i < t->nr_vmas; i++) {
			struct snap_vma *v = &t->vmas[i];

			if (v->start == start && v->end == end && !v->why)
				ret = v->hand_back = true;
		}
	}
	pthread_mutex_unlock(&snap_lock);
	return ret;
}

/* A task's threads, stopped for tracking to take its VMAs back */
struct snap_stop {
	pid_t *tid;
	int *sig; /* a signal it stopped for, given back with the detach */
	unsigned int nr;
};

static bool stop_has(const struct snap_stop *s, pid_t tid)
{
	unsigned int i;

	for (i = 0; i < s->nr; i++)
		if (s->tid[i] == tid)
			return true;
	return false;
}

/* Seize and interrupt every thread, those they start meanwhile too */
static int stop_seize(pid_t pid, struct snap_stop *s)
{
	bool more = true;

	while (more) {
		struct dirent *de;
		DIR *d;

		more = false;
		d = opendir_proc(pid, "task");
		if (!d)
			return -1;
		while ((de = readdir(d))) {
			pid_t tid = atoi(de->d_name);

			if (tid <= 0 || stop_has(s, tid))
				continue;
			if (s->nr % 16 == 0 && (xrealloc_safe(&s->tid, (s->nr + 16) * sizeof(*s->tid)) ||
						xrealloc_safe(&s->sig, (s->nr + 16) * sizeof(*s->sig)))) {
				closedir(d);
				return -1;
			}
			if (compel_interrupt_task(tid)) {
				if (errno == ESRCH)
					continue; /* gone */
				pr_err("%d: can't stop thread %d\n", pid, tid);
				closedir(d);
				return -1;
			}
			s->tid[s->nr] = tid;
			s->sig[s->nr++] = 0;
			more = true;
		}
		closedir(d);
	}
	return 0;
}

/* Serve the tasks' write faults, waiting for one at most ms */
static void serve_wait(int ms)
{
	struct pollfd pfd[64];
	struct snap_task *t;
	int n = 0;

	list_for_each_entry(t, &snap_tasks, l)
		if (t->uffd >= 0 && n < ARRAY_SIZE(pfd))
			pfd[n++] = (struct pollfd){ .fd = t->uffd, .events = POLLIN };
	poll(pfd, n, ms);
	serve_all();
}

/*
 * Stopped as criu's seize stops them, for a moment: the task sees no
 * signal, and one that comes meanwhile is given back.  Until they are,
 * the write faults of every task are served: a thread may wait for a
 * lock (a pipe's) that one blocked on a fault holds, and a thread stopped
 * in a fault inside a syscall goes on faulting until it is served.
 */
static int stop_threads(pid_t pid, struct snap_stop *s)
{
	unsigned int i, left;
	bool *stopped;
	int ret = -1;

	if (stop_seize(pid, s))
		return -1;
	stopped = xzalloc(sizeof(*stopped) * (s->nr ?: 1));
	if (!stopped)
		return -1;
	for (left = s->nr; left;) {
		for (i = 0; i < s->nr; i++) {
			pid_t got;
			int st;

			if (stopped[i])
				continue;
			got = waitpid(s->tid[i], &st, __WALL | WNOHANG);
			if (got < 0) {
				pr_perror("%d: can't wait for thread %d to stop", pid, s->tid[i]);
				goto out;
			}
			if (!got)
				continue;
			stopped[i] = true;
			left--;
			if (!WIFSTOPPED(st))
				s->tid[i] = 0; /* it exited */
			else if (st >> 16 != PTRACE_EVENT_STOP)
				s->sig[i] = WSTOPSIG(st);
		}
		if (left)
			serve_wait(1);
	}
	ret = 0;
out:
	xfree(stopped);
	return ret;
}

static void resume_threads(struct snap_stop *s)
{
	unsigned int i;

	for (i = 0; i < s->nr; i++)
		if (s->tid[i] && ptrace(PTRACE_DETACH, s->tid[i], NULL, s->sig[i]) && errno != ESRCH)
			pr_perror("Can't resume thread %d", s->tid[i]);
	xfree(s->tid);
	xfree(s->sig);
}

/*
 * The pages of [start, end) written since the freeze: those with no
 * write-protect bit left (present or swapped), since criu unprotects only
 * at a write fault what tracking takes back.  A page first populated
 * since (no bit to keep) counts as written too.
 */
static long scan_written(int pm, unsigned long start, unsigned long end, struct page_region **vec)
{
	unsigned long nr = 0, cap = 0;
	u64 walk = start;

	while (walk < end) {
		struct pm_scan_arg a = {
			.size = sizeof(a),
			.start = walk,
			.end = end,
			.category_mask = PAGE_IS_WRITTEN,
			.category_anyof_mask = PAGE_IS_PRESENT | PAGE_IS_SWAPPED,
			.return_mask = PAGE_IS_WRITTEN,
		};
		long n;

		if (nr == cap && xrealloc_safe(vec, (cap += 512) * sizeof(**vec)))
			return -1;
		a.vec = (u64)(unsigned long)(*vec + nr);
		a.vec_len = cap - nr;
		n = ioctl(pm, PAGEMAP_SCAN, &a);
		if (n < 0)
			return -1;
		nr += n;
		walk = a.walk_end;
	}
	return nr;
}

/*
 * Memory tracking takes back its VMAs (those it lent, and those new in
 * this pass, which the snapshot registered first) once they are written.
 * The task is stopped, as criu's seize stops it: between the snapshot's
 * userfaultfd leaving a VMA and tracking protecting it nothing may write.
 * For the copy-on-write dump that is a second stop, of the task alone, a
 * walk of its page tables long; without it, the next pass of the chain
 * would dump these VMAs in full.
 */
static void hand_back(struct snap_task *t)
{
	struct snap_stop s = {};
	struct page_region *w = NULL;
	unsigned long written = 0;
	unsigned int i, want = 0, back = 0;
	struct timespec t0, t1;
	int pm = -1;

	for (i = 0; i < t->nr_vmas; i++)
		want += t->vmas[i].hand_back;
	if (!want)
		return;

	clock_gettime(CLOCK_MONOTONIC, &t0);
	timing_start(TIME_FROZEN);
	if (stop_threads(t->pid, &s))
		goto out;
	pm = open_proc(t->pid, "pagemap");
	if (pm < 0)
		goto out;
	for (i = 0; i < t->nr_vmas; i++) {
		struct snap_vma *v = &t->vmas[i];
		struct uffdio_range range = { .start = v->start, .len = v->end - v->start };
		unsigned long pages;
		long n, k;

		if (!v->hand_back)
			continue;
		n = scan_written(pm, v->start, v->end, &w);
		if (n < 0 || ioctl(t->uffd, UFFDIO_UNREGISTER, &range)) {
			pr_info("%d: VMA %lx-%lx stays with the snapshot: %d\n", t->pid, v->start, v->end, errno);
			continue;
		}
		if (mem_track_take_back(t->pid, pm, v->start, v->end, w, n)) {
			pr_info("%d: VMA %lx-%lx not taken back by memory tracking: %d\n", t->pid, v->start, v->end,
				errno);
			continue;
		}
		for (k = 0, pages = 0; k < n; k++)
			pages += (w[k].end - w[k].start) / PAGE_SIZE;
		pr_debug("%d: VMA %lx-%lx back to memory tracking: %lu pages written since the freeze\n", t->pid,
			 v->start, v->end, pages);
		written += pages;
		back++;
	}
out:
	close_safe(&pm);
	resume_threads(&s);
	timing_stop(TIME_FROZEN);
	clock_gettime(CLOCK_MONOTONIC, &t1);
	xfree(w);
	if (back < want)
		pr_warn("%d: %u VMAs of %u not tracked since the snapshot: the next pass dumps them in full\n", t->pid,
			want - back, want);
	pr_info("%d: %u VMAs back to memory tracking (%lu pages written since the freeze), the task stopped %ld us\n",
		t->pid, back, written, (t1.tv_sec - t0.tv_sec) * 1000000 + (t1.tv_nsec - t0.tv_nsec) / 1000);
}

/* The writer's, once a chunk is taken: the blocks none of whose pages is still to save */
static void unprotect_taken(struct snap_task *t, struct snap_range *r, unsigned long start, unsigned long end)
{
	if (snap_block > PAGE_SIZE) {
		start = max(start & ~(snap_block - 1), r->vma_start);
		end = min(ALIGN(end, snap_block), r->vma_end);
		if (any_protected(t, start, end))
			return; /* the chunk that takes its last page unprotects it */
	}
	unprotect(t, start, end - start, 0);
}

static int write_task(struct snap_task *t, void *buf, int p[2], unsigned long chunk)
{
	struct page_xfer *xfer = &t->xfer;
	unsigned int i, h = 0;
	int ret = -1;

	if (!t->xfer_open) {
		if (open_page_xfer(xfer, CR_FD_PAGEMAP, t->vpid))
			return -1;
		xfer->transfer_lazy = true;
		t->xfer_open = true;
	}

	for (i = 0; i < t->nr; i++) {
		struct snap_range *r = &t->r[i];
		unsigned long addr, n, k, idx;

		for (addr = r->start; addr < r->end; addr += n * PAGE_SIZE) {
			bool need_read = false;

			/* The pages being written first */
			serve_all();
			if (failed[0])
				goto out;

			n = min(chunk, (r->end - addr) / PAGE_SIZE);
			idx = r->first + (addr - r->start) / PAGE_SIZE;
			for (k = 0; k < n; k++)
				if (t->state[idx + k] == PG_PROTECTED)
					need_read = true;

			/*
			 * Protected pages are as at the freeze: nobody else
			 * unprotects them.  Copied ones may have been written
			 * since: their copy replaces what was read.
			 */
			if (need_read) {
				int err = read_page(t->pid, addr, buf, n * PAGE_SIZE);

				if (err) {
					/* ESRCH: it exited */
					(err == -ESRCH ? snap_lose : snap_fail)("can't read %lx-%lx of task %d: %s", addr,
										addr + n * PAGE_SIZE, t->pid,
										strerror(-err));
					goto out;
				}
			}
			for (k = 0; k < n; k++) {
				if (t->state[idx + k] == PG_COPIED) {
					memcpy(buf + k * PAGE_SIZE, t->copy[idx + k], PAGE_SIZE);
					copy_drop(t, idx + k);
				}
				t->state[idx + k] = PG_TAKEN;
			}
			if (r->wp && need_read && !r->keep)
				unprotect_taken(t, r, addr, addr + n * PAGE_SIZE);
			if (failed[0])
				goto out;

			if (write_holes(t, &h, addr) || write_chunk(xfer, p, addr, buf, n * PAGE_SIZE))
				goto out;
			nr_written += n;
		}
	}
	if (write_holes(t, &h, 0))
		goto out;
	hand_back(t);
	ret = 0;
out:
	t->xfer_open = false;
	xfer->close(xfer);
	/* Nothing of it is protected any more: let the kernel forget it */
	close_safe(&t->uffd);
	return ret;
}

int mem_snap_write(void)
{
	unsigned long chunk = SNAP_CHUNK;
	struct snap_task *t;
	int p[2], ret = 0;
	void *buf;

	if (pipe(p)) {
		pr_perror("Can't make a pipe");
		return -1;
	}
	if (fcntl(p[1], F_SETPIPE_SZ, SNAP_CHUNK * PAGE_SIZE) < (int)(SNAP_CHUNK * PAGE_SIZE))
		chunk = 16; /* a pipe's default size */
	buf = xmalloc(chunk * PAGE_SIZE);
	if (!buf) {
		close(p[0]);
		close(p[1]);
		return -1;
	}

	pr_info("Writing the pages of the running tasks\n");
	list_for_each_entry(t, &snap_tasks, l) {
		ret = write_task(t, buf, p, chunk);
		if (ret)
			break;
	}
	if (failed[0])
		pr_err("The copy-on-write dump failed: %s\n", failed);
	else if (!ret) {
		pr_info("%lu pages written: %lu copied at a write fault, %lu copied while frozen\n", nr_written,
			nr_fault_copies, nr_frozen_copies);
		cnt_add(CNT_PAGES_COW_FAULT, nr_fault_copies);
		cnt_add(CNT_PAGES_COW_FROZEN, nr_frozen_copies);
	}

	xfree(buf);
	close(p[0]);
	close(p[1]);
	mem_snap_fini();
	return (ret || failed[0]) ? -1 : 0;
}

void mem_snap_fini(void)
{
	struct snap_task *t, *n;

	armer_join();
	list_for_each_entry_safe(t, n, &snap_tasks, l) {
		list_del(&t->l);
		snap_free(t);
	}
	cur = NULL; /* listed: freed above */
	reserve_drop();
}

/*
 * What the tasks do while their pages are written can lose a page criu has
 * not saved yet: munmap, mremap or MADV_DONTNEED of it (the kernel tells
 * criu once the page is gone), an exit or an exec.  So a copy-on-write
 * dump is done by a child of criu; if it loses a page, criu, its own state
 * untouched by the child, dumps the tree again, frozen, as without the
 * option, and the log says why.  Any other failure is the dump's.
 */
#define SNAP_EXIT_LOST 42

static void snap_free_names(char **names)
{
	char **p;

	for (p = names; p && *p; p++)
		xfree(*p);
	xfree(names);
}

/* The images directory, listed from its start (a dup shares the position with every other), or NULL */
static DIR *snap_open_dir(void)
{
	int dfd = dup(get_service_fd(IMG_FD_OFF));
	DIR *d;

	if (dfd < 0 || !(d = fdopendir(dfd))) {
		pr_perror("Can't list the images directory");
		if (dfd >= 0)
			close(dfd);
		return NULL;
	}
	rewinddir(d);
	return d;
}

static int snap_cmp_name(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

/* The names in the images directory, sorted (a NULL-terminated array), or NULL */
static char **snap_dir_names(void)
{
	DIR *d = snap_open_dir();
	struct dirent *de;
	char **names = NULL;
	size_t n = 0;

	if (!d)
		return NULL;
	while ((de = readdir(d))) {
		char **nn = xrealloc(names, (n + 2) * sizeof(*names));

		if (!nn)
			goto err;
		names = nn;
		names[n] = xstrdup(de->d_name);
		if (!names[n])
			goto err;
		names[++n] = NULL;
	}
	closedir(d);
	if (!names)
		names = xzalloc(sizeof(*names));
	else
		qsort(names, n, sizeof(*names), snap_cmp_name);
	return names;
err:
	closedir(d);
	snap_free_names(names);
	return NULL;
}

/*
 * The dump is done again into the directory as it was: the files the
 * copy-on-write attempt made go, or one it made that the frozen dump does
 * not (a task that exited meanwhile) would stay there, unreferenced.
 */
static int snap_dir_restore(char **before)
{
	DIR *d = snap_open_dir();
	struct dirent *de;
	size_t n = 0, gone = 0;

	if (!d)
		return -1;
	while (before[n])
		n++;
	while ((de = readdir(d))) {
		const char *name = de->d_name;
		struct stat st;

		if (bsearch(&name, before, n, sizeof(*before), snap_cmp_name))
			continue;
		if (de->d_type == DT_UNKNOWN && !fstatat(dirfd(d), name, &st, AT_SYMLINK_NOFOLLOW) &&
		    S_ISREG(st.st_mode))
			de->d_type = DT_REG;
		if (de->d_type != DT_REG)
			continue;
		if (unlinkat(dirfd(d), name, 0)) {
			pr_perror("Can't remove %s of the copy-on-write attempt", name);
			closedir(d);
			return -1;
		}
		gone++;
	}
	closedir(d);
	pr_info("Removed the %zu files of the copy-on-write attempt\n", gone);
	return 0;
}

bool mem_snap_try_dump(int (*dump)(pid_t), pid_t pid, int *ret)
{
	pid_t parent = getpid(), child;
	sigset_t chld, old;
	char **before;
	int status;

	if (snap_child || !snap_usable())
		return false;
	before = snap_dir_names();
	if (!before) {
		*ret = -1;
		return true;
	}

	/* The child is ours to reap, not a SIGCHLD handler's (criu service) */
	sigemptyset(&chld);
	sigaddset(&chld, SIGCHLD);
	sigprocmask(SIG_BLOCK, &chld, &old);
	child = fork();
	if (child < 0) {
		pr_perror("Can't fork for a copy-on-write dump");
		sigprocmask(SIG_SETMASK, &old, NULL);
		snap_free_names(before);
		*ret = -1;
		return true;
	}
	if (child == 0) {
		/* Killing criu kills its dump: nothing serves the faults any more, nobody waits */
		if (prctl(PR_SET_PDEATHSIG, SIGKILL) || getppid() != parent)
			_exit(1);
		sigprocmask(SIG_SETMASK, &old, NULL);
		snap_child = true;
		if (dump(pid) == 0)
			_exit(0);
		_exit(lost ? SNAP_EXIT_LOST : 1);
	}
	while (waitpid(child, &status, 0) < 0) {
		if (errno != EINTR) {
			pr_perror("Can't wait for the copy-on-write dump");
			sigprocmask(SIG_SETMASK, &old, NULL);
			snap_free_names(before);
			*ret = -1;
			return true;
		}
	}
	sigprocmask(SIG_SETMASK, &old, NULL);

	if (WIFEXITED(status) && WEXITSTATUS(status) == 0) {
		*ret = 0;
	} else if (WIFEXITED(status) && WEXITSTATUS(status) == SNAP_EXIT_LOST) {
		pr_warn("The tasks lost a page the copy-on-write dump had not saved: dumping again, frozen\n");
		opts.cow_dump = false;
		usable = 0;
		*ret = snap_dir_restore(before) ?: dump(pid);
	} else {
		if (WIFSIGNALED(status))
			pr_err("The copy-on-write dump was killed by signal %d\n", WTERMSIG(status));
		*ret = -1;
	}
	snap_free_names(before);
	return true;
}

/*
 * A pre-dump needs no snapshot of the memory at the freeze: what the tasks
 * write once they run is tracked, and dumped again by the next pass.  So
 * where a dump would be copy-on-write, a pre-dump reads its pages once the
 * tasks run (upstream's read mode), rather than splicing every page into
 * pipes while they are frozen; on kernels with soft-dirty, when asked for.
 */
void mem_snap_pre_dump_mode(void)
{
	if (opts.pre_dump_mode != PRE_DUMP_AUTO) {
		if (opts.pre_dump_mode == PRE_DUMP_SPLICE && opts.cow_dump > 0)
			pr_warn("the tasks stay frozen until their pages are in pipes: --pre-dump-mode=splice\n");
		return;
	}
	opts.pre_dump_mode = PRE_DUMP_SPLICE;
	/* On kernels with soft-dirty, upstream's default: what the VM's chains prove */
	if (!opts.cow_dump || (opts.cow_dump < 0 && kdat.has_dirty_track))
		return;
	opts.pre_dump_mode = PRE_DUMP_READ;
	pr_info("a pre-dump reads its pages once the tasks run (--pre-dump-mode=read): what they write meanwhile is "
		"tracked for the next pass\n");
}
