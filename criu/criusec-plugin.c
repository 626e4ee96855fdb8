// SPDX-License-Identifier: GPL-2.0-only
/*
 * criusec and CRIU plugins.
 *
 * Plugins (amdgpu) write image files of their own.  criu_image_open() and
 * criu_image_close() (criu-plugin.h) give them those files through criu:
 * without --encrypt a plain file in the images directory (or the image
 * streamer's, with --stream), as plugins did themselves; under --encrypt,
 * at dump, a memfd whose content criu_image_close() seals into the file
 * through criusec's stream layer (kind "plugin"), listed in the manifest
 * and so covered by the checkpoint's signature; at restore, a memfd with
 * the plaintext authenticated, with every other image, before any
 * plugin or task ran.
 *
 * Fail closed: a plugin that still writes with openat(criu_get_image_dir())
 * would leave its file in clear.  So an encrypted dump fails, naming the
 * file and the plugins loaded, when at its end (and after the plugins'
 * exit hooks) the images directory holds a new or changed file that the
 * manifest does not list and criu did not write in clear itself: any such
 * file but a log when plugins are loaded, a plugin's image name (*.img of
 * no CRIU kind) whether or not.  Files left as they were do not count (an
 * engine's).  A restore refuses an encrypted checkpoint whose directory
 * holds a plugin's image name that its manifest does not list.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "criu-plugin.h"
#include "criusec.h"
#include "criusec-glue.h"
#include "criusec-layer.h"
#include "cr_options.h"
#include "image.h"
#include "img-streamer.h"
#include "log.h"
#include "plugin.h"
#include "servicefd.h"
#include "util.h"
#include "common/xmalloc.h"

#undef LOG_PREFIX
#define LOG_PREFIX "criusec: "

/* ---- what the images directory held when the encrypted dump started ---- */

struct dir_entry_snap {
	char *name;
	ino_t ino;
	struct timespec mtime, ctime;
};

static struct dir_entry_snap *snap;
static size_t nr_snap;
/* The manifest is about to be written: snap is what it covers. */
static bool sealed;
/* criu_image_open() refused to write once the manifest was sealed. */
static bool late_refused;

static bool same_time(const struct timespec *a, const struct timespec *b)
{
	return a->tv_sec == b->tv_sec && a->tv_nsec == b->tv_nsec;
}

static void snap_free(void)
{
	size_t i;

	for (i = 0; i < nr_snap; i++)
		xfree(snap[i].name);
	xfree(snap);
	snap = NULL;
	nr_snap = 0;
}

void criusec_imgdir_forget(void)
{
	snap_free();
	sealed = false;
}

static int cmp_snap(const void *a, const void *b)
{
	return strcmp(((const struct dir_entry_snap *)a)->name, ((const struct dir_entry_snap *)b)->name);
}

static int cmp_str(const void *a, const void *b)
{
	return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* A sorted copy of a list of names, to look names up in it. */
struct name_set {
	const char **v;
	size_t n;
};

static int name_set_init(struct name_set *ns, const char *const *names, size_t n)
{
	ns->n = n;
	ns->v = xmalloc(sizeof(*ns->v) * (n ?: 1));
	if (!ns->v)
		return -1;
	memcpy(ns->v, names, sizeof(*ns->v) * n);
	qsort(ns->v, n, sizeof(*ns->v), cmp_str);
	return 0;
}

static bool name_set_has(const char *name, void *arg)
{
	struct name_set *ns = arg;

	return bsearch(&name, ns->v, ns->n, sizeof(*ns->v), cmp_str) != NULL;
}

/*
 * fn for each entry of the directory dfd but "." and "..", with its lstat
 * (an entry gone meanwhile is skipped), until fn returns non-zero: that,
 * or 0; -1 if the directory can't be listed (said why).
 */
static int walk_dir(int dfd, int (*fn)(const char *name, const struct stat *st, void *arg), void *arg)
{
	struct dirent *de;
	struct stat st;
	int fd, ret = 0;
	DIR *dir;

	fd = openat(dfd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd < 0 || !(dir = fdopendir(fd))) {
		pr_perror("Can't list the images directory");
		if (fd >= 0)
			close(fd);
		return -1;
	}
	while (!ret && (de = readdir(dir))) {
		if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, ".."))
			continue;
		if (fstatat(fd, de->d_name, &st, AT_SYMLINK_NOFOLLOW))
			continue;
		ret = fn(de->d_name, &st, arg);
	}
	closedir(dir);
	return ret;
}

