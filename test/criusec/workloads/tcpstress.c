// SPDX-License-Identifier: GPL-2.0-only
/*
 * Two processes joined by TCP connections with full queues of several MiB,
 * in a network namespace of their own, for dump and restore with
 * --tcp-established.  Each side sends a stream whose every 8-byte block
 * is its own index plus a salt of the side (little-endian), so any byte
 * that is lost, repeated, moved or altered is found where it arrives.
 *
 *   tcpstress MODE STATUS_FILE [BUF_MIB [WRITE_SIZE [READ_SIZE]]]
 *
 * (MODE is ignored: the tests' workload runner passes one.)  A's data
 * socket has SO_SNDBUF and SO_RCVBUF of BUF_MIB (4: the kernel doubles it),
 * B keeps the kernel's, as in zdtm's socket-tcpbuf test.
 *
 * A is the root task (the server), B its child (the client).  They run in
 * lock step over a control connection, as CRIU's zdtm socket-tcpbuf test
 * does: A fills the data connection until EAGAIN and tells B how much it
 * sent; B fills its side, reads half of what A sent that it has not read
 * yet, and answers; A reads half of what B sent; and again.  While one
 * side reads, the other waits on the control connection, so the queues
 * stay full and a connection that stops delivering stalls both sides.
 *
 * Every byte received is checked against the peer's stream, and a CRC-32
 * of everything received is kept, so that the test can check the bytes
 * again on its own.  Status files: STATUS_FILE for A, STATUS_FILE.b for B:
 *   "ready"                                 connected; SIGUSR1 starts the rounds
 *   "round S R tx T rx X inq I outq O"      after each round (S: A or B)
 *   "STALL ..."  no byte for STALL_S seconds while data is owed
 *   "BAD ..."    a byte that is not the peer's
 *   "END S tx T rx X crc C"                 after SIGUSR2 asked A to end:
 *                both sides shut down, read to EOF, and stop.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <net/if.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <linux/sockios.h>
#include <unistd.h>

#include "common.h"

#define SALT_A 0x4100000000000000ULL
#define SALT_B 0x4200000000000000ULL
#define PORT 7411
#define STALL_S 10
#define CHUNK (256 << 10)

static volatile sig_atomic_t end_wanted;
static const char *side = "A";

static void on_usr2(int sig)
{
	(void)sig;
	end_wanted = 1;
}

struct stream {
	uint64_t salt;
	uint64_t off; /* bytes so far */
};

static uint32_t crc_table[256];

static void crc_init(void)
{
	for (uint32_t i = 0; i < 256; i++) {
		uint32_t c = i;

		for (int k = 0; k < 8; k++)
			c = c & 1 ? 0xedb88320U ^ (c >> 1) : c >> 1;
		crc_table[i] = c;
	}
}

/* zlib's crc32(), continued over calls: start with 0. */
static uint32_t crc32_update(uint32_t crc, const unsigned char *p, size_t n)
{
	crc = ~crc;
	while (n--)
		crc = crc_table[(crc ^ *p++) & 0xff] ^ (crc >> 8);
	return ~crc;
}

static unsigned char stream_byte(const struct stream *s, uint64_t off)
{
	uint64_t block = (off >> 3) + s->salt;

	return block >> ((off & 7) * 8);
}

static void stream_fill(struct stream *s, unsigned char *buf, size_t n)
{
	for (size_t i = 0; i < n; i++)
		buf[i] = stream_byte(s, s->off + i);
}

struct end {
	int data, ctl;
	struct stream tx, rx; /* tx: ours; rx: the peer's, as far as received */
	uint32_t crc;
	uint64_t round;
};

static void queues(int fd, int *inq, int *outq)
{
	if (ioctl(fd, SIOCINQ, inq))
		*inq = -1;
	if (ioctl(fd, SIOCOUTQ, outq))
		*outq = -1;
}

static void report(struct end *e, const char *what)
{
	int inq, outq;

	queues(e->data, &inq, &outq);
	status("%s %s round %llu tx %llu rx %llu inq %d outq %d", what, side, (unsigned long long)e->round,
	       (unsigned long long)e->tx.off, (unsigned long long)e->rx.off, inq, outq);
}

