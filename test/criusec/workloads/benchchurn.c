// SPDX-License-Identifier: GPL-2.0-only
/*
 * The workload of make bench's chain section (issue 20): MIB of random
 * memory of which it rewrites pages, whole, half of them sweeping a hot
 * region and half picked at random over all of it.  The hot region is as
 * many pages as half a second's writes, so at the paced rate it is
 * rewritten once a second and the pages written in a second are about
 * PERMILLE/1000 of all (the random half hits few pages twice).
 *
 *   benchchurn churn STATUS MIB PERMILLE
 *	rewrites PERMILLE/1000 of its pages per second, paced by the clock
 *	(after a freeze it catches up on at most a second), until killed;
 *	on SIGUSR1 reports "churn PAGES MS": pages written in MS ms.
 *   benchchurn flat STATUS MIB WINDOW_MS WINDOWS
 *	idle until SIGUSR1, then writes flat out for WINDOWS windows of
 *	WINDOW_MS each (same mix of pages) and reports "flat W1 W2 ...", a
 *	window each (below), RATE its pages per second; then idle again.  Its
 *	own measure of what memory tracking costs it at worst: the first
 *	write to each page after a pass takes a fault.
 *   benchchurn paced STATUS MIB PERMILLE WINDOW_MS WINDOWS
 *	idle until SIGUSR1, then for WINDOWS windows of WINDOW_MS does
 *	useful work, single-threaded: a checksum of one page of its hot
 *	region at a time (an op), and between ops the writes due to rewrite
 *	PERMILLE/1000 of its pages a second (as churn does); reports
 *	"paced W1 W2 ...", RATE its ops per second.  What tracking costs an
 *	application that writes at the paced rate: its throughput.
 *
 * A window is RATE:CPU_US:SYS_US:MINFLT:PAGES: its CPU time (user and
 * system, getrusage(): the counters /proc/PID/stat shows as utime and
 * stime, in microseconds), the system part, its minor faults (a
 * write-protect fault resolved by the kernel is one) and the pages it
 * wrote.
 *
 * Writes "ready PAGES HOT" when its memory is filled.  With SHARED=1 in its
 * environment, its memory is shared anonymous memory (MAP_SHARED).
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>

#include "common.h"

#define PAGE 4096

static uint64_t *mem;
static size_t pages, hot, hot_cursor;
static uint64_t rnd = 0x9e3779b97f4a7c15ULL, fill = 0xbf58476d1ce4e5b9ULL;
static unsigned long writes;
static volatile uint64_t sink; /* the ops' results, so that the compiler keeps them */

static uint64_t now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1000ULL + ts.tv_nsec / 1000000;
}

static uint64_t now_us(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1000000ULL + ts.tv_nsec / 1000;
}

struct usage {
	uint64_t cpu_us, sys_us, minflt;
};

static void get_usage(struct usage *u)
{
	struct rusage ru;

	getrusage(RUSAGE_SELF, &ru);
	u->sys_us = ru.ru_stime.tv_sec * 1000000ULL + ru.ru_stime.tv_usec;
	u->cpu_us = ru.ru_utime.tv_sec * 1000000ULL + ru.ru_utime.tv_usec + u->sys_us;
	u->minflt = ru.ru_minflt;
}

/* One window's " RATE:CPU_US:SYS_US:MINFLT:PAGES" at line + n, since u0 and start (us). */
static size_t window_report(char *line, size_t n, size_t size, uint64_t count, uint64_t start, uint64_t end,
			    const struct usage *u0, uint64_t written)
{
	struct usage u;

	get_usage(&u);
	return n + snprintf(line + n, size - n, " %.0f:%llu:%llu:%llu:%llu", count * 1e6 / (end - start),
			    (unsigned long long)(u.cpu_us - u0->cpu_us), (unsigned long long)(u.sys_us - u0->sys_us),
			    (unsigned long long)(u.minflt - u0->minflt), (unsigned long long)written);
}

/* Rewrite one page whole: the hot region's next, or a random one. */
static void write_page(void)
{
	size_t p;
	uint64_t *w;

	if (writes++ & 1) {
		p = hot_cursor;
		if (++hot_cursor == hot)
			hot_cursor = 0;
	} else {
		p = next_rand(&rnd) % pages;
	}
	w = mem + p * (PAGE / sizeof(*mem));
	for (size_t i = 0; i < PAGE / sizeof(*w); i++)
		w[i] = next_rand(&fill);
}

static void __attribute__((noreturn)) run_churn(unsigned int permille)
{
	uint64_t rate = pages * permille / 1000, start = now_ms(), done = 0;

	for (;;) {
		uint64_t t = now_ms() - start, due = t * rate / 1000;

		if (due > done + rate)
			done = due - rate; /* frozen for long: catch up on a second at most */
		while (done < due) {
			write_page();
			done++;
		}
		if (report_wanted) {
			report_wanted = 0;
			status("churn %llu %llu", (unsigned long long)done, (unsigned long long)t);
		}
		nap_ms(5);
	}
}

