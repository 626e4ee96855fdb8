/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * cowsweep|cowsweep-shared|cowsweep-rest|cowsweep-paced STATUS MIB THREADS [PERMILLE]: threads
 * that sweep MIB MiB flat out (or, paced, PERMILLE per mille of it a second, 50 by default),
 * for the copy-on-write dump (issue 21).
 *
 * Each thread owns a slice of the region and sweeps it again and again,
 * stamping the head of each page with (generation, page index), after
 * checking that the page holds the previous generation: a consistent
 * memory has, in each slice, pages of generation g up to the thread's
 * position and g - 1 after it, one sweep boundary.  A page from later (or
 * earlier) than the rest, as a dump not taken at one instant would give,
 * makes the thread report "BAD" and the process exit.  So the check goes
 * on after a restore, and the images can be checked the same way.
 *
 * Each thread also keeps the longest time it spent on one page (a write
 * fault waiting for criu shows there) and counts its pages: SIGUSR1
 * reports "cowsweep OK MAXSTALL_US PAGES_OF_THREAD_0 PAGES_OF_THREAD_1 ... |
 * H0 H1 H2 H3 H4": how many pages took, all threads together, 50-100 us,
 * 0.1-1 ms, 1-10 ms, 10-100 ms, and longer (a write fault waiting for
 * criu, or the freeze, or the scheduler on a busy machine); then, after a
 * second "|", the longest time on one page since the previous report, in us
 * (for the stalls of one window: the bench asks for a report before and
 * after a dump), and the pages per time taken since the start, all threads
 * together, as "B:N" pairs for the non-empty buckets: bucket B holds times
 * of at least 2^(B/4) ns and less than 2^((B+1)/4) (a quarter octave).
 * The time on one page runs from the end of the previous page (or, paced,
 * from when its tick was due) to the page's stamp.
 * As cowsweep-paced, each thread writes its share of PERMILLE per mille of the
 * pages a second, a tick's worth every 10 ms, and sleeps in between.
 * As cowsweep-shared, the region is MAP_SHARED; as cowsweep-rest, nothing
 * writes it after it is filled.  $CANARY, if set, is
 * written at offset 64 of every page (to look for it in the images); with
 * $NOISE set, the rest of each page is pseudo-random (not compressible).
 * With $DROP set to "munmap", "dontneed", "mremap" or "fork", a second
 * region of 16 MiB is mapped (above the first) and filled, and SIGUSR2
 * unmaps it, drops its pages (MADV_DONTNEED), moves it (mremap) or forks
 * a child that writes over its copy of both regions' first 16 MiB and
 * exits, then reports "dropped".
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>

#include "common.h"

#define PAGE	 4096
#define MAX_THR	 16

struct stamp {
	uint64_t gen;
	uint64_t page;
};

static char *region;
static size_t npages;
static int nthreads;
static volatile uint64_t done[MAX_THR];
static volatile uint64_t max_stall_ns[MAX_THR];
#define NBUCKET 5
static volatile uint64_t hist[MAX_THR][NBUCKET];
#define NFINE 256
static volatile uint64_t fine[MAX_THR][NFINE];
static volatile uint64_t window_stall_ns[MAX_THR];
static uint64_t pace_per_tick; /* pages a thread writes every 10 ms; 0: flat out */
static volatile int bad;
static volatile sig_atomic_t drop_wanted;

static void on_usr2(int sig)
{
	(void)sig;
	drop_wanted = 1;
}
static char bad_msg[256];

static uint64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1000000000ULL + ts.tv_nsec;
}

/* A quarter octave: the top three bits of d (under 4 ns, which the clock does not resolve: 0) */
static int fine_bucket(uint64_t d)
{
	int b;

	if (d < 4)
		return 0;
	b = 63 - __builtin_clzll(d);
	return 4 * b + (int)((d >> (b - 2)) & 3);
}

/*
 * Paced: sleep until the next tick, and return it: the tick's first page is
 * timed from when it was due, so a freeze or a late wake-up counts (a tick
 * missed is not caught up: the next is due now).
 */
static uint64_t pace(uint64_t *next)
{
	struct timespec ts;
	uint64_t n = now_ns();

	*next += 10000000;
	if (*next < n)
		*next = n;
	ts.tv_sec = *next / 1000000000ULL;
	ts.tv_nsec = *next % 1000000000ULL;
	clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL);
	return *next;
}

static void *sweep(void *arg)
{
	long t = (long)arg;
	size_t first = npages * t / nthreads, last = npages * (t + 1) / nthreads, p;
	uint64_t gen, prev = now_ns(), next = prev, tick = 0;

	for (gen = 2;; gen++) {
		for (p = first; p < last; p++) {
			struct stamp *s = (struct stamp *)(region + p * PAGE);
			uint64_t n;

			if (pace_per_tick && tick++ % pace_per_tick == 0)
				prev = pace(&next);

			if (s->gen != gen - 1 || s->page != p) {
				snprintf(bad_msg, sizeof(bad_msg), "BAD thread %ld page %zu: gen %llu page %llu, expected %llu",
					 t, p, (unsigned long long)s->gen, (unsigned long long)s->page,
					 (unsigned long long)gen - 1);
				bad = 1;
				return NULL;
			}
			s->gen = gen;
			done[t]++;
			n = now_ns();
			if (n - prev > max_stall_ns[t])
				max_stall_ns[t] = n - prev;
			if (n - prev > window_stall_ns[t])
				window_stall_ns[t] = n - prev;
			fine[t][fine_bucket(n - prev)]++;
			if (n - prev >= 50000) {
				uint64_t d = n - prev;
				int b = d < 100000 ? 0 : d < 1000000 ? 1 : d < 10000000 ? 2 : d < 100000000 ? 3 : 4;

				hist[t][b]++;
			}
			prev = n;
		}
	}
	return NULL;
}

