/*
 * Memory tracking without soft-dirty: userfaultfd write-protect (async)
 * and PAGEMAP_SCAN.
 *
 * Each dumped task gets a userfaultfd, created in the task by the parasite
 * (a userfaultfd acts on its creator's mm) and handed to criu; the task
 * keeps no fd of it.  At the end of each pass, with the task frozen and its
 * pages taken, criu registers the task's private VMAs with it
 * (UFFDIO_REGISTER_MODE_WP, in asynchronous mode) and write-protects them
 * (PAGEMAP_SCAN, PM_SCAN_WP_MATCHING).  A write to a protected page is
 * resolved by the kernel, which clears the mark; the next pass reads the
 * marks (PAGE_IS_WRITTEN) in the same PAGEMAP_SCAN pagemap-cache.c already
 * does and takes every unwritten page from the parent images.
 *
 * Between two runs the userfaultfds belong to neither, so a pre-dump (or a
 * dump --track-mem --leave-running) leaves a holder: a process of criu's,
 * root's, in no namespace or cgroup of the tasks, that keeps them open and
 * listens on a unix socket in a root-only directory (MEM_TRACK_DIR).  Its
 * name, a random token, is recorded in the inventory of the images, so the
 * next run finds it through its parent images (sealed with them under
 * --encrypt).  The next run takes the userfaultfds, and the holder exits;
 * the run leaves a new holder if the chain goes on.  A holder exits once
 * every task it tracks is gone, and, nobody having asked for it, after
 * --mem-track-hold seconds.  The application sees no fd, no
 * signal and no process of it; what it does see is that its VMAs are
 * registered, so its own UFFDIO_REGISTER on them fails with EBUSY while
 * the chain lasts.
 *
 * A copy-on-write snapshot in the chain (mem-snap.c) needs the VMAs
 * registered with its own userfaultfd: tracking lends them once their
 * marks are read (mem_track_lend()) and registers them again, with the
 * task stopped, once their pages are written (mem_track_take_back()).
 *
 * Never a stale page: a page is taken from the parent only if the task has
 * a record from the holder named by the parent images, the VMA has the
 * same bounds as when it was protected, it is still registered (checked
 * with PM_SCAN_CHECK_WPASYNC before anything is registered in this pass),
 * with our userfaultfd (UFFDIO_REGISTER with it succeeds: another one gets
 * EBUSY), and the page is not written.  Everything else is dumped in full
 * and counted in stats-dump (pages_untracked_task, pages_untracked_vma).
 */

#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <sys/wait.h>

#include "common/list.h"
#include "cr_options.h"
#include "kerndat.h"
#include "linux/userfaultfd.h"
#include "log.h"
#include "mem.h"
#include "mem-snap.h"
#include "mem-track.h"
#include "mman.h"
#include "pagemap_scan.h"
#include "parasite-syscall.h"
#include "pstree.h"
#include "util.h"
#include "vma.h"
#include "xmalloc.h"

#undef LOG_PREFIX
#define LOG_PREFIX "mem-track: "

#define MEM_TRACK_DIR	    "/run/criu-mem-track"
#define MEM_TRACK_TOKEN_LEN 32 /* hex digits */
#define MEM_TRACK_MAGIC	    0x4d54524bU
#define MEM_TRACK_CHUNK	    1024 /* VMA bounds per message */

#define UFFD_TRACK_FEATURES (UFFD_FEATURE_WP_ASYNC | UFFD_FEATURE_WP_UNPOPULATED)

struct mt_range {
	u64 start;
	u64 end;
};

/* One task's tracking: its userfaultfd and what it protected last */
struct mt_task {
	struct list_head l;
	pid_t pid;
	int uffd;
	unsigned int nr;
	struct mt_range *r; /* sorted */
	unsigned int nr_lent;
	struct mt_range *lent; /* a copy-on-write snapshot's until written (sorted) */
	unsigned int nr_given_up;
	struct mt_range *given_up; /* nearly all written: not tracked through this snapshot (sorted) */
};

/* What a holder sends for each task, with the userfaultfd */
struct mt_wire {
	u32 magic;
	s32 pid;
	u32 nr;
	u32 last; /* no more tasks */
	s32 fd;	  /* in the holder's memfd: the userfaultfd's number */
};

static LIST_HEAD(prev_tasks); /* taken from the parent's holder */
static LIST_HEAD(next_tasks); /* protected in this pass */
static bool prev_loaded;
static bool other_method; /* the parent was tracked by userfaultfd, this run by soft-dirty */
static const char *prev_missing = "the parent images record no tracking holder";
static char token[MEM_TRACK_TOKEN_LEN + 1];

/* The task being dumped, and its VMAs that can be taken from the parent */
static struct {
	pid_t pid;
	struct mt_task *rec;
	bool untracked_task;
	unsigned int nr;
	struct mt_range *r;
} cur;

static bool uffd_tracking(void)
{
	return opts.track_mem && mem_track_method() == MEM_TRACK_UFFD;
}

static void mt_free(struct mt_task *t)
{
	if (!t)
		return;
	close_safe(&t->uffd);
	xfree(t->r);
	xfree(t->lent);
	xfree(t->given_up);
	xfree(t);
}

