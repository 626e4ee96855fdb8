// SPDX-License-Identifier: GPL-2.0-only
/*
 * Workloads for test_canary_paths.py: each one plants the canary (environment
 * CANARY, hex digits) in one kind of kernel state that criu saves in an image
 * of its own, writes "ready ..." to its status file, and on SIGUSR1 reads the
 * state back and reports "MODE OK" or "MODE BAD why" there.  Same protocol as
 * workload.c ("#N " numbers the reports).
 *
 *   canary MODE STATUS_FILE [ARGS]
 *   modes:
 *     idle                    waits; reports "idle OK"
 *     netns                   idle in a new net namespace with lo up (the
 *                             test configures it with nsenter)
 *     tcpq PORT               a TCP connection to itself, in a new net namespace:
 *                             "R"+canary unread in the receive queue,
 *                             "S"+canary unsent in the send queue
 *     tmpfs ROOT MNT          a new mount namespace whose root is "/" alone
 *                             (bound on ROOT, pivoted) and a tmpfs on MNT
 *                             holding MNT/secret
 *     ipc                     a new IPC namespace: a message queue with the
 *                             canary message, a semaphore set whose values
 *                             are the canary's 16-bit words (& 0x7fff)
 *     tty                     a pty pair, raw: "M"+canary queued master->slave,
 *                             "S"+canary queued slave->master, both unread
 *     ghost PATH SIZE OFF...  PATH, sparse, SIZE bytes, "G<off>"+canary at each
 *                             offset, unlinked and kept open
 *     inotify PATH            an inotify watch on PATH (a file)
 *     bpf                     a BPF array map, canary in element 1
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/bpf.h>
#include <linux/sockios.h>
#include <net/if.h>
#include <netinet/in.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/inotify.h>
#include <sys/ioctl.h>
#include <sys/ipc.h>
#include <sys/mount.h>
#include <sys/msg.h>
#include <sys/sem.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#include "common.h"

static const char *canary = "";
static size_t clen;

static int fail(const char *what)
{
	status("setup failed: %s: %s", what, strerror(errno));
	return 2;
}

static int run_idle(void)
{
	status("ready");
	for (;;) {
		wait_report();
		status("idle OK");
	}
	return 0;
}

/* ---- tcpq ---------------------------------------------------------------- */

/* The byte at offset off of the stream, outside the two marks. */
static unsigned char filler(size_t off)
{
	return 'a' + (off * 7 + off / 251) % 26;
}

static int lo_up(void);

/* A new net namespace with lo up; the test configures it with nsenter. */
static int run_netns(void)
{
	if (unshare(CLONE_NEWNET))
		return fail("unshare(CLONE_NEWNET)");
	if (lo_up())
		return fail("lo up");
	return run_idle();
}

static int lo_up(void)
{
	struct ifreq ifr = { .ifr_name = "lo" };
	int s = socket(AF_INET, SOCK_DGRAM, 0);

	if (s < 0 || ioctl(s, SIOCGIFFLAGS, &ifr))
		return -1;
	ifr.ifr_flags |= IFF_UP;
	if (ioctl(s, SIOCSIFFLAGS, &ifr))
		return -1;
	close(s);
	return 0;
}

#define TCPQ_FILL (96 << 10)

