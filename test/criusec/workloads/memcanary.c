// SPDX-License-Identifier: GPL-2.0-only
/*
 * A workload for the page cipher's tests: a canary in each kind of memory
 * CRIU dumps as pages.  Each copy is "<CANARY>-<where>", written straight
 * into its region, so a scan can tell which path leaked.  On SIGUSR1 it
 * checks every region (canaries and the fill around them) and reports.
 *
 *   memcanary memcanary STATUS_FILE [BIG_MIB]   (the large area, default none)
 *   regions: heap stack shared memfd sysv big
 *
 *   memcanary hugecanary STATUS_FILE   (hugetlb memory, 2 MiB pages)
 *   regions: hugepriv (MAP_PRIVATE|MAP_ANONYMOUS|MAP_HUGETLB, two pages),
 *   hugeshared (MAP_SHARED|MAP_ANONYMOUS|MAP_HUGETLB), hugememfd (a
 *   memfd_create(MFD_HUGETLB) mapped MAP_SHARED), hugememfdpriv (a second
 *   one, filled through a shared map, then mapped MAP_PRIVATE and changed
 *   there: the file keeps its own canary, hugememfdfile, checked with
 *   pread(), and the private copy another).  The "ready"
 *   status lists each region as NAME=ADDRESS+LENGTH (hex).
 *
 * It runs in an IPC namespace of its own, so that criu dumps (and restore
 * brings back) its SysV shared memory.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ipc.h>
#include <sys/mman.h>
#include <sys/shm.h>
#include <unistd.h>

#define REGION (64 << 10)
#define HUGE (2 << 20)
#define MAX_REGIONS 8

#include "common.h"

static const char *canary;

struct region {
	const char *name;
	char *p;
	size_t len;
	uint64_t seed;
};

static struct region regions[MAX_REGIONS];
static int nr_regions;

/* Random fill, then the canary at the start, middle and end. */
static void plant(char *p, size_t len, const char *where, uint64_t seed)
{
	size_t i, offs[3] = { 0, len / 2, len - 256 };

	for (i = 0; i + 8 <= len; i += 8) {
		uint64_t r = next_rand(&seed);
		memcpy(p + i, &r, 8);
	}
	for (i = 0; i < 3; i++)
		snprintf(p + offs[i], 128, "%s-%s", canary, where);
}

static int check(const char *p, size_t len, const char *where, uint64_t seed)
{
	size_t i, offs[3] = { 0, len / 2, len - 256 };
	char want[128];

	snprintf(want, sizeof(want), "%s-%s", canary, where);
	for (i = 0; i < 3; i++)
		if (strcmp(p + offs[i], want))
			return -1;
	for (i = 0; i + 8 <= len; i += 8) {
		uint64_t r = next_rand(&seed);
		size_t k;
		int in_canary = 0;

		for (k = 0; k < 3; k++)
			if (i + 8 > offs[k] && i < offs[k] + 128)
				in_canary = 1;
		if (!in_canary && memcmp(p + i, &r, 8))
			return -1;
	}
	return 0;
}

static void add_region(const char *name, char *p, size_t len)
{
	struct region *r = &regions[nr_regions++];

	r->name = name;
	r->p = p;
	r->len = len;
	r->seed = nr_regions;
	plant(p, len, name, r->seed);
}

