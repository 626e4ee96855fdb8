// SPDX-License-Identifier: GPL-2.0-only
/*
 * A CRIU plugin for test_plugins.py: it keeps state of its own in an image
 * file, as the amdgpu plugin keeps GPU memory.  While the tasks are frozen
 * (CHECKPOINT_DEVICES) it writes CRIUSEC_TEST_PLUGIN_DATA into
 * "testplugin-PID.img"; after the restored tasks were forked (POST_FORKING,
 * before any runs) it reads every such image back and appends what it
 * found to CRIUSEC_TEST_PLUGIN_OUT.  CRIUSEC_TEST_PLUGIN_MODE picks how:
 *   raw  openat(criu_get_image_dir(), ...), as amdgpu did;
 *   api  criu_image_open() and criu_image_close();
 *   leak api, but never closes what it wrote;
 *   fini-raw, fini-api: raw or api, as the plugin exits after the dump.
 * CRIUSEC_TEST_PLUGIN_SUFFIX (default .img) ends the image's name.
 * Built by the test against build/src's criu-plugin.h.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "criu-plugin.h"

static const char *mode(void)
{
	const char *m = getenv("CRIUSEC_TEST_PLUGIN_MODE");

	return m ? m : "api";
}

/* raw: openat() (-1 and errno); else criu_image_open() (-errno) */
static int raw(void)
{
	return !strcmp(mode(), "raw") || !strcmp(mode(), "fini-raw");
}

static int note(const char *fmt, const char *a, const char *b)
{
	const char *out = getenv("CRIUSEC_TEST_PLUGIN_OUT");
	FILE *f;

	if (!out)
		return 0;
	f = fopen(out, "a");
	if (!f)
		return -errno;
	fprintf(f, fmt, a, b);
	fclose(f);
	return 0;
}

static int testplugin_checkpoint(int pid)
{
	const char *data = getenv("CRIUSEC_TEST_PLUGIN_DATA");
	char name[64];
	size_t len;
	int fd, ret = 0;

	if (!data || !strncmp(mode(), "fini-", 5))
		return 0;
	len = strlen(data);
	snprintf(name, sizeof(name), "testplugin-%d%s", pid, getenv("CRIUSEC_TEST_PLUGIN_SUFFIX") ?: ".img");
	if (!strcmp(mode(), "raw"))
		fd = openat(criu_get_image_dir(), name, O_WRONLY | O_CREAT | O_TRUNC, 0600);
	else
		fd = criu_image_open(name, O_WRONLY);
	if (fd < 0)
		return raw() ? -errno : fd;
	if (write(fd, data, len) != (ssize_t)len)
		ret = -EIO;
	if (!strcmp(mode(), "raw"))
		close(fd);
	else if (!strcmp(mode(), "api") && criu_image_close(fd))
		ret = -EIO;
	note("wrote %s %s\n", name, "");
	if (!ret && !strcmp(mode(), "api")) {
		/* criu's own image names are not a plugin's to take */
		fd = criu_image_open("core-1.img", O_WRONLY);
		note("reserved %s %s\n", "core-1.img", fd >= 0 ? "ok" : strerror(-fd));
		if (fd >= 0)
			criu_image_close(fd);
		/* one image, written once (encrypted: the manifest lists it once) */
		fd = criu_image_open("testplugin-dup.img", O_WRONLY);
		if (fd < 0 || write(fd, "x", 1) != 1 || criu_image_close(fd))
			return -EIO;
		fd = criu_image_open("testplugin-dup.img", O_WRONLY);
		note("again %s %s\n", "testplugin-dup.img", fd >= 0 ? "ok" : strerror(-fd));
		if (fd >= 0) {
			if (write(fd, "x", 1) != 1)
				ret = -EIO;
			criu_image_close(fd);
		}
	}
	return ret;
}

static int read_one(const char *name)
{
	char buf[4096];
	ssize_t n;
	int fd, ret = 0;

	if (!strcmp(mode(), "raw"))
		fd = openat(criu_get_image_dir(), name, O_RDONLY);
	else
		fd = criu_image_open(name, O_RDONLY);
	if (fd < 0) {
		note("refused %s %s\n", name, strerror(raw() ? errno : -fd));
		return raw() ? -errno : fd;
	}
	n = read(fd, buf, sizeof(buf) - 1);
	if (n < 0)
		ret = -errno;
	else
		buf[n] = '\0';
	if (!strcmp(mode(), "raw"))
		close(fd);
	else
		criu_image_close(fd);
	if (!ret)
		note("read %s %s\n", name, buf);
	return ret;
}

static int testplugin_post_forking(void)
{
	struct dirent *de;
	DIR *dir;
	int dfd, ret = 0;

	/* Which images there are: listed by name, read through the mode's way. */
	dfd = dup(criu_get_image_dir());
	if (dfd < 0 || !(dir = fdopendir(dfd)))
		return -errno;
	rewinddir(dir);
	while ((de = readdir(dir)) && !ret)
		if (!strncmp(de->d_name, "testplugin-", 11))
			ret = read_one(de->d_name);
	closedir(dir);
	/* An image that was never dumped: criu_image_open() says so. */
	if (!ret && strcmp(mode(), "raw")) {
		int fd = criu_image_open("testplugin-none.img", O_RDONLY);

		note("absent %s %s\n", "testplugin-none.img", fd == -ENOENT ? "ENOENT" : "WRONG");
		if (fd >= 0)
			criu_image_close(fd);
	}
	return ret;
}

/*
 * fini-raw, fini-api: the image is written as the plugin exits (after a
 * dump that succeeded so far), when criusec has sealed the manifest.
 */
static int testplugin_init(int stage)
{
	return 0;
}

static void testplugin_exit(int stage, int ret)
{
	const char *data = getenv("CRIUSEC_TEST_PLUGIN_DATA");
	size_t len;
	int fd;

	if (stage != CR_PLUGIN_STAGE__DUMP || ret || !data || strncmp(mode(), "fini-", 5))
		return;
	len = strlen(data);
	if (!strcmp(mode(), "fini-raw"))
		fd = openat(criu_get_image_dir(), "testplugin-exit.img", O_WRONLY | O_CREAT | O_TRUNC, 0600);
	else
		fd = criu_image_open("testplugin-exit.img", O_WRONLY);
	note("exit-open %s %s\n", "testplugin-exit.img", fd >= 0 ? "ok" : strerror(raw() ? errno : -fd));
	if (fd < 0)
		return;
	if (write(fd, data, len) != (ssize_t)len)
		note("exit-write %s %s\n", "testplugin-exit.img", strerror(errno));
	if (!strcmp(mode(), "fini-raw"))
		close(fd);
	else
		criu_image_close(fd);
}

CR_PLUGIN_REGISTER("criusec_testplugin", testplugin_init, testplugin_exit)
CR_PLUGIN_REGISTER_HOOK(CR_PLUGIN_HOOK__CHECKPOINT_DEVICES, testplugin_checkpoint)
CR_PLUGIN_REGISTER_HOOK(CR_PLUGIN_HOOK__POST_FORKING, testplugin_post_forking)