static int run_tcpq(const char *port_arg)
{
	struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons(atoi(port_arg)) };
	int one = 1, small = 4096, big = 1 << 20, ls, cli, srv, inq = 0, outq = 0, notsent = 0;
	size_t total = 1 + clen + TCPQ_FILL + 1 + clen, off = 0;
	unsigned char *stream = malloc(total), *got = malloc(total);

	if (!stream || !got)
		return fail("malloc");
	/* "R"+canary first (stays in the peer's receive queue), "S"+canary last (unsent). */
	for (size_t i = 0; i < total; i++)
		stream[i] = filler(i);
	stream[0] = 'R';
	memcpy(stream + 1, canary, clen);
	stream[total - clen - 1] = 'S';
	memcpy(stream + total - clen, canary, clen);

	if (unshare(CLONE_NEWNET))
		return fail("unshare(CLONE_NEWNET)");
	if (lo_up())
		return fail("lo up");
	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	ls = socket(AF_INET, SOCK_STREAM, 0);
	cli = socket(AF_INET, SOCK_STREAM, 0);
	if (ls < 0 || cli < 0 || setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) ||
	    setsockopt(ls, SOL_SOCKET, SO_RCVBUF, &small, sizeof(small)) ||
	    setsockopt(cli, SOL_SOCKET, SO_SNDBUF, &big, sizeof(big)) || bind(ls, (void *)&a, sizeof(a)) ||
	    listen(ls, 1) || connect(cli, (void *)&a, sizeof(a)))
		return fail("connect");
	srv = accept(ls, NULL, NULL);
	if (srv < 0 || fcntl(cli, F_SETFL, O_NONBLOCK))
		return fail("accept");
	close(ls);
	while (off < total) {
		ssize_t n = write(cli, stream + off, total - off);

		if (n < 0)
			return fail("write (send buffer too small)");
		off += n;
	}
	/* Let the window close: what is unsent then stays unsent. */
	for (int i = 0; i < 50; i++) {
		int prev = inq;

		nap_ms(20);
		if (ioctl(srv, FIONREAD, &inq) || ioctl(cli, SIOCOUTQ, &outq) || ioctl(cli, SIOCOUTQNSD, &notsent))
			return fail("queue ioctls");
		if (i > 5 && inq == prev)
			break;
	}
	status("ready total=%zu inq=%d outq=%d notsent=%d", total, inq, outq, notsent);
	for (;;) {
		const char *bad = NULL;
		size_t have = 0;

		wait_report();
		while (have < total) {
			struct pollfd p = { .fd = srv, .events = POLLIN };
			ssize_t n;

			if (poll(&p, 1, 10000) <= 0) {
				bad = "stream stalled";
				break;
			}
			n = read(srv, got + have, total - have);
			if (n <= 0) {
				bad = n ? "read" : "EOF";
				break;
			}
			have += n;
		}
		if (!bad && memcmp(got, stream, total))
			bad = "stream differs";
		status("tcpq %s %zu", bad ? "BAD" : "OK", have);
	}
}

/* ---- tmpfs ---------------------------------------------------------------- */

static int read_file(const char *path, char *buf, size_t len)
{
	int fd = open(path, O_RDONLY);
	ssize_t n;

	if (fd < 0)
		return -1;
	n = read(fd, buf, len);
	close(fd);
	return n;
}

static int run_tmpfs(const char *status_path, const char *root, const char *mnt)
{
	char path[4096], self[4096];
	ssize_t n;
	int fd;

	/*
	 * Root of the new namespace: "/" alone (no /proc, /dev, /sys, nothing
	 * of the host's other mounts), so criu dumps two mounts: it and the
	 * tmpfs.  Paths stay the same as on the host.
	 */
	n = readlink("/proc/self/exe", self, sizeof(self) - 1);
	if (n < 0)
		return fail("readlink /proc/self/exe");
	self[n] = 0;
	if (unshare(CLONE_NEWNS))
		return fail("unshare(CLONE_NEWNS)");
	if (mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL))
		return fail("make / private");
	if (mount("/", root, NULL, MS_BIND, NULL))
		return fail("bind / on ROOT");
	snprintf(path, sizeof(path), "%s%s", root, mnt);
	if (mount("criusec-canary", path, "tmpfs", 0, "size=1m,mode=700"))
		return fail("mount tmpfs");
	snprintf(path, sizeof(path), "%s%s/secret", root, mnt);
	fd = open(path, O_WRONLY | O_CREAT | O_EXCL, 0600);
	if (fd < 0 || write(fd, canary, clen) != (ssize_t)clen || close(fd))
		return fail("write secret");
	if (chdir(root) || syscall(SYS_pivot_root, ".", ".") || umount2(".", MNT_DETACH) || chdir("/"))
		return fail("pivot_root");
	/*
	 * Nothing may stay open or mapped from the host's mounts: new stdio,
	 * and exec again so the binary and libc are mapped from the new root.
	 */
	snprintf(path, sizeof(path), "%s.out", status_path);
	fd = open(path, O_RDWR | O_CREAT | O_APPEND, 0600);
	if (fd < 0 || dup2(fd, 0) < 0 || dup2(fd, 1) < 0 || dup2(fd, 2) < 0)
		return fail("stdio");
	close(fd);
	close(status_fd);
	execl(self, self, "tmpfs-run", status_path, mnt, NULL);
	return 2;
}