static int memory_regions(size_t big_len, char *stack)
{
	char *heap, *shared, *memfd_map, *sysv, *big;
	int memfd, shmid;

	heap = malloc(REGION);
	shared = mmap(NULL, REGION, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	memfd = memfd_create("memcanary", 0);
	if (!heap || shared == MAP_FAILED || memfd < 0 || ftruncate(memfd, REGION))
		return -1;
	memfd_map = mmap(NULL, REGION, PROT_READ | PROT_WRITE, MAP_SHARED, memfd, 0);
	if (getenv("NO_SYSV")) {
		/* Private stand-in: see the page server tests in test_pages.py. */
		sysv = malloc(REGION) ?: (void *)-1;
	} else {
		shmid = shmget(IPC_PRIVATE, REGION, IPC_CREAT | 0600);
		sysv = shmid < 0 ? (void *)-1 : shmat(shmid, NULL, 0);
	}
	if (memfd_map == MAP_FAILED || sysv == (void *)-1)
		return -1;
	add_region("heap", heap, REGION);
	add_region("stack", stack, REGION);
	add_region("shared", shared, REGION);
	add_region("memfd", memfd_map, REGION);
	add_region("sysv", sysv, REGION);
	if (big_len) {
		big = mmap(NULL, big_len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		if (big == MAP_FAILED)
			return -1;
		add_region("big", big, big_len);
	}
	return 0;
}

static char *huge_map(int flags, int fd, size_t len)
{
	char *p = mmap(NULL, len, PROT_READ | PROT_WRITE, flags, fd, 0);

	if (p == MAP_FAILED) {
		perror("mmap hugetlb");
		return NULL;
	}
	return p;
}

static int hugefile_fd = -1;
static char hugefile[HUGE];

/* The file under the MAP_PRIVATE map keeps its own canary */
static int check_hugefile(void)
{
	if (pread(hugefile_fd, hugefile, HUGE, 0) != HUGE)
		return -1;
	return check(hugefile, HUGE, "hugememfdfile", 100);
}

static int huge_regions(void)
{
	char *priv, *shared, *memfd_map, *memfd_priv;
	int memfd, memfd2;

	priv = huge_map(MAP_PRIVATE | MAP_ANONYMOUS | MAP_HUGETLB, -1, 2 * HUGE);
	shared = huge_map(MAP_SHARED | MAP_ANONYMOUS | MAP_HUGETLB, -1, HUGE);
	memfd = memfd_create("hugecanary", MFD_HUGETLB);
	memfd2 = memfd_create("hugecanary-priv", MFD_HUGETLB);
	if (!priv || !shared || memfd < 0 || memfd2 < 0 || ftruncate(memfd, HUGE) || ftruncate(memfd2, HUGE)) {
		perror("hugetlb memory");
		return -1;
	}
	memfd_map = huge_map(MAP_SHARED, memfd, HUGE);
	/* The file's own contents, written through a shared map (hugetlbfs has no write()) */
	memfd_priv = huge_map(MAP_SHARED, memfd2, HUGE);
	if (!memfd_map || !memfd_priv)
		return -1;
	plant(memfd_priv, HUGE, "hugememfdfile", 100);
	munmap(memfd_priv, HUGE);
	memfd_priv = huge_map(MAP_PRIVATE, memfd2, HUGE);
	hugefile_fd = memfd2;
	if (!memfd_priv || check(memfd_priv, HUGE, "hugememfdfile", 100) || check_hugefile())
		return -1;
	add_region("hugepriv", priv, 2 * HUGE);
	add_region("hugeshared", shared, HUGE);
	add_region("hugememfd", memfd_map, HUGE);
	add_region("hugememfdpriv", memfd_priv, HUGE);
	return 0;
}

int main(int argc, char **argv)
{
	size_t big_len = argc > 3 ? (size_t)atol(argv[3]) << 20 : 0;
	char stack[REGION], ready[512] = "ready";
	struct sigaction sa = { .sa_handler = on_usr1 };
	int i, huge;

	canary = getenv("CANARY");
	if (argc < 3)
		return 2;
	huge = !strcmp(argv[1], "hugecanary");
	status_fd = open(argv[2], O_RDWR | O_CREAT | O_TRUNC, 0600);
	if (!canary || status_fd < 0 || sigaction(SIGUSR1, &sa, NULL) || unshare(CLONE_NEWIPC))
		return 2;
	if (huge ? huge_regions() : memory_regions(big_len, stack))
		return 2;
	for (i = 0; i < nr_regions; i++) {
		size_t n = strlen(ready);

		snprintf(ready + n, sizeof(ready) - n, " %s=%lx+%zx", regions[i].name, (unsigned long)regions[i].p,
			 regions[i].len);
	}

	status("%s", ready);
	for (;;) {
		const char *bad = NULL;

		wait_report();
		for (i = 0; i < nr_regions && !bad; i++)
			if (check(regions[i].p, regions[i].len, regions[i].name, regions[i].seed))
				bad = regions[i].name;
		if (!bad && hugefile_fd >= 0 && check_hugefile())
			bad = "hugememfdfile";
		if (bad)
			status("%s BAD %s", argv[1], bad);
		else
			status("%s OK %zu", argv[1], big_len >> 20);
	}
}