static void __attribute__((noreturn)) run_flat(unsigned int window_ms, unsigned int windows)
{
	char line[4000];

	for (;;) {
		size_t n = 0;

		wait_report();
		line[0] = 0;
		for (unsigned int w = 0; w < windows && n < sizeof(line) - 100; w++) {
			uint64_t start = now_us(), end = start + window_ms * 1000ULL, t = start, count = 0;
			struct usage u0;

			get_usage(&u0);
			while (t < end) {
				for (int i = 0; i < 64; i++)
					write_page();
				count += 64;
				t = now_us();
			}
			n = window_report(line, n, sizeof(line), count, start, t, &u0, count);
		}
		status("flat%s", line);
	}
}

/* The useful work: a checksum of one page (serial multiplies, about a microsecond). */
static uint64_t checksum_page(const uint64_t *p)
{
	uint64_t h = 0xcbf29ce484222325ULL;

	for (size_t i = 0; i < PAGE / sizeof(*p); i++)
		h = (h ^ p[i]) * 0x100000001b3ULL;
	return h;
}

static void __attribute__((noreturn)) run_paced(unsigned int permille, unsigned int window_ms, unsigned int windows)
{
	uint64_t rate = pages * permille / 1000;
	size_t cursor = 0;
	char line[4000];

	for (;;) {
		uint64_t begin, done = 0;
		size_t n = 0;

		wait_report();
		line[0] = 0;
		begin = now_us();
		for (unsigned int w = 0; w < windows && n < sizeof(line) - 100; w++) {
			uint64_t start = now_us(), end = start + window_ms * 1000ULL, t = start, ops = 0;
			uint64_t done0 = done, h = 0;
			struct usage u0;

			get_usage(&u0);
			while (t < end) {
				uint64_t due;

				/* Ops in batches of 16 (some 20 us), so that the clock is read rarely. */
				for (int i = 0; i < 16; i++) {
					h += checksum_page(mem + cursor * (PAGE / sizeof(*mem)));
					if (++cursor == hot)
						cursor = 0;
				}
				ops += 16;
				t = now_us();
				due = (t - begin) * rate / 1000000;
				while (done < due) {
					write_page();
					done++;
				}
			}
			sink += h;
			n = window_report(line, n, sizeof(line), ops, start, t, &u0, done - done0);
		}
		status("paced%s", line);
	}
}

int main(int argc, char **argv)
{
	struct sigaction sa = { .sa_handler = on_usr1 };
	size_t len;
	uint64_t s = 0x2545f4914f6cdd1dULL;

	if (argc < 5 || (strcmp(argv[1], "churn") && strcmp(argv[1], "flat") && strcmp(argv[1], "paced")) ||
	    (!strcmp(argv[1], "flat") && argc < 6) || (!strcmp(argv[1], "paced") && argc < 7)) {
		fprintf(stderr,
			"usage: %s churn STATUS MIB PERMILLE | flat STATUS MIB WINDOW_MS WINDOWS |\n"
			"       paced STATUS MIB PERMILLE WINDOW_MS WINDOWS\n",
			argv[0]);
		return 1;
	}
	status_fd = open(argv[2], O_RDWR | O_CREAT | O_TRUNC, 0600);
	if (status_fd < 0)
		return 2;
	sigaction(SIGUSR1, &sa, NULL);
	len = (size_t)atol(argv[3]) << 20;
	pages = len / PAGE;
	/* SHARED=1: shared anonymous memory, which criu compares with the parent instead of tracking */
	mem = mmap(NULL, len, PROT_READ | PROT_WRITE, (getenv("SHARED") ? MAP_SHARED : MAP_PRIVATE) | MAP_ANONYMOUS,
		   -1, 0);
	if (mem == MAP_FAILED || pages == 0)
		return 2;
	for (size_t i = 0; i < len / sizeof(*mem); i++)
		mem[i] = next_rand(&s);
	/* Half a second's writes at the paced rate (flat: as at 50 per mille). */
	hot = pages * (strcmp(argv[1], "flat") ? (size_t)atol(argv[4]) : 50) / 2000;
	if (hot == 0)
		hot = 1;
	status("ready %zu %zu", pages, hot);
	if (!strcmp(argv[1], "churn"))
		run_churn(atoi(argv[4]));
	if (!strcmp(argv[1], "paced"))
		run_paced(atoi(argv[4]), atoi(argv[5]), atoi(argv[6]));
	run_flat(atoi(argv[4]), atoi(argv[5]));
}