static int run_tmpfs_run(const char *mnt)
{
	char path[4096], buf[4096];

	status("ready");
	snprintf(path, sizeof(path), "%s/secret", mnt);
	for (;;) {
		int n;

		wait_report();
		n = read_file(path, buf, sizeof(buf));
		status("tmpfs %s", n == (int)clen && !memcmp(buf, canary, clen) ? "OK" : "BAD");
	}
	return 0;
}

/* ---- ipc ------------------------------------------------------------------ */

#define NSEMS 6
#define MSGKEY 0x43a11
#define SEMKEY 0x43a12

struct cmsg {
	long mtype;
	char mtext[256];
};

/* The semaphores hold the canary's 16-bit words (SEMVMX is 32767). */
static void sem_values(unsigned short v[NSEMS])
{
	for (int i = 0; i < NSEMS; i++) {
		char w[5] = { 0 };

		memcpy(w, canary + 4 * i, 4);
		v[i] = strtoul(w, NULL, 16) & 0x7fff;
	}
}

static int run_ipc(void)
{
	unsigned short want[NSEMS], got[NSEMS];
	struct cmsg m = { .mtype = 7 };
	int q, s;

	if (clen < 4 * NSEMS || clen >= sizeof(m.mtext))
		return fail("canary length");
	if (unshare(CLONE_NEWIPC))
		return fail("unshare(CLONE_NEWIPC)");
	q = msgget(MSGKEY, IPC_CREAT | IPC_EXCL | 0600);
	s = semget(SEMKEY, NSEMS, IPC_CREAT | IPC_EXCL | 0600);
	sem_values(want);
	memcpy(m.mtext, canary, clen);
	if (q < 0 || s < 0 || msgsnd(q, &m, clen, 0) || semctl(s, 0, SETALL, want))
		return fail("msg/sem");
	status("ready");
	for (;;) {
		const char *bad = NULL;
		ssize_t n;

		wait_report();
		/* The ids may differ after restore: look them up by key. */
		q = msgget(MSGKEY, 0);
		s = semget(SEMKEY, 0, 0);
		memset(&m, 0, sizeof(m));
		n = q < 0 ? -1 : msgrcv(q, &m, sizeof(m.mtext), 0, IPC_NOWAIT | MSG_COPY);
		if (n != (ssize_t)clen || m.mtype != 7 || memcmp(m.mtext, canary, clen))
			bad = "message";
		else if (s < 0 || semctl(s, 0, GETALL, got) || memcmp(got, want, sizeof(want)))
			bad = "semaphores";
		status("ipc %s", bad ?: "OK");
	}
}

/* ---- tty ------------------------------------------------------------------ */