static int snap_one(const char *name, const struct stat *st, void *arg)
{
	struct dir_entry_snap *n;

	n = xrealloc(snap, sizeof(*snap) * (nr_snap + 1));
	if (!n)
		return -1;
	snap = n;
	snap[nr_snap].name = xstrdup(name);
	if (!snap[nr_snap].name)
		return -1;
	snap[nr_snap].ino = st->st_ino;
	snap[nr_snap].mtime = st->st_mtim;
	snap[nr_snap].ctime = st->st_ctim;
	nr_snap++;
	return 0;
}

/* snap: what the images directory holds now. */
static int snapshot_dir(void)
{
	snap_free();
	if (walk_dir(get_service_fd(IMG_FD_OFF), snap_one, NULL)) {
		criusec_imgdir_forget();
		return -1;
	}
	qsort(snap, nr_snap, sizeof(*snap), cmp_snap);
	return 0;
}

int criusec_imgdir_snapshot(void)
{
	criusec_imgdir_forget();
	late_refused = false;
	return snapshot_dir();
}

/* Left as it was before the dump: not this dump's (an engine's file, an old log). */
static bool untouched(const char *name, const struct stat *st)
{
	struct dir_entry_snap key = { .name = (char *)name }, *e;

	e = bsearch(&key, snap, nr_snap, sizeof(*snap), cmp_snap);
	return e && e->ino == st->st_ino && same_time(&e->mtime, &st->st_mtim) && same_time(&e->ctime, &st->st_ctim);
}

/* pages-N.img: the page cipher's, if its tags (pagetags-N.img) are listed, or if it holds nothing. */
static bool page_image_covered(const char *name, const struct stat *st, bool (*listed)(const char *, void *),
			       void *arg)
{
	unsigned long id;
	char tags[64], end;

	if (sscanf(name, "pages-%lu.im%c", &id, &end) != 2 || end != 'g')
		return false;
	snprintf(tags, sizeof(tags), "pages-%lu.img", id);
	if (strcmp(tags, name))
		return false;
	if (S_ISREG(st->st_mode) && st->st_size == 0)
		return true;
	snprintf(tags, sizeof(tags), "pagetags-%lu.img", id);
	return listed(tags, arg);
}

/*
 * An image file (*.img) that is none of criu's own kinds: a plugin's.  criu
 * reads its own images only through the manifest (open_read() refuses an
 * unlisted one), so only these could be read around it.
 */
static bool is_plugin_image_name(const char *name)
{
	size_t len = strlen(name);

	if (len < 4 || strcmp(name + len - 4, ".img"))
		return false; /* logs, stats, an engine's files */
	return !criusec_criu_image_name(name);
}

/* Files criu writes in clear by design, or after the manifest. */
static bool criu_own(const char *name, const struct stat *st)
{
	static const char *const own[] = { "cipher.img", "cipher-manifest.img", "stats-dump", "stats-restore" };
	struct stat lst;
	size_t i;

	for (i = 0; i < ARRAY_SIZE(own); i++)
		if (!strcmp(name, own[i]))
			return true;
	/* criu's log, when it is in the images directory */
	if (fstat(log_get_fd(), &lst) == 0 && lst.st_dev == st->st_dev && lst.st_ino == st->st_ino)
		return true;
	/* --log-pid: LOG.PID beside LOG */
	if (opts.log_file_per_pid && opts.output) {
		const char *base = strrchr(opts.output, '/');
		size_t len;

		base = base ? base + 1 : opts.output;
		len = strlen(base);
		if (!strncmp(name, base, len) && name[len] == '.')
			return true;
	}
	return false;
}

/* "name (path), ..." of the plugins criu loaded, for the error. */
static int plugin_names(char *buf, size_t len)
{
	plugin_desc_t *p;
	size_t off = 0;
	int n = 0;

	buf[0] = '\0';
	list_for_each_entry(p, &cr_plugin_ctl.head, list) {
		n++;
		if (off < len)
			off += snprintf(buf + off, len - off, "%s%s", off ? ", " : "", p->d->name);
	}
	if (!n)
		snprintf(buf, len, "none");
	return n;
}

/*
 * A new or changed file that nothing listed or expected: what could be a
 * plugin's, written around criusec.  A plugin's image name (*.img of no
 * CRIU kind) always counts; with plugins loaded, any file but a log does
 * (another process may share the directory: a page server writes its log
 * and its page images there, ZDTM does that).
 */
static bool written_around(const char *name, bool plugins)
{
	size_t len = strlen(name);

	if (is_plugin_image_name(name))
		return true;
	return plugins && !(len >= 4 && !strcmp(name + len - 4, ".log"));
}

