/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * memtrack STATUS MIB [closefds]: memory that changes shape between the
 * passes of a pre-dump chain, for memory tracking (issue 20).
 *
 * Region 0 (MIB MiB) is rewritten all the time, an eighth of it at a
 * time; three more 4 MiB regions wait for the steps.  Each page's content
 * follows from (region, page, generation), the generations kept in a table
 * of the process itself, so every byte is known: SIGUSR1 checks them all
 * and reports "memtrack OK STEP" or the first wrong page.  SIGUSR2 takes
 * the next step, between two passes:
 *   1: fork a child (which writes its own copy, and checks it on SIGUSR1
 *      into STATUS.child), map a new region, unmap one, MADV_DONTNEED part
 *      of region 0, mremap another to a new place;
 *   2: write the new region, write some of the dropped pages back, drop
 *      others, move the moved region again and grow it.
 * With "closefds" it closes every fd it has after each step and opens its
 * status file by name to write it: tracking must not need any fd of the
 * task's.  With "ownuffd" it registers region 2 with a userfaultfd of its
 * own (missing mode, never triggered: the region is populated) and keeps it.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <sys/ioctl.h>
#include <linux/userfaultfd.h>

#include "common.h"

#define PAGE	 4096
#define NREG	 5
#define SMALL_MB 4

struct region {
	char *addr;
	size_t pages;
	int32_t *gen; /* per page; -1: zero (dropped or never written) */
	int live;
};

static struct region reg[NREG];
static const char *status_path;
static int closefds, step;
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

static void page_fill(int r, size_t p, int32_t g)
{
	uint64_t *w = (uint64_t *)(reg[r].addr + p * PAGE);
	uint64_t s = mix(((uint64_t)r << 48) ^ ((uint64_t)p << 16) ^ (uint64_t)(uint32_t)g);

	for (size_t i = 0; i < PAGE / sizeof(*w); i++)
		w[i] = s = mix(s + i);
	reg[r].gen[p] = g;
}

static int page_ok(int r, size_t p)
{
	uint64_t *w = (uint64_t *)(reg[r].addr + p * PAGE);
	int32_t g = reg[r].gen[p];
	uint64_t s;

	if (g < 0) {
		for (size_t i = 0; i < PAGE / sizeof(*w); i++)
			if (w[i])
				return 0;
		return 1;
	}
	s = mix(((uint64_t)r << 48) ^ ((uint64_t)p << 16) ^ (uint64_t)(uint32_t)g);
	for (size_t i = 0; i < PAGE / sizeof(*w); i++)
		if (w[i] != (s = mix(s + i)))
			return 0;
	return 1;
}