/* $DROP's action on the second region (see the top) */
static int drop_extra(const char *drop, char *extra)
{
	size_t len = 16 << 20;
	pid_t child;
	void *to;
	int st;

	if (!strcmp(drop, "munmap"))
		return munmap(extra, len);
	if (!strcmp(drop, "dontneed"))
		return madvise(extra, len, MADV_DONTNEED);
	if (!strcmp(drop, "mremap")) {
		to = mmap(NULL, len, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		return to == MAP_FAILED || mremap(extra, len, len, MREMAP_MAYMOVE | MREMAP_FIXED, to) == MAP_FAILED;
	}
	/* fork: the child's writes are its own copies', nothing of them in the parent */
	child = fork();
	if (child < 0)
		return -1;
	if (child == 0) {
		memset(extra, 0xee, len);
		memset(region, 0xee, len < npages * PAGE ? len : npages * PAGE);
		_exit(0);
	}
	return waitpid(child, &st, 0) != child || !WIFEXITED(st) || WEXITSTATUS(st);
}

int main(int argc, char **argv)
{
	pthread_t th[MAX_THR];
	size_t mib, p;
	long t;
	int shared, rest, paced;
	const char *drop = getenv("DROP");
	char *extra = NULL;

	if (argc < 5)
		return 2;
	shared = !strcmp(argv[1], "cowsweep-shared");
	rest = !strcmp(argv[1], "cowsweep-rest");
	paced = !strcmp(argv[1], "cowsweep-paced");
	status_fd = open(argv[2], O_WRONLY | O_CREAT | O_TRUNC, 0644);
	mib = strtoul(argv[3], NULL, 0);
	nthreads = atoi(argv[4]);
	if (status_fd < 0 || nthreads < 1 || nthreads > MAX_THR)
		return 2;
	signal(SIGUSR1, on_usr1);
	signal(SIGUSR2, on_usr2);
	if (drop) {
		/* Mapped first: above the region, so written after it */
		extra = mmap(NULL, 16 << 20, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		if (extra == MAP_FAILED)
			return 2;
		memset(extra, 0x5a, 16 << 20);
	}

	npages = mib * 1024 * 1024 / PAGE;
	if (paced) {
		/* pages a second per thread, over 100 ticks a second, at least one a tick */
		pace_per_tick = npages * (argc > 5 ? strtoul(argv[5], NULL, 0) : 50) / 1000 / nthreads / 100;
		if (!pace_per_tick)
			pace_per_tick = 1;
	}
	region = mmap(NULL, npages * PAGE, PROT_READ | PROT_WRITE, (shared ? MAP_SHARED : MAP_PRIVATE) | MAP_ANONYMOUS,
		      -1, 0);
	if (region == MAP_FAILED)
		return 2;
	for (p = 0; p < npages; p++) {
		struct stamp *s = (struct stamp *)(region + p * PAGE);

		s->gen = 1;
		s->page = p;
		if (getenv("CANARY"))
			strcpy(region + p * PAGE + 64, getenv("CANARY"));
		if (getenv("NOISE")) {
			uint64_t *w = (uint64_t *)(region + p * PAGE), x = p * 0x9e3779b97f4a7c15ULL + 1;
			int i;

			for (i = 16; i < PAGE / 8; i++) {
				x ^= x << 13;
				x ^= x >> 7;
				x ^= x << 17;
				w[i] = x;
			}
		}
	}
	for (t = 0; t < nthreads && !rest; t++)
		if (pthread_create(&th[t], NULL, sweep, (void *)t))
			return 2;

	status("ready %p %zu %d", region, npages, nthreads);
	for (;;) {
		char buf[3072];
		uint64_t stall = 0, wstall = 0;
		int n = 0;

		while (!report_wanted && !bad && !drop_wanted)
			nap_ms(5);
		if (drop_wanted && extra) {
			drop_wanted = 0;
			if (drop_extra(drop, extra))
				return 2;
			extra = NULL;
			status("dropped");
			continue;
		}
		if (bad) {
			status("%s", bad_msg);
			_exit(1);
		}
		report_wanted = 0;
		for (t = 0; t < nthreads; t++) {
			n += snprintf(buf + n, sizeof(buf) - n, " %llu", (unsigned long long)done[t]);
			if (max_stall_ns[t] > stall)
				stall = max_stall_ns[t];
		}
		n += snprintf(buf + n, sizeof(buf) - n, " |");
		for (int b = 0; b < NBUCKET; b++) {
			uint64_t h = 0;

			for (t = 0; t < nthreads; t++)
				h += hist[t][b];
			n += snprintf(buf + n, sizeof(buf) - n, " %llu", (unsigned long long)h);
		}
		for (t = 0; t < nthreads; t++) {
			if (window_stall_ns[t] > wstall)
				wstall = window_stall_ns[t];
			window_stall_ns[t] = 0;
		}
		n += snprintf(buf + n, sizeof(buf) - n, " | %llu", (unsigned long long)wstall / 1000);
		for (int b = 0; b < NFINE && n < (int)sizeof(buf) - 32; b++) {
			uint64_t h = 0;

			for (t = 0; t < nthreads; t++)
				h += fine[t][b];
			if (h)
				n += snprintf(buf + n, sizeof(buf) - n, " %d:%llu", b, (unsigned long long)h);
		}
		status("cowsweep OK %llu%s", (unsigned long long)stall / 1000, buf);
	}
}