static int pending_check(void);

struct check_walk {
	struct name_set listed;
	char plugins[256];
	int nr_plugins;
	int bad;
};

/* An entry of the images directory at the end of the dump: listed, CRIU's own, there before, or refused. */
static int check_one(const char *name, const struct stat *st, void *arg)
{
	struct check_walk *w = arg;

	if (name_set_has(name, &w->listed) || criu_own(name, st) ||
	    page_image_covered(name, st, name_set_has, &w->listed))
		return 0;
	if (!untouched(name, st) && !written_around(name, w->nr_plugins > 0)) {
		pr_info("%s: written into the images directory during the dump, not a plugin's image\n", name);
		return 0;
	}
	if (untouched(name, st)) {
		if (is_plugin_image_name(name))
			pr_warn("%s was in the images directory before the dump and is not part of it: a restore "
				"of this checkpoint refuses it (remove it)\n",
				name);
		else
			pr_info("%s: in the images directory before the dump, left as it was\n", name);
		return 0;
	}
	pr_err("%s was written into the images directory outside criusec, in clear (plugins loaded: %s); "
	       "plugins must write images with criu_image_open(): the encrypted dump fails\n",
	       name, w->plugins);
	w->bad++;
	return 0;
}

int criusec_imgdir_check(void)
{
	const char **names = NULL, **nn, *name;
	struct check_walk w = {};
	unsigned int off = 0;
	size_t n = 0;
	int ret;

	if (pending_check())
		return -1;
	/* The manifest's names, to look the directory's up in. */
	while ((name = criusec_manifest_name(&off))) {
		nn = xrealloc(names, sizeof(*names) * (n + 1));
		if (!nn) {
			xfree(names);
			return -1;
		}
		names = nn;
		names[n++] = name;
	}
	if (name_set_init(&w.listed, names, n)) {
		xfree(names);
		return -1;
	}
	xfree(names);
	w.nr_plugins = plugin_names(w.plugins, sizeof(w.plugins));
	ret = walk_dir(get_service_fd(IMG_FD_OFF), check_one, &w);
	xfree(w.listed.v);
	if (ret || w.bad)
		return -1;
	/* What the manifest will cover: from now on nothing may change (criusec_dump_check_late()). */
	sealed = true;
	return snapshot_dir();
}

/* Before the plugins' exit hooks: what criu did since the seal (post-dump scripts) is not theirs. */
static char exiting_plugins[256]; /* cr_plugin_fini() unloads them */
static int nr_exiting_plugins;

void criusec_plugins_exiting(int ret)
{
	nr_exiting_plugins = plugin_names(exiting_plugins, sizeof(exiting_plugins));
	if (!ret && sealed && snapshot_dir())
		late_refused = true; /* can't tell: fail safe */
}

/* An entry of the images directory after the plugins' exit hooks: refused if one of them wrote it. */
static int late_one(const char *name, const struct stat *st, void *arg)
{
	int *bad = arg;

	if (criu_own(name, st) || untouched(name, st) || !written_around(name, nr_exiting_plugins > 0))
		return 0;
	pr_err("%s was written into the images directory after the encrypted dump was sealed, in clear "
	       "(plugins loaded: %s): the dump fails\n",
	       name, exiting_plugins);
	(*bad)++;
	return 0;
}

/*
 * After the plugins' exit hooks, which run once the manifest is sealed:
 * anything they wrote into the images directory is in clear.  The dump
 * then fails, and its cipher.img goes, so that nothing restores from it.
 */
int criusec_dump_check_late(int ret)
{
	int bad = late_refused;

	if (ret || !sealed) {
		criusec_imgdir_forget();
		return 0;
	}
	if (walk_dir(get_service_fd(IMG_FD_OFF), late_one, &bad))
		bad++;
	if (bad && unlinkat(get_service_fd(IMG_FD_OFF), "cipher.img", 0) && errno != ENOENT)
		pr_perror("Can't remove cipher.img");
	criusec_imgdir_forget();
	return bad ? -1 : 0;
}

struct restore_walk {
	struct name_set listed;
	int bad;
};

static int restore_one(const char *name, const struct stat *st, void *arg)
{
	struct restore_walk *w = arg;

	if (!is_plugin_image_name(name) || name_set_has(name, &w->listed))
		return 0;
	pr_err("%s is in the images directory but not in the checkpoint's manifest (a plugin's image written in "
	       "clear, or added): refusing the encrypted checkpoint\n",
	       name);
	w->bad++;
	return 0;
}

