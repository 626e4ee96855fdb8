// SPDX-License-Identifier: GPL-2.0-only
/*
 * Workloads for criusec's integration tests.  Each one keeps some state,
 * writes "ready" to its status file when set up, and on SIGUSR1 writes a
 * report of its state there, so a test can compare before dump and after
 * restore.  A canary string (argv or environment CANARY) is planted in the
 * kind of state the workload is about.  CANARY_FROM=PATH instead: the
 * workload makes a FIFO there and reads the canary's line from it (so that
 * the canary is on no command line and in no environment, which container
 * engines record in clear), then removes it.
 *
 *   workload MODE STATUS_FILE [ARG]
 *   modes: counter, memory, fileoff, tcp, threads, pipe2, secrets, churn
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "common.h"

static const char *canary = "";

static int run_counter(void)
{
	volatile uint64_t counter = 0;

	status("ready 0");
	for (;;) {
		counter++;
		nap_ms(5);
		if (report_wanted) {
			report_wanted = 0;
			status("counter %llu", (unsigned long long)counter);
		}
	}
	return 0;
}

static int run_memory(const char *mib_arg)
{
	size_t len = (size_t)atol(mib_arg ? mib_arg : "64") << 20;
	uint64_t *mem = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	uint64_t seed = 0x9e3779b97f4a7c15ULL, s;
	size_t i, n = len / sizeof(*mem);

	if (mem == MAP_FAILED)
		return 2;
	s = seed;
	for (i = 0; i < n; i++)
		mem[i] = next_rand(&s);
	/* The canary sits in the heap-like area too, once per MiB. */
	for (i = 0; i < len; i += 1 << 20)
		memcpy((char *)mem + i + 64, canary, strlen(canary));
	status("ready");
	for (;;) {
		wait_report();
		s = seed;
		for (i = 0; i < n; i++) {
			uint64_t want = next_rand(&s);
			size_t off = i * sizeof(*mem);

			if ((off % (1 << 20)) >= 64 && (off % (1 << 20)) < 64 + strlen(canary) + 8)
				continue; /* the canary's words */
			if (mem[i] != want) {
				status("memory BAD at %zu", off);
				break;
			}
		}
		if (i == n)
			status("memory OK %zu", len);
	}
}

/*
 * churn MIB: MIB of memory whose first eighth it keeps rewriting, a page
 * at a time, for pre-dump chains.  Page p of generation g is page_fill(p,
 * g); pages below the cursor are of generation gen, the rest of the
 * eighth of gen - 1, all others of generation 0.  So every byte is known:
 * on SIGUSR1 it checks them all and reports "churn OK GEN" (or where it
 * found a wrong page).  The canary opens each MiB.
 */
#define PAGE 4096

static void page_fill(uint64_t *w, size_t p, uint64_t g)
{
	uint64_t s = (p + 1) * 0x9e3779b97f4a7c15ULL ^ (g + 1) * 0xbf58476d1ce4e5b9ULL;

	w[0] = g;
	for (size_t i = 1; i < PAGE / sizeof(*w); i++)
		w[i] = next_rand(&s);
	if (p % 256 == 0)
		memcpy((char *)w + 64, canary, strlen(canary));
}

static int run_churn(const char *mib_arg)
{
	size_t len = (size_t)atol(mib_arg ? mib_arg : "256") << 20, pages = len / PAGE;
	size_t hot = pages / 8, cursor = 0, p;
	char *mem = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	uint64_t gen = 1, want[PAGE / sizeof(uint64_t)];

	if (mem == MAP_FAILED || hot == 0 || strlen(canary) > PAGE - 64)
		return 2;
	for (p = 0; p < pages; p++)
		page_fill((uint64_t *)(mem + p * PAGE), p, 0);
	status("ready %zu %zu", pages, hot);
	for (;;) {
		page_fill((uint64_t *)(mem + cursor * PAGE), cursor, gen);
		if (++cursor == hot) {
			cursor = 0;
			gen++;
		}
		if (cursor % 256)
			continue;
		/* A MiB at a time, then a breath: the dumps need the CPU too. */
		nap_ms(5);
		if (!report_wanted)
			continue;
		report_wanted = 0;
		for (p = 0; p < pages; p++) {
			page_fill(want, p, p < cursor ? gen : p < hot ? gen - 1 : 0);
			if (memcmp(want, mem + p * PAGE, PAGE))
				break;
		}
		if (p == pages)
			status("churn OK %llu", (unsigned long long)gen);
		else
			status("churn BAD page %zu of %zu (generation %llu, cursor %zu)", p, pages,
			       (unsigned long long)gen, cursor);
	}
}