static void die(struct end *e, const char *what)
{
	int err = errno;

	report(e, what);
	fprintf(stderr, "%s: %s: %s\n", side, what, strerror(err));
	_exit(1);
}

/*
 * Write our stream until the socket takes no more (it is non-blocking),
 * write_size bytes a call: zdtm's test writes 17 at a time, which makes
 * the fill slow and the queues' segments small, and so is our default.
 */
static int write_size = 17, read_size = 4096;

static uint64_t fill(struct end *e)
{
	static unsigned char buf[CHUNK];
	uint64_t sent = 0;

	for (;;) {
		ssize_t n;

		stream_fill(&e->tx, buf, write_size);
		n = send(e->data, buf, write_size, MSG_DONTWAIT);
		if (n < 0) {
			if (errno == EAGAIN || errno == EINTR)
				return sent;
			die(e, "BAD send");
		}
		e->tx.off += n;
		sent += n;
	}
}

/*
 * Read at least want bytes of the peer's stream (or to EOF when eof),
 * checking each.  Returns what was read; reports STALL when nothing came
 * for STALL_S seconds (and keeps waiting: the test sees the status).
 */
static uint64_t drain(struct end *e, uint64_t want, int eof)
{
	static unsigned char buf[CHUNK];
	uint64_t got = 0;
	int idle_ms = 0;

	while (eof || got < want) {
		struct pollfd p = { .fd = e->data, .events = POLLIN };
		ssize_t n;
		int r = poll(&p, 1, 100);

		if (r < 0 && errno != EINTR)
			die(e, "BAD poll");
		if (r <= 0) {
			idle_ms += 100;
			if (idle_ms == STALL_S * 1000)
				report(e, "STALL");
			continue;
		}
		n = recv(e->data, buf, read_size, MSG_DONTWAIT);
		if (n < 0) {
			if (errno == EAGAIN || errno == EINTR)
				continue;
			die(e, "BAD recv");
		}
		if (n == 0) {
			if (eof)
				break;
			errno = EPIPE;
			die(e, "BAD early EOF");
		}
		idle_ms = 0;
		for (ssize_t i = 0; i < n; i++) {
			if (buf[i] != stream_byte(&e->rx, e->rx.off + i)) {
				status("BAD %s at %llu: 0x%02x, not 0x%02x", side, (unsigned long long)(e->rx.off + i),
				       buf[i], stream_byte(&e->rx, e->rx.off + i));
				_exit(1);
			}
		}
		e->crc = crc32_update(e->crc, buf, n);
		e->rx.off += n;
		got += n;
	}
	return got;
}

static void ctl_send(struct end *e, uint64_t v)
{
	char *p = (char *)&v;
	size_t left = sizeof(v);

	while (left) {
		ssize_t n = write(e->ctl, p, left);

		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			die(e, "BAD ctl write");
		p += n;
		left -= n;
	}
}

static uint64_t ctl_recv(struct end *e)
{
	uint64_t v;
	char *p = (char *)&v;
	size_t left = sizeof(v);

	while (left) {
		ssize_t n = read(e->ctl, p, left);

		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			die(e, "BAD ctl read");
		p += n;
		left -= n;
	}
	return v;
}

static void bufs(int fd, int bytes)
{
	setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &bytes, sizeof(bytes));
	setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &bytes, sizeof(bytes));
}

#define END_MARK UINT64_MAX

/* The end: shut our side down, read the peer's to EOF, say what we have. */
static int finish(struct end *e)
{
	if (shutdown(e->data, SHUT_WR))
		die(e, "BAD shutdown");
	drain(e, 0, 1);
	status("END %s tx %llu rx %llu crc %u", side, (unsigned long long)e->tx.off, (unsigned long long)e->rx.off,
	       e->crc);
	return 0;
}

static int run_b(struct end *e)
{
	uint64_t a_sent;

	side = "B";
	for (;;) {
		a_sent = ctl_recv(e);
		if (a_sent == END_MARK) {
			ctl_send(e, e->tx.off);
			return finish(e);
		}
		fill(e);
		drain(e, (a_sent - e->rx.off) / 2, 0);
		e->round++;
		report(e, "round");
		ctl_send(e, e->tx.off);
	}
}