static void mt_free_list(struct list_head *h)
{
	struct mt_task *t, *n;

	list_for_each_entry_safe(t, n, h, l) {
		list_del(&t->l);
		mt_free(t);
	}
}

static int mt_add_range(struct mt_range **r, unsigned int *nr, u64 start, u64 end)
{
	if (*nr % 64 == 0 && xrealloc_safe(r, (*nr + 64) * sizeof(**r)))
		return -1;
	(*r)[*nr].start = start;
	(*r)[*nr].end = end;
	(*nr)++;
	return 0;
}

/* Out of order: a VMA taken back from a copy-on-write snapshot */
static int mt_insert_range(struct mt_range **r, unsigned int *nr, u64 start, u64 end)
{
	unsigned int i;

	if (mt_add_range(r, nr, start, end))
		return -1;
	for (i = *nr - 1; i > 0 && (*r)[i - 1].start > start; i--)
		(*r)[i] = (*r)[i - 1];
	(*r)[i] = (struct mt_range){ .start = start, .end = end };
	return 0;
}

static bool mt_has_range(const struct mt_range *r, unsigned int nr, u64 start, u64 end)
{
	unsigned int lo = 0, hi = nr;

	while (lo < hi) {
		unsigned int mid = (lo + hi) / 2;

		if (r[mid].start == start)
			return r[mid].end == end;
		if (r[mid].start < start)
			lo = mid + 1;
		else
			hi = mid;
	}
	return false;
}

/*
 * What this mechanism can register and protect: private memory criu dumps
 * page by page.  Shared memory is written through other mappings (and
 * other tasks) that a per-mapping mark would not see: it is dumped in full.
 */
static bool vma_trackable(struct vma_area *vma)
{
	if (!vma_area_is_private(vma, kdat.task_size))
		return false;
	if (vma->e->status & (VMA_AREA_VDSO | VMA_AREA_VVAR | VMA_AREA_VSYSCALL | VMA_AREA_AIORING | VMA_AREA_GUARD |
			      VMA_AREA_UPROBES | VMA_AREA_SHSTK))
		return false;
	if (vma->e->flags & (MAP_HUGETLB | MAP_DROPPABLE))
		return false;
	return true;
}

static bool token_valid(const char *t)
{
	size_t i;

	if (strlen(t) != MEM_TRACK_TOKEN_LEN)
		return false;
	for (i = 0; i < MEM_TRACK_TOKEN_LEN; i++)
		if (!((t[i] >= '0' && t[i] <= '9') || (t[i] >= 'a' && t[i] <= 'f')))
			return false;
	return true;
}

static int holder_addr(struct sockaddr_un *addr, const char *t)
{
	memset(addr, 0, sizeof(*addr));
	addr->sun_family = AF_UNIX;
	snprintf(addr->sun_path, sizeof(addr->sun_path), "%s/%s", MEM_TRACK_DIR, t);
	return offsetof(struct sockaddr_un, sun_path) + strlen(addr->sun_path) + 1;
}

/* The holders' directory: root's, and nobody else's to enter */
static int holder_dir(bool create)
{
	struct stat st;

	if (create && mkdir(MEM_TRACK_DIR, 0700) && errno != EEXIST) {
		pr_perror("Can't create %s", MEM_TRACK_DIR);
		return -1;
	}
	if (lstat(MEM_TRACK_DIR, &st)) {
		pr_perror("Can't stat %s", MEM_TRACK_DIR);
		return -1;
	}
	if (!S_ISDIR(st.st_mode) || st.st_uid != 0 || (st.st_mode & 077)) {
		pr_err("%s is not a directory of root's that only root can enter: no holder used\n", MEM_TRACK_DIR);
		return -1;
	}
	return 0;
}

static int peer_is_root(int sk)
{
	struct ucred uc;
	socklen_t len = sizeof(uc);

	if (getsockopt(sk, SOL_SOCKET, SO_PEERCRED, &uc, &len))
		return 0;
	return uc.uid == 0;
}

static int send_wire(int sk, struct mt_wire *w, int fd)
{
	struct iovec iov = { .iov_base = w, .iov_len = sizeof(*w) };
	char cbuf[CMSG_SPACE(sizeof(int))] = {};
	struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1 };
	struct cmsghdr *ch;

	if (fd >= 0) {
		mh.msg_control = cbuf;
		mh.msg_controllen = sizeof(cbuf);
		ch = CMSG_FIRSTHDR(&mh);
		ch->cmsg_level = SOL_SOCKET;
		ch->cmsg_type = SCM_RIGHTS;
		ch->cmsg_len = CMSG_LEN(sizeof(int));
		memcpy(CMSG_DATA(ch), &fd, sizeof(int));
	}
	return sendmsg(sk, &mh, MSG_NOSIGNAL) == sizeof(*w) ? 0 : -1;
}

static int recv_wire(int sk, struct mt_wire *w, int *fd)
{
	struct iovec iov = { .iov_base = w, .iov_len = sizeof(*w) };
	char cbuf[CMSG_SPACE(sizeof(int))];
	struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = cbuf, .msg_controllen = sizeof(cbuf) };
	struct cmsghdr *ch;

	*fd = -1;
	if (recvmsg(sk, &mh, MSG_CMSG_CLOEXEC) != sizeof(*w) || w->magic != MEM_TRACK_MAGIC)
		return -1;
	ch = CMSG_FIRSTHDR(&mh);
	if (ch && ch->cmsg_level == SOL_SOCKET && ch->cmsg_type == SCM_RIGHTS)
		memcpy(fd, CMSG_DATA(ch), sizeof(int));
	return 0;
}

