// SPDX-License-Identifier: GPL-2.0-only
/*
 * The amdgpu plugin's image helpers (plugins/amdgpu/amdgpu_plugin_util.c,
 * linked in unchanged) driven by a plugin of test_plugins.py, since no AMD
 * GPU is here: while the tasks are frozen it writes, as the amdgpu plugin
 * does, a KFD image with write_img_file() and a BO contents image with
 * open_img_file() + write_fp() + close_img_file(), both holding
 * CRIUSEC_TEST_PLUGIN_DATA; after the restored tasks were forked it reads
 * them back with open_img_file() + read_fp() + close_img_file() and
 * appends what it found to CRIUSEC_TEST_PLUGIN_OUT.
 */
#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "criu-plugin.h"
#include "kfd_ioctl.h"
#include "amdgpu_plugin_util.h"

/* amdgpu_plugin_topology.c's, for init_gpu_count(), which this test does not call */
int topology_gpu_count(struct tp_system *topology)
{
	return 0;
}

static int note(const char *what, const char *name, const char *data)
{
	const char *out = getenv("CRIUSEC_TEST_PLUGIN_OUT");
	FILE *f;

	if (!out)
		return 0;
	f = fopen(out, "a");
	if (!f)
		return -errno;
	fprintf(f, "%s %s %s\n", what, name, data);
	fclose(f);
	return 0;
}

static int amdgpu_util_checkpoint(int pid)
{
	const char *data = getenv("CRIUSEC_TEST_PLUGIN_DATA");
	char path[64];
	size_t size;
	FILE *fp;
	int ret;

	if (!data)
		return 0;
	size = strlen(data);
	snprintf(path, sizeof(path), IMG_KFD_FILE, pid);
	ret = write_img_file(path, data, size);
	if (ret)
		return ret;
	note("wrote", path, "");

	snprintf(path, sizeof(path), IMG_KFD_PAGES_FILE, pid, 0x1234);
	fp = open_img_file(path, true, &size);
	if (!fp)
		return -EIO;
	ret = write_fp(fp, data, size);
	if (close_img_file(fp) && !ret)
		ret = -EIO;
	if (!ret)
		note("wrote", path, "");
	return ret;
}

static int read_back(const char *path)
{
	char buf[4096];
	size_t size;
	FILE *fp;
	int ret;

	fp = open_img_file((char *)path, false, &size);
	if (!fp) {
		note("refused", path, strerror(errno));
		return -EIO;
	}
	if (size >= sizeof(buf)) {
		close_img_file(fp);
		return -EFBIG;
	}
	ret = read_fp(fp, buf, size);
	close_img_file(fp);
	if (ret)
		return ret;
	buf[size] = '\0';
	return note("read", path, buf);
}

static int amdgpu_util_post_forking(void)
{
	const char *pid = getenv("CRIUSEC_TEST_PLUGIN_PID");
	char path[64];
	int ret;

	if (!pid)
		return 0;
	snprintf(path, sizeof(path), IMG_KFD_FILE, atoi(pid));
	ret = read_back(path);
	if (ret)
		return ret;
	snprintf(path, sizeof(path), IMG_KFD_PAGES_FILE, atoi(pid), 0x1234);
	return read_back(path);
}

CR_PLUGIN_REGISTER_DUMMY("criusec_amdgpu_util_test")
CR_PLUGIN_REGISTER_HOOK(CR_PLUGIN_HOOK__CHECKPOINT_DEVICES, amdgpu_util_checkpoint)
CR_PLUGIN_REGISTER_HOOK(CR_PLUGIN_HOOK__POST_FORKING, amdgpu_util_post_forking)