int criusec_imgdir_check_restore(int dfd, const char *const *names, size_t n)
{
	struct restore_walk w = {};
	int ret;

	if (name_set_init(&w.listed, names, n))
		return -1;
	ret = walk_dir(dfd, restore_one, &w);
	xfree(w.listed.v);
	return ret || w.bad ? -1 : 0;
}

/* ---- criu_image_open() and criu_image_close() ---- */

/* A plugin's image being written under --encrypt: plaintext in a memfd until closed. */
struct plugin_img {
	char *name;
	int memfd; /* our own reference */
	dev_t dev;
	ino_t ino; /* the memfd's: found again from any descriptor of it */
	struct plugin_img *next;
};

/* amdgpu dumps each GPU in a thread of its own. */
static pthread_mutex_t plugin_img_lock = PTHREAD_MUTEX_INITIALIZER;
static struct plugin_img *plugin_imgs;

/* An encrypted dump is on (in this process or the criu it was forked from). */
static bool encrypting(void)
{
	return criusec_dump_ctx != NULL;
}

/* Seal a plugin's plaintext (memfd) into real_fd, listed in the manifest. */
static int plugin_seal(const char *name, int memfd, int real_fd)
{
	struct criusec_stream_info info;

	if (!criusec_dump_ctx) {
		pr_err("%s: no encrypted dump to seal it into\n", name);
		return -1;
	}
	if (lseek(memfd, 0, SEEK_SET) < 0 ||
	    criusec_stream_seal_fd(criusec_dump_ctx, CRIUSEC_PLUGIN_KIND, name, memfd, real_fd, &info)) {
		pr_err("%s: can't encrypt: %s\n", name, criusec_last_error());
		criusec_manifest_fail();
		return -1;
	}
	criusec_manifest_add(CRIUSEC_PLUGIN_KIND, name, &info, NULL);
	return 0;
}

/*
 * Restore: *fd a memfd with the authenticated plaintext of a plugin's
 * image; *fd -1 with 0 when the checkpoint is plaintext (open the file);
 * -1 with errno ENOENT (not in the checkpoint) or EACCES (refused, said why).
 */
static int plugin_open_read(const char *name, int *fd)
{
	struct dir_state *d;
	struct stat st;
	int i;

	*fd = -1;
	d = criusec_dir_lookup(get_service_fd(IMG_FD_OFF));
	if (!d) {
		errno = EACCES; /* said why when the directory failed */
		return -1;
	}
	if (!d->encrypted)
		return 0; /* a plaintext checkpoint: the caller opens the file */
	i = criusec_manifest_index(d, name);
	if (i < 0) {
		if (fstatat(get_service_fd(IMG_FD_OFF), name, &st, AT_SYMLINK_NOFOLLOW) == 0) {
			pr_err("%s is not an image of this checkpoint (not in its manifest): refusing it to the plugin\n",
			       name);
			errno = EACCES;
		} else {
			errno = ENOENT; /* not dumped, as in a plain checkpoint */
		}
		return -1;
	}
	if (strcmp(d->manifest->kinds[i], CRIUSEC_PLUGIN_KIND)) {
		pr_err("%s was dumped as %s, not as a plugin's image\n", name, d->manifest->kinds[i]);
		errno = EACCES;
		return -1;
	}
	*fd = criusec_plain_copy(&d->plain[i], name);
	return *fd < 0 ? -1 : 0;
}

/* A plain file name that is none of criu's own (its images, stats-*, logs are not *.img). */
static bool plugin_name_ok(const char *name)
{
	if (!name || !name[0] || strchr(name, '/') || !strcmp(name, ".") || !strcmp(name, "..") ||
	    strlen(name) > 200)
		return false;
	if (!strncmp(name, "stats-", 6) || criusec_criu_image_name(name))
		return false;
	return true;
}

/* Under plugin_img_lock: name is written once per dump (the manifest lists it once). */
static bool already_written(const char *name)
{
	struct plugin_img *p;
	unsigned int off = 0;
	const char *n;

	for (p = plugin_imgs; p; p = p->next)
		if (!strcmp(p->name, name))
			return true;
	while ((n = criusec_manifest_name(&off)))
		if (!strcmp(n, name))
			return true;
	return false;
}

static bool writing(int flags)
{
	return (flags & O_ACCMODE) != O_RDONLY;
}