static int run_fileoff(const char *path)
{
	int fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0600);
	char buf[1000];

	if (fd < 0)
		return 2;
	memset(buf, 'x', sizeof(buf));
	for (int i = 0; i < 10; i++)
		if (write(fd, buf, sizeof(buf)) != sizeof(buf))
			return 2;
	if (lseek(fd, 4321, SEEK_SET) != 4321)
		return 2;
	status("ready");
	for (;;) {
		wait_report();
		status("offset %lld", (long long)lseek(fd, 0, SEEK_CUR));
	}
}

static int run_tcp(const char *port_arg)
{
	struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons(atoi(port_arg)) };
	int one = 1, ls = socket(AF_INET, SOCK_STREAM, 0);

	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	if (ls < 0 || setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) ||
	    bind(ls, (void *)&a, sizeof(a)) || listen(ls, 8))
		return 2;
	status("ready");
	for (;;) {
		int c = accept(ls, NULL, NULL);
		char msg[256];
		int n;

		if (c < 0) {
			if (errno == EINTR)
				continue;
			return 2;
		}
		n = snprintf(msg, sizeof(msg), "hello from %d\n", getpid());
		if (write(c, msg, n) != n)
			return 2;
		close(c);
	}
}

#define NTHREADS 4
static volatile uint64_t thread_counts[NTHREADS];

static void *thread_fn(void *arg)
{
	long idx = (long)arg;

	for (;;) {
		thread_counts[idx]++;
		nap_ms(3);
	}
	return NULL;
}

static int run_threads(void)
{
	pthread_t t[NTHREADS];

	for (long i = 0; i < NTHREADS; i++)
		if (pthread_create(&t[i], NULL, thread_fn, (void *)i))
			return 2;
	status("ready");
	for (;;) {
		wait_report();
		status("threads %llu %llu %llu %llu", (unsigned long long)thread_counts[0],
		       (unsigned long long)thread_counts[1], (unsigned long long)thread_counts[2],
		       (unsigned long long)thread_counts[3]);
	}
}

/*
 * Two children joined by a pipe: the writer sends consecutive numbers, the
 * reader checks each follows the last.  The parent relays SIGUSR1 to the
 * reader, which reports.  Data in flight sits in the pipe across the dump.
 */
static int run_pipe2(void)
{
	int p[2];
	pid_t w, r;

	if (pipe(p))
		return 2;
	w = fork();
	if (w == 0) {
		uint64_t seq = 0;
		char pad[64];

		close(p[0]);
		memset(pad, 0, sizeof(pad));
		strncpy(pad + 8, canary, sizeof(pad) - 9);
		for (;;) {
			memcpy(pad, &seq, sizeof(seq));
			if (write(p[1], pad, sizeof(pad)) != sizeof(pad))
				_exit(2);
			seq++;
			if (seq % 64 == 0)
				nap_ms(2);
		}
	}
	r = fork();
	if (r == 0) {
		uint64_t want = 0, got;
		char pad[64];
		int bad = 0;

		close(p[1]);
		signal(SIGUSR1, on_usr1);
		status("ready");
		for (;;) {
			if (read(p[0], pad, sizeof(pad)) != sizeof(pad)) {
				if (errno == EINTR)
					continue;
				_exit(2);
			}
			memcpy(&got, pad, sizeof(got));
			if (got != want)
				bad = 1;
			want = got + 1;
			/* Let the pipe fill up so it has data in flight when dumped. */
			if (want % 256 == 0)
				nap_ms(20);
			if (report_wanted) {
				report_wanted = 0;
				status("pipe %s %llu", bad ? "BAD" : "OK", (unsigned long long)want);
			}
		}
	}
	close(p[0]);
	close(p[1]);
	signal(SIGUSR1, SIG_IGN);
	for (;;) {
		sigset_t set;
		int sig;

		sigemptyset(&set);
		sigaddset(&set, SIGUSR1);
		sigprocmask(SIG_BLOCK, &set, NULL);
		if (sigwait(&set, &sig) == 0)
			kill(r, SIGUSR1);
	}
}

