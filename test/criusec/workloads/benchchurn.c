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
 *	WINDOW_MS each (same mix of pages) and reports "flat R1 R2 ...", the
 *	pages per second of each window; then idle again.  Its own measure
 *	of what memory tracking costs it: the first write to each page after
 *	a pass takes a fault.
 *
 * Writes "ready PAGES HOT" when its memory is filled.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "common.h"

#define PAGE 4096

static uint64_t *mem;
static size_t pages, hot, hot_cursor;
static uint64_t rnd = 0x9e3779b97f4a7c15ULL, fill = 0xbf58476d1ce4e5b9ULL;
static unsigned long writes;

static uint64_t now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1000ULL + ts.tv_nsec / 1000000;
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
		for (unsigned int w = 0; w < windows && n < sizeof(line) - 32; w++) {
			uint64_t start = now_ms(), end = start + window_ms, t = start, count = 0;

			while (t < end) {
				for (int i = 0; i < 64; i++)
					write_page();
				count += 64;
				t = now_ms();
			}
			n += snprintf(line + n, sizeof(line) - n, " %.0f", count * 1000.0 / (t - start));
		}
		status("flat%s", line);
	}
}

int main(int argc, char **argv)
{
	struct sigaction sa = { .sa_handler = on_usr1 };
	size_t len;
	uint64_t s = 0x2545f4914f6cdd1dULL;

	if (argc < 5 || (strcmp(argv[1], "churn") && strcmp(argv[1], "flat")) ||
	    (!strcmp(argv[1], "flat") && argc < 6)) {
		fprintf(stderr, "usage: %s churn STATUS MIB PERMILLE | flat STATUS MIB WINDOW_MS WINDOWS\n", argv[0]);
		return 1;
	}
	status_fd = open(argv[2], O_RDWR | O_CREAT | O_TRUNC, 0600);
	if (status_fd < 0)
		return 2;
	sigaction(SIGUSR1, &sa, NULL);
	len = (size_t)atol(argv[3]) << 20;
	pages = len / PAGE;
	mem = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
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
	run_flat(atoi(argv[4]), atoi(argv[5]));
}
