// SPDX-License-Identifier: GPL-2.0-only
/*
 * criusec: an encrypted checkpoint's key unwrapped while criu starts up.
 *
 * A restore's first image read needs the checkpoint key, and unwrapping it
 * is one private-key operation: about 4.5 ms for RSA-3072 here (GnuTLS's
 * side-channel-silent RSA), most of what an encrypted restore of a small
 * checkpoint costs over a plain one.  So a thread does it while criu
 * detects the kernel's features (kerndat), with the first --tls-key, and
 * the images directory's load (criusec-restore.c) takes the result only if
 * cipher.img still reads the same, byte for byte; otherwise, or if the
 * thread failed, it unwraps as always, saying why if it can't.  The thread
 * decides nothing and logs nothing: every check of the header is the load's.
 */

#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "criusec.h"
#include "criusec-glue.h"
#include "criusec-layer.h"
#include "cr_options.h"
#include "image.h"
#include "log.h"
#include "servicefd.h"
#include "util.h"
#include "xmalloc.h"

#include "images/cipher.pb-c.h"

#undef LOG_PREFIX
#define LOG_PREFIX "criusec: "

static struct {
	bool started;
	pthread_t th;
	dev_t dev;
	ino_t ino;
	uint8_t *packed; /* cipher.img's entry, as read */
	size_t len;
	CipherEntry *ce; /* ph points into it */
	struct pb_header ph;
	const char *key;
	struct criusec_ctx *ctx;
	char err[256]; /* why not (the engine's error, the thread's own) */
} pf;

static void *unwrap(void *arg)
{
	pf.ctx = criusec_ctx_import(&pf.ph.h, pf.key);
	if (!pf.ctx)
		snprintf(pf.err, sizeof(pf.err), "%s", criusec_last_error());
	return NULL;
}

static uint8_t *pack(CipherEntry *ce, size_t *len)
{
	uint8_t *p;

	*len = cipher_entry__get_packed_size(ce);
	p = xmalloc(*len ?: 1);
	if (p)
		cipher_entry__pack(ce, p);
	return p;
}

void criusec_restore_prefetch(void)
{
	int n;
	const char *key = criusec_restore_keys(&n)[0];
	CipherEntry *ce = NULL;
	struct stat st;
	int dfd, ret;

	/* Not for an unprivileged criu: kerndat then runs non-dumpable */
	if (opts.mode != CR_RESTORE || geteuid())
		return;
	dfd = get_service_fd(IMG_FD_OFF);
	if (dfd < 0 || fstat(dfd, &st))
		return;
	/* A key in a token stays the main thread's (its module is not ours to share) */
	if (criusec_key_is_url(key) || access(key, R_OK))
		return; /* the load says why */
	if (criusec_read_cipher_entry(dfd, &ce) <= 0)
		return;
	pf.packed = pack(ce, &pf.len);
	if (!pf.packed || criusec_header_from_pb(ce, &pf.ph))
		goto err;
	pf.ce = ce;
	pf.dev = st.st_dev;
	pf.ino = st.st_ino;
	pf.key = key;
	criusec_holding_keys();

	ret = pthread_create_nosig(&pf.th, unwrap, NULL);
	if (ret) {
		criusec_pb_header_free(&pf.ph);
		pf.ce = NULL;
		goto err;
	}
	pf.started = true;
	pr_debug("unwrapping the checkpoint key while criu starts up\n");
	return;
err:
	cipher_entry__free_unpacked(ce, NULL);
	xfree(pf.packed);
	pf.packed = NULL;
}

/* Wait for the thread, and forget what it read */
static struct criusec_ctx *join(void)
{
	struct criusec_ctx *ctx;

	if (!pf.started)
		return NULL;
	pthread_join(pf.th, NULL);
	pf.started = false;
	criusec_pb_header_free(&pf.ph);
	cipher_entry__free_unpacked(pf.ce, NULL);
	pf.ce = NULL;
	xfree(pf.packed);
	pf.packed = NULL;
	ctx = pf.ctx;
	pf.ctx = NULL;
	return ctx;
}

struct criusec_ctx *criusec_prefetched_ctx(dev_t dev, ino_t ino,
					   CipherEntry *ce)
{
	bool same = pf.started && pf.dev == dev && pf.ino == ino;
	struct criusec_ctx *ctx;
	uint8_t *p = NULL;
	size_t len = 0;

	if (!pf.started)
		return NULL;
	if (same) {
		p = pack(ce, &len);
		same = p && len == pf.len && !memcmp(p, pf.packed, len);
		xfree(p);
	}
	ctx = join();
	pr_debug("the key unwrapped while criu started: %s\n",
		 !ctx ? pf.err : same ? "used" :
					"for another cipher.img");
	if (ctx && !same) {
		/* cipher.img changed since: its key is unwrapped again */
		criusec_ctx_free(ctx);
		ctx = NULL;
	}
	if (ctx)
		pr_info("cipher.img: unlocked with %s (while criu started)\n",
			criusec_key_display(pf.key));
	return ctx;
}

void criusec_prefetch_drop(void)
{
	criusec_ctx_free(join());
}