/*
 * Canaries in the kinds of state criu writes to non-page images: data in
 * flight in a pipe, a FIFO and a unix socket, and the content of an open
 * unlinked (ghost) file.  On report each one is read back and compared.
 */
static int run_secrets(void)
{
	int pp[2], sk[2], fifo, ghost;
	size_t len = strlen(canary);
	char buf[4096];

	if (!len || len > sizeof(buf) || pipe(pp) || socketpair(AF_UNIX, SOCK_STREAM, 0, sk))
		return 2;
	if (mkfifo("secrets.fifo", 0600) && errno != EEXIST)
		return 2;
	fifo = open("secrets.fifo", O_RDWR);
	ghost = open("secrets.ghost", O_RDWR | O_CREAT | O_TRUNC, 0600);
	if (fifo < 0 || ghost < 0 || unlink("secrets.ghost"))
		return 2;
	if (write(pp[1], canary, len) != (ssize_t)len || write(sk[0], canary, len) != (ssize_t)len ||
	    write(fifo, canary, len) != (ssize_t)len || pwrite(ghost, canary, len, 0) != (ssize_t)len)
		return 2;
	status("ready");
	for (;;) {
		const char *bad = NULL;

		wait_report();
		if (read(pp[0], buf, len) != (ssize_t)len || memcmp(buf, canary, len))
			bad = "pipe";
		else if (read(sk[1], buf, len) != (ssize_t)len || memcmp(buf, canary, len))
			bad = "socket";
		else if (read(fifo, buf, len) != (ssize_t)len || memcmp(buf, canary, len))
			bad = "fifo";
		else if (pread(ghost, buf, len, 0) != (ssize_t)len || memcmp(buf, canary, len))
			bad = "ghost";
		/* Put the data back for the next report. */
		if (!bad && (write(pp[1], canary, len) != (ssize_t)len || write(sk[0], canary, len) != (ssize_t)len ||
			     write(fifo, canary, len) != (ssize_t)len))
			bad = "rewrite";
		status("secrets %s", bad ?: "OK");
	}
}

static const char *read_canary(const char *fifo)
{
	static char line[PAGE - 64];
	FILE *f;

	if (mkfifo(fifo, 0600) && errno != EEXIST)
		return NULL;
	f = fopen(fifo, "r");
	if (!f || !fgets(line, sizeof(line), f))
		return NULL;
	fclose(f);
	unlink(fifo);
	line[strcspn(line, "\n")] = 0;
	return line;
}

int main(int argc, char **argv)
{
	struct sigaction sa = { .sa_handler = on_usr1 };

	if (argc < 3) {
		fprintf(stderr, "usage: %s MODE STATUS [ARG]\n", argv[0]);
		return 1;
	}
	if (getenv("CANARY"))
		canary = getenv("CANARY");
	if (getenv("CANARY_FROM") && !(canary = read_canary(getenv("CANARY_FROM"))))
		return 2;
	status_fd = open(argv[2], O_RDWR | O_CREAT | O_TRUNC, 0600);
	if (status_fd < 0)
		return 2;
	sigaction(SIGUSR1, &sa, NULL);

	if (!strcmp(argv[1], "counter"))
		return run_counter();
	if (!strcmp(argv[1], "memory"))
		return run_memory(argc > 3 ? argv[3] : NULL);
	if (!strcmp(argv[1], "fileoff"))
		return run_fileoff(argv[3]);
	if (!strcmp(argv[1], "tcp"))
		return run_tcp(argv[3]);
	if (!strcmp(argv[1], "threads"))
		return run_threads();
	if (!strcmp(argv[1], "pipe2"))
		return run_pipe2();
	if (!strcmp(argv[1], "secrets"))
		return run_secrets();
	if (!strcmp(argv[1], "churn"))
		return run_churn(argc > 3 ? argv[3] : NULL);
	fprintf(stderr, "unknown mode %s\n", argv[1]);
	return 1;
}