static int run_a(struct end *e)
{
	uint64_t b_sent = 0;

	for (;;) {
		if (end_wanted) {
			ctl_send(e, END_MARK);
			b_sent = ctl_recv(e);
			(void)b_sent;
			return finish(e);
		}
		fill(e);
		ctl_send(e, e->tx.off);
		b_sent = ctl_recv(e);
		drain(e, (b_sent - e->rx.off) / 2, 0);
		e->round++;
		report(e, "round");
	}
}

static int lo_up(void)
{
	struct ifreq ifr = { .ifr_name = "lo" };
	int fd = socket(AF_INET, SOCK_DGRAM, 0);

	if (fd < 0 || ioctl(fd, SIOCGIFFLAGS, &ifr))
		return -1;
	ifr.ifr_flags |= IFF_UP;
	if (ioctl(fd, SIOCSIFFLAGS, &ifr))
		return -1;
	close(fd);
	return 0;
}

static int connect_to(const struct sockaddr_in *addr, int buf)
{
	int fd = socket(AF_INET, SOCK_STREAM, 0);

	if (fd < 0)
		return -1;
	if (buf)
		bufs(fd, buf);
	if (connect(fd, (const struct sockaddr *)addr, sizeof(*addr)))
		return -1;
	return fd;
}

int main(int argc, char **argv)
{
	struct sockaddr_in addr = { .sin_family = AF_INET, .sin_port = htons(PORT) };
	int buf = (argc > 3 ? atoi(argv[3]) : 4) << 20;
	struct end e = { .tx.salt = SALT_A, .rx.salt = SALT_B };
	char bpath[4096];
	int lsk, one = 1;
	pid_t pid;

	if (argc < 3)
		return 2;
	if (argc > 4)
		write_size = atoi(argv[4]);
	if (argc > 5)
		read_size = atoi(argv[5]);
	if (write_size < 1 || write_size > CHUNK || read_size < 1 || read_size > CHUNK)
		return 2;
	status_fd = open(argv[2], O_RDWR | O_CREAT, 0644);
	snprintf(bpath, sizeof(bpath), "%s.b", argv[2]);
	if (status_fd < 0)
		return 2;
	crc_init();
	signal(SIGUSR1, on_usr1);
	signal(SIGUSR2, on_usr2);
	signal(SIGPIPE, SIG_IGN);

	/* A network namespace of our own: criu dumps and restores it with us. */
	if (unshare(CLONE_NEWNET) || lo_up()) {
		perror("netns");
		return 2;
	}
	addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	lsk = socket(AF_INET, SOCK_STREAM, 0);
	setsockopt(lsk, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	if (lsk < 0 || bind(lsk, (struct sockaddr *)&addr, sizeof(addr)) || listen(lsk, 2)) {
		perror("listen");
		return 2;
	}

	pid = fork();
	if (pid < 0)
		return 2;
	if (pid == 0) {
		struct end b = { .tx.salt = SALT_B, .rx.salt = SALT_A };

		close(lsk);
		status_fd = open(bpath, O_RDWR | O_CREAT, 0644);
		if (status_fd < 0)
			_exit(2);
		/* B keeps the kernel's buffers (autotuned), as zdtm's client does. */
		b.data = connect_to(&addr, 0);
		b.ctl = connect_to(&addr, 0);
		if (b.data < 0 || b.ctl < 0) {
			perror("connect");
			_exit(2);
		}
		_exit(run_b(&b));
	}

	e.data = accept(lsk, NULL, NULL);
	e.ctl = accept(lsk, NULL, NULL);
	if (e.data < 0 || e.ctl < 0) {
		perror("accept");
		return 2;
	}
	bufs(e.data, buf);
	close(lsk);
	/* Connected; the rounds start on SIGUSR1, so that "ready" is seen. */
	status("ready");
	wait_report();
	run_a(&e);
	/* B ends too; its status file tells the test how. */
	waitpid(pid, NULL, 0);
	return 0;
}
