/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * memshare STATUS: shared memory and a transparent huge page region in a
 * pre-dump chain, for memory tracking (issue 20).
 *
 * In an IPC namespace of its own (SysV shm needs one to be dumped), the
 * process maps, each SH_PAGES pages: shared anonymous memory, a memfd
 * (its fd kept open) and a SysV shm segment; and THP_MB MiB of private
 * memory advised MADV_HUGEPAGE.  It forks a child that shares the first
 * three.  Each page's content follows from (region, page, generation),
 * the generations in a table of the parent's, so every byte is known:
 * SIGUSR1 checks them all and reports "memshare OK STEP" or the first
 * wrong page.  SIGUSR2 takes the next step: the parent rewrites some
 * pages of each region, the child others of the shared ones (the parent
 * waits for it on a pipe), and from step 2 on the parent write()s pages
 * of the memfd through its fd, which no page table sees.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ipc.h>
#include <sys/mman.h>
#include <sys/shm.h>
#include <sys/syscall.h>

#include "common.h"

#define PAGE	  4096
#define SH_PAGES  1024
#define THP_MB	  16
#define HUGE_SIZE (2UL << 20)

enum { R_ANON, R_MEMFD, R_SYSV, R_THP, NREG };

struct region {
	char *addr;
	size_t pages;
	int32_t gen[THP_MB * 256];
};

static struct region reg[NREG];
static int step, memfd, done_pipe[2];
static pid_t child;
static volatile sig_atomic_t step_wanted;

static void on_usr2(int sig)
{
	(void)sig;
	step_wanted = 1;
}

static uint64_t mix(uint64_t x)
{
	x ^= x >> 31;
	x *= 0xbf58476d1ce4e5b9ULL;
	x ^= x >> 29;
	return x;
}

static void page_make(int r, size_t p, int32_t g, uint64_t *w)
{
	uint64_t s = mix(((uint64_t)r << 48) ^ ((uint64_t)p << 16) ^ (uint64_t)(uint32_t)g);

	for (size_t i = 0; i < PAGE / sizeof(*w); i++)
		w[i] = s = mix(s + i);
}

static void page_fill(int r, size_t p, int32_t g)
{
	page_make(r, p, g, (uint64_t *)(reg[r].addr + p * PAGE));
}

static int page_ok(int r, size_t p)
{
	uint64_t want[PAGE / sizeof(uint64_t)];

	page_make(r, p, reg[r].gen[p], want);
	return !memcmp(want, reg[r].addr + p * PAGE, PAGE);
}

/* Pages [from, from + n) of region r get generation g (the table is the parent's) */
static void rewrite(int r, size_t from, size_t n, int32_t g, int in_child)
{
	for (size_t p = from; p < from + n; p++) {
		page_fill(r, p, g);
		if (!in_child)
			reg[r].gen[p] = g;
	}
}

static void child_step(int s)
{
	for (int r = R_ANON; r <= R_SYSV; r++)
		rewrite(r, 64 * s, 32, 100 + s, 1);
}

static void parent_step(int s)
{
	char c;

	for (int r = R_ANON; r <= R_SYSV; r++)
		rewrite(r, 512 + 64 * s, 32, s, 0);
	/* Part of two huge pages: a head, and across the boundary of two others */
	rewrite(R_THP, 16 * s, 16, s, 0);
	rewrite(R_THP, 3 * 512 - 8 + 16 * s, 16, s, 0);

	kill(child, SIGUSR2);
	if (read(done_pipe[0], &c, 1) != 1)
		_exit(5);
	for (int r = R_ANON; r <= R_SYSV; r++)
		for (size_t p = 64 * s; p < 64 * s + 32; p++)
			reg[r].gen[p] = 100 + s;

	if (s >= 2) {
		/* write() to the memfd: no pte is involved */
		uint64_t w[PAGE / sizeof(uint64_t)];

		for (size_t p = 900; p < 904; p++) {
			page_make(R_MEMFD, p, 200 + s, w);
			if (pwrite(memfd, w, PAGE, p * PAGE) != PAGE)
				_exit(6);
			reg[R_MEMFD].gen[p] = 200 + s;
		}
	}
}

static void report(void)
{
	for (int r = 0; r < NREG; r++)
		for (size_t p = 0; p < reg[r].pages; p++)
			if (!page_ok(r, p)) {
				status("memshare BAD region %d page %zu", r, p);
				return;
			}
	status("memshare OK %d", step);
}

static void *map_thp(void)
{
	size_t len = THP_MB << 20;
	char *p = mmap(NULL, len + HUGE_SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

	if (p == MAP_FAILED)
		_exit(2);
	p = (char *)(((unsigned long)p + HUGE_SIZE - 1) & ~(HUGE_SIZE - 1));
	if (madvise(p, len, MADV_HUGEPAGE))
		_exit(2);
	return p;
}

int main(int argc, char **argv)
{
	int shmid;

	if (argc < 3)
		return 1;
	status_fd = open(argv[2], O_RDWR | O_CREAT | O_TRUNC, 0600);
	if (status_fd < 0 || unshare(CLONE_NEWIPC))
		return 2;
	signal(SIGUSR1, on_usr1);
	signal(SIGUSR2, on_usr2);

	reg[R_ANON].addr = mmap(NULL, SH_PAGES * PAGE, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	memfd = memfd_create("memshare", 0);
	if (memfd < 0 || ftruncate(memfd, SH_PAGES * PAGE))
		return 2;
	reg[R_MEMFD].addr = mmap(NULL, SH_PAGES * PAGE, PROT_READ | PROT_WRITE, MAP_SHARED, memfd, 0);
	shmid = shmget(IPC_PRIVATE, SH_PAGES * PAGE, IPC_CREAT | 0600);
	reg[R_SYSV].addr = shmid < 0 ? MAP_FAILED : shmat(shmid, NULL, 0);
	reg[R_THP].addr = map_thp();
	if (reg[R_ANON].addr == MAP_FAILED || reg[R_MEMFD].addr == MAP_FAILED || reg[R_SYSV].addr == (void *)-1)
		return 2;
	for (int r = 0; r < NREG; r++) {
		reg[r].pages = r == R_THP ? THP_MB * 256 : SH_PAGES;
		rewrite(r, 0, reg[r].pages, 0, 0);
	}

	if (pipe(done_pipe))
		return 2;
	child = fork();
	if (child < 0)
		return 2;
	if (child == 0) {
		int s = 0;

		close(status_fd);
		for (;;) {
			while (!step_wanted)
				nap_ms(20);
			step_wanted = 0;
			child_step(++s);
			if (write(done_pipe[1], "", 1) != 1)
				_exit(5);
		}
	}

	status("memshare ready %lx %zu %d", (unsigned long)reg[R_THP].addr, (size_t)THP_MB << 20, SH_PAGES);
	for (;;) {
		if (step_wanted) {
			step_wanted = 0;
			parent_step(++step);
			status("memshare stepped %d", step);
		}
		if (report_wanted) {
			report_wanted = 0;
			report();
		}
		nap_ms(20);
	}
}
