/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * What the test workloads share: the status file, the SIGUSR1 report
 * request, and a deterministic fill.  Each workload is one .c file that
 * includes this (the tests build each with a single gcc call).
 */
#ifndef CRIUSEC_WORKLOAD_COMMON_H
#define CRIUSEC_WORKLOAD_COMMON_H

#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <time.h>
#include <unistd.h>

static int status_fd = -1;
static unsigned long reports;
static volatile sig_atomic_t report_wanted;

static inline void on_usr1(int sig)
{
	(void)sig;
	report_wanted = 1;
}

/* The whole status file is one line, replaced in place; "#N " numbers the reports. */
static inline void status(const char *fmt, ...)
{
	char buf[4096];
	va_list ap;
	int n;

	n = snprintf(buf, sizeof(buf), "#%lu ", reports++);
	va_start(ap, fmt);
	n += vsnprintf(buf + n, sizeof(buf) - n, fmt, ap);
	va_end(ap);
	if (ftruncate(status_fd, 0) || pwrite(status_fd, buf, n, 0) != n)
		_exit(3);
}

static inline void nap_ms(int ms)
{
	struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };

	nanosleep(&ts, NULL);
}

/*
 * Until SIGUSR1 asks for a report.  Not pause(): a restored task resumes
 * at the syscall it was stopped in, so a SIGUSR1 sent as restore ends can
 * run its handler just before that pause() and be lost.  Poll instead.
 */
static inline void wait_report(void)
{
	while (!report_wanted)
		nap_ms(20);
	report_wanted = 0;
}

/* xorshift: cheap, deterministic fill that a restore must reproduce exactly. */
static inline uint64_t next_rand(uint64_t *s)
{
	*s ^= *s << 13;
	*s ^= *s >> 7;
	*s ^= *s << 17;
	return *s;
}

#endif