static void new_region(int r, size_t pages, int32_t g)
{
	reg[r].addr = mmap(NULL, pages * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	reg[r].gen = calloc(pages, sizeof(int32_t));
	if (reg[r].addr == MAP_FAILED || !reg[r].gen)
		_exit(2);
	reg[r].pages = pages;
	reg[r].live = 1;
	for (size_t p = 0; p < pages; p++)
		page_fill(r, p, g);
}

static void put_status(const char *path, const char *fmt, ...)
{
	char buf[512];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(buf, sizeof(buf), fmt, ap);
	va_end(ap);
	if (closefds) {
		status_fd = open(path, O_RDWR | O_CREAT, 0600);
		if (status_fd < 0)
			_exit(3);
	}
	status("%s", buf);
	if (closefds) {
		close(status_fd);
		status_fd = -1;
	}
}

static void report(const char *path, const char *who)
{
	for (int r = 0; r < NREG; r++) {
		if (!reg[r].live)
			continue;
		for (size_t p = 0; p < reg[r].pages; p++)
			if (!page_ok(r, p)) {
				put_status(path, "%s BAD region %d page %zu", who, r, p);
				return;
			}
	}
	put_status(path, "%s OK %d", who, step);
}

static void close_all(void)
{
	syscall(SYS_close_range, 0, ~0U, 0);
	status_fd = -1;
}

static void do_step(void)
{
	size_t q = reg[0].pages / 4;
	char child_status[4096];
	char *to;

	step++;
	if (step == 1) {
		pid_t pid;

		snprintf(child_status, sizeof(child_status), "%s.child", status_path);
		pid = fork();
		if (pid == 0) {
			/* The child's copy: its own writes, checked on SIGUSR1 */
			for (size_t p = 0; p < reg[0].pages; p += 64)
				page_fill(0, p, 100);
			if (closefds)
				close_all();
			else
				status_fd = open(child_status, O_RDWR | O_CREAT | O_TRUNC, 0600);
			put_status(child_status, "child ready");
			for (;;) {
				wait_report();
				report(child_status, "child");
			}
		}
		new_region(3, SMALL_MB * 256, 1);
		munmap(reg[2].addr, reg[2].pages * PAGE);
		reg[2].live = 0;
		madvise(reg[0].addr + q * PAGE, 1024 * PAGE, MADV_DONTNEED);
		for (size_t p = q; p < q + 1024; p++)
			reg[0].gen[p] = -1;
		to = mmap(NULL, reg[1].pages * PAGE, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		reg[1].addr = mremap(reg[1].addr, reg[1].pages * PAGE, reg[1].pages * PAGE,
				     MREMAP_MAYMOVE | MREMAP_FIXED, to);
		if (reg[1].addr == MAP_FAILED)
			_exit(4);
	} else if (step == 2) {
		size_t grow = 256;

		for (size_t p = 0; p < reg[3].pages; p += 3)
			page_fill(3, p, 2);
		for (size_t p = q; p < q + 1024; p += 2)
			page_fill(0, p, 3);
		madvise(reg[0].addr + (q + 2048) * PAGE, 512 * PAGE, MADV_DONTNEED);
		for (size_t p = q + 2048; p < q + 2048 + 512; p++)
			reg[0].gen[p] = -1;
		to = mmap(NULL, (reg[1].pages + grow) * PAGE, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		reg[1].addr = mremap(reg[1].addr, reg[1].pages * PAGE, (reg[1].pages + grow) * PAGE,
				     MREMAP_MAYMOVE | MREMAP_FIXED, to);
		if (reg[1].addr == MAP_FAILED)
			_exit(4);
		reg[1].gen = realloc(reg[1].gen, (reg[1].pages + grow) * sizeof(int32_t));
		for (size_t p = reg[1].pages; p < reg[1].pages + grow; p++)
			reg[1].gen[p] = -1;
		reg[1].pages += grow;
		page_fill(1, reg[1].pages - 1, 4);
	}
	if (closefds)
		close_all();
	put_status(status_path, "stepped %d", step);
}

int main(int argc, char **argv)
{
	size_t mib, hot, cursor = 0;
	int32_t g = 1;

	if (argc < 4 || strcmp(argv[1], "memtrack"))
		return 1;
	status_path = argv[2];
	mib = atol(argv[3]);
	closefds = argc > 4 && !strcmp(argv[4], "closefds");
	status_fd = open(status_path, O_RDWR | O_CREAT | O_TRUNC, 0600);
	if (status_fd < 0)
		return 1;
	signal(SIGUSR1, on_usr1);
	signal(SIGUSR2, on_usr2);

	new_region(0, mib * 256, 0);
	new_region(1, SMALL_MB * 256, 0);
	new_region(2, SMALL_MB * 256, 0);
	hot = reg[0].pages / 8;
	if (argc > 4 && !strcmp(argv[4], "ownuffd")) {
		int uffd = syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK);
		struct uffdio_api api = { .api = UFFD_API };
		struct uffdio_register r = { .range = { (unsigned long)reg[2].addr, reg[2].pages * PAGE },
					     .mode = UFFDIO_REGISTER_MODE_MISSING };

		if (uffd < 0 || ioctl(uffd, UFFDIO_API, &api) || ioctl(uffd, UFFDIO_REGISTER, &r))
			return 5;
	}
	if (closefds)
		close_all();
	put_status(status_path, "ready %zu %zu", reg[0].pages, hot);

	for (;;) {
		/* Rewrite the hot eighth (past the dropped pages' quarter) a MiB at a time */
		for (size_t i = 0; i < 256; i++) {
			page_fill(0, reg[0].pages / 2 + cursor, g);
			if (++cursor == hot) {
				cursor = 0;
				g++;
			}
		}
		nap_ms(2);
		if (step_wanted) {
			step_wanted = 0;
			do_step();
		}
		if (report_wanted) {
			report_wanted = 0;
			report(status_path, "memtrack");
		}
	}
}