static int open_plain(const char *name, int flags)
{
	int fd;

	if (opts.stream)
		fd = img_streamer_open((char *)name, writing(flags) ? O_DUMP : O_RSTR);
	else if (writing(flags))
		fd = openat(criu_get_image_dir(), name, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	else
		fd = openat(criu_get_image_dir(), name, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -errno ?: -EIO;
	return fd;
}

static int open_sealed(const char *name)
{
	struct plugin_img *p;
	struct stat st;
	int fd;

	fd = memfd_create(name, MFD_CLOEXEC);
	if (fd < 0) {
		pr_perror("%s: can't make a memfd", name);
		return -errno;
	}
	p = xzalloc(sizeof(*p));
	if (!p || !(p->name = xstrdup(name)) || fstat(fd, &st) ||
	    (p->memfd = fcntl(fd, F_DUPFD_CLOEXEC, 0)) < 0) {
		close(fd);
		if (p)
			xfree(p->name);
		xfree(p);
		return -ENOMEM;
	}
	p->dev = st.st_dev;
	p->ino = st.st_ino;
	p->next = plugin_imgs;
	plugin_imgs = p;
	return fd;
}

int criu_image_open(const char *name, int flags)
{
	int fd;

	if (!plugin_name_ok(name)) {
		pr_err("criu_image_open: \"%s\" is not a name a plugin may give its image\n", name ?: "(null)");
		return -EINVAL;
	}
	if (!writing(flags) && encrypting()) {
		pr_err("criu_image_open: %s: an encrypted dump's images are not read back\n", name);
		return -EINVAL;
	}
	if (!writing(flags)) {
		/* An encrypted checkpoint: only what was authenticated with it. */
		if (plugin_open_read(name, &fd))
			return -errno ?: -EIO;
		if (fd >= 0) {
			pr_info("%s: handed to the plugin, authenticated\n", name);
			return fd;
		}
		return open_plain(name, flags);
	}
	if (!encrypting()) {
		if (sealed) {
			/* A plugin's exit hook, after the encrypted dump's manifest was written. */
			pr_err("criu_image_open: %s: the encrypted dump is already sealed; plugins write their images "
			       "while the tasks are frozen\n",
			       name);
			late_refused = true;
			return -EPERM;
		}
		return open_plain(name, flags);
	}

	pthread_mutex_lock(&plugin_img_lock);
	if (already_written(name)) {
		pr_err("criu_image_open: %s: already written in this dump\n", name);
		fd = -EEXIST;
	} else {
		fd = open_sealed(name);
	}
	pthread_mutex_unlock(&plugin_img_lock);
	if (fd >= 0)
		pr_info("%s: the plugin writes it through criusec\n", name);
	return fd;
}

int criu_image_close(int fd)
{
	struct plugin_img **pp, *p = NULL;
	struct stat st;
	int ret = 0, real_fd;

	pthread_mutex_lock(&plugin_img_lock);
	if (plugin_imgs && fstat(fd, &st) == 0) {
		for (pp = &plugin_imgs; *pp; pp = &(*pp)->next)
			if ((*pp)->dev == st.st_dev && (*pp)->ino == st.st_ino)
				break;
		p = *pp;
		if (p)
			*pp = p->next;
	}
	if (close(fd))
		ret = -errno;
	if (!p) {
		pthread_mutex_unlock(&plugin_img_lock);
		return ret; /* a plain file */
	}

	if (opts.stream)
		real_fd = img_streamer_open(p->name, O_DUMP);
	else
		real_fd = openat(criu_get_image_dir(), p->name, O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC,
				 0600);
	if (real_fd < 0) {
		pr_perror("%s: can't create", p->name);
		ret = -EIO;
	} else {
		if (plugin_seal(p->name, p->memfd, real_fd))
			ret = -EIO;
		if (close(real_fd) && !ret)
			ret = -EIO;
	}
	pthread_mutex_unlock(&plugin_img_lock);
	close(p->memfd);
	xfree(p->name);
	xfree(p);
	return ret;
}

/* At the end of an encrypted dump: an image a plugin never closed was never sealed. */
static int pending_check(void)
{
	struct plugin_img *p;
	int bad = 0;

	pthread_mutex_lock(&plugin_img_lock);
	while ((p = plugin_imgs)) {
		pr_err("%s: a plugin opened it with criu_image_open() but never closed it with criu_image_close(): "
		       "not written\n",
		       p->name);
		plugin_imgs = p->next;
		close(p->memfd);
		xfree(p->name);
		xfree(p);
		bad++;
	}
	pthread_mutex_unlock(&plugin_img_lock);
	return bad ? -1 : 0;
}