static int run_tty(void)
{
	char mark_m[256], mark_s[256], buf[512];
	struct termios t;
	int master, slave;

	if (clen + 2 > sizeof(mark_m))
		return fail("canary length");
	snprintf(mark_m, sizeof(mark_m), "M%s", canary);
	snprintf(mark_s, sizeof(mark_s), "S%s", canary);
	master = posix_openpt(O_RDWR | O_NOCTTY);
	if (master < 0 || grantpt(master) || unlockpt(master))
		return fail("posix_openpt");
	slave = open(ptsname(master), O_RDWR | O_NOCTTY);
	if (slave < 0 || tcgetattr(slave, &t))
		return fail("open slave");
	cfmakeraw(&t);
	if (tcsetattr(slave, TCSANOW, &t))
		return fail("tcsetattr");
	if (write(master, mark_m, clen + 1) != (ssize_t)clen + 1 || write(slave, mark_s, clen + 1) != (ssize_t)clen + 1)
		return fail("write");
	nap_ms(50);
	status("ready");
	for (;;) {
		const char *bad = NULL;
		struct pollfd p[2] = { { .fd = slave, .events = POLLIN }, { .fd = master, .events = POLLIN } };

		wait_report();
		/* Each end on its own: data may reach one before the other. */
		if (poll(&p[0], 1, 2000) < 0 || poll(&p[1], 1, 2000) < 0)
			bad = "poll";
		else if (!(p[0].revents & POLLIN) || read(slave, buf, sizeof(buf)) != (ssize_t)clen + 1 ||
			 memcmp(buf, mark_m, clen + 1))
			bad = "master->slave";
		else if (!(p[1].revents & POLLIN) || read(master, buf, sizeof(buf)) != (ssize_t)clen + 1 ||
			 memcmp(buf, mark_s, clen + 1))
			bad = "slave->master";
		else if (write(master, mark_m, clen + 1) != (ssize_t)clen + 1 ||
			 write(slave, mark_s, clen + 1) != (ssize_t)clen + 1)
			bad = "rewrite";
		nap_ms(20);
		status("tty %s", bad ?: "OK");
	}
}

/* ---- ghost ---------------------------------------------------------------- */

static int run_ghost(const char *path, const char *size_arg, int noffs, char **offs)
{
	off_t size = atoll(size_arg);
	char mark[256], buf[256], zero[512];
	struct stat st;
	int fd;

	if (clen + 32 > sizeof(mark))
		return fail("canary length");
	fd = open(path, O_RDWR | O_CREAT | O_EXCL, 0600);
	if (fd < 0 || ftruncate(fd, size))
		return fail("create");
	for (int i = 0; i < noffs; i++) {
		int n = snprintf(mark, sizeof(mark), "G%s%s", offs[i], canary);

		if (pwrite(fd, mark, n, atoll(offs[i])) != n)
			return fail("pwrite");
	}
	if (fsync(fd) || unlink(path) || fstat(fd, &st))
		return fail("unlink");
	status("ready blocks=%lld", (long long)st.st_blocks);
	memset(zero, 0, sizeof(zero));
	for (;;) {
		const char *bad = NULL;

		wait_report();
		if (fstat(fd, &st) || st.st_size != size || st.st_nlink != 0)
			bad = "size or link count";
		for (int i = 0; !bad && i < noffs; i++) {
			int n = snprintf(mark, sizeof(mark), "G%s%s", offs[i], canary);
			off_t o = atoll(offs[i]);

			if (pread(fd, buf, n, o) != n || memcmp(buf, mark, n))
				bad = "a canary";
			/* The hole before each canary reads as zeroes. */
			else if (o >= (off_t)sizeof(zero) + 8192 &&
				 (pread(fd, buf, sizeof(buf), o - 8192) != sizeof(buf) || memcmp(buf, zero, sizeof(buf))))
				bad = "a hole";
		}
		status("ghost %s", bad ?: "OK");
	}
}

/* ---- inotify -------------------------------------------------------------- */

static int run_inotify(const char *path)
{
	char buf[4096] __attribute__((aligned(8)));
	int fd = inotify_init1(IN_NONBLOCK), wd;

	if (fd < 0)
		return fail("inotify_init1");
	wd = inotify_add_watch(fd, path, IN_MODIFY | IN_ATTRIB);
	if (wd < 0)
		return fail("inotify_add_watch");
	status("ready");
	for (;;) {
		const char *bad = "no event";
		ssize_t n;

		wait_report();
		/* The test touched the file just before asking. */
		for (int i = 0; i < 100 && (n = read(fd, buf, sizeof(buf))) < 0 && errno == EAGAIN; i++)
			nap_ms(20);
		for (char *p = buf; n > 0 && p < buf + n;) {
			struct inotify_event *e = (void *)p;

			if (e->wd == wd)
				bad = NULL;
			p += sizeof(*e) + e->len;
		}
		status("inotify %s", bad ?: "OK");
	}
}