/* Holder: hand everything to the first root peer that names the token */
static int holder_serve(int sk)
{
	char req[MEM_TRACK_TOKEN_LEN];
	struct timeval tv = { .tv_sec = 10 };
	struct mt_task *t;
	struct mt_wire w;
	unsigned int i;

	setsockopt(sk, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	setsockopt(sk, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
	if (!peer_is_root(sk))
		return -1;
	if (recv(sk, req, sizeof(req), 0) != sizeof(req) || memcmp(req, token, sizeof(req)))
		return -1;

	list_for_each_entry(t, &next_tasks, l) {
		w = (struct mt_wire){ .magic = MEM_TRACK_MAGIC, .pid = t->pid, .nr = t->nr };
		if (send_wire(sk, &w, t->uffd))
			return -1;
		for (i = 0; i < t->nr; i += MEM_TRACK_CHUNK) {
			size_t n = min(t->nr - i, (unsigned int)MEM_TRACK_CHUNK) * sizeof(*t->r);

			if (send(sk, t->r + i, n, MSG_NOSIGNAL) != n)
				return -1;
		}
	}
	w = (struct mt_wire){ .magic = MEM_TRACK_MAGIC, .last = 1 };
	return send_wire(sk, &w, -1);
}

/*
 * The holder runs a fresh image of criu (exec'd, so that nothing of this
 * run's memory, keys included, stays with it) that finds what it holds in
 * a memfd: a wire record per task, its VMA bounds after it.
 */
static int holder_load(int mfd)
{
	struct stat st;
	char *p, *end;

	if (fstat(mfd, &st))
		return -1;
	p = mmap(NULL, st.st_size ?: 1, PROT_READ, MAP_PRIVATE, mfd, 0);
	if (p == MAP_FAILED)
		return -1;
	end = p + st.st_size;
	while (p + sizeof(struct mt_wire) <= end) {
		struct mt_wire w;
		struct mt_task *t;
		size_t size;

		memcpy(&w, p, sizeof(w));
		p += sizeof(w);
		size = (size_t)w.nr * sizeof(struct mt_range);
		if (w.magic != MEM_TRACK_MAGIC || p + size > end)
			return -1;
		t = calloc(1, sizeof(*t));
		if (!t)
			return -1;
		t->pid = w.pid;
		t->uffd = w.fd;
		t->nr = w.nr;
		t->r = malloc(size ?: 1);
		if (!t->r)
			return -1;
		memcpy(t->r, p, size);
		p += size;
		list_add_tail(&t->l, &next_tasks);
	}
	return 0;
}

#define HOLD_UNWATCHED (-2) /* a task without a pidfd, but maybe alive (poll() skips negative fds) */

/*
 * What the holder waits on: its socket first, then a pidfd per task, so
 * that it goes once every task it tracks is gone (nothing is left to
 * dump).  A task already gone gets no pidfd.
 */
static struct pollfd *holder_pollfds(int lsk, int *npfd)
{
	struct pollfd *pfd;
	struct mt_task *t;
	int n = 1;

	list_for_each_entry(t, &next_tasks, l)
		n++;
	pfd = calloc(n, sizeof(*pfd));
	if (!pfd)
		return NULL;
	pfd[0] = (struct pollfd){ .fd = lsk, .events = POLLIN };
	n = 1;
	list_for_each_entry(t, &next_tasks, l) {
		pfd[n].fd = syscall(SYS_pidfd_open, t->pid, 0);
		/* Gone already (ESRCH); can't watch it otherwise: hold on, to the time limit. */
		if (pfd[n].fd < 0 && errno != ESRCH)
			pfd[n].fd = HOLD_UNWATCHED;
		pfd[n].events = POLLIN; /* readable once the task exited */
		n++;
	}
	*npfd = n;
	return pfd;
}

/* Some task is still there; a gone one stops being polled (a negative fd). */
static bool tasks_alive(struct pollfd *pfd, int npfd)
{
	bool alive = false;
	int i;

	for (i = 1; i < npfd; i++) {
		if (pfd[i].fd >= 0 && (pfd[i].revents & (POLLIN | POLLHUP | POLLERR))) {
			close(pfd[i].fd);
			pfd[i].fd = -1;
		}
		alive |= pfd[i].fd >= 0 || pfd[i].fd == HOLD_UNWATCHED;
	}
	return alive;
}

int mem_track_holder_main(int argc, char **argv)
{
	struct sockaddr_un addr;
	struct pollfd *pfd;
	int lsk, mfd, npfd;
	time_t deadline;

	if (argc != 6)
		return 1;
	mfd = atoi(argv[2]);
	lsk = atoi(argv[3]);
	if (!token_valid(argv[4]) || atoi(argv[5]) <= 0)
		return 1;
	deadline = time(NULL) + atoi(argv[5]);
	memcpy(token, argv[4], sizeof(token));
	holder_addr(&addr, token);
	prctl(PR_SET_NAME, "criu-mem-track", 0, 0, 0);
	prctl(PR_SET_DUMPABLE, 0, 0, 0, 0);

	if (holder_load(mfd)) {
		unlink(addr.sun_path);
		return 1;
	}
	close(mfd);
	pfd = holder_pollfds(lsk, &npfd);
	if (!pfd) {
		unlink(addr.sun_path);
		return 1;
	}

	while (1) {
		long left = deadline - time(NULL);
		int sk;

		if (left <= 0 || !tasks_alive(pfd, npfd))
			break;
		if (poll(pfd, npfd, left * 1000) <= 0 || !(pfd[0].revents & POLLIN))
			continue;
		sk = accept4(lsk, NULL, NULL, SOCK_CLOEXEC);
		if (sk < 0)
			continue;
		if (holder_serve(sk) == 0) {
			/* Wait for the peer to have everything before closing */
			char c;

			shutdown(sk, SHUT_WR);
			if (read(sk, &c, 1) < 0)
				;
			close(sk);
			break;
		}
		close(sk);
	}
	unlink(addr.sun_path);
	return 0;
}

static void __attribute__((noreturn)) holder_exec(int lsk, int ready)
{
	char a_mfd[16], a_lsk[16], a_hold[16];
	struct sigaction sa = { .sa_handler = SIG_DFL };
	struct mt_task *t;
	int *keep, nr_keep = 0, i, max, prev, mfd;
	sigset_t all;

	mfd = memfd_create("criu-mem-track", 0);
	if (mfd < 0)
		_exit(1);
	list_for_each_entry(t, &next_tasks, l) {
		struct mt_wire w = { .magic = MEM_TRACK_MAGIC, .pid = t->pid, .nr = t->nr, .fd = t->uffd };
		size_t size = (size_t)t->nr * sizeof(*t->r);

		if (write(mfd, &w, sizeof(w)) != sizeof(w) || write(mfd, t->r, size) != size)
			_exit(1);
		nr_keep++;
	}

	/* Keep the socket, the memfd and the userfaultfds; nothing of criu's */
	keep = xmalloc((nr_keep + 3) * sizeof(int));
	if (!keep)
		_exit(1);
	nr_keep = 0;
	keep[nr_keep++] = lsk;
	keep[nr_keep++] = mfd;
	keep[nr_keep++] = ready; /* close-on-exec: its EOF tells criu the exec is done */
	list_for_each_entry(t, &next_tasks, l)
		keep[nr_keep++] = t->uffd;
	for (i = 1; i < nr_keep; i++) { /* insertion sort: a few fds */
		int k = keep[i], j = i - 1;

		while (j >= 0 && keep[j] > k) {
			keep[j + 1] = keep[j];
			j--;
		}
		keep[j + 1] = k;
	}
	prev = -1;
	for (i = 0; i <= nr_keep; i++) {
		max = i < nr_keep ? keep[i] - 1 : (int)(~0U >> 1);
		if (max >= prev + 1)
			cr_close_range(prev + 1, max, 0);
		if (i < nr_keep) {
			prev = keep[i];
			if (keep[i] != ready)
				fcntl(keep[i], F_SETFD, 0);
		}
	}

	i = open("/dev/null", O_RDWR);
	if (i >= 0) {
		dup2(i, 0);
		dup2(i, 1);
		dup2(i, 2);
		if (i > 2)
			close(i);
	}
	for (i = 1; i < NSIG; i++)
		sigaction(i, &sa, NULL);
	signal(SIGPIPE, SIG_IGN);
	signal(SIGHUP, SIG_IGN);
	sigemptyset(&all);
	sigprocmask(SIG_SETMASK, &all, NULL);
	if (chdir("/"))
		; /* nothing relies on the cwd */

	snprintf(a_mfd, sizeof(a_mfd), "%d", mfd);
	snprintf(a_lsk, sizeof(a_lsk), "%d", lsk);
	snprintf(a_hold, sizeof(a_hold), "%u", min(opts.mem_track_hold, (unsigned int)INT_MAX));
	execl("/proc/self/exe", "criu-mem-track", MEM_TRACK_HOLDER_ARG, a_mfd, a_lsk, token, a_hold, NULL);
	_exit(1);
}

/*
 * A socket's mtime is its holder's deadline (spawn_holder()): one well past
 * it is a killed holder's.
 */
static void remove_stale_sockets(void)
{
	time_t stale = time(NULL) - 60;
	struct dirent *de;
	struct stat st;
	DIR *d;

	d = opendir(MEM_TRACK_DIR);
	if (!d)
		return;
	while ((de = readdir(d))) {
		if (!token_valid(de->d_name))
			continue;
		if (!fstatat(dirfd(d), de->d_name, &st, AT_SYMLINK_NOFOLLOW) && S_ISSOCK(st.st_mode) &&
		    st.st_mtime < stale)
			unlinkat(dirfd(d), de->d_name, 0);
	}
	closedir(d);
}

static int spawn_holder(void)
{
	struct timespec ts[2] = {};
	struct sockaddr_un addr;
	int sk, len, status, ready[2];
	pid_t pid;
	char c;

	if (holder_dir(true))
		return -1;
	remove_stale_sockets();

	sk = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (sk < 0) {
		pr_perror("Can't create the holder's socket");
		return -1;
	}
	len = holder_addr(&addr, token);
	unlink(addr.sun_path);
	if (bind(sk, (struct sockaddr *)&addr, len) || listen(sk, 4)) {
		pr_perror("Can't bind the holder's socket %s", addr.sun_path);
		close(sk);
		return -1;
	}
	if (chmod(addr.sun_path, 0600))
		pr_warn("Can't chmod %s\n", addr.sun_path);
	/* The holder's deadline, for remove_stale_sockets() */
	ts[0].tv_nsec = UTIME_OMIT;
	ts[1].tv_sec = time(NULL) + min(opts.mem_track_hold, (unsigned int)INT_MAX);
	if (utimensat(AT_FDCWD, addr.sun_path, ts, AT_SYMLINK_NOFOLLOW))
		pr_warn("Can't set the deadline of %s\n", addr.sun_path);

	if (pipe2(ready, O_CLOEXEC)) {
		pr_perror("Can't create a pipe");
		close(sk);
		unlink(addr.sun_path);
		return -1;
	}

	pid = fork();
	if (pid < 0) {
		pr_perror("Can't fork the holder");
		close(sk);
		close(ready[0]);
		close(ready[1]);
		unlink(addr.sun_path);
		return -1;
	}
	if (pid == 0) {
		/* Detach: a session of its own, and not criu's child */
		setsid();
		pid = fork();
		if (pid != 0)
			_exit(pid < 0);
		close(ready[0]);
		holder_exec(sk, ready[1]);
	}

	close(sk);
	close(ready[1]);
	/* EOF once the holder has exec'd (or died): the next run finds it */
	if (read(ready[0], &c, 1) != 0)
		pr_warn("The holder said something before exec\n");
	close(ready[0]);
	if (waitpid(pid, &status, 0) != pid || !WIFEXITED(status) || WEXITSTATUS(status)) {
		pr_err("The holder did not start\n");
		unlink(addr.sun_path);
		return -1;
	}
	pr_info("Left a holder at %s\n", addr.sun_path);
	return 0;
}

static int take_from_holder(const char *t)
{
	struct sockaddr_un addr;
	struct timeval tv = { .tv_sec = 10 };
	int sk, len, ret = -1;

	if (holder_dir(false))
		return -1;

	sk = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (sk < 0) {
		pr_perror("Can't create a socket");
		return -1;
	}
	setsockopt(sk, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	setsockopt(sk, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
	len = holder_addr(&addr, t);
	if (connect(sk, (struct sockaddr *)&addr, len)) {
		pr_warn("The holder %s is gone (%s)\n", addr.sun_path, strerror(errno));
		goto out;
	}
	if (!peer_is_root(sk)) {
		pr_err("The holder %s is not root's\n", addr.sun_path);
		goto out;
	}
	if (send(sk, t, MEM_TRACK_TOKEN_LEN, MSG_NOSIGNAL) != MEM_TRACK_TOKEN_LEN)
		goto out;

	while (1) {
		struct mt_task *task;
		struct mt_wire w;
		int fd;
		size_t got = 0, size;

		if (recv_wire(sk, &w, &fd)) {
			pr_err("The holder sent a bad record\n");
			goto out;
		}
		if (w.last) {
			close_safe(&fd);
			break;
		}
		task = xzalloc(sizeof(*task));
		if (!task || fd < 0) {
			close_safe(&fd);
			xfree(task);
			goto out;
		}
		task->uffd = fd;
		task->pid = w.pid;
		task->nr = w.nr;
		list_add_tail(&task->l, &prev_tasks);
		size = (size_t)w.nr * sizeof(*task->r);
		task->r = xmalloc(size ?: 1);
		if (!task->r)
			goto out;
		while (got < size) {
			ssize_t n = recv(sk, (char *)task->r + got, size - got, 0);

			if (n <= 0)
				goto out;
			got += n;
		}
	}
	ret = 0;
out:
	close(sk);
	if (ret)
		mt_free_list(&prev_tasks);
	return ret;
}

int mem_track_dump_start(InventoryEntry *parent_ie)
{
	if (!parent_ie || !parent_ie->mem_track_holder) {
		if (parent_ie && uffd_tracking())
			pr_warn("The parent images record no tracking holder: every page is dumped\n");
		return 0;
	}
	if (!token_valid(parent_ie->mem_track_holder)) {
		pr_err("The parent images name a malformed tracking holder\n");
		return -1;
	}

	if (!uffd_tracking()) {
		/*
		 * The chain of userfaultfds ends here: the holder goes.  Soft-dirty
		 * bits were not reset by that chain: no page from the parent.
		 */
		if (!take_from_holder(parent_ie->mem_track_holder))
			pr_info("Tracking with userfaultfd ends: the holder is released\n");
		mt_free_list(&prev_tasks);
		if (opts.track_mem) {
			pr_warn("The parent images were tracked with userfaultfd, not %s: every page is dumped\n",
				mem_track_method_name(mem_track_method()));
			other_method = true;
		}
		return 0;
	}
	if (take_from_holder(parent_ie->mem_track_holder)) {
		pr_warn("Memory tracking was lost (the holder is gone or failed): every page is dumped\n");
		prev_missing = "tracking was lost: no holder";
		return 0;
	}
	prev_loaded = true;
	prev_missing = "a task not tracked at the last pass";
	return 0;
}

static struct mt_task *mt_find(struct list_head *h, pid_t pid)
{
	struct mt_task *t;

	list_for_each_entry(t, h, l)
		if (t->pid == pid)
			return t;
	return NULL;
}

static struct mt_task *take_prev(pid_t pid)
{
	struct mt_task *t = mt_find(&prev_tasks, pid);

	if (t)
		list_del(&t->l);
	return t;
}

int uffd_register_wp(int uffd, u64 start, u64 end)
{
	struct uffdio_register reg = {
		.range = { .start = start, .len = end - start },
		.mode = UFFDIO_REGISTER_MODE_WP,
	};

	return ioctl(uffd, UFFDIO_REGISTER, &reg);
}

/* Is [start, end) registered with a userfaultfd in async write-protect mode? */
static int wp_registered(int pm, u64 start, u64 end)
{
	struct pm_scan_arg args = {
		.size = sizeof(args),
		.flags = PM_SCAN_CHECK_WPASYNC,
		.start = start,
		.end = end,
		/* Registered VMAs match nothing: the walk stops at the VMA */
		.category_inverted = PAGE_IS_WPALLOWED,
		.category_mask = PAGE_IS_WPALLOWED,
	};

	return ioctl(pm, PAGEMAP_SCAN, &args) == 0;
}

/*
 * Protect the populated pages only.  An unpopulated one would get a pte
 * marker, which PAGEMAP_SCAN reports as swapped and not written, like a
 * page that is in the parent: left alone, it gets no mark, and the first
 * write populates it as written.
 */
static int wp_protect(int pm, u64 start, u64 end)
{
	struct pm_scan_arg args = {
		.size = sizeof(args),
		.flags = PM_SCAN_WP_MATCHING | PM_SCAN_CHECK_WPASYNC,
		.start = start,
		.end = end,
		.category_anyof_mask = PAGE_IS_PRESENT | PAGE_IS_SWAPPED,
	};

	return ioctl(pm, PAGEMAP_SCAN, &args);
}

/*
 * A task with no userfaultfd yet gets one now, while the parasite's
 * arguments are free: the page dump that follows needs them intact.
 */
static void get_uffd(pid_t pid, struct parasite_ctl *ctl)
{
	if (!cur.rec) {
		cur.rec = xzalloc(sizeof(*cur.rec));
		if (!cur.rec)
			return;
		cur.rec->uffd = -1;
		cur.rec->pid = pid;
	}
	if (cur.rec->uffd >= 0)
		return;
	cur.rec->uffd = parasite_get_uffd_seized(ctl, UFFD_TRACK_FEATURES);
	if (cur.rec->uffd < 0)
		pr_warn("%d: can't have a userfaultfd in the task: its memory is dumped in full at every pass\n", pid);
}

int mem_track_task_start(struct pstree_item *item, struct vm_area_list *vmas, struct parasite_ctl *ctl)
{
	pid_t pid = item->pid->real;
	struct vma_area *vma;
	unsigned int lost = 0;
	int pm = -1;

	xfree(cur.r);
	memset(&cur, 0, sizeof(cur));
	cur.pid = pid;

	if (!uffd_tracking())
		return 0;

	cur.rec = take_prev(pid);
	if (!cur.rec) {
		if (prev_loaded || strcmp(prev_missing, "the parent images record no tracking holder"))
			pr_warn("%d: no tracking record (%s): all its memory is dumped\n", pid, prev_missing);
		get_uffd(pid, ctl);
		cur.untracked_task = true;
		return 0;
	}

	pm = open_proc(pid, "pagemap");
	if (pm < 0)
		return -1;

	/* Checked before this pass registers anything new */
	list_for_each_entry(vma, &vmas->h, list) {
		u64 s = vma->e->start, e = vma->e->end;

		if (!vma_trackable(vma))
			continue;
		if (mt_has_range(cur.rec->given_up, cur.rec->nr_given_up, s, e))
			continue; /* mem_track_give_up() said why */
		if (!mt_has_range(cur.rec->r, cur.rec->nr, s, e)) {
			pr_info("%d: %" PRIx64 "-%" PRIx64 " is new, changed or given up since the last pass\n", pid, s,
				e);
			lost++;
			continue;
		}
		if (!wp_registered(pm, s, e)) {
			pr_info("%d: %" PRIx64 "-%" PRIx64 " lost its registration (%d)\n", pid, s, e, errno);
			lost++;
			continue;
		}
		if (uffd_register_wp(cur.rec->uffd, s, e)) {
			if (errno == ENOMEM || errno == ESRCH) {
				/* The userfaultfd's mm is gone: an exec, or another task */
				pr_warn("%d: its tracked mm is gone: all its memory is dumped\n", pid);
				close_safe(&cur.rec->uffd);
				cur.nr = 0;
				break;
			}
			pr_info("%d: %" PRIx64 "-%" PRIx64 " is registered with another userfaultfd (%d)\n", pid, s,
				e, errno);
			lost++;
			continue;
		}
		if (mt_add_range(&cur.r, &cur.nr, s, e)) {
			close(pm);
			return -1;
		}
	}
	close(pm);

	if (cur.rec->uffd < 0) {
		cur.untracked_task = true;
		get_uffd(pid, ctl);
	}
	if (lost)
		pr_warn("%d: %u VMAs not tracked since the last pass are dumped in full\n", pid, lost);
	return 0;
}

int mem_track_vma_state(struct pstree_item *item, struct vma_area *vma)
{
	if (other_method)
		return MEM_UNTRACKED_TASK;
	if (!uffd_tracking())
		return MEM_TRACKED;
	if (cur.untracked_task)
		return MEM_UNTRACKED_TASK;
	if (!mt_has_range(cur.r, cur.nr, vma->e->start, vma->e->end))
		return MEM_UNTRACKED_VMA;
	return MEM_TRACKED;
}

int mem_track_task_protect(struct pstree_item *item, struct vm_area_list *vmas, struct parasite_ctl *ctl)
{
	pid_t pid = item->pid->real;
	struct mt_task *t = cur.rec;
	struct vma_area *vma;
	unsigned int failed = 0, given_up = 0;
	int pm;

	cur.rec = NULL;
	if (!t || t->uffd < 0) {
		mt_free(t);
		return 0;
	}
	t->pid = pid;
	t->nr = t->nr_lent = 0;
	xfree(t->r);
	xfree(t->lent);
	t->r = t->lent = NULL;
	list_add_tail(&t->l, &next_tasks);

	/*
	 * A dump after which the tasks do not go on ends the chain: nothing to
	 * protect (a walk of all their memory in the frozen time), and the
	 * userfaultfd goes with mem_track_release(), after they are killed.
	 */
	if (opts.mode == CR_DUMP && opts.final_state != TASK_ALIVE)
		return 0;

	pm = open_proc(pid, "pagemap");
	if (pm < 0)
		return -1;

	list_for_each_entry(vma, &vmas->h, list) {
		u64 s = vma->e->start, e = vma->e->end;

		if (!vma_trackable(vma))
			continue;
		if (uffd_register_wp(t->uffd, s, e)) {
			/* Given up before the freeze: the snapshot's, and not worth a second stop */
			if (errno == EBUSY && mt_has_range(t->given_up, t->nr_given_up, s, e)) {
				given_up++;
				continue;
			}
			/* A copy-on-write snapshot's: taken back once it is written */
			if (errno == EBUSY && mem_snap_hand_back(pid, s, e)) {
				if (mt_add_range(&t->lent, &t->nr_lent, s, e)) {
					close(pm);
					return -1;
				}
				continue;
			}
			/*
			 * EBUSY: the task's own userfaultfd; EINVAL: a kind the
			 * kernel won't track
			 */
			pr_info("%d: can't register %" PRIx64 "-%" PRIx64 ": %d\n", pid, s, e, errno);
			failed++;
			continue;
		}
		if (wp_protect(pm, s, e) < 0) {
			pr_info("%d: can't write-protect %" PRIx64 "-%" PRIx64 ": %d\n", pid, s, e, errno);
			failed++;
			continue;
		}
		if (mt_add_range(&t->r, &t->nr, s, e)) {
			close(pm);
			return -1;
		}
	}
	close(pm);

	if (failed)
		pr_warn("%d: %u VMAs can't be tracked now: the next pass dumps them in full\n", pid, failed);
	if (given_up)
		pr_info("%d: %u VMAs given up before the freeze stay untracked: the next pass dumps them in full\n",
			pid, given_up);
	pr_info("%d: %u VMAs write-protected for tracking, %u once the copy-on-write snapshot has written them\n", pid,
		t->nr, t->nr_lent);
	return 0;
}

/*
 * A copy-on-write snapshot (mem-snap.c) needs the task's memory registered
 * with a userfaultfd of its own, in synchronous mode, and a VMA takes one
 * only: tracking lends it the VMAs it tracks, once this pass has read
 * their marks, and mem_track_take_back() has them back.
 */
int mem_track_lend(pid_t pid, u64 start, u64 end)
{
	struct uffdio_range range = { .start = start, .len = end - start };

	if (!uffd_tracking() || cur.pid != pid || !cur.rec || cur.rec->uffd < 0 ||
	    !mt_has_range(cur.r, cur.nr, start, end))
		return -1;
	return ioctl(cur.rec->uffd, UFFDIO_UNREGISTER, &range);
}

/* Pages of [start, end) this chain's userfaultfds have seen written since the last pass */
static long count_written(int pm, unsigned long start, unsigned long end)
{
	struct page_region vec[256];
	unsigned long walk = start;
	long n = 0;

	while (walk < end) {
		struct pm_scan_arg a = {
			.size = sizeof(a),
			.start = walk,
			.end = end,
			.vec = (u64)(unsigned long)vec,
			.vec_len = ARRAY_SIZE(vec),
			.category_mask = PAGE_IS_WPALLOWED | PAGE_IS_WRITTEN,
			.category_anyof_mask = PAGE_IS_PRESENT | PAGE_IS_SWAPPED,
			.return_mask = PAGE_IS_WRITTEN,
		};
		long i, got = ioctl(pm, PAGEMAP_SCAN, &a);

		if (got < 0)
			return -1;
		for (i = 0; i < got; i++)
			n += (vec[i].end - vec[i].start) / PAGE_SIZE;
		walk = a.walk_end;
	}
	return n;
}

long mem_track_written(pid_t pid, unsigned int share)
{
	size_t cap = 0;
	char *line = NULL;
	long pages = 0;
	FILE *maps;
	int pm;

	if (!opts.track_mem || !opts.img_parent || !uffd_tracking() || !kdat.has_pagemap_scan)
		return 0;
	maps = fopen_proc(pid, "maps");
	if (!maps)
		return 0;
	pm = open_proc(pid, "pagemap");
	while (pm >= 0 && getline(&line, &cap, maps) > 0) {
		unsigned long start, end;
		long n;

		if (sscanf(line, "%lx-%lx", &start, &end) != 2)
			continue;
		n = count_written(pm, start, end);
		if (n > 0 && (!share || n * share < (end - start) / PAGE_SIZE))
			pages += n;
	}
	free(line);
	fclose(maps);
	close_safe(&pm);
	return pages;
}

/*
 * Lending a VMA to a copy-on-write snapshot costs the task two walks of
 * its page tables while it is stopped, the second in a stop of its own
 * (mem-snap.c's hand_back()): 70-80 ms of frozen time for 1 GiB of 4 KiB
 * pages on stop 37's machine, 20-25 ms on stop 38's.  A VMA
 * with at most 1/share of it unwritten since the last pass has little to
 * take from the parent, and likely nothing by the next pass: it is
 * unregistered now, the tasks running (they wait for the walk only if
 * they fault meanwhile), dumped in full, registered by the snapshot like
 * new memory and not taken back; the next pass dumps it in full, and
 * tracks it again.
 */
void mem_track_give_up(unsigned int share)
{
	struct mt_task *t;

	if (!uffd_tracking() || !kdat.has_pagemap_scan)
		return;
	list_for_each_entry(t, &prev_tasks, l) {
		unsigned int i, kept = 0;
		int pm;

		if (t->uffd < 0)
			continue;
		/* Gone since the last pass: its record finds no task */
		pm = __open_proc(t->pid, ENOENT, O_RDONLY, "pagemap");
		if (pm < 0)
			continue;
		for (i = 0; i < t->nr; i++) {
			struct mt_range *r = &t->r[i];
			struct uffdio_range range = { .start = r->start, .len = r->end - r->start };
			unsigned long pages = range.len / PAGE_SIZE;
			long n = count_written(pm, r->start, r->end);

			if (n < 0 || (pages - n) * share > pages || ioctl(t->uffd, UFFDIO_UNREGISTER, &range) ||
			    mt_add_range(&t->given_up, &t->nr_given_up, r->start, r->end)) {
				t->r[kept++] = *r;
				continue;
			}
			pr_info("%d: VMA %" PRIx64 "-%" PRIx64 ": %ld of its %lu pages written since the last pass: "
				"given up, not lent: dumped in full by this pass and the next\n",
				t->pid, r->start, r->end, n, pages);
		}
		t->nr = kept;
		close(pm);
	}
}

int mem_track_take_back(pid_t pid, int pm, u64 start, u64 end, const struct page_region *written, unsigned long nr)
{
	struct mt_task *t = mt_find(&next_tasks, pid);
	unsigned long i;
	u64 from = start;

	if (!t || t->uffd < 0 || !mt_has_range(t->lent, t->nr_lent, start, end))
		return 1;
	if (uffd_register_wp(t->uffd, start, end))
		return -1;
	/* Protected but where the task wrote since the snapshot's freeze */
	for (i = 0; i <= nr; i++) {
		u64 to = i < nr ? written[i].start : end;

		if (to > from && wp_protect(pm, from, to) < 0)
			return -1;
		if (i < nr)
			from = written[i].end;
	}
	return mt_insert_range(&t->r, &t->nr, start, end);
}

void mem_track_inventory(InventoryEntry *he, bool pre_dump)
{
	u8 rnd[MEM_TRACK_TOKEN_LEN / 2];
	int i;

	if (!uffd_tracking() || list_empty(&next_tasks))
		return;
	/* The chain goes on only if the tasks do */
	if (!pre_dump && opts.final_state != TASK_ALIVE)
		return;

	if (getrandom(rnd, sizeof(rnd), 0) != sizeof(rnd)) {
		pr_perror("Can't name the tracking holder");
		return;
	}
	for (i = 0; i < sizeof(rnd); i++)
		sprintf(token + 2 * i, "%02x", rnd[i]);
	he->mem_track_holder = token;
}

int mem_track_dump_finish(int ret)
{
	int err = 0;

	if (!ret && token[0] && spawn_holder())
		pr_warn("No tracking holder: the next dump will dump every page\n");

	token[0] = '\0';
	return err;
}

void mem_track_release(void)
{
	/* The holder has its copies: criu's go, and with the last one, tracking */
	mt_free_list(&prev_tasks);
	mt_free_list(&next_tasks);
	xfree(cur.r);
	memset(&cur, 0, sizeof(cur));
}
