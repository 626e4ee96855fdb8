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
 *   modes: counter, memory, fileoff, tcp, threads, pipe2, secrets, churn, records
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

/*
 * Memory that compresses like a real heap: per MiB, mostly log and JSON
 * records whose fields vary (time, ids, addresses, levels, messages, latencies),
 * some zeroed buffers and some random bytes (keys, compressed data).  The
 * fill is deterministic; a report compares a hash taken before the dump.
 */
static const char *const words[] = {
	"request", "served", "cache", "miss", "hit", "user", "session", "expired", "token", "refreshed",
	"upstream", "timeout", "retry", "queue", "drained", "worker", "started", "stopped", "payload",
	"accepted", "rejected", "checkpoint", "invoice", "order", "shipped", "account", "updated",
};
static const char *const levels[] = { "INFO", "DEBUG", "WARN", "ERROR" };

static size_t fill_record(char *p, size_t room, uint64_t *s, uint64_t n)
{
	uint64_t r = next_rand(s), r2 = next_rand(s);
	int len;

	if (r & 1)
		len = snprintf(p, room,
			       "{\"ts\":\"2026-11-%02u T%02u:%02u:%02u.%03uZ\",\"level\":\"%s\",\"req\":%llu,"
			       "\"user\":\"u%05u\",\"ip\":\"10.%u.%u.%u\",\"msg\":\"%s %s %s\",\"ms\":%u.%02u}\n",
			       (unsigned)(1 + n / 86400000 % 28), (unsigned)(n / 3600000 % 24), (unsigned)(n / 60000 % 60),
			       (unsigned)(n / 1000 % 60), (unsigned)(n % 1000), levels[(r >> 1) % 4],
			       (unsigned long long)(100000 + n), (unsigned)(r2 % 50000), (unsigned)(r >> 8 & 255),
			       (unsigned)(r >> 16 & 255), (unsigned)(r >> 24 & 255), words[(r >> 32) % 27],
			       words[(r >> 40) % 27], words[(r >> 48) % 27], (unsigned)(r2 >> 20) % 900,
			       (unsigned)(r2 >> 40) % 100);
	else
		len = snprintf(p, room, "%02u:%02u:%02u.%06u %-5s [worker-%u] %s %s id=%016llx bytes=%u\n",
			       (unsigned)(n / 3600000 % 24), (unsigned)(n / 60000 % 60), (unsigned)(n / 1000 % 60),
			       (unsigned)(r2 % 1000000), levels[(r >> 1) % 4], (unsigned)(r >> 4) % 16,
			       words[(r >> 32) % 27], words[(r >> 40) % 27], (unsigned long long)r2,
			       (unsigned)(r >> 48) % 65536);
	return len < 0 || (size_t)len >= room ? 0 : (size_t)len;
}

static uint64_t hash_mem(const uint8_t *p, size_t len)
{
	uint64_t h = 0xcbf29ce484222325ULL;
	const uint64_t *w = (const uint64_t *)p;

	for (size_t i = 0; i < len / 8; i++)
		h = (h ^ w[i]) * 0x100000001b3ULL;
	return h;
}

static int run_records(const char *mib_arg)
{
	size_t len = (size_t)atol(mib_arg ? mib_arg : "64") << 20;
	uint8_t *mem = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	uint64_t s = 0x243f6a8885a308d3ULL, n = 0, h;

	if (mem == MAP_FAILED)
		return 2;
	for (size_t mb = 0; mb < len; mb += 1 << 20) {
		uint8_t *b = mem + mb;
		uint64_t kind = next_rand(&s) % 10;

		if (kind < 7) { /* records */
			size_t off = 0, got;

			while ((got = fill_record((char *)b + off, (1 << 20) - off, &s, n)) > 0) {
				off += got;
				n += 1 + next_rand(&s) % 50;
			}
		} else if (kind < 9) { /* a zeroed buffer that was written once */
			memset(b, 0, 1 << 20);
		} else { /* random bytes */
			for (size_t i = 0; i < (1 << 20) / 8; i++)
				((uint64_t *)b)[i] = next_rand(&s);
		}
		memcpy(b + 64, canary, strlen(canary));
	}
	h = hash_mem(mem, len);
	status("ready");
	for (;;) {
		wait_report();
		status("records %s %zu", hash_mem(mem, len) == h ? "OK" : "BAD", len);
	}
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
	if (!strcmp(argv[1], "records"))
		return run_records(argc > 3 ? argv[3] : NULL);
	fprintf(stderr, "unknown mode %s\n", argv[1]);
	return 1;
}
