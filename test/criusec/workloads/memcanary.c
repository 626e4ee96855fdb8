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

static int status_fd = -1;
static unsigned long reports;
static volatile sig_atomic_t report_wanted;
static const char *canary;

static void on_usr1(int sig)
{
	(void)sig;
	report_wanted = 1;
}

static void status(const char *fmt, ...)
{
	char buf[512];
	va_list ap;
	int n;

	n = snprintf(buf, sizeof(buf), "#%lu ", reports++);
	va_start(ap, fmt);
	n += vsnprintf(buf + n, sizeof(buf) - n, fmt, ap);
	va_end(ap);
	if (ftruncate(status_fd, 0) || pwrite(status_fd, buf, n, 0) != n)
		_exit(3);
}

static uint64_t next_rand(uint64_t *s)
{
	*s ^= *s << 13;
	*s ^= *s >> 7;
	*s ^= *s << 17;
	return *s;
}

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

int main(int argc, char **argv)
{
	size_t big_len = argc > 3 ? (size_t)atol(argv[3]) << 20 : 0;
	char stack[REGION];
	char *heap, *shared, *memfd_map, *sysv, *big = NULL;
	struct sigaction sa = { .sa_handler = on_usr1 };
	int memfd, shmid;

	canary = getenv("CANARY");
	if (argc < 3)
		return 2;
	status_fd = open(argv[2], O_RDWR | O_CREAT | O_TRUNC, 0600);
	if (!canary || status_fd < 0 || sigaction(SIGUSR1, &sa, NULL) || unshare(CLONE_NEWIPC))
		return 2;

	heap = malloc(REGION);
	shared = mmap(NULL, REGION, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	memfd = memfd_create("memcanary", 0);
	if (!heap || shared == MAP_FAILED || memfd < 0 || ftruncate(memfd, REGION))
		return 2;
	memfd_map = mmap(NULL, REGION, PROT_READ | PROT_WRITE, MAP_SHARED, memfd, 0);
	if (getenv("NO_SYSV")) {
		/* Private stand-in: see the page server tests in test_pages.py. */
		sysv = malloc(REGION) ?: (void *)-1;
	} else {
		shmid = shmget(IPC_PRIVATE, REGION, IPC_CREAT | 0600);
		sysv = shmid < 0 ? (void *)-1 : shmat(shmid, NULL, 0);
	}
	if (memfd_map == MAP_FAILED || sysv == (void *)-1)
		return 2;
	if (big_len) {
		big = mmap(NULL, big_len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		if (big == MAP_FAILED)
			return 2;
		plant(big, big_len, "big", 6);
	}
	plant(heap, REGION, "heap", 1);
	plant(stack, REGION, "stack", 2);
	plant(shared, REGION, "shared", 3);
	plant(memfd_map, REGION, "memfd", 4);
	plant(sysv, REGION, "sysv", 5);

	status("ready");
	for (;;) {
		const char *bad = NULL;

		pause();
		if (!report_wanted)
			continue;
		report_wanted = 0;
		if (check(heap, REGION, "heap", 1))
			bad = "heap";
		else if (check(stack, REGION, "stack", 2))
			bad = "stack";
		else if (check(shared, REGION, "shared", 3))
			bad = "shared";
		else if (check(memfd_map, REGION, "memfd", 4))
			bad = "memfd";
		else if (check(sysv, REGION, "sysv", 5))
			bad = "sysv";
		else if (big && check(big, big_len, "big", 6))
			bad = "big";
		if (bad)
			status("memcanary BAD %s", bad);
		else
			status("memcanary OK %zu", big_len >> 20);
	}
}