/* ---- bpf ------------------------------------------------------------------ */

static long sys_bpf(int cmd, union bpf_attr *attr)
{
	return syscall(__NR_bpf, cmd, attr, sizeof(*attr));
}

static int run_bpf(void)
{
	char value[64] = { 0 }, got[64];
	union bpf_attr a;
	uint32_t key = 1;
	int map;

	if (clen > sizeof(value))
		return fail("canary length");
	memset(&a, 0, sizeof(a));
	a.map_type = BPF_MAP_TYPE_ARRAY;
	a.key_size = sizeof(key);
	a.value_size = sizeof(value);
	a.max_entries = 4;
	strcpy(a.map_name, "criusec_canary");
	map = sys_bpf(BPF_MAP_CREATE, &a);
	if (map < 0) {
		/* "ready" all the same: the test skips, saying why. */
		status("ready unsupported: BPF_MAP_CREATE: %s", strerror(errno));
		for (;;)
			pause();
	}
	memcpy(value, canary, clen);
	memset(&a, 0, sizeof(a));
	a.map_fd = map;
	a.key = (uintptr_t)&key;
	a.value = (uintptr_t)value;
	a.flags = BPF_ANY;
	if (sys_bpf(BPF_MAP_UPDATE_ELEM, &a))
		return fail("BPF_MAP_UPDATE_ELEM");
	status("ready");
	for (;;) {
		wait_report();
		memset(&a, 0, sizeof(a));
		a.map_fd = map;
		a.key = (uintptr_t)&key;
		a.value = (uintptr_t)got;
		if (sys_bpf(BPF_MAP_LOOKUP_ELEM, &a))
			status("bpf BAD lookup: %s", strerror(errno));
		else
			status("bpf %s", memcmp(got, value, sizeof(value)) ? "BAD" : "OK");
	}
}

int main(int argc, char **argv)
{
	struct sigaction sa = { .sa_handler = on_usr1 };
	const char *mode;

	if (argc < 3) {
		fprintf(stderr, "usage: %s MODE STATUS [ARGS]\n", argv[0]);
		return 1;
	}
	mode = argv[1];
	if (getenv("CANARY"))
		canary = getenv("CANARY");
	clen = strlen(canary);
	status_fd = open(argv[2], O_RDWR | O_CREAT | O_TRUNC, 0600);
	if (status_fd < 0)
		return 2;
	sigaction(SIGUSR1, &sa, NULL);

	if (!strcmp(mode, "idle"))
		return run_idle();
	if (!strcmp(mode, "netns"))
		return run_netns();
	if (!strcmp(mode, "tcpq") && argc == 4)
		return run_tcpq(argv[3]);
	if (!strcmp(mode, "tmpfs") && argc == 5)
		return run_tmpfs(argv[2], argv[3], argv[4]);
	if (!strcmp(mode, "tmpfs-run") && argc == 4)
		return run_tmpfs_run(argv[3]);
	if (!strcmp(mode, "ipc"))
		return run_ipc();
	if (!strcmp(mode, "tty"))
		return run_tty();
	if (!strcmp(mode, "ghost") && argc >= 6)
		return run_ghost(argv[3], argv[4], argc - 5, argv + 5);
	if (!strcmp(mode, "inotify") && argc == 4)
		return run_inotify(argv[3]);
	if (!strcmp(mode, "bpf"))
		return run_bpf();
	fprintf(stderr, "unknown mode or arguments: %s\n", mode);
	return 1;
}
